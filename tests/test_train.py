"""Issue 2: train on good images, export one graph, evaluate it (on real PIPED images)."""

import json
import os

import numpy as np
import pytest
import torch
import yaml

from edge.bundle.manifest import Bundle
from edge.engines.onnxrt import OrtEngine
from edge.runtime.preprocess import Preprocessor
from tests.helpers import PIPED, edge
from train.data import MvtecSet, load_test
from train.export import torch_infer
from train.settings import TrainSettings
from train.trainer import train_bundle

CAT = os.path.join(PIPED, "PA_BDP01_TL")
SIZE = (128, 128)

# The exported graph agrees with PyTorch within these (relative to the largest value).
MAP_RTOL = 1e-3
SCORE_RTOL = 1e-3


@pytest.fixture(scope="module", params=["patchcore", "padim"])
def trained(request, tmp_path_factory):
    out = str(tmp_path_factory.mktemp(request.param) / "bundle")
    graph = train_bundle(TrainSettings(request.param, CAT, out, SIZE, evaluate=True))
    return request.param, out, graph


def test_exported_graph_agrees_with_pytorch_on_real_images(trained):
    _, out, graph = trained
    bundle = Bundle(out)
    images, _ = load_test(MvtecSet(CAT).test(), Preprocessor.for_bundle(bundle))
    ref_maps, ref_scores = torch_infer(graph, images)
    maps, scores = OrtEngine(bundle.graph_path()).infer(images)
    assert maps.shape == (len(images), *SIZE) and maps.dtype == np.float32 and scores.shape == (len(images),)
    assert np.abs(maps - ref_maps).max() <= MAP_RTOL * np.abs(ref_maps).max()
    assert np.abs(scores - ref_scores).max() <= SCORE_RTOL * np.abs(ref_scores).max()


def test_manifest_says_what_the_line_needs(trained):
    method, out, _ = trained
    m = Bundle(out).manifest
    assert m["method"] == method and m["backbone"] == "efficientnet-lite0"
    assert m["input"] == {**m["input"], "height": 128, "width": 128, "colour_order": "RGB", "dtype": "uint8"}
    assert "held-out good" in m["threshold"]["method"] and m["threshold"]["source"].startswith("train/good")
    assert m["threshold"]["value"] > m["score_stats"]["holdout_good"]["max"] or m["threshold"]["outliers"]
    assert len(m["training"]["fingerprint"]["sha256"]) == 64
    corr = m["threshold"].get("fit_size_correction")              # PaDiM's Gaussians: fewer images, higher scores
    assert (corr is not None and 0.5 <= corr["factor"] < 1) if method == "padim" else corr is None, corr
    assert set(m["files"]) == {"model.onnx", "holdout.json", "reference.npz"}
    ev = m["evaluation"]["fp32"]
    assert ev["image_auroc"] > 0.9 and ev["pixel_auroc"] > 0.9, ev


def test_evaluate_and_predict_commands(trained, tmp_path):
    _, out, _ = trained
    res = edge("evaluate", out, "--data", CAT, "--json", tmp_path / "e.json", "--plots", tmp_path / "plots")
    assert res.returncode == 0, res.stderr
    figures = json.loads((tmp_path / "e.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "images_per_second", "confusion"):
        assert key in figures
    assert 0.5 < figures["aupro"] <= 1 and figures["images_per_second"] > 0
    assert sum(figures["confusion"].values()) == 64
    assert (tmp_path / "plots" / "roc.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "overlays.png").stat().st_size > 1000
    res = edge("predict", out, os.path.join(CAT, "test", "impurity"), "--out", tmp_path / "pred")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if "\t" in line]
    assert len(lines) == 48 and sum(line.endswith("REJECT") for line in lines) >= 40
    assert len(os.listdir(tmp_path / "pred")) == 48


def test_training_is_reproducible(trained, tmp_path):
    method, out, _ = trained
    again = str(tmp_path / "again")
    train_bundle(TrainSettings(method, CAT, again, SIZE, evaluate=False))
    a, b = Bundle(out).manifest, Bundle(again).manifest
    assert a["threshold"]["value"] == pytest.approx(b["threshold"]["value"], rel=1e-5)
    assert a["training"]["method_params"] == b["training"]["method_params"]


def test_validation_folder_sets_the_threshold(tmp_path):
    import shutil
    root = tmp_path / "set"
    shutil.copytree(CAT, root)
    os.makedirs(root / "validation" / "good")
    for name in sorted(os.listdir(root / "train" / "good"))[:4]:
        shutil.move(str(root / "train" / "good" / name), root / "validation" / "good" / name)
    train_bundle(TrainSettings("padim", str(root), str(tmp_path / "b"), (64, 64), evaluate=False))
    m = Bundle(str(tmp_path / "b")).manifest
    assert m["threshold"]["source"] == "validation/good"
    assert m["training"]["fit_images"] == 28 and m["training"]["holdout_images"] == 4


def test_any_size_grayscale_and_mixed_formats(tmp_path):
    """Images of different sizes and aspect ratios, grayscale JPG and colour BMP, HxW input."""
    import cv2
    root = tmp_path / "mixed"
    src = MvtecSet(CAT)
    for i, p in enumerate(src.train_good()[:12]):
        img = cv2.imread(p)
        img = cv2.resize(img, (160 + 8 * i, 120))
        folder = root / "train" / "good"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        else:
            cv2.imwrite(str(folder / f"{i:03d}.bmp"), img)
    for kind in ("good", "impurity"):
        for p in sorted(os.listdir(os.path.join(CAT, "test", kind)))[:4]:
            (root / "test" / kind).mkdir(parents=True, exist_ok=True)
            img = cv2.resize(cv2.imread(os.path.join(CAT, "test", kind, p)), (200, 150))
            cv2.imwrite(str(root / "test" / kind / p), img)
            if kind == "impurity":
                mask = cv2.imread(os.path.join(CAT, "ground_truth", kind, p[:-4] + "_mask.png"), 0)
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "ground_truth" / kind / (p[:-4] + "_mask.png")),
                            cv2.resize(mask, (200, 150), interpolation=cv2.INTER_NEAREST))
    res = edge("train", "--method", "patchcore", "--data", root, "--out", tmp_path / "b", "--size", "96x128")
    assert res.returncode == 0, res.stderr
    b = Bundle(str(tmp_path / "b"))
    assert b.input_hw == (96, 128)
    assert not np.isnan(b.manifest["evaluation"]["fp32"]["pixel_auroc"])


def test_manifest_yaml_is_plain(trained):
    _, out, _ = trained
    with open(os.path.join(out, "manifest.yaml")) as f:
        assert isinstance(yaml.safe_load(f), dict)
