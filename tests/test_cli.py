"""The `edge` command itself: subcommand choice without touching sys.argv, --version, and
logging configured once (text or one JSON object per line)."""

import json
import logging
import os
import sys

from edge import __version__, cli
from edge.common import logs
from tests.helpers import PIPED, ROOT, edge

CAT = os.path.join(PIPED, "PA_BDP01_TL")


def test_version_in_one_place_and_runtimes_listed():
    res = edge("--version")
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0 and lines[0] == f"lineside-ad {__version__}"
    labels = [line.split(":")[0] for line in lines[1:]]
    assert labels == ["ONNX Runtime", "TensorRT", "CUDA binding"]
    assert all(line.split(": ", 1)[1] for line in lines[1:])        # a version or "not installed"
    with open(os.path.join(ROOT, "setup.cfg")) as f:
        assert "version = attr: edge.__version__" in f.read()


def test_main_leaves_sys_argv_alone(capsys):
    before = list(sys.argv)
    assert cli.main(["--log-format", "json", "check", "--bundle", os.path.join(ROOT, "nope"),
                     "--engine", "none", "--min-free-mb", "0"]) != 0
    assert sys.argv == before
    assert "FAIL bundle" in capsys.readouterr().out
    assert cli._command_in(["--log-format", "json", "run", "x.yaml"]) == "run"
    assert cli._command_in(["--log-format=text", "bench", "b"]) == "bench"
    assert cli._command_in(["--version"]) is None


def test_log_formats(capsys):
    logs.setup("json")
    logging.getLogger("edge.runtime.run").info("status", extra={"data": {"fps": 12.5}})
    logging.getLogger("train.trainer").warning("odd")
    lines = capsys.readouterr().err.strip().splitlines()
    docs = [json.loads(line) for line in lines]
    assert docs[0]["message"] == "status" and docs[0]["data"] == {"fps": 12.5} and docs[0]["level"] == "info"
    assert docs[1]["logger"] == "train.trainer" and docs[1]["level"] == "warning" and "time" in docs[1]
    logs.setup("text")                                       # configured again: replaced, not doubled
    logging.getLogger("edge.x").info("plain")
    logging.getLogger("convert.x").warning("careful")
    assert capsys.readouterr().err.splitlines() == ["plain", "warning: careful"]


def test_training_logs_json_lines(tmp_path):
    res = edge("--log-format", "json", "train", "--method", "padim", "--data", CAT, "--out", tmp_path / "b",
               "--size", "64", "--no-eval")
    assert res.returncode == 0, res.stderr
    docs = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert any(d["message"].startswith("training padim on") for d in docs)
    assert any(d["message"].startswith("trained in") for d in docs)
    assert all(d["logger"] == "edge" for d in docs)
