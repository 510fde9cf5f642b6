"""The manifest parser, fuzzed: no manifest text and no manifest value makes opening a bundle
raise anything but EdgeError (the toolkit's one-line error), and whatever opens can be used."""

import math
import os
import shutil

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.bundle.identity import bundle_id
from edge.bundle.manifest import Bundle, parse_manifest
from edge.bundle.schema import validate_manifest
from edge.common.errors import EdgeError
from edge.runtime.preprocess import Preprocessor
from tests.graphs import make_bundle

WHERE = "manifest.yaml"

scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["model.onnx", "../model.onnx", "/etc/passwd", "plans/x.plan", "fp32", "NHWC",
                              "RGB", "a" * 64, "0" * 64, "manifest.yaml", ".", "", "rgb", "tall"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(0, 3), inner, max_size=4),
                      max_leaves=12)
KEY_PATHS = [("format",), ("method",), ("input",), ("input", "height"), ("input", "width"), ("input", "roi"),
             ("input", "layout"), ("input", "colour"), ("threshold",), ("threshold", "value"), ("graphs",),
             ("graphs", "fp32"), ("graphs", "fp32", "file"), ("graphs", "fp32", "threshold"),
             ("graphs", "int8"), ("graphs", "int8", "onnxruntime"), ("files",), ("files", "model.onnx"),
             ("plans",), ("torch_model",), ("name",), ("training",)]


def valid_manifest():
    return {"format": 1, "method": "toy", "input": {"height": 32, "width": 32, "layout": "NHWC", "roi": None},
            "threshold": {"value": 5.0}, "graphs": {"fp32": {"file": "model.onnx"}},
            "files": {"model.onnx": "0" * 64}}


def set_at(m, path, value):
    node = m
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def use(manifest):
    """What the runtime reads from a bundle that opened."""
    validate_manifest(manifest, WHERE)
    bundle_id(manifest)
    b = Bundle.__new__(Bundle)
    b.path, b.manifest = "/nonexistent", manifest
    h, w = b.input_hw
    assert 1 <= h and 1 <= w
    assert math.isfinite(b.threshold)
    Preprocessor.for_bundle(b)
    for precision in b.precisions():
        for engine in (None, "onnxruntime", "tensorrt"):
            assert math.isfinite(b.threshold_for(precision, engine))
            assert isinstance(b.graph_path(precision, engine), str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEY_PATHS), values)
def test_any_value_at_any_key_is_ok_or_an_edge_error(path, value):
    m = valid_manifest()
    set_at(m, path, value)
    try:
        use(m)
    except EdgeError:
        pass


@settings(max_examples=300, deadline=None)
@given(values)
def test_any_structure_is_ok_or_an_edge_error(m):
    try:
        use(m)
    except EdgeError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_text_is_parsed_or_an_edge_error(text):
    try:
        use(parse_manifest(text, WHERE))
    except EdgeError:
        pass


YAML_SNIPPETS = ["a: 2024-13-45", "a: !!binary 'zz'", "a: !!python/object:os.system {}", "[[[[[[", "{a: *x}",
                 "a: &x [*x]", "? [a, b]\n: c", "a: !!set {x, y}", "a: .nan", "a: 1e999", "\x00", "\ufeffa: 1",
                 "a: !!timestamp 2001-12-14t21:59:43.10-05:00", "a: !!float abc", "a: !!int 0x_",
                 "x: &a [&b [*a]]"]


@pytest.mark.parametrize("text", YAML_SNIPPETS)
def test_odd_yaml_is_an_edge_error_or_parsed(text):
    try:
        use(parse_manifest(text, WHERE))
    except EdgeError:
        pass


def test_alias_bomb_is_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    m = parse_manifest("\n".join(lines), WHERE)
    with pytest.raises(EdgeError, match="too large"):
        bundle_id(m)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_bundle(str(tmp_path_factory.mktemp("toy") / "toy"), seed=7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(KEY_PATHS), values)
def test_opening_a_fuzzed_bundle_folder(toy, tmp_path_factory, path, value):
    """The whole open (file read, YAML, checks, sha256 of the listed files) on disk."""
    folder = str(tmp_path_factory.mktemp("fz") / "b")
    shutil.copytree(toy, folder)
    with open(os.path.join(folder, "manifest.yaml")) as f:
        m = yaml.safe_load(f)
    set_at(m, path, value)
    with open(os.path.join(folder, "manifest.yaml"), "w") as f:
        f.write(yaml.safe_dump(m, allow_unicode=True))
    try:
        b = Bundle(folder)
    except EdgeError:
        return
    use(b.manifest)
