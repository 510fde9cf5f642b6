"""Run the real `edge run` with one fault injected, and report what the line saw.

    python -m scripts.faultrun REPORT.json FAULT AFTER -- CONFIG.yaml [edge run options]

FAULT is one of INJECT (or `none`): after AFTER calls, that stage's call raises an exception
nobody planned for. The run is `edge.cli.main(["run", ...])` in this process, so the memory
line output it configures can be read back; REPORT.json gets the exit status, what the memory
line saw (heartbeats, fault status, fail-safe verdicts) and the answer of /healthz just before
the live view closed. Used by tests/test_faults.py and scripts/bench_faults.py.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request


def _arm(cls, name, after, what):
    original = getattr(cls, name)
    calls = [0]
    lock = threading.Lock()

    def wrapper(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            # Start-up work (the bundle's reference frames through the engine) is not the line's.
            return original(self, *args, **kwargs)
        with lock:
            calls[0] += 1
            n = calls[0]
        if n > after:
            raise RuntimeError(f"injected {what} failure at call {n}")
        return original(self, *args, **kwargs)

    setattr(cls, name, wrapper)


def _inject(fault, after):
    if fault == "source":
        from edge.sources.base import Source
        _arm(Source, "_fit", after, "capture")          # runs in the source's capture thread
    elif fault == "preprocess":
        from edge.runtime.preprocess import Preprocessor
        _arm(Preprocessor, "__call__", after, "preprocess")
    elif fault == "engine":
        from edge.engines.onnxrt import OrtEngine
        _arm(OrtEngine, "infer", after, "engine")
    elif fault == "decide":
        from edge.runtime.pipeline import Stats
        _arm(Stats, "decision", after, "decide")
    elif fault == "output":
        from edge.outputs.lineio import LineIO
        _arm(LineIO, "decide", after, "line output")
    elif fault == "record":
        from edge.records.store import RecordStore
        _arm(RecordStore, "add", after, "record")
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}; known: {', '.join(INJECT)}")


INJECT = ("none", "source", "preprocess", "engine", "decide", "output", "record")


def _watch_view(report):
    """Ask /healthz just before the live view closes (the run's last word to a health check)."""
    from edge.view.server import LiveView
    close = LiveView.close

    def closing(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                report["healthz"] = [r.status, r.read().decode().strip()]
        except urllib.error.HTTPError as e:
            report["healthz"] = [e.code, e.read().decode().strip()]
        except OSError as e:
            report["healthz"] = [None, str(e)]
        return close(self)

    LiveView.close = closing


def _line_report():
    from edge.outputs.memory import LINES
    out = {}
    for name, line in LINES.items():
        with line.lock:
            statuses = list(line.statuses)
            beats = [t for t, _ in line.heartbeats]
            verdicts = list(line.verdicts)
        t_fault = next((s["t"] for s in statuses if s["fault"]), None)
        out[name] = {
            "fault_kind": next((s["fault_kind"] for s in statuses if s["fault"]), None),
            "heartbeats": len(beats),
            "heartbeats_after_fault": None if t_fault is None else sum(t > t_fault for t in beats),
            "reject_all": any(s["reject_all"] for s in statuses),
            "stop_line": any(s["stop_line"] for s in statuses),
            "failsafe_rejects": sum(v["code"] == 3 for v in verdicts),
            "verdicts": len(verdicts),
        }
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 4 or argv[3] != "--":
        raise SystemExit(__doc__)
    report_path, fault, after, run_args = argv[0], argv[1], int(argv[2]), argv[4:]
    report = {"fault": fault, "after": after}
    _inject(fault, after)
    _watch_view(report)
    from edge.cli import main as edge_main
    t0 = time.monotonic()
    rc = edge_main(["run", *run_args])
    report.update(rc=rc, wall_s=round(time.monotonic() - t0, 2), line=_line_report())
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
