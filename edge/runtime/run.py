"""`edge run CONFIG.yaml`: the line-side loop, all day, without torch."""

import logging
import os
import signal

from ..bundle import reference
from ..bundle.manifest import Bundle
from .config import load_config, validate
from ..engines import open_engine
from ..common.errors import EdgeError
from ..common.names import ENGINE_CHOICES, PRECISIONS
from .pipeline import Pipeline, describe_error, run_pipeline
from .preprocess import Preprocessor

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


def format_status(s):
    return (f"{s['fps']:6.1f} fps  latency p50 {s['latency_ms_p50']:6.1f} ms p95 {s['latency_ms_p95']:6.1f} ms  "
            f"decided {s['decided']}  rejects {s['rejects']}  dropped {s['dropped']}  late {s['late']}  "
            f"outages {s['outages']}")


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
            parts["store"] = RecordStore(rec.db, images, rec.quota_mb, rec.save, rec.format, on_full=rec.on_full)
        if cfg.line:
            from ..outputs import LineIO
            parts["line"] = LineIO(cfg.line)
            parts["line"].start()
        if cfg.view:
            from ..view.server import LiveView
            parts["view"] = LiveView(cfg.view.host, cfg.view.port)
            parts["view"].start()
        parts["source"].start()
    except BaseException:
        close_parts(parts)
        raise
    return parts


def close_parts(parts):
    for key in ("source", "line", "view", "engine", "store"):
        obj = parts.get(key)
        if obj is not None:
            try:
                obj.close()
            except Exception as exc:
                log.warning("edge run: closing %s: %s", key, exc)


def run(args):
    cfg = build_config(args)
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
    view = parts.get("view")

    def status(s):
        if view is not None:
            connected = parts["source"].stats().get("connected", True)
            fault = "; ".join(pipe.errors) or (None if connected else "camera lost")
            view.set_status(dict(s, fault=fault, engine=parts["engine"].name, source=parts["source"].describe(),
                                 bundle=f"{os.path.basename(os.path.realpath(bundle.path))} (id {bundle.id[:12]})",
                                 **({"records": store.full.report()} if store is not None and store.full.any() else {})))
        if not args.quiet:
            log.info(format_status(s) + (f"  records: {store.full.describe()}" if store is not None
                                         and store.full.any() else ""), extra={"data": s})

    log.info(f"edge run: {bundle.method} bundle {bundle.path} (id {bundle.id[:12]}) on {parts['engine'].name} "
                     f"({cfg.engine.precision}), source {parts['source'].describe()}, mode {cfg.mode}, "
                     f"threshold {threshold:.4g}")
    summary, error = None, None
    try:
        summary = run_pipeline(pipe, status, cfg.status_every_s)
    except Exception as exc:                 # the run faulted: the summary and exit status say why
        error = describe_error(exc)
        summary = pipe.stats.snapshot()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if store is not None and summary is not None:
            try:
                store.end_run(dict(summary, error=error))
            except Exception as exc:
                log.error("edge run: cannot end the run in the records: %s", describe_error(exc))
        close_parts(parts)
    print(f"summary: {summary['decided']} frames decided of {summary['captured']} captured, "
          f"{summary['rejects']} rejected, {summary['dropped']} dropped, {summary['late']} late, "
          f"{summary['outages']} source outages; {summary['fps']:.1f} fps, latency p50 "
          f"{summary['latency_ms_p50']:.1f} ms p95 {summary['latency_ms_p95']:.1f} ms"
          + (f"; run {run_id} in {cfg.records.db}" if run_id is not None else "")
          + (f"; records: {store.full.describe()}" if store is not None and store.full.any() else "")
          + (f"; FAULT: {error}" if error else ""))
    if error:
        log.error(f"edge run: fault: {error}")
        return EXIT_FAULT
    return 0
