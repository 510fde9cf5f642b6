"""`edge run` with a `cameras:` list: open every camera's parts (a bundle and an engine are
opened once for all cameras that share them), run the MultiPipeline, report per camera."""

import logging
import os
import signal

from ..common.errors import EdgeError
from .cameras import Camera, MultiPipeline
from .preprocess import Preprocessor

log = logging.getLogger(__name__)


def engine_key(run):
    e = run.engine
    return (os.path.realpath(run.bundle), e.kind, e.precision, e.batch, e.threads)


def engine_plan(kind, threads, workers, cores=None):
    """(engine calls in flight, intra-op threads per call) for a shared engine. ONNX Runtime on
    the CPU: by default one single-threaded call per core (up to 4) -- a call's own threads
    leave cores idle between operators, whereas calls side by side keep them busy; `threads`
    (engine.threads) and `workers` (engine_workers) given are kept. TensorRT: one call at a time
    (its execution context is not shared between threads)."""
    from ..engines import resolve_kind
    if resolve_kind(kind) != "onnxruntime":
        return 1, threads
    cores = cores or os.cpu_count() or 1
    workers = workers or max(1, min(4, cores // (threads or 1)))
    return workers, threads or max(1, cores // workers)


def open_cameras(cfg):
    """Everything a MultiRunConfig names, opened; returns a dict for close_all on failure or end."""
    from ..bundle.manifest import Bundle
    from ..engines import open_engine
    from ..sources import open_source
    opened = {"bundles": {}, "engines": {}, "workers": {}, "sources": {}, "lines": {}, "cameras": [], "groups": {}}
    try:
        for cam in cfg.cameras:
            run = cam.run
            path = os.path.realpath(run.bundle)
            try:
                bundle = opened["bundles"].get(path) or opened["bundles"].setdefault(path, Bundle(run.bundle))
            except EdgeError as exc:
                raise EdgeError(exc.reason, f"camera {cam.id}: {exc.where or run.bundle}") from None
            key = engine_key(run)
            if key not in opened["engines"]:
                e = run.engine
                workers, threads = engine_plan(e.kind, e.threads, cfg.engine_workers)
                opened["engines"][key] = open_engine(bundle, e.kind, e.precision, batch=e.batch, threads=threads)
                opened["workers"][key] = workers
            engine = opened["engines"][key]
            options = dict(run.source.options)
            if run.mode == "latest":
                options.setdefault("drop", True)
            opened["sources"][cam.id] = open_source(run.source.uri, options)
            line = None
            if run.line:
                from ..outputs import LineIO
                line = opened["lines"][cam.id] = LineIO(run.line, f"cameras.{cam.id}.line")
                line.start()
            threshold = run.decision.threshold
            if threshold is None:
                threshold = bundle.threshold_for(run.engine.precision, engine.name)
            h, w = bundle.input_hw
            pre = Preprocessor(h, w, cam.roi or bundle.roi)
            c = Camera(cam.id, opened["sources"][cam.id], pre, threshold, run.pipeline(), line)
            c.bundle, c.engine_name = bundle, engine.name
            opened["cameras"].append(c)
            opened["groups"].setdefault(key, (engine, run.engine.batch, [], opened["workers"][key]))[2].append(c)
        top = cfg.top
        if top.records.db:
            from ..records.store import RecordStore
            rec = top.records
            images = rec.images or os.path.join(os.path.dirname(rec.db) or ".", "images")
            opened["store"] = RecordStore(rec.db, images, rec.quota_mb, rec.save, rec.format)
        if cfg.parts is not None:
            opened["joiner"] = _joiner(cfg.parts, opened)
        if top.view:
            from ..view.server import LiveView
            opened["view"] = LiveView(top.view.host, top.view.port, token=top.view.token,
                                      store=opened.get("store"), gallery=top.view.gallery)
            opened["view"].start()
            log.info(f"edge run: live view on {opened['view'].url} ({opened['view'].access()})")
        for src in opened["sources"].values():
            src.start()
    except BaseException:
        close_all(opened)
        raise
    return opened


def _joiner(parts, opened):
    from .parts import PartJoiner
    counter = line = None
    if parts.counter is not None:
        from ..outputs.lineio import _build_encoder
        counter = opened["counter"] = _build_encoder(parts.counter)
        counter.start()
    if parts.line is not None:
        from ..outputs import LineIO
        line = opened["parts_line"] = LineIO(parts.line, "parts.line")
        line.start()
    store = opened.get("store")

    def record(kind, detail):
        if store is not None:
            store.event(kind, detail)
        if line is not None:
            for ev in line.events():
                store is not None and store.event(f"line_{ev.get('kind')}", dict(ev, camera="parts"))
    return PartJoiner(parts, line, record, counter).start()


def identity(cameras, cfg):
    """What the status and the metrics name the run by: each value once, in camera order."""
    from .. import __version__

    def each(values):
        return ", ".join(dict.fromkeys(str(v) for v in values))
    precision = {c.id: c.run.engine.precision for c in cfg.cameras}
    return {"bundle_id": each(c.bundle.id for c in cameras),
            "bundle": each(os.path.basename(os.path.realpath(c.bundle.path)) for c in cameras),
            "method": each(c.bundle.method for c in cameras), "engine": each(c.engine_name for c in cameras),
            "precision": each(precision[c.id] for c in cameras), "version": __version__,
            "cameras": len(cameras)}


def close_all(opened):
    for src in opened.get("sources", {}).values():
        _close("source", src)
    if opened.get("joiner") is not None:
        _close("parts", opened["joiner"])
    for name in ("parts_line", "counter"):
        if opened.get(name) is not None:
            _close(name, opened[name])
    for line in opened.get("lines", {}).values():
        _close("line", line)
    if opened.get("view") is not None:
        _close("view", opened["view"])
    for eng in opened.get("engines", {}).values():
        _close("engine", eng)
    if opened.get("store") is not None:
        _close("store", opened["store"])


def _close(what, obj):
    try:
        obj.close()
    except Exception as exc:
        log.warning("edge run: closing %s: %s", what, exc)


def build_pipeline(cfg, opened, on_reject=None):
    """The MultiPipeline over what open_cameras opened (not started)."""
    return MultiPipeline(list(opened["groups"].values()), cfg.batch_wait_ms, store=opened.get("store"),
                         view=opened.get("view"), parts=opened.get("joiner"), on_reject=on_reject)


def format_camera(cid, s):
    return (f"[{cid}] {s['fps']:6.1f} fps  latency p50 {s['latency_ms_p50']:6.1f} ms p99 "
            f"{s['latency_ms_p99']:6.1f} ms  decided {s['decided']}  rejects {s['rejects']}  "
            f"dropped {s['dropped']}  late {s['late']}  outages {s['outages']}"
            + ("" if s.get("connected", True) else "  LOST"))


def run_cameras(cfg, args):
    opened = open_cameras(cfg)
    store = opened.get("store")
    first = opened["cameras"][0]
    run_id = store.start_run(first.bundle.path, cfg.to_dict(), bundle_sha=first.bundle.id) if store else None
    quiet = getattr(args, "quiet", False)
    pipe = build_pipeline(cfg, opened, on_reject=None if quiet else lambda cid, d: log.info(
        f"reject: camera {cid} frame {d.seq} score {d.score:.4g} latency {d.latency_s * 1000:.1f} ms"))

    def on_signal(signum, _frame):
        log.info("edge run: %s: draining in-flight frames", signal.Signals(signum).name)
        pipe.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    view = opened.get("view")

    pipe.identity = identity(opened["cameras"], cfg)

    def status(snap):
        if view is not None:                          # every camera and the parts (RunStatus version 2)
            view.set_status(pipe.status())
        for c in opened["cameras"]:                   # a camera's telemetry topic: its own status
            if c.line is not None:
                c.line.telemetry(pipe.camera_status(c).to_dict())
        if not quiet:
            for cid, s in snap["cameras"].items():
                log.info(format_camera(cid, s), extra={"data": s})

    for c in opened["cameras"]:
        log.info(f"edge run: camera {c.id}: {c.bundle.method} bundle {c.bundle.path} on {c.engine_name}, "
                 f"source {c.source.describe()}, threshold {c.threshold:.4g}, engine group {c.group} "
                 f"({pipe.groups[c.group][0].workers} engine calls at once)")
    error = summary = None
    import time
    try:
        pipe.start()
        next_t = time.monotonic() + cfg.top.status_every_s
        while pipe.running():
            pipe.join(timeout=min(0.2, cfg.top.status_every_s))
            if time.monotonic() >= next_t:
                status(pipe.snapshot())
                next_t += cfg.top.status_every_s
        if opened.get("joiner") is not None:
            opened["joiner"].close()
        if pipe.errors:
            error = "; ".join(pipe.errors)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        summary = pipe.snapshot()
        final = pipe.status()
        if view is not None:
            view.set_status(final)
        if store is not None:
            try:                                      # the status contract, as a single-camera run's
                t = summary["total"]
                store.end_run(dict(final.to_dict(), error=error,
                                   batching={"engine_calls": t["engine_calls"], "mean_batch": t["mean_batch"]}))
            except Exception as exc:
                log.error("edge run: cannot end the run in the records: %s", exc)
        close_all(opened)
    for cid, s in summary["cameras"].items():
        print(f"summary {cid}: {s['decided']} frames decided of {s['captured']} captured, {s['rejects']} rejected, "
              f"{s['dropped']} dropped, {s['late']} late, {s['outages']} source outages; {s['fps']:.1f} fps, "
              f"latency p50 {s['latency_ms_p50']:.1f} ms p99 {s['latency_ms_p99']:.1f} ms")
    t = summary["total"]
    p = summary["parts"]
    print(f"summary: {len(summary['cameras'])} cameras, {t['decided']} frames decided, {t['fps']:.1f} fps in total, "
          f"{t['engine_calls']} engine calls (mean batch {t['mean_batch']:.2f})"
          + (f"; {p['parts']} parts, {p['rejects']} rejected, {p['failsafe']} fail-safe" if p else "")
          + (f"; run {run_id} in {cfg.top.records.db}" if run_id is not None else "")
          + (f"; FAULT: {error}" if error else ""))
    if error:
        from .run import EXIT_FAULT
        log.error(f"edge run: fault: {error}")
        return EXIT_FAULT
    return 0
