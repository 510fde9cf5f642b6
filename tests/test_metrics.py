"""The metrics against values worked out by hand."""

import numpy as np
import pytest

from edge.common import metrics


def test_auroc_counts_pairs_and_ties():
    y = np.array([0, 0, 1, 1])
    assert metrics.auroc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auroc(y, [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.auroc(y, [0.0, 0.1, 0.9, 1.0]) == 1.0
    assert np.isnan(metrics.auroc([1, 1], [0.1, 0.2]))


def test_f1_max_and_confusion():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.5, 0.7, 0.9])
    f1, thr = metrics.f1_max(y, s)
    assert f1 == pytest.approx(2 * 0.75 * 1 / 1.75) and thr == pytest.approx(0.5)
    assert metrics.confusion(y, s, 0.65) == {"tp": 2, "fp": 0, "tn": 2, "fn": 1}


def test_aupro_weighs_regions_equally():
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:4, 2:4] = True          # a small region, found
    masks[1, 5:15, 5:15] = True        # a large region, missed
    maps = np.zeros((2, 20, 20))
    maps[0, 2:4, 2:4] = 1.0
    # One region found at FPR 0 (PRO 0.5); all other pixels tie at 0, so the curve runs
    # straight to (1, 1): PRO 0.65 at FPR 0.3, area 0.3 * (0.5 + 0.65) / 2, normalised: 0.575.
    assert metrics.aupro(masks, maps, 0.3) == pytest.approx(0.575)
    maps[1, 5:15, 5:15] = 0.5
    assert metrics.aupro(masks, maps, 0.3) == pytest.approx(1.0)
    # A pixel AUROC counts pixels, so the large region dominates it instead.
    maps[1, 5:15, 5:15] = 0.0
    assert metrics.auroc(masks, maps) < 0.6
