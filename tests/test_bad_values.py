"""Bad images and bad command-line values: one line naming the file or the option, exit 2,
never a traceback, never a silently wrong answer."""

import os
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest

from edge import cli
from edge.common.errors import EdgeError
from edge.common.imageio import read_rgb
from tests.graphs import make_bundle
from tests.helpers import PIPED
from tests.test_bad_input import small_set

CAT = os.path.join(PIPED, "PA_BDP01_TL")
GOOD = os.path.join(CAT, "test", "good")


def run_cli(capfd, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, [line for line in err.splitlines() if line.strip()], out


def assert_refused(rc, err, *needles):
    """Exit 2, one error line holding every needle, and no other line of complaint."""
    assert rc == 2, err
    errors = [line for line in err if line.startswith("edge ")]
    assert len(errors) == 1, err
    assert not any("Traceback" in line or "libpng" in line for line in err), err
    for needle in needles:
        assert str(needle) in errors[0], errors[0]


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path, w=100000, h=100000):
    """A valid ~1 kB PNG whose header declares w x h pixels (a decompression bomb's shape)."""
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + _chunk(b"IDAT", zlib.compress(bytes(1000))) + _chunk(b"IEND", b""))
    return path


def damaged_png(path, like):
    """A real PNG with a byte of its compressed data flipped (libpng would complain)."""
    data = bytearray(open(like, "rb").read())
    at = data.index(b"IDAT") + 40
    data[at] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_bundle(str(tmp_path_factory.mktemp("toy") / "toy"), seed=5)


# ---- item 5: images over the pixel limit, and honest words for what is wrong --------------------
def test_image_size_is_read_from_the_header(tmp_path):
    from edge.common.imageio import MAX_IMAGE_PIXELS, image_size
    img = np.zeros((50, 70, 3), np.uint8)
    for ext, kind in ((".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP")):
        p = str(tmp_path / f"x{ext}")
        cv2.imwrite(p, img)
        assert image_size(p, open(p, "rb").read()) == (kind, 70, 50)
    bomb = bomb_png(str(tmp_path / "bomb.png"))
    assert os.path.getsize(bomb) < 2000
    with pytest.raises(EdgeError, match=r"bomb.png: image is 100000x100000 .* more than the limit"):
        read_rgb(bomb)
    assert MAX_IMAGE_PIXELS == 100_000_000


def test_bomb_image_in_predict_train_and_evaluate(toy, tmp_path, capfd):
    bomb = bomb_png(str(tmp_path / "bomb.png"))
    rc, err, _ = run_cli(capfd, "predict", toy, bomb)
    assert_refused(rc, err, bomb, "megapixels")
    root = small_set(tmp_path)
    in_test = bomb_png(str(root / "test" / "good" / "zz_bomb.png"))
    rc, err, _ = run_cli(capfd, "evaluate", toy, "--data", root)
    assert_refused(rc, err, in_test, "megapixels")
    in_train = bomb_png(str(root / "train" / "good" / "zz_bomb.png"))
    rc, err, _ = run_cli(capfd, "train", "--method", "padim", "--data", root, "--out", tmp_path / "b",
                         "--size", "64", "--no-eval")
    assert_refused(rc, err, in_train, "megapixels")
    assert not (tmp_path / "b").exists()


def test_text_named_png_is_not_called_truncated(toy, tmp_path, capfd):
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file\n" * 20)
    rc, err, _ = run_cli(capfd, "predict", toy, fake)
    assert_refused(rc, err, fake, "not a readable image")
    assert "truncated" not in err[-1]


def test_damaged_png_is_one_line_without_libpng(toy, tmp_path, capfd):
    bad = damaged_png(str(tmp_path / "bad.png"), os.path.join(GOOD, "000.png"))
    rc, err, _ = run_cli(capfd, "predict", toy, bad)
    assert_refused(rc, err, bad, "damaged PNG")


# ---- items 7 and 8: command-line values ----------------------------------------------------------
@pytest.mark.parametrize("batch", ["0", "-2"])
def test_predict_and_evaluate_batch_below_one(toy, capfd, batch):
    rc, err, out = run_cli(capfd, "predict", toy, GOOD, f"--batch={batch}")
    assert_refused(rc, err, "--batch")
    assert "rejected" not in out                 # not "0 of 20 rejected"
    rc, err, _ = run_cli(capfd, "evaluate", toy, "--data", CAT, f"--batch={batch}")
    assert_refused(rc, err, "--batch")


def test_evaluate_json_naming_a_folder(toy, tmp_path, capfd):
    rc, err, _ = run_cli(capfd, "evaluate", toy, "--data", CAT, "--json", tmp_path)
    assert_refused(rc, err, "--json", "folder")


@pytest.mark.parametrize("extra,needle", [
    (["--roi", "0,0,5000,5000"], "region of interest"),
    (["--param", "dims=abc"], "--param dims"),
    (["--param", "dims=0"], "--param dims"),
    (["--param", "reg=nan"], "--param reg"),
    (["--false-reject", "1.5"], "--false-reject"),
    (["--folds", "1"], "--folds"),
    (["--sigma", "-1"], "--sigma"),
    (["--sigma", "nan"], "--sigma"),
])
def test_train_values(tmp_path, capfd, extra, needle):
    root = small_set(tmp_path)
    rc, err, _ = run_cli(capfd, "train", "--method", "padim", "--data", root, "--out", tmp_path / "b",
                         "--size", "64", "--no-eval", *extra)
    assert_refused(rc, err, needle)
    if needle == "region of interest":
        assert ".png" in err[-1]                  # the image it does not fit
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", ["abc", "0", "1.5", "nan"])
def test_patchcore_coreset_ratio(tmp_path, capfd, value):
    root = small_set(tmp_path)
    rc, err, _ = run_cli(capfd, "train", "--method", "patchcore", "--data", root, "--out", tmp_path / "b",
                         "--size", "64", "--no-eval", "--param", f"coreset_ratio={value}")
    assert_refused(rc, err, "--param coreset_ratio")


def test_roi_outside_the_frame_in_predict(toy, tmp_path, capfd):
    b = str(tmp_path / "b")
    shutil.copytree(toy, b)
    import yaml
    m = yaml.safe_load(open(os.path.join(b, "manifest.yaml")))
    m["input"]["roi"] = [0, 0, 4000, 4000]
    with open(os.path.join(b, "manifest.yaml"), "w") as f:
        yaml.safe_dump(m, f)
    img = os.path.join(GOOD, "000.png")
    rc, err, _ = run_cli(capfd, "predict", b, img)
    assert_refused(rc, err, img, "region of interest")
