"""scripts/defaults_study.py: the rule that takes a default, and the data view that spares the
threshold's fold scoring (no training here)."""

import os

from scripts import defaults_study as ds
from train.data import MvtecSet

REF = {"score": "top:0.04", "pool": 0}


def fill(results, v, piped, bsdata, aupro=(0.8, 0.7)):
    for c in ds.PIPED:
        results[ds.key_of(c, v)] = {"image_auroc": piped, "aupro": aupro[0]}
    results[ds.key_of("bsdata", v)] = {"image_auroc": bsdata, "aupro": aupro[1]}


def grid():
    return ds.variants(["patchcore"], ["max", "top:0.04"], [0, 1])


def by(score, pool):
    return {"method": "patchcore", "score": score, "pool": pool, "size": "256"}


def test_a_variant_that_helps_one_set_and_hurts_the_other_beyond_noise_is_not_taken():
    results = {}
    fill(results, by("top:0.04", 0), 0.990, 0.950)
    fill(results, by("max", 0), 0.970, 0.990)          # +0.04 on bsdata, -0.02 on PIPED
    fill(results, by("max", 1), 0.9885, 0.9540)        # within noise on both: helps neither
    fill(results, by("top:0.04", 1), 0.990, 0.970, aupro=(0.7, 0.7))   # AUPRO drops 0.1 on PIPED
    chosen, why = ds.choose(results, grid(), REF, 0.005)["patchcore"]
    assert chosen == by("top:0.04", 0) and "reference stays" in why


def test_a_variant_that_helps_one_set_and_holds_the_other_is_taken():
    results = {}
    fill(results, by("top:0.04", 0), 0.990, 0.950)
    fill(results, by("max", 0), 0.988, 0.970)          # -0.002 (noise) and +0.02
    fill(results, by("max", 1), 0.970, 0.990)
    fill(results, by("top:0.04", 1), 0.990, 0.950)
    chosen, why = ds.choose(results, grid(), REF, 0.005)["patchcore"]
    assert chosen == by("max", 0) and "bsdata +0.020" in why


def test_an_incomplete_grid_chooses_nothing():
    results = {}
    fill(results, by("top:0.04", 0), 0.990, 0.950)
    del results[ds.key_of("bsdata", by("top:0.04", 0))]
    assert ds.choose(results, grid(), REF, 0.005) == {}


def test_the_view_holds_the_test_good_images_out_and_trains_on_all_of_train_good(tmp_path):
    view = ds.view_of("PA_BDP01_TL", str(tmp_path))
    real = MvtecSet(ds.set_path("PA_BDP01_TL"))
    v = MvtecSet(view)
    assert [os.path.basename(p) for p in v.train_good()] == [os.path.basename(p) for p in real.train_good()]
    assert [os.path.basename(p) for p in v.validation_good()] == \
        [os.path.basename(s.path) for s in real.test() if s.label == 0]
    assert [(s.defect_type, s.mask_path is not None) for s in v.test()] == \
        [(s.defect_type, s.mask_path is not None) for s in real.test()]
    assert ds.view_of("PA_BDP01_TL", str(tmp_path)) == view       # a second call reuses it
