"""`edge compare`: one table and one plot for several methods trained on the same data, each
with its INT8 variant's accuracy change and speed, resumable, and clear refusals."""

import json
import os

import pytest

from tests.helpers import PIPED, edge, tiny_copy

TINY = {"train/good": 12, "test/good": 2, "test/impurity": 2, "ground_truth/impurity": 2}
METHODS = ["gaussian_ad", "cutpaste"]          # one that fits statistics, one that trains a network


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    data = tiny_copy(tmp_path_factory.mktemp("data") / "PA_FLR01_TL", os.path.join(PIPED, "PA_FLR01_TL"), TINY)
    out = str(tmp_path_factory.mktemp("cmp") / "out")
    args = ("compare", "--data", data, "--methods", ",".join(METHODS), "--size", "64x96", "--epochs", "1",
            "--device", "cpu", "--out", out)
    first = edge(*args)
    return args, out, first


def test_one_row_per_method_with_int8(compared):
    _args, out, first = compared
    assert first.returncode == 0, first.stderr
    rows = json.load(open(os.path.join(out, "compare.json")))
    assert [r["method"] for r in rows] == METHODS
    for r in rows:
        assert 0.0 <= r["image_auroc"] <= 1.0 and r["fps_fp32"] > 0 and r["train_seconds"] > 0
        # Either the INT8 variant was kept and timed, or it was refused and the reason recorded.
        if r["fps_int8"] is None:
            assert r["int8_note"].startswith("refused: ")
        else:
            assert r["fps_int8"] > 0 and abs(r["int8_drop"]) <= 0.01 + 1e-9
            assert os.path.isfile(os.path.join(out, r["method"], "model.int8.ort.onnx"))
    table = open(os.path.join(out, "compare.md")).read().splitlines()
    assert "INT8 frames/s (ORT, batch 1)" in table[0] and len(table) == 2 + len(METHODS)
    assert first.stdout.splitlines()[0] == table[0]
    with open(os.path.join(out, "compare.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_second_run_trains_nothing(compared):
    args, out, first = compared
    before = open(os.path.join(out, "compare.md")).read()
    again = edge(*args)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already trained for this data and settings") == len(METHODS)
    assert open(os.path.join(out, "compare.md")).read() == before


def test_bad_method_and_missing_test_split(tmp_path):
    r = edge("compare", "--data", os.path.join(PIPED, "PA_FLR01_TL"), "--methods", "patchcore,nope",
             "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "unknown method 'nope'" in r.stderr and "Traceback" not in r.stderr
    data = tiny_copy(tmp_path / "notest", os.path.join(PIPED, "PA_FLR01_TL"), {"train/good": 4})
    r = edge("compare", "--data", data, "--methods", "gaussian_ad", "--out", str(tmp_path / "o2"))
    assert r.returncode != 0 and "test split" in r.stderr and not os.path.exists(tmp_path / "o2")
