"""/metrics: the run's figures in the Prometheus text exposition format (version 0.0.4).

Counters come from the published status (edge.common.status.RunStatus), so the page, the
telemetry and Prometheus agree; latency and engine time are histograms observed per decision
(a bisect and two increments under a lock). No client library is needed on the line box; the
tests read the output with prometheus_client's own parser.

    edge_frames_total, edge_rejects_total, edge_drops_total, edge_late_total, edge_faults_total,
    edge_outages_total                                  counters
    edge_latency_seconds, edge_engine_seconds           histograms
    edge_fps, edge_reject_rate, edge_up, edge_part_ok{part}   gauges
    edge_info{bundle_id, method, engine, precision, version}  info (value 1)
With several cameras (status version 2), per camera and for the parts seen by several:
    edge_camera_frames_total{camera}, edge_camera_rejects_total{camera}, edge_camera_drops_total{camera},
    edge_camera_outages_total{camera}                   counters
    edge_camera_fps{camera}, edge_camera_source_ok{camera}    gauges (source_ok as edge_part_ok)
    edge_parts_total, edge_parts_rejects_total, edge_parts_failsafe_total     counters
"""

import bisect
import threading

BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

CAMERA_COUNTERS = (("frames", "Frames decided, per camera."), ("rejects", "Frames rejected, per camera."),
                   ("drops", "Frames dropped before a decision, per camera."), ("outages", "Camera outages, per camera."))
COUNTERS = (("frames", "Frames decided."), ("rejects", "Frames rejected."),
            ("drops", "Frames dropped before a decision."), ("late", "Decisions later than the deadline."),
            ("faults", "Stage failures and line output faults."), ("outages", "Camera outages."))


class Histogram:
    def __init__(self, buckets=BUCKETS_S):
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v):
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.n += 1

    def lines(self, name, help_text):
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        acc = 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            out.append(f'{name}_bucket{{le="{b:g}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {self.sum!r}")
        out.append(f"{name}_count {self.n}")
        return out


def _esc(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _ok(ok):
    return 1 if ok else -1 if ok is None else 0


def _cameras(status):
    out = []
    cams = list(status.cameras or [])
    if cams:
        for key, text in CAMERA_COUNTERS:
            out += [f"# HELP edge_camera_{key}_total {text}", f"# TYPE edge_camera_{key}_total counter"]
            out += [f'edge_camera_{key}_total{{camera="{_esc(c.id)}"}} {int(getattr(c, key))}' for c in cams]
        out += ["# HELP edge_camera_fps Decisions per second, recent, per camera.", "# TYPE edge_camera_fps gauge"]
        out += [f'edge_camera_fps{{camera="{_esc(c.id)}"}} {float(c.fps)!r}' for c in cams]
        out += ["# HELP edge_camera_source_ok 1 when the camera streams, 0 when lost, -1 when absent.",
                "# TYPE edge_camera_source_ok gauge"]
        out += [f'edge_camera_source_ok{{camera="{_esc(c.id)}"}} {_ok(c.source.ok)}' for c in cams]
    p = status.parts
    if p is not None:
        for key, value, text in (("parts", p.parts, "Parts decided from several views."),
                                 ("parts_rejects", p.rejects, "Parts rejected."),
                                 ("parts_failsafe", p.failsafe, "Parts given the fail-safe verdict (a view missed).")):
            out += [f"# HELP edge_{key}_total {text}", f"# TYPE edge_{key}_total counter", f"edge_{key}_total {int(value)}"]
    return out


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.latency = Histogram()
        self.engine = Histogram()

    def observe(self, latency_s, engine_s):
        with self._lock:
            self.latency.observe(latency_s)
            if engine_s is not None:
                self.engine.observe(engine_s)

    def render(self, status, healthy):
        """The exposition text for a RunStatus (None before the first) and the health flag."""
        out = []
        if status is not None:
            for key, text in COUNTERS:
                out += [f"# HELP edge_{key}_total {text}", f"# TYPE edge_{key}_total counter",
                        f"edge_{key}_total {int(getattr(status, key))}"]
            for key, text in (("fps", "Decisions per second, recent."), ("reject_rate", "Rejects per frame.")):
                out += [f"# HELP edge_{key} {text}", f"# TYPE edge_{key} gauge", f"edge_{key} {float(getattr(status, key))!r}"]
            out += ["# HELP edge_part_ok 1 when the part works, 0 when faulted, -1 when absent.",
                    "# TYPE edge_part_ok gauge"]
            for part in ("source", "engine", "line"):
                ok = getattr(status, part).ok
                out.append(f'edge_part_ok{{part="{part}"}} {1 if ok else -1 if ok is None else 0}')
            ident = status.identity or {}
            labels = ",".join(f'{k}="{_esc(ident.get(k, ""))}"' for k in ("bundle_id", "method", "engine",
                                                                             "precision", "version"))
            out += _cameras(status)
            out += ["# HELP edge_info What the line box runs.", "# TYPE edge_info gauge", f"edge_info{{{labels}}} 1"]
        out += ["# HELP edge_up 1 when the run is healthy (as /healthz).", "# TYPE edge_up gauge",
                f"edge_up {1 if healthy else 0}"]
        with self._lock:
            out += self.latency.lines("edge_latency_seconds", "Capture to decision.")
            out += self.engine.lines("edge_engine_seconds", "Engine time per frame.")
        return ("\n".join(out) + "\n").encode("utf-8")
