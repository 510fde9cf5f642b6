"""The field's metrics, in numpy (no torch): image and pixel AUROC, AUPRO, F1-max, confusion counts.
Used by evaluation (train/evaluate.py), the precision checks and `edge bench`."""

import numpy as np


def trapezoid(y, x):
    """Area under y(x) by the trapezoid rule (np.trapezoid is numpy 2 only, np.trapz numpy 1 only)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2.0) if x.size > 1 else 0.0


def _ranked(labels, scores):
    """Cumulative true and false positives at each distinct score, highest score first."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    y = labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return tps, fps, s[last]


def roc_curve(labels, scores):
    tps, fps, thr = _ranked(labels, scores)
    if tps[-1] == 0 or fps[-1] == 0:
        return None
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thr]


def auroc(labels, scores):
    curve = roc_curve(labels, scores)
    if curve is None:
        return float("nan")
    fpr, tpr, _ = curve
    return trapezoid(tpr, fpr)


def f1_max(labels, scores):
    """Best F1 over all thresholds, and the threshold that gives it."""
    tps, fps, thr = _ranked(labels, scores)
    if tps[-1] == 0:
        return float("nan"), float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])


def aupro(masks, maps, fpr_limit=0.3):
    """Area under the per-region-overlap curve up to `fpr_limit`, normalised to 0..1.

    Each connected defect region weighs the same whatever its size; the false-positive rate
    counts every defect-free pixel of every image. Computed exactly from one sort of all pixels."""
    import cv2
    masks = np.asarray(masks, bool)
    w_pro = np.zeros(masks.shape, np.float64)
    regions = 0
    for i, m in enumerate(masks):
        if not m.any():
            continue
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        areas = np.bincount(lab.ravel(), minlength=n).astype(np.float64)
        inv = np.where(areas > 0, 1.0 / np.maximum(areas, 1), 0.0)
        inv[0] = 0.0
        w_pro[i] = inv[lab]
        regions += n - 1
    if regions == 0:
        return float("nan")
    good = ~masks
    order = np.argsort(-np.asarray(maps, np.float64).ravel(), kind="stable")
    s = np.asarray(maps).ravel()[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    pro = np.r_[0.0, np.cumsum(w_pro.ravel()[order])[last] / regions]
    fpr = np.r_[0.0, np.cumsum(good.ravel()[order])[last] / good.sum()]
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:
        j = int(np.searchsorted(fpr, fpr_limit))
        t = (fpr_limit - fpr[j - 1]) / max(fpr[j] - fpr[j - 1], 1e-12)
        x = np.r_[x, fpr_limit]
        y = np.r_[y, pro[j - 1] + t * (pro[j] - pro[j - 1])]
    return trapezoid(y, x) / fpr_limit


def confusion(labels, scores, threshold):
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    return {"tp": int((pred & labels).sum()), "fp": int((pred & ~labels).sum()),
            "tn": int((~pred & ~labels).sum()), "fn": int((~pred & labels).sum())}
