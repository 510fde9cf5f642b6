"""The training loop shared by every method: resume after an interruption gives the same
training as no interruption; the score and size choices are parsed, applied and recorded."""

import os

import cv2
import numpy as np
import pytest

from edge.bundle.manifest import Bundle
from edge.common.errors import EdgeError
from tests.helpers import PIPED
from train.data import auto_size
from train.graph import parse_score
from train.settings import TrainSettings
from train.trainer import train_bundle

CAT = os.path.join(PIPED, "PA_BDP01_TL")


def test_score_choices():
    assert parse_score("max") == 0.0 and parse_score("top:0.04") == 0.04 and parse_score("TOP:1") == 1.0
    for bad in ("top:0", "top:1.5", "mean", "top:x"):
        with pytest.raises(ValueError):
            parse_score(bad)
    with pytest.raises(EdgeError, match="training.score"):
        TrainSettings("padim", CAT, "/tmp/x", score="top:2")
    with pytest.raises(EdgeError, match="training.device"):
        TrainSettings("padim", CAT, "/tmp/x", device="tpu")


def test_auto_size_keeps_the_aspect_ratio(tmp_path):
    folder = tmp_path / "set" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((120 + (i == 0) * 40, 160, 3), 128, np.uint8))
    assert auto_size(str(tmp_path / "set"), 256) == (192, 256)           # 4:3 frames (the median)
    assert auto_size(str(tmp_path / "set"), 256, roi=(0, 0, 50, 100)) == (256, 128)
    assert auto_size(CAT, 128) == (128, 128)


def test_resume_after_interruption_gives_the_same_training(tmp_path, monkeypatch):
    from train.methods.stpm import STPM
    settings = dict(size=(64, 64), epochs=2, evaluate=False, device="cpu", batch_size=8)
    train_bundle(TrainSettings("stpm", CAT, str(tmp_path / "straight"), **settings))
    calls = {"n": 0}
    step = STPM.training_step

    def interrupted(self, x):
        calls["n"] += 1
        if calls["n"] == 8:                     # during the second epoch (4 steps an epoch)
            raise KeyboardInterrupt
        return step(self, x)
    monkeypatch.setattr(STPM, "training_step", interrupted)
    out = str(tmp_path / "resumed")
    with pytest.raises(EdgeError, match="run the same command again to resume"):
        train_bundle(TrainSettings("stpm", CAT, out, **settings))
    assert os.path.isfile(out + ".train-state/last.pt") and not os.path.exists(out)
    monkeypatch.setattr(STPM, "training_step", step)
    train_bundle(TrainSettings("stpm", CAT, out, **settings))
    a, b = Bundle(str(tmp_path / "straight")).manifest, Bundle(out).manifest
    np.testing.assert_allclose(b["training"]["loss_history"], a["training"]["loss_history"], rtol=1e-5)
    assert b["threshold"]["value"] == pytest.approx(a["threshold"]["value"], rel=1e-4)
    assert not os.path.exists(out + ".train-state")
    assert a["training"]["score"] == "max" and "maximum" in a["outputs"]["score"]


def test_cpu_epochs_are_capped_in_steps_as_a_set_grows():
    from train.loop import CPU_REFERENCE_IMAGES, default_epochs
    from train.methods.stpm import STPM
    e_cpu, e_cuda = STPM.epochs
    # A small set (PIPED's 22 fitted images at batch 8): the method's CPU epochs, unchanged.
    assert default_epochs(STPM, 22, 8, "cpu") == (e_cpu, f"the method's CPU default ({e_cpu})")
    # 316 images: 40 steps an epoch; no more steps than the CPU epochs take on 24 images.
    epochs, rule = default_epochs(STPM, 316, 8, "cpu")
    budget = e_cpu * -(-CPU_REFERENCE_IMAGES // 8)          # STPM has no budget of its own
    assert STPM.cpu_steps is None and epochs == budget // 40 and "capped" in rule
    from train.methods.cflow import CFlow
    assert default_epochs(CFlow, 316, 8, "cpu")[0] == min(CFlow.epochs[0], CFlow.cpu_steps // 40)
    assert default_epochs(STPM, 100000, 8, "cpu")[0] == 1
    # CUDA and --epochs are not capped.
    assert default_epochs(STPM, 316, 8, "cuda")[0] == e_cuda
    assert default_epochs(STPM, 316, 8, "cpu", given=7) == (7, "--epochs")
