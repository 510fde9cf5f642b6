"""`edge check`: is the line-side box healthy? One line per check; exit 0 when all pass, 1 when
any fails (2 for a usage error). For systemd (a timer, ExecStartPost) and Docker HEALTHCHECK.

    edge check [--root /opt/lineside | --bundle PATH | --config CONFIG.yaml]
               [--engine auto|onnxruntime|tensorrt|none] [--precision fp16] [--batch 4]
               [--url http://127.0.0.1:8080/healthz] [--records DB] [--max-age S]
               [--min-free-mb 512] [--json]

Checks:
  bundle   the active bundle (<root>/current, or --bundle) loads and every file matches its sha256
  engine   onnxruntime: the graph opens in a session; tensorrt: a plan for this GPU, TensorRT
           version, precision and batch is present and intact (not deserialised: the running
           service holds the GPU; `edge build` makes the plan)
  service  --url answers 200 (the live view's /healthz is 503 while the pipeline is faulted)
  records  --records: the record store opens read-only and, with --max-age, its last decision
           is at most that many seconds old
  disk     free space on the bundle's and the records' file systems is above --min-free-mb

--config reads bundle, engine, records.db and view (-> --url) from the run configuration;
options given on the command line win.
"""

import dataclasses
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

from ..common.errors import EdgeError
from ..common.names import DEFAULT_ROOT, ENGINE_CHOICES, PRECISIONS, install_root

DEFAULT_MIN_FREE_MB = 512
HTTP_TIMEOUT_S = 3.0


class CheckFailed(Exception):
    """A check that ran and found a problem (its message is the detail shown)."""


# ---- the checks: each returns a detail string or raises CheckFailed -----------------------
def check_bundle(path):
    from ..bundle.manifest import Bundle

    try:
        bundle = Bundle(path)
    except EdgeError as exc:
        raise CheckFailed(str(exc)) from None
    shown = path
    if os.path.islink(path.rstrip("/")):
        shown = f"{path} -> {os.readlink(path.rstrip('/'))}"
    return bundle, (f"{shown} ({bundle.method}, id {bundle.id[:12]}, "
                    f"{len(bundle.manifest['files'])} file(s) verified)")


def check_engine(bundle, kind="auto", precision="fp32", batch=1, dla=None):
    from ..engines import resolve_kind

    kind = resolve_kind(kind)
    try:
        if kind == "onnxruntime":
            from ..engines import open_engine
            with open_engine(bundle, "onnxruntime", precision=precision, threads=1) as engine:
                return f"onnxruntime opens {os.path.basename(bundle.graph_path(precision, 'onnxruntime'))} ({engine.providers[0]})"
        if kind == "tensorrt":
            return _trt_plan_present(bundle, precision, batch, dla)
    except EdgeError as exc:
        raise CheckFailed(str(exc)) from None
    raise CheckFailed(f"unknown engine '{kind}'")


def _trt_plan_present(bundle, precision, batch, dla):
    from ..engines import plan_key as pk
    from ..engines.cuda import get_api
    from ..engines.tensorrt import _build_hint, import_tensorrt

    trt = import_tensorrt()
    want = pk.make_key(trt, get_api().device_info(), precision, (batch, batch, batch),
                       pk.graph_sha256(bundle, precision), dla)
    path, refused = pk.find_plan(bundle, want)
    if path is None:
        why = f" ({os.path.basename(refused[0][0])}: {'; '.join(refused[0][1])})" if refused else ""
        raise CheckFailed(f"no TensorRT plan for {want.gpu} {want.trt_version} {precision} "
                          f"batch {batch}{why}; {_build_hint(bundle.path, want)}")
    return f"tensorrt plan {os.path.basename(path)}"


def check_url(url, timeout=HTTP_TIMEOUT_S):
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise CheckFailed(f"not an http(s) URL: {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(200).decode("utf-8", "replace").strip()
            return f"{url} -> {resp.status}" + (f" {body}" if body else "") + run_figures(url, timeout)
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode("utf-8", "replace").strip()
        raise CheckFailed(f"{url} -> {exc.code}" + (f" {body}" if body else "") + run_figures(url, timeout)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckFailed(f"{url}: no answer ({reason})") from None


def run_figures(healthz_url, timeout=HTTP_TIMEOUT_S):
    """'; 1,234 frames, 4 rejects, ...' from the live view's /status.json beside a /healthz URL
    (the run's status contract, edge.common.status), or '' when there is none to read."""
    parts = urllib.parse.urlsplit(healthz_url)
    if not parts.path.endswith("/healthz"):
        return ""
    url = urllib.parse.urlunsplit(parts._replace(path=parts.path[:-len("healthz")] + "status.json", query=""))
    from ..common.status import RunStatus
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            st = json.loads(resp.read()).get("status")
        if st is None:
            return ""
        st = RunStatus.from_dict(st)
    except urllib.error.HTTPError as exc:
        return "; run figures need the view's token" if exc.code == 401 else ""
    except (OSError, ValueError, EdgeError, AttributeError):
        return ""
    return (f"; {st.frames:,} frames, {st.rejects:,} rejects, {st.drops:,} drops, {st.late:,} late, "
            f"{st.faults:,} faults, {st.fps:.1f} fps, latency p95 {st.latency_ms.p95:.0f} ms; "
            f"camera {st.source.state}, engine {st.engine.state}, line {st.line.state}")


def last_decision_wall(db_path):
    """Wall time (seconds since the epoch) of the newest decision in the records DB, or None
    when there is none; asked of the record store, opened read-only (EdgeError when the file
    is not a records database)."""
    from ..records.store import RecordStore

    with RecordStore(db_path, readonly=True) as store:
        return store.last_decision_wall()


def check_records(db_path, max_age=None, now=None):
    if not os.path.isfile(db_path):
        raise CheckFailed(f"records DB not found: {db_path}")
    try:
        wall = last_decision_wall(db_path)
    except EdgeError as exc:
        raise CheckFailed(f"records DB unreadable: {exc}") from None
    if wall is None:
        if max_age is not None:
            raise CheckFailed(f"no decision recorded in {db_path}")
        return f"{db_path}: no decisions yet"
    age = (time.time() if now is None else now) - wall
    if max_age is not None and age > max_age:
        raise CheckFailed(f"last decision {age:.0f} s ago (more than --max-age {max_age:g} s)")
    return f"last decision {max(age, 0):.1f} s ago"


def check_disk(paths, min_free_mb):
    seen, parts = set(), []
    for path in paths:
        probe = path
        for _ in range(64):                       # nearest existing folder, bounded
            if os.path.exists(probe) or os.path.dirname(probe) == probe:
                break
            probe = os.path.dirname(probe)
        st = os.stat(probe)
        if st.st_dev in seen:
            continue
        seen.add(st.st_dev)
        free_mb = shutil.disk_usage(probe).free / 2 ** 20
        parts.append((probe, free_mb))
    low = [(p, f) for p, f in parts if f < min_free_mb]
    text = ", ".join(f"{p}: {f:.0f} MiB free" for p, f in parts)
    if low:
        raise CheckFailed(f"{text} (floor {min_free_mb:g} MiB)")
    return text


# ---- running them -------------------------------------------------------------------------
def _from_config(path):
    """(bundle, engine dict, records db, url) from a run configuration."""
    from ..runtime.config import load_config, validate
    cfg = validate(load_config(path), os.path.dirname(os.path.abspath(path)))
    url = None
    if cfg.view:
        host = cfg.view.host or "127.0.0.1"
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        url = f"http://{host}:{cfg.view.port}/healthz"
    return cfg.bundle, dataclasses.asdict(cfg.engine), cfg.records.db, url


def run_checks(bundle_path, engine="auto", precision="fp32", batch=1, dla=None, url=None,
               records=None, max_age=None, min_free_mb=DEFAULT_MIN_FREE_MB, disk_paths=None):
    """[{"check", "ok", "detail"}] for each check that applies."""
    results = []

    def attempt(name, fn, *a):
        try:
            out = fn(*a)
            detail = out[1] if isinstance(out, tuple) else out
            results.append({"check": name, "ok": True, "detail": detail})
            return out
        except CheckFailed as exc:
            results.append({"check": name, "ok": False, "detail": str(exc)})
        except Exception as exc:                 # a check must never crash the checker
            results.append({"check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
        return None

    out = attempt("bundle", check_bundle, bundle_path)
    if engine != "none":
        if out is None:
            results.append({"check": "engine", "ok": False, "detail": "not tried: no usable bundle"})
        else:
            attempt("engine", check_engine, out[0], engine, precision, int(batch), dla)
    if url:
        attempt("service", check_url, url)
    if records:
        attempt("records", check_records, records, max_age)
    paths = list(disk_paths or [])
    paths.append(os.path.dirname(os.path.abspath(bundle_path.rstrip("/"))))
    if records:
        paths.append(os.path.dirname(os.path.abspath(records)))
    attempt("disk", check_disk, paths, min_free_mb)
    return results


def add_arguments(parser):
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--root", help=f"install root: checks <root>/current "
                                      f"(default $LINESIDE_ROOT or {DEFAULT_ROOT})")
    where.add_argument("--bundle", help="check this bundle folder instead")
    parser.add_argument("--config", help="run configuration: bundle, engine, records.db and view "
                                         "(-> --url) from it; options given here win")
    parser.add_argument("--engine", choices=ENGINE_CHOICES + ("none",),
                        help="engine to try (default: the config's, else auto)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="graph/plan precision (default: the config's, else fp32)")
    parser.add_argument("--batch", type=int, help="batch the TensorRT plan must serve (default: "
                                                  "the config's, else 1)")
    parser.add_argument("--dla", type=int, metavar="N", help="the plan is for DLA core N")
    parser.add_argument("--url", help="health URL of the running service, e.g. http://127.0.0.1:8080/healthz")
    parser.add_argument("--records", metavar="DB", help="records SQLite DB (read only)")
    parser.add_argument("--max-age", type=float, metavar="S",
                        help="fail when the last decision is older than S seconds")
    parser.add_argument("--min-free-mb", type=float, default=DEFAULT_MIN_FREE_MB,
                        help=f"free-space floor in MiB (default {DEFAULT_MIN_FREE_MB})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    bundle, engine, records, url = None, {}, None, None
    if args.config:
        bundle, engine, records, url = _from_config(args.config)
    if args.bundle:
        bundle = args.bundle
    elif args.root or not bundle:
        bundle = os.path.join(install_root(args.root), "current")
    batch = args.batch if args.batch is not None else int(engine.get("batch") or 1)
    if batch < 1:
        raise EdgeError(f"--batch must be 1 or more (got {batch})")
    results = run_checks(
        bundle,
        engine=args.engine or engine.get("kind") or "auto",
        precision=args.precision or engine.get("precision") or "fp32",
        batch=batch, dla=args.dla if args.dla is not None else engine.get("dla"),
        url=args.url or url,
        records=args.records or records,
        max_age=args.max_age, min_free_mb=args.min_free_mb)
    ok = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "checks": results}))
    else:
        for r in results:
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']:8} {r['detail']}")
    return 0 if ok else 1
