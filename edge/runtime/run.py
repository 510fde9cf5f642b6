"""`edge run CONFIG.yaml`: the line-side loop, all day, without torch."""

import logging
import os
import signal

from ..bundle import reference
from ..bundle.manifest import Bundle
from .config import RunConfig, load_config, validate
from ..engines import open_engine
from ..common.errors import EdgeError
from ..common.names import ENGINE_CHOICES, PRECISIONS
from .pipeline import Pipeline, describe_error, run_pipeline
from .preprocess import Preprocessor
from ..common.status import format_line

log = logging.getLogger(__name__)


EXIT_FAULT = 3      # the run started and faulted (2: bad input or configuration, refused before)


def add_arguments(p):
    p.add_argument("config", help="run configuration (YAML); see deploy/config/example.yaml")
    p.add_argument("--bundle", help="override config bundle:")
    p.add_argument("--source", help="override config source: (a URI)")
    p.add_argument("--records", metavar="DB", help="override config records.db")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--engine", choices=ENGINE_CHOICES, help="override engine.kind")
    p.add_argument("--precision", choices=PRECISIONS, help="override engine.precision")
    p.add_argument("--quiet", action="store_true", help="no status lines, only the summary")


def build_config(args):
    raw = load_config(args.config)
    if args.bundle:
        raw["bundle"] = os.path.abspath(args.bundle)
    if args.source and "cameras" in raw:
        raise EdgeError("is per camera in this configuration (cameras[i].source)", "--source")
    if args.source:
        src = raw.get("source")
        raw["source"] = {"uri": args.source, "options": src.get("options", {})} if isinstance(src, dict) else args.source
    if args.records:
        raw.setdefault("records", {})
        raw["records"] = dict(raw["records"] or {}, db=os.path.abspath(args.records))
    if args.max_frames is not None:
        if args.max_frames < 1:              # 0 is not "no limit": a limit of nothing is refused
            raise EdgeError(f"must be at least 1, got {args.max_frames} (leave it out for no limit)", "--max-frames")
        raw["max_frames"] = args.max_frames
    for key in ("engine", "precision"):
        value = getattr(args, key)
        if value:
            raw.setdefault("engine", {})
            raw["engine"] = dict(raw["engine"] or {}, **{"kind" if key == "engine" else key: value})
    return validate(raw, os.path.dirname(os.path.abspath(args.config)))


def identity(bundle, engine, precision):
    """What the status and the metrics name the run by."""
    from .. import __version__
    return {"bundle_id": bundle.id, "bundle": os.path.basename(os.path.realpath(bundle.path)),
            "method": bundle.method, "engine": engine.name, "precision": precision, "version": __version__}


def open_parts(cfg):
    """Bundle, engine, source, records, line and view, opened in that order; each failure
    names its part. Returns a dict; the caller closes what it got through close_parts."""
    parts = {}
    try:
        bundle = parts["bundle"] = Bundle(cfg.bundle)
        e = cfg.engine
        parts["engine"] = open_engine(bundle, e.kind, e.precision, batch=e.batch, threads=e.threads, dla=e.dla)
        # The bundle proves itself on this engine before a frame is judged: a fault, not a start.
        reference.check(bundle, parts["engine"], e.precision, "edge run refused to start", log=log.info)
        from ..sources import open_source
        options = dict(cfg.source.options)
        if cfg.mode == "latest":
            options.setdefault("drop", True)
        parts["source"] = open_source(cfg.source.uri, options)
        rec = cfg.records
        if rec.db:
            from ..records.store import RecordStore
            images = rec.images or os.path.join(os.path.dirname(rec.db) or ".", "images")
            parts["store"] = RecordStore(rec.db, images, rec.quota_mb, rec.save, rec.format, on_full=rec.on_full,
                                         outbox=rec.forward is not None)
            if rec.forward is not None:
                from ..records.outbox import Forwarder
                parts["forward"] = Forwarder(parts["store"], rec.forward).start()
        if cfg.line:
            from ..outputs import LineIO
            parts["line"] = LineIO(cfg.line)
            parts["line"].start()
        if cfg.view:
            from ..view.server import LiveView
            parts["view"] = LiveView(cfg.view.host, cfg.view.port, token=cfg.view.token,
                                     store=parts.get("store"), gallery=cfg.view.gallery)
            parts["view"].start()
            log.info(f"edge run: live view on {parts['view'].url} ({parts['view'].access()})")
        parts["source"].start()
    except BaseException:
        close_parts(parts)
        raise
    return parts


def close_parts(parts):
    for key in ("source", "line", "view", "engine", "forward", "store"):
        obj = parts.get(key)
        if obj is not None:
            try:
                obj.close()
            except Exception as exc:
                log.warning("edge run: closing %s: %s", key, exc)


def run(args):
    cfg = build_config(args)
    if not isinstance(cfg, RunConfig):                 # a `cameras:` list
        from .run_cameras import run_cameras
        return run_cameras(cfg, args)
    parts = open_parts(cfg)
    bundle = parts["bundle"]
    threshold = cfg.decision.threshold
    threshold = bundle.threshold_for(cfg.engine.precision, parts["engine"].name) if threshold is None else threshold
    store = parts.get("store")
    run_id = store.start_run(bundle.path, cfg.to_dict(), bundle_sha=bundle.id) if store else None
    pipe = Pipeline(parts["source"], Preprocessor.for_bundle(bundle), parts["engine"], threshold, cfg.pipeline(),
                    store=store, line=parts.get("line"), view=parts.get("view"),
                    on_reject=None if args.quiet else lambda d: log.info(
                        f"reject: frame {d.seq} score {d.score:.4g} area {d.defect_area:.2%} "
                        f"latency {d.latency_s * 1000:.1f} ms"))

    def on_signal(signum, _frame):
        log.info("edge run: %s: draining in-flight frames", signal.Signals(signum).name)
        pipe.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    view, line = parts.get("view"), parts.get("line")
    pipe.identity = identity(bundle, parts["engine"], cfg.engine.precision)

    def status(st):
        if view is not None:
            view.set_status(st)
        if line is not None:
            line.telemetry(st.to_dict())
        if not args.quiet:
            log.info(format_line(st) + (f"  records: {store.full.describe()}" if store is not None
                                        and store.full.any() else ""), extra={"data": st.to_dict()})

    log.info(f"edge run: {bundle.method} bundle {bundle.path} (id {bundle.id[:12]}) on {parts['engine'].name} "
                     f"({cfg.engine.precision}), source {parts['source'].describe()}, mode {cfg.mode}, "
                     f"threshold {threshold:.4g}")
    summary, error = None, None
    try:
        summary = run_pipeline(pipe, status, cfg.status_every_s)
    except Exception as exc:                 # the run faulted: the summary and exit status say why
        error = describe_error(exc)
        summary = pipe.status()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if view is not None and summary is not None:
            view.set_status(summary)
        if store is not None and summary is not None:
            try:
                store.end_run(dict(summary.to_dict(), error=error,
                                   **({"records": store.full.report()} if store.full.any() else {})))
            except Exception as exc:
                log.error("edge run: cannot end the run in the records: %s", describe_error(exc))
        close_parts(parts)
    print(f"summary: {summary.frames} frames decided of {summary.captured} captured, "
          f"{summary.rejects} rejected, {summary.drops} dropped, {summary.late} late, "
          f"{summary.outages} source outages; {summary.fps:.1f} fps, latency p50 "
          f"{summary.latency_ms.p50:.1f} ms p95 {summary.latency_ms.p95:.1f} ms"
          + (f"; run {run_id} in {cfg.records.db}" if run_id is not None else "")
          + (f"; records: {store.full.describe()}" if store is not None and store.full.any() else "")
          + (f"; FAULT: {error}" if error else ""))
    if error:
        log.error(f"edge run: fault: {error}")
        return EXIT_FAULT
    return 0
