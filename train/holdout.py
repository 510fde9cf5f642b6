"""The held-out good images and the threshold set on them (no torch: `edge quantize` uses these)."""

import numpy as np

from edge.common.errors import EdgeError


def split_holdout(paths, fraction):
    """Every k-th good image is held out of training to set the threshold (deterministic)."""
    n = len(paths)
    if n < 4:
        raise EdgeError(f"train split has {n} images; at least 4 are needed (some are held out for the threshold)")
    k = min(n - 2, max(2, int(round(n * fraction))))
    held = set(np.linspace(0, n - 1, k).round().astype(int).tolist())
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def score_stats(scores):
    s = np.asarray(scores, np.float64)
    q = np.percentile(s, [50, 95, 99])
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2])}


def choose_threshold(scores, sigmas=3.0):
    st = score_stats(scores)
    value = max(st["max"], st["mean"] + sigmas * st["std"])
    return {"value": float(value), "method": f"max(max, mean + {sigmas:g} std) of {st['n']} held-out good images"}
