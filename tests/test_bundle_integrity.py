"""What a bundle may be: a manifest checked once on open (key paths in every message), every
file it names inside the bundle and listed with its sha256, the manifest's own digest recorded
at install and checked at every open, one bundle id everywhere, and a non-finite threshold,
score or map treated as a fault, never as a pass."""

import json
import os
import shutil
import sqlite3

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from edge import cli
from edge.bundle import install
from edge.bundle.manifest import Bundle, write_manifest
from edge.common.errors import EdgeError
from edge.tools import check as health
from tests.graphs import make_bundle
from tests.helpers import PIPED, edge

CAT = os.path.join(PIPED, "PA_BDP01_TL")
GOOD = os.path.join(CAT, "test", "good")
QUIET = dict(log=lambda *_: None)


def run_cli(capfd, *argv):
    """edge <argv> in-process: (exit status, the lines it wrote to stderr, stdout)."""
    rc = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, [line for line in err.splitlines() if line.strip()], out


def assert_one_line_error(rc, err, *needles):
    """Exit 2 and one error line (progress lines aside) holding every needle."""
    assert rc == 2, err
    errors = [line for line in err if line.startswith("edge ")]
    assert len(errors) == 1 and not any("Traceback" in line or "libpng" in line for line in err), err
    for needle in needles:
        assert str(needle) in errors[0], errors[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_bundle(str(tmp_path_factory.mktemp("toy") / "toy"), seed=3)


def edited(src, dst, text=None, **changes):
    """A copy of bundle `src` whose manifest has `changes` applied (a dotted key -> value, or
    None to delete), or whose manifest text is `text` with the copy's manifest fed to it."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "manifest.yaml")
    with open(path) as f:
        m = yaml.safe_load(f)
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = m
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    body = yaml.safe_dump(m, sort_keys=False)
    with open(path, "w") as f:
        f.write(text(body) if text else body)
    return dst


DELETE = object()


# ---- item 4: malformed manifest values: one line naming the key, from every command ------------
BAD_VALUES = [
    ("files_list", dict(files=["model.onnx"]), "files"),
    ("threshold_null", dict(threshold=None), "threshold"),
    ("threshold_abc", dict(threshold="abc"), "threshold"),
    ("threshold_bare", dict(threshold=5.0), "threshold"),
    ("threshold_value_abc", dict(threshold__value="abc"), "threshold.value"),
    ("input_rgb", dict(input="rgb"), "input"),
    ("height_tall", dict(input__height="tall"), "input.height"),
    ("height_negative", dict(input__height=-256), "input.height"),
    ("height_wrong", dict(input__height=48), "input.height"),
    ("roi_everything", dict(input__roi="everything"), "input.roi"),
    ("roi_negative", dict(input__roi=[10, 10, -5, 0]), "input.roi[2]"),
    ("graphs_list", dict(graphs=["model.onnx"]), "graphs"),
    ("no_graph_file", dict(graphs={"fp32": {}}), "graphs.fp32"),
    ("method_missing", dict(method=DELETE), "method"),
]


@pytest.mark.parametrize("name,changes,key", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_malformed_manifest_values_name_the_key(toy, tmp_path, capfd, name, changes, key):
    b = edited(toy, str(tmp_path / "b"), **changes)
    for argv in (["predict", b, GOOD], ["evaluate", b, "--data", CAT]):
        rc, err, _ = run_cli(capfd, *argv)
        assert_one_line_error(rc, err, "manifest.yaml", key)


def test_malformed_manifest_in_edge_run_is_one_line(toy, tmp_path):
    """`edge run` once aborted with `terminate called without an active exception` (exit 134)."""
    b = edited(toy, str(tmp_path / "b"), input__height="tall")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"bundle": b, "source": GOOD}))
    res = edge("run", cfg, "--quiet")
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "input.height" in res.stderr and "Traceback" not in res.stderr and "terminate" not in res.stderr


# ---- item 2: a non-finite threshold, score or map is a fault ------------------------------------
@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_non_finite_threshold_in_manifest_is_refused(toy, tmp_path, capfd, text):
    b = edited(toy, str(tmp_path / "b"), text=lambda body: body.replace("value: 5.0", f"value: {text}"))
    assert f"value: {text}" in open(os.path.join(b, "manifest.yaml")).read()
    rc, err, out = run_cli(capfd, "predict", b, GOOD)
    assert_one_line_error(rc, err, "threshold.value", "finite")
    assert "rejected" not in out
    rc, err, _ = run_cli(capfd, "evaluate", b, "--data", CAT)
    assert_one_line_error(rc, err, "threshold.value")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"bundle": b, "source": GOOD, "records": {"db": str(tmp_path / "r.db")}}))
    rc, err, _ = run_cli(capfd, "run", cfg, "--quiet")
    assert rc == 2 and "threshold.value" in err[-1], err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_predict_threshold_nan_is_refused(toy, capfd, value):
    rc, err, out = run_cli(capfd, "predict", toy, GOOD, f"--threshold={value}")
    assert_one_line_error(rc, err, "--threshold", "finite")
    assert "ok" not in out


def make_nan_bundle(folder, h=32, w=32):
    """A bundle whose graph answers NaN for every pixel and score: sqrt(-1 - mean colour)."""
    os.makedirs(folder)
    frames = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", h, w, 3])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", h, w])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    nodes = [helper.make_node("Cast", ["frames"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[3], keepdims=0),
             helper.make_node("Neg", ["m"], ["neg"]),
             helper.make_node("Sub", ["neg", "one"], ["below"]),
             helper.make_node("Sqrt", ["below"], ["anomaly_map"]),
             helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0)]
    graph = helper.make_graph(nodes, "nan", [frames], [amap, score],
                              [onnx.numpy_helper.from_array(np.array(1, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, os.path.join(folder, "model.onnx"))
    write_manifest(folder, {"method": "nan_graph", "input": {"height": h, "width": w, "layout": "NHWC"},
                            "threshold": {"value": 5.0}, "graphs": {"fp32": {"file": "model.onnx"}},
                            "files": {"model.onnx": None}})
    return folder


@pytest.fixture(scope="module")
def nan_bundle(tmp_path_factory):
    return make_nan_bundle(str(tmp_path_factory.mktemp("nan") / "nan"))


def test_nan_scores_fault_predict_and_evaluate(nan_bundle, tmp_path, capfd):
    rc, err, out = run_cli(capfd, "predict", nan_bundle, GOOD)
    assert_one_line_error(rc, err, "non-finite")
    assert "rejected" not in out
    rc, err, _ = run_cli(capfd, "evaluate", nan_bundle, "--data", CAT, "--json", tmp_path / "e.json")
    assert_one_line_error(rc, err, "non-finite")
    assert not (tmp_path / "e.json").exists()


def test_nan_scores_fault_the_run_and_pass_nothing(nan_bundle, tmp_path, capfd):
    db = tmp_path / "r.db"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"bundle": nan_bundle, "source": GOOD, "records": {"db": str(db)}}))
    rc, err, _ = run_cli(capfd, "run", cfg, "--quiet")
    assert rc == 3 and "non-finite" in err[-1], err          # a fault of the run (2: refused before it)
    con = sqlite3.connect(db)
    try:
        passed = con.execute("SELECT COUNT(*) FROM records WHERE reject = 0").fetchone()[0]
        summary = con.execute("SELECT summary FROM runs").fetchone()[0]
    finally:
        con.close()
    assert passed == 0
    assert "non-finite" in json.loads(summary)["error"]


# ---- item 3: every named file inside the bundle and listed; files: {} is not "no check" ---------
@pytest.mark.parametrize("name,changes,needle", [
    ("unlisted", dict(graphs__fp32__file="other.onnx"), "not listed"),
    ("dotdot", dict(graphs__fp32__file="../outside/model.onnx"), "inside the bundle"),
    ("absolute", dict(graphs__fp32__file="/tmp/model.onnx"), "inside the bundle"),
    ("files_empty", dict(files={}), "files"),
    ("files_dotdot", dict(files={"../outside/model.onnx": "0" * 64}), "inside the bundle"),
    ("digest_not_hex", dict(files={"model.onnx": "abc"}), "sha256"),
])
def test_named_files_must_be_inside_and_listed(toy, tmp_path, name, changes, needle):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(os.path.join(toy, "model.onnx"), outside / "model.onnx")
    shutil.copy(os.path.join(toy, "model.onnx"), tmp_path / "model.onnx")
    b = edited(toy, str(tmp_path / "b"), **changes)
    shutil.copy(os.path.join(toy, "model.onnx"), os.path.join(b, "other.onnx"))
    with pytest.raises(EdgeError, match=needle):
        Bundle(b)
    with pytest.raises(EdgeError, match="refused, nothing changed"):
        install.install(b, str(tmp_path / "root"), **QUIET)
    assert not health.run_checks(b, engine="onnxruntime")[0]["ok"]


def test_listed_file_linking_outside_is_refused(toy, tmp_path):
    b = str(tmp_path / "b")
    shutil.copytree(toy, b)
    elsewhere = tmp_path / "elsewhere.onnx"
    shutil.move(os.path.join(b, "model.onnx"), elsewhere)
    os.symlink(elsewhere, os.path.join(b, "model.onnx"))
    with pytest.raises(EdgeError, match="outside the bundle"):
        Bundle(b)


def test_installed_manifest_edit_is_refused_at_every_open(toy, tmp_path):
    from edge.bundle.identity import ID_FILE
    root = str(tmp_path / "root")
    res = install.install(toy, root, activate=True, **QUIET)
    current = os.path.join(root, "current")
    assert open(os.path.join(res.path, ID_FILE)).read().strip() == res.id
    assert Bundle(current).id == res.id
    mpath = os.path.join(res.path, "manifest.yaml")
    original = open(mpath).read()
    with open(mpath, "w") as f:
        f.write(original.replace("value: 5.0", "value: 1000.0"))
    with pytest.raises(EdgeError, match="changed since install"):
        Bundle(current)
    checks = health.run_checks(current, engine="onnxruntime")
    assert not checks[0]["ok"] and "changed since install" in checks[0]["detail"]
    # A tampered bundle is not made current again: install a second one, then roll back to it.
    other = make_bundle(str(tmp_path / "other"), seed=4)
    assert install.install(other, root, activate=True, **QUIET).activated
    with pytest.raises(EdgeError, match="rollback refused"):
        install.rollback(root, **QUIET)
    assert Bundle(current).id != res.id
    # Plans added on the box (edge build) do not change the id; other edits do not save.
    with open(mpath, "w") as f:
        f.write(original)
    assert install.rollback(root, **QUIET) == res.path        # mended, it may be current again
    b = Bundle(current)
    b.manifest["plans"] = {"plans/x.plan": {"gpu": "Orin"}}
    b.save()
    assert Bundle(current).id == res.id
    b.manifest["threshold"]["value"] = 7.0
    with pytest.raises(EdgeError, match="sealed"):
        b.save()


# ---- issue 9: one bundle identity --------------------------------------------------------------
def test_one_bundle_id_for_install_records_check_and_view(toy, tmp_path, capfd):
    from edge.bundle.identity import bundle_id
    src = str(tmp_path / "src")
    shutil.copytree(toy, src)
    before = Bundle(src).id
    b = Bundle(src)                                          # edge build adds plans: same id
    b.manifest["plans"] = {"plans/x.plan": {"gpu": "Orin"}}
    b.save()
    assert Bundle(src).id == before == bundle_id(b.manifest)
    root = str(tmp_path / "root")
    res = install.install(src, root, activate=True, **QUIET)
    assert res.id == before and res.name.endswith(before[:8])
    rows = install.list_bundles(root)
    assert rows[0]["id"] == before
    db = tmp_path / "r.db"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"bundle": os.path.join(root, "current"), "source": GOOD,
                               "records": {"db": str(db)}, "max_frames": 2}))
    rc, err, _ = run_cli(capfd, "run", cfg, "--quiet")
    assert rc == 0, err
    con = sqlite3.connect(db)
    try:
        recorded = con.execute("SELECT bundle_sha256 FROM runs").fetchone()[0]
    finally:
        con.close()
    assert recorded == before
    assert any(f"id {before[:12]}" in line for line in err)
    checks = health.run_checks(os.path.join(root, "current"), engine="none")
    assert checks[0]["ok"] and before[:12] in checks[0]["detail"]


def test_oversized_manifest_and_key_are_refused_by_name(toy, tmp_path):
    """A manifest or key file past its size limit is refused naming the file, without reading
    more of it than the limit (a bundle or key path pointing at a device or a huge file)."""
    from edge.bundle import manifest as mf, signing
    bundle = tmp_path / "big"
    shutil.copytree(toy, bundle)
    with open(bundle / "manifest.yaml", "a") as f:
        f.write("#" * (mf.MAX_MANIFEST_BYTES + 10))
    with pytest.raises(EdgeError, match="manifest is larger than") as err:
        Bundle(str(bundle))
    assert "manifest.yaml" in str(err.value)
    key = tmp_path / "key.pub"
    key.write_bytes(b"x" * (signing.MAX_KEY_BYTES + 1))
    with pytest.raises(EdgeError, match="key is larger than") as err:
        signing.load_public_key(str(key))
    assert "key.pub" in str(err.value)
    key.write_bytes(b"  \n")
    with pytest.raises(EdgeError, match="not a key file"):
        signing.load_public_key(str(key))


def test_nan_scores_fault_a_run_with_several_cameras(nan_bundle, tmp_path, capfd):
    db = tmp_path / "r.db"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"bundle": nan_bundle, "records": {"db": str(db)},
                               "cameras": [{"id": "a", "source": GOOD}, {"id": "b", "source": GOOD}]}))
    rc, err, _ = run_cli(capfd, "run", cfg, "--quiet")
    assert rc == 3 and "non-finite" in err[-1], err
    con = sqlite3.connect(db)
    try:
        passed = con.execute("SELECT COUNT(*) FROM records WHERE reject = 0").fetchone()[0]
    finally:
        con.close()
    assert passed == 0
