"""The operating point: a threshold set for a target false-reject rate from good images that
are new to the model, what that rate is worth for the number of images, and the outliers among
them named. numpy and the standard library only: training, `edge quantize` and `edge threshold`
use it, the last two without torch.

Held-out scores come from contiguous folds of the data set's order: each fold is scored by a
model fitted without it and without `guard` images on either side of it, so that no held-out
image has a near-twin (the next frame of the same run) among the images its model was fitted on.
"""

import datetime
import json
import math
import os
import statistics

import numpy as np

from .errors import EdgeError

DEFAULT_FALSE_REJECT = 0.01     # see docs: 1 % is what a few hundred good images can show
DEFAULT_FOLDS = 5               # folds on a small set (auto: more on a large one, see FOLD_IMAGES)
FOLD_IMAGES = 10                # auto: folds no longer than this on a large set (docs/operating-point.md)
DEFAULT_GUARD = 4                # images either side of a fold left out of its model: a few frames of a run
CONFIDENCE = 0.95
OUTLIER_Z = 5.0                 # robust z (median / MAD of log scores) above which a score is an outlier
MAX_OUTLIER_SHARE = 0.05        # at most this share (at least 1) is set aside as outliers
DEFAULT_HOLDOUT_BLOCK = 0.2     # methods that train networks: share of train/good held out in blocks
BLOCK_IMAGES = 16               # ... in blocks of about this many images, spread over the order
RULE = "quantile"
HOLDOUT_FILE = "holdout.json"   # in the bundle: the held-out images' names, folds and scores


def fold_count(n, folds=None):
    """The number of folds for n images: `folds` where given, else (auto) DEFAULT_FOLDS, or more
    on a large set so that no fold is longer than FOLD_IMAGES images."""
    if folds is None:
        return max(DEFAULT_FOLDS, math.ceil(n / FOLD_IMAGES))
    return int(folds)


def contiguous_folds(n, folds=None):
    """[(start, end)] of contiguous blocks covering range(n), sizes differing by one: `folds` of
    them, or fold_count(n) (auto), at most n // 2."""
    if n < 4:
        raise EdgeError(f"train split has {n} images; at least 4 are needed (scored in folds for the threshold)")
    k = max(2, min(fold_count(n, folds), n // 2))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def fit_indices(n, start, end, guard=DEFAULT_GUARD):
    """Indices a fold's model is fitted on: all but [start, end) and `guard` images either side
    (fewer on a small set, so that at least half of the other images remain)."""
    need = max(2, (n - (end - start)) // 2)
    for g in range(int(guard), -1, -1):
        lo, hi = max(0, start - g), min(n, end + g)
        idx = [i for i in range(n) if i < lo or i >= hi]
        if len(idx) >= need:
            return idx
    return idx


FEWER_SHARE = 0.75              # fit-size trend: folds refitted on this share of their images
TREND_FOLDS = 8                 # ... at most this many folds, evenly spaced over the order


def evenly_spaced(n, k):
    """min(k, n) distinct indices of range(n), evenly spaced, the first and the last included."""
    return [int(i) for i in np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))]


def trend_folds(count, most=TREND_FOLDS):
    """Indices of the folds the fit-size trend is measured on: all, or `most` evenly spaced."""
    return evenly_spaced(count, most)


def fewer_fits(fit, share=FEWER_SHARE):
    """`share` of a fold's fit indices, evenly spaced over them (the fit-size trend's second fit)."""
    fit = list(fit)
    return [fit[i] for i in evenly_spaced(len(fit), max(2, int(round(share * len(fit)))))]


def fit_size_correction(scores, fewer_scores, n, fit_sizes, fewer_sizes):
    """The factor that brings fold scores (models fitted on about mean(fit_sizes) images) to
    what a model fitted on all `n` would give: the ratio of the median held-out score with the
    folds' fits to that with `fewer_fits`, per image less, extrapolated geometrically to `n`.
    Within [0.5, 1]: the correction only removes the bias of fitting on fewer images, and never
    more than halves a score. Returns the record kept in the manifest."""
    m1, m2 = float(np.mean(fit_sizes)), float(np.mean(fewer_sizes))
    ratio = float(np.median(scores) / np.median(fewer_scores)) if m1 > m2 else 0.0
    raw = ratio ** ((n - m1) / (m1 - m2)) if ratio > 0 else 1.0
    factor = float(min(1.0, max(0.5, raw)))
    return {"factor": round(factor, 6), "measured": round(float(raw), 6), "images": int(n),
            "fit_images": round(m1, 1), "fewer_images": round(m2, 1),
            "rule": (f"fold scores scaled by {factor:.3f} to a model fitted on all {n} images (median held-out "
                     f"score with {m1:.1f} vs {m2:.1f} fitted images, extrapolated to {n})")}


def held_out_blocks(n, fraction=DEFAULT_HOLDOUT_BLOCK, guard=DEFAULT_GUARD, block=BLOCK_IMAGES):
    """(fit indices, held-out indices, gap, blocks) for a model that cannot be refitted per fold
    (one that trains networks): `fraction` of the data set's order is held out in contiguous
    blocks of about `block` images, spread evenly over the order with the last one at its end (a
    small set: one tail block), and the `gap` images either side of each block (up to `guard`;
    fewer on a small set, so that at least half of the images remain to fit) are used for
    neither, so that no held-out image has a near-twin among the fitted ones. Short blocks
    spread over the order hold out images new to the model without holding out a whole run
    (a camera position, a lot) that the model never sees at all."""
    if n < 4:
        raise EdgeError(f"train split has {n} images; at least 4 are needed (a block is held out for the threshold)")
    k = min(n - 2, max(2, int(round(n * float(fraction)))))
    m = max(1, int(round(k / float(block))))
    sizes = np.diff(np.linspace(0, k, m + 1).round().astype(int))
    # Block j ends at (j + 1) / m of the order: the last one is the tail.
    ends = [int(round(n * (j + 1) / m)) for j in range(m)]
    gap = max(0, min(int(guard), (n - k - max(2, (n - k) // 2)) // (2 * m - 1)))
    hold, unused = [], set()
    for size, end in zip(sizes, ends):
        hold += list(range(end - size, end))
        unused.update(range(max(0, end - size - gap), end - size))
        unused.update(range(end, min(n, end + gap)))
    unused.update(hold)
    fit = [i for i in range(n) if i not in unused]
    return fit, hold, gap, m


# ---- binomial uncertainty ---------------------------------------------------------------
def _binom_cdf(k, n, p):
    """P(X <= k) for X ~ Binomial(n, p)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(0, k + 1)]
    m = max(terms)
    return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms))


def upper_bound(k, n, confidence=CONFIDENCE):
    """One-sided Clopper-Pearson upper bound of a rate seen k times in n trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    lo, hi = k / n, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def images_needed(rate, confidence=CONFIDENCE):
    """Good images, none rejected, needed for the upper bound to reach `rate`."""
    return int(math.ceil(math.log(1.0 - confidence) / math.log1p(-rate)))


# ---- outliers and the threshold -----------------------------------------------------------
def _log(scores):
    s = np.asarray(scores, np.float64)
    return np.log(np.maximum(s, 1e-12 * max(1.0, float(np.abs(s).max()))))


def robust_z(scores):
    """(log score - median) / (1.4826 MAD) of the log scores (scores are positive distances)."""
    ls = _log(scores)
    med = float(np.median(ls))
    mad = 1.4826 * float(np.median(np.abs(ls - med)))
    mad = max(mad, 1e-6)
    return (ls - med) / mad


def find_outliers(names, scores, z_limit=OUTLIER_Z):
    """The few highest scores whose robust z exceeds `z_limit`, largest first, as
    [{name, score, robust_z}]; at most MAX_OUTLIER_SHARE of the images (at least one)."""
    z = robust_z(scores)
    cap = max(1, int(MAX_OUTLIER_SHARE * len(scores)))
    order = [i for i in np.argsort(-z, kind="stable") if z[i] > z_limit][:cap]
    return [{"name": str(names[i]), "score": round(float(scores[i]), 6), "robust_z": round(float(z[i]), 2)}
            for i in order]


def check_rate(rate, flag="--false-reject"):
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise EdgeError(f"{flag} must be a number, got '{rate}'") from None
    if not 0 < rate < 0.5:
        raise EdgeError(f"{flag} {rate:g}: a fraction of good parts, above 0 and below 0.5 (0.01 = 1 %)")
    return rate


def quantile_threshold(scores, rate):
    """The (1 - rate) quantile of `scores`. Where `rate` is below what their count resolves
    (rate < 1 / (n + 1)), extrapolated from a log-normal fit (median and MAD of log scores,
    robust to the few highest), never below the highest score. Returns (value, how)."""
    s = np.sort(np.asarray(scores, np.float64))
    n = s.size
    if rate >= 1.0 / (n + 1):
        # Order statistic with (n + 1) plotting positions: the expected share above is `rate`.
        pos = (1.0 - rate) * (n + 1) - 1
        i = int(math.floor(pos))
        frac = pos - i
        value = s[min(i, n - 1)] + frac * (s[min(i + 1, n - 1)] - s[min(i, n - 1)])
        return float(value), f"empirical {1 - rate:.4g} quantile of {n} scores"
    ls = _log(s)
    med = float(np.median(ls))
    mad = max(1.4826 * float(np.median(np.abs(ls - med))), 1e-6)
    z = statistics.NormalDist().inv_cdf(1.0 - rate)
    above_max = float(np.nextafter(np.float32(s[-1]), np.float32(np.inf)))   # a score >= threshold is rejected
    value = max(above_max, math.exp(med + z * mad))
    return value, (f"{1 - rate:.4g} quantile of a log-normal fitted to {n} scores (median, MAD), "
                   f"above the highest, since {n} scores resolve no rate below 1/{n + 1}")


def operating_point(names, scores, rate=None, source="", value=None, confidence=CONFIDENCE):
    """The manifest's `threshold` entry for held-out good `scores` (named `names`): the value for
    the target false-reject `rate` (or the given `value`), the rule, the outliers set aside, and the
    false-reject rate the held-out images show at that value with its upper bound."""
    scores = np.asarray(scores, np.float64)
    if scores.size < 2:
        raise EdgeError(f"{scores.size} held-out good image(s): at least 2 are needed to set a threshold")
    if not np.isfinite(scores).all():
        bad = [str(n) for n, s in zip(names, scores) if not np.isfinite(s)]
        raise EdgeError(f"held-out scores are not finite for: {', '.join(bad[:5])}")
    outliers = find_outliers(names, scores)
    out_names = {o["name"] for o in outliers}
    keep = np.array([str(n) not in out_names for n in names])
    inliers = scores[keep]
    if value is None:
        rate = check_rate(DEFAULT_FALSE_REJECT if rate is None else rate)
        value, how = quantile_threshold(inliers, rate)
        rule = (f"{RULE}: false-reject target {rate:g}; {how}; outliers (robust z of log score > "
                f"{OUTLIER_Z:g}, at most {MAX_OUTLIER_SHARE:.0%}) set aside and named")
    else:
        rate = None
        rule = f"value {float(value):.6g} set by hand"
    method = (f"{RULE} for a false-reject rate of {rate:g}" if rate is not None else "set by hand")
    entry = {"value": float(value), "rule": rule, "method": f"{method} ({scores.size} held-out good images)",
             "set": now()}
    if rate is not None:
        entry["false_reject_target"] = float(rate)
    entry.update(implied(scores[keep], float(value), confidence, outliers=len(outliers)))
    entry["outliers"] = outliers
    if source:
        entry["source"] = source
    return entry


def implied(inlier_scores, value, confidence=CONFIDENCE, outliers=0):
    """What the held-out images show at `value`: rejects among them, rate and upper bound."""
    s = np.asarray(inlier_scores, np.float64)
    n, k = int(s.size), int((s >= value).sum())
    up = upper_bound(k, n, confidence)
    return {"holdout_images": n + outliers, "holdout_inliers": n,
            "implied_false_reject": {"rejected": k, "of": n, "rate": round(k / n, 6),
                                     f"upper_{round(confidence * 100)}": round(up, 6),
                                     "bound": f"one-sided Clopper-Pearson, {confidence:.0%}"}}


def shortfall(entry):
    """A sentence when the held-out count is too small to show the target rate even with none
    of them rejected, else None (the upper bound itself is always reported)."""
    target = entry.get("false_reject_target")
    imp = entry.get("implied_false_reject") or {}
    up = next((v for k, v in imp.items() if k.startswith("upper_")), None)
    if target is None or up is None or imp["of"] >= images_needed(target):
        return None
    return (f"{imp['of']} held-out good images cannot show a false-reject rate of {target:.2%}: with "
            f"{imp['rejected']} of them rejected, the rate may be up to {up:.2%} ({CONFIDENCE:.0%} confidence); "
            f"about {images_needed(target)} good images, none rejected, would be needed to show {target:.2%}")


def describe(entry):
    """One line for the training output and `edge threshold`."""
    imp = entry["implied_false_reject"]
    up = next(v for k, v in imp.items() if k.startswith("upper_"))
    line = (f"threshold {entry['value']:.6g}: {imp['rejected']} of {imp['of']} held-out good images rejected "
            f"(rate {imp['rate']:.2%}, at most {up:.2%} at {CONFIDENCE:.0%} confidence)")
    if entry.get("fit_size_correction"):
        line += f"; held-out scores x {entry['fit_size_correction']['factor']:.3f} (fit-size correction)"
    if entry.get("outliers"):
        line += "; outliers set aside: " + ", ".join(f"{o['name']} ({o['score']:.4g}, z {o['robust_z']:.1f})"
                                                  for o in entry["outliers"])
    return line


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def read_holdout(bundle_path, entry):
    """(names, scores) of the held-out good images recorded in the bundle (holdout.json)."""
    name = entry.get("holdout_file")
    if not name:
        raise EdgeError("the bundle records no held-out scores (trained before they were kept); "
                        "set the threshold with --value", bundle_path)
    path = os.path.join(bundle_path, name)
    try:
        with open(path) as f:
            images = json.load(f)["images"]
        return [str(i["name"]) for i in images], np.array([float(i["score"]) for i in images])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgeError(f"held-out scores unreadable: {exc}", path) from None


def carried_over(entry, shift, how):
    """A precision variant's threshold: the bundle's operating point moved by `shift`, the
    typical score difference of the variant from FP32 on the same good images (`how`)."""
    return {"value": float(entry["value"]) + float(shift), "shift": round(float(shift), 6),
            "rule": f"the bundle's threshold ({entry['value']:.6g}) plus this graph's median score difference "
                    f"from FP32 ({float(shift):+.4g}) on {how}",
            "source": entry.get("source", "held-out good images"), "set": now()}


def replace(entry, new, why):
    """The new `threshold` entry, the old one kept (without its own history) in `history`."""
    old = {k: entry[k] for k in ("value", "rule", "set", "false_reject_target", "implied_false_reject") if k in entry}
    old["replaced"] = now()
    old["replaced_because"] = why
    for key in ("source", "holdout_file"):
        if key in entry and key not in new:
            new[key] = entry[key]
    new["history"] = list(entry.get("history") or []) + [old]
    return new
