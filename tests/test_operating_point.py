"""The operating point (threshold for a target false-reject rate from held-out folds, outliers
named, `edge threshold`, recall and false-reject rate in `edge evaluate`) and the reference
frames a bundle proves itself with (`edge install --activate`, `edge run`)."""

import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest

from edge.bundle.manifest import Bundle
from edge.common import oppoint as op
from edge.common.errors import EdgeError
from tests.helpers import PIPED, edge

CAT = os.path.join(PIPED, "PA_BDP01_TL")
SIZE = (64, 64)


# ---- the statistics, without a model -------------------------------------------------------
def test_upper_bound_is_clopper_pearson():
    for n in (5, 32, 400):                     # none seen: 1 - alpha^(1/n) in closed form
        assert op.upper_bound(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-6)
    assert op.upper_bound(1, 100) == pytest.approx(0.0466, abs=2e-4)      # textbook value
    assert op.upper_bound(5, 5) == 1.0
    assert op.images_needed(0.005) == 598 and op.images_needed(0.01) == 299
    assert op.upper_bound(0, op.images_needed(0.01)) <= 0.01 < op.upper_bound(0, op.images_needed(0.01) - 1)


def test_folds_are_contiguous_and_guarded():
    folds = op.contiguous_folds(32, 5)
    assert folds[0][0] == 0 and folds[-1][1] == 32 and len(folds) == 5
    assert all(a[1] == b[0] for a, b in zip(folds, folds[1:]))
    fit = op.fit_indices(32, 12, 19, guard=2)
    assert not set(range(10, 21)) & set(fit) and len(fit) == 32 - 11
    with pytest.raises(EdgeError, match="at least 4"):
        op.contiguous_folds(3)
    # auto: 5 folds on a small set, more on a large one so that a fold stays a short run.
    assert len(op.contiguous_folds(32)) == op.DEFAULT_FOLDS
    big = op.contiguous_folds(400)
    assert len(big) == 400 // op.FOLD_IMAGES and max(b - a for a, b in big) <= op.FOLD_IMAGES
    assert len(op.contiguous_folds(400, 5)) == 5 and op.fold_count(401) == 41
    # A small set: the guard shrinks so that every fold's model still sees half the others.
    for a, b in op.contiguous_folds(6, 5):
        assert len(op.fit_indices(6, a, b)) >= 2 and not set(range(a, b)) & set(op.fit_indices(6, a, b))


def test_threshold_for_a_rate_outliers_named_and_shortfall_said():
    rng = np.random.default_rng(1)
    scores = np.exp(rng.normal(3.0, 0.1, 40))
    names = [f"train/good/{i:03d}.png" for i in range(40)]
    clean = op.operating_point(names, scores, 0.01)
    # 40 scores cannot resolve 1 %: the value is above every held-out score, and the bound says so.
    assert clean["value"] > scores.max() and clean["implied_false_reject"]["rejected"] == 0
    assert clean["implied_false_reject"]["upper_95"] == pytest.approx(op.upper_bound(0, 40), abs=1e-6)
    short = op.shortfall(clean)
    assert "40 held-out good images cannot show" in short and "299 good images" in short
    # A plain grey frame among them: named, set aside, the threshold barely moves.
    odd = scores.copy()
    odd[7] = scores.max() * 2
    with_odd = op.operating_point(names, odd, 0.01)
    assert [o["name"] for o in with_odd["outliers"]] == ["train/good/007.png"]
    assert with_odd["value"] < 1.1 * clean["value"]
    assert "train/good/007.png" in op.describe(with_odd)
    # Many scores: the empirical quantile, and the implied rate is about the target.
    many = np.exp(rng.normal(3.0, 0.1, 2000))
    e = op.operating_point([str(i) for i in range(2000)], many, 0.05)
    assert "empirical" in e["rule"] and abs(e["implied_false_reject"]["rate"] - 0.05) < 0.005
    assert op.shortfall(e) is None
    with pytest.raises(EdgeError, match="--false-reject"):
        op.operating_point(names, scores, 0.7)


# ---- on real images --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def odd_set(tmp_path_factory):
    """PIPED with a plain grey frame among the good training images."""
    root = tmp_path_factory.mktemp("odd") / "set"
    shutil.copytree(CAT, root)
    good = root / "train" / "good"
    shape = cv2.imread(str(next(good.iterdir()))).shape
    cv2.imwrite(str(good / "013.png"), np.full(shape, 128, np.uint8))
    return str(root)


@pytest.fixture(scope="module")
def bundle(odd_set, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("b") / "bundle")
    res = edge("train", "--method", "padim", "--data", odd_set, "--out", out, "--size", str(SIZE[0]), "--no-eval")
    assert res.returncode == 0, res.stderr
    return out


def test_training_names_the_outlier_and_records_the_operating_point(bundle):
    m = Bundle(bundle).manifest
    thr = m["threshold"]
    assert [o["name"] for o in thr["outliers"]] == ["train/good/013.png"]
    assert thr["false_reject_target"] == op.DEFAULT_FALSE_REJECT and thr["holdout_images"] == 32
    assert thr["source"].startswith("train/good in 5 contiguous folds")
    imp = thr["implied_false_reject"]
    assert imp["of"] == 31 and imp["upper_95"] > op.DEFAULT_FALSE_REJECT
    with open(os.path.join(bundle, "holdout.json")) as f:
        held = json.load(f)["images"]
    assert len(held) == 32 and {h["fold"] for h in held} == set(range(5))
    odd = next(h for h in held if h["name"] == "train/good/013.png")
    assert thr["value"] < odd["score"]                  # the grey frame did not move the threshold up
    assert all(h["score"] < thr["value"] for h in held if h["name"] != "train/good/013.png")


def test_training_output_warns(odd_set, tmp_path):
    res = edge("train", "--method", "padim", "--data", odd_set, "--out", tmp_path / "b", "--size", "64",
               "--no-eval", "--false-reject", "0.005")
    assert res.returncode == 0, res.stderr
    assert "train/good/013.png is an outlier" in res.stderr
    assert "cannot show a false-reject rate of 0.50%" in res.stderr and "598 good images" in res.stderr


def test_edge_threshold_moves_the_operating_point(bundle, tmp_path):
    path = str(tmp_path / "b")
    shutil.copytree(bundle, path)
    before = Bundle(path).threshold
    res = edge("threshold", path, "--false-reject", "0.2")
    assert res.returncode == 0, res.stderr
    b = Bundle(path)                                   # still verifies
    assert b.threshold < before and b.manifest["threshold"]["false_reject_target"] == 0.2
    assert b.manifest["threshold"]["history"][-1]["value"] == before
    res = edge("threshold", path, "--value", "123.5")
    assert res.returncode == 0, res.stderr
    b = Bundle(path)
    assert b.threshold == 123.5 and len(b.manifest["threshold"]["history"]) == 2
    assert b.manifest["threshold"]["outliers"][0]["name"] == "train/good/013.png"
    res = edge("threshold", path, "--false-reject", "nan")
    assert res.returncode == 2 and "--false-reject" in res.stderr
    assert Bundle(path).threshold == 123.5


def test_evaluate_prints_recall_and_false_reject(bundle, tmp_path):
    res = edge("evaluate", bundle, "--data", CAT, "--json", tmp_path / "e.json")
    assert res.returncode == 0, res.stderr
    fig = json.loads((tmp_path / "e.json").read_text())
    c = fig["confusion"]
    assert fig["recall"] == pytest.approx(c["tp"] / (c["tp"] + c["fn"]))
    assert fig["false_reject"] == pytest.approx(c["fp"] / (c["fp"] + c["tn"]))
    assert "recall" in res.stderr and "false-reject" in res.stderr and "image AUROC" in res.stderr


# ---- reference frames ----------------------------------------------------------------------
def test_reference_frames_stored_with_scores(bundle):
    b = Bundle(bundle)
    ref = b.manifest["reference"]
    labels = [f["label"] for f in ref["frames"]]
    assert labels.count("good") >= 1 and labels.count("defective") >= 1
    assert "train/good/013.png" not in [f["name"] for f in ref["frames"]]
    assert len(ref["scores"]["model.onnx"]["scores"]) == len(labels)
    with np.load(os.path.join(bundle, ref["file"])) as z:
        assert z["frames"].shape == (len(labels), *SIZE, 3) and z["frames"].dtype == np.uint8


def _tampered(bundle, tmp_path):
    """A copy whose recorded workstation score of the first frame is off by 50 % of the threshold."""
    path = str(tmp_path / "tampered")
    shutil.copytree(bundle, path)
    b = Bundle(path)
    s = b.manifest["reference"]["scores"]["model.onnx"]["scores"]
    s[0] = s[0] + 0.5 * b.threshold
    b.save()
    return path, b.manifest["reference"]["frames"][0]["name"]


def test_run_faults_and_install_refuses_when_the_box_scores_otherwise(bundle, tmp_path):
    path, frame = _tampered(bundle, tmp_path)
    cfg = tmp_path / "run.yaml"
    for b, name in ((bundle, "ok"), (path, "bad")):
        cfg.write_text(f"bundle: {b}\nsource: {os.path.join(CAT, 'test', 'good')}\nmax_frames: 2\n"
                       f"records: {{db: {tmp_path / (name + '.db')}}}\n")
        res = edge("run", cfg, "--quiet")
        if name == "ok":
            assert res.returncode == 0, res.stderr
            assert "reference frames: 4 agree" in res.stderr
        else:
            assert res.returncode == 2 and "refused to start" in res.stderr, res.stderr
            assert frame in res.stderr and "expected" in res.stderr and "measured" in res.stderr
    root = tmp_path / "root"
    assert edge("install", bundle, "--root", root, "--activate").returncode == 0
    current = os.path.realpath(root / "current")
    res = edge("install", path, "--root", root, "--activate", "--engine", "onnxruntime")
    assert res.returncode == 2 and "activation refused" in res.stderr and frame in res.stderr
    assert os.path.realpath(root / "current") == current


def test_quantize_adds_the_variants_reference_scores(bundle, tmp_path):
    path = str(tmp_path / "q")
    shutil.copytree(bundle, path)
    res = edge("quantize", path, "--precision", "fp16", "--no-trt-check")
    assert res.returncode == 0, res.stderr
    b = Bundle(path)
    fp32 = np.array(b.manifest["reference"]["scores"]["model.onnx"]["scores"])
    fp16 = np.array(b.manifest["reference"]["scores"]["model.fp16.onnx"]["scores"])
    assert np.abs(fp16 - fp32).max() <= 0.05 * b.threshold
    thr = b.manifest["graphs"]["fp16"]["threshold"]
    assert thr["value"] == pytest.approx(b.threshold + thr["shift"]) and math.isfinite(thr["shift"])
    # `edge threshold` moves the variant's threshold with the bundle's.
    assert edge("threshold", path, "--value", "100").returncode == 0
    assert Bundle(path).threshold_for("fp16") == pytest.approx(100 + thr["shift"])


def test_held_out_blocks_are_short_runs_spread_over_the_order():
    from edge.common.oppoint import BLOCK_IMAGES, DEFAULT_GUARD, held_out_blocks
    # A small set (PIPED's 32): one tail block, the gap before it used for neither.
    fit, hold, gap, m = held_out_blocks(32)
    assert (m, hold, gap) == (1, list(range(26, 32)), DEFAULT_GUARD) and fit == list(range(0, 22))
    # A large set ordered by camera position (bsdata's 400): blocks of about BLOCK_IMAGES, spread,
    # the last at the end; no held-out image within the guard of a fitted one.
    fit, hold, gap, m = held_out_blocks(400)
    assert m == 5 and len(hold) == 80 and hold[-1] == 399 and gap == DEFAULT_GUARD
    runs = np.split(np.array(hold), np.where(np.diff(hold) > 1)[0] + 1)
    assert len(runs) == m and all(abs(len(r) - BLOCK_IMAGES) <= 1 for r in runs)
    assert runs[0][-1] < 400 // 4                                 # spread, not all at the tail
    assert not set(fit) & set(hold)
    assert min(abs(f - h) for f in fit for h in hold) > gap
    assert len(fit) == 400 - 80 - gap * (2 * m - 1)
