"""Bad input: a one-line error naming what is wrong, exit 2, and no half-written bundle."""

import os
import shutil

import pytest

from tests.helpers import PIPED, edge

CAT = os.path.join(PIPED, "PA_BDP01_TL")


def small_set(tmp_path, n_train=6):
    root = tmp_path / "set"
    for sub in ("train/good", "test/good", "test/impurity", "ground_truth/impurity"):
        (root / sub).mkdir(parents=True)
    for i in range(n_train):
        shutil.copy(os.path.join(CAT, "train", "good", f"{i:03d}.png"), root / "train" / "good")
    for i in range(3):
        shutil.copy(os.path.join(CAT, "test", "good", f"{i:03d}.png"), root / "test" / "good")
        shutil.copy(os.path.join(CAT, "test", "impurity", f"{i:03d}.png"), root / "test" / "impurity")
        shutil.copy(os.path.join(CAT, "ground_truth", "impurity", f"{i:03d}_mask.png"),
                    root / "ground_truth" / "impurity")
    return root


def assert_refused(res, *needles, out=None):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = [line for line in res.stderr.strip().splitlines() if line.startswith("edge ")]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert str(needle) in err[0], err[0]
    if out is not None:
        parent = os.path.dirname(str(out))
        assert not os.path.exists(out)
        assert not [n for n in os.listdir(parent) if n.startswith("." + os.path.basename(str(out)))], os.listdir(parent)


def train(root, out, *extra):
    return edge("train", "--method", "padim", "--data", root, "--out", out, "--size", "64", *extra)


def test_missing_data_folder(tmp_path):
    assert_refused(train(tmp_path / "nope", tmp_path / "b"), tmp_path / "nope", "not found", out=tmp_path / "b")


def test_empty_train_split(tmp_path):
    root = small_set(tmp_path, 0)
    assert_refused(train(root, tmp_path / "b"), "train split is empty", out=tmp_path / "b")


def test_truncated_image(tmp_path):
    root = small_set(tmp_path)
    victim = root / "train" / "good" / "002.png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    assert_refused(train(root, tmp_path / "b"), victim, "truncated", out=tmp_path / "b")


def test_unreadable_image(tmp_path):
    root = small_set(tmp_path)
    victim = root / "train" / "good" / "003.png"
    victim.write_bytes(b"this is not a picture at all" * 10 + b"\0\0\0\0IEND\xaeB`\x82")
    assert_refused(train(root, tmp_path / "b"), victim, "not a readable image", out=tmp_path / "b")


def test_mask_size_mismatch(tmp_path):
    import cv2
    root = small_set(tmp_path)
    mask = root / "ground_truth" / "impurity" / "001_mask.png"
    cv2.imwrite(str(mask), cv2.resize(cv2.imread(str(mask), 0), (100, 90)))
    assert_refused(train(root, tmp_path / "b"), mask, "does not match", out=tmp_path / "b")


def test_bad_size_and_method(tmp_path):
    root = small_set(tmp_path)
    assert_refused(train(root, tmp_path / "b", "--size", "12x"), "--size", out=tmp_path / "b")
    res = edge("train", "--method", "nosuch", "--data", root, "--out", tmp_path / "b")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_existing_bundle_survives_a_failed_training(tmp_path):
    root = small_set(tmp_path)
    out = tmp_path / "b"
    assert train(root, out, "--no-eval").returncode == 0
    before = (out / "manifest.yaml").read_text()
    (root / "train" / "good" / "001.png").write_bytes(b"\x89PNG broken")
    assert_refused(train(root, out, "--no-eval"), "001.png")
    assert (out / "manifest.yaml").read_text() == before


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    out = tmp / "b"
    res = edge("train", "--method", "padim", "--data", CAT, "--out", out, "--size", "64", "--no-eval")
    assert res.returncode == 0, res.stderr
    return out


def test_altered_bundle_file_is_refused(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    with open(b / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    assert_refused(edge("evaluate", b, "--data", CAT), b / "model.onnx", "altered")
    assert_refused(edge("predict", b, os.path.join(CAT, "test", "good")), "altered")


def test_missing_bundle_file_is_refused(bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    os.unlink(b / "model.onnx")
    assert_refused(edge("evaluate", b, "--data", CAT), b / "model.onnx", "missing")


def test_not_a_bundle(tmp_path):
    assert_refused(edge("predict", tmp_path, CAT), "no manifest.yaml")
