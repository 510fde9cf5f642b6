"""The run configuration as one typed object: every bad value, however odd, is a one-line
error naming the key path (EdgeError, exit 2), never a crash; duplicate keys are refused."""

import json
import math
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.common.errors import EdgeError
from edge.runtime.config import TOP, PipelineSettings, RunConfig, load_config, validate
from tests.helpers import edge

BASE = {"bundle": "/opt/lineside/current", "source": "folder:///data/parts"}


def test_defaults_are_typed_and_filled_in(tmp_path):
    cfg = validate(dict(BASE), str(tmp_path))
    assert isinstance(cfg, RunConfig)
    assert cfg.engine.kind == "auto" and cfg.engine.precision == "fp32" and cfg.engine.batch == 4
    assert cfg.records.db == str(tmp_path / "records.db") and cfg.view is None and cfg.line is None
    assert cfg.pipeline() == PipelineSettings()
    json.dumps(cfg.to_dict())                      # plain data for the run's row


@pytest.mark.parametrize("text, where", [
    ("queue_size: .inf", "config.queue_size"),
    ("queue_size: .nan", "config.queue_size"),
    ("max_frames: .inf", "config.max_frames"),
    ("deadline_ms: .nan", "config.deadline_ms"),
    ("decision: {threshold: -.inf}", "decision.threshold"),
    ("source: {uri: /data/parts, options: {fps: fast}}", "source.options.fps"),
    ("source: {uri: /data/parts, options: {width: 1e400}}", "source.options.width"),
    ("source: {uri: /data/parts, options: {loop: 'yes please'}}", "source.options.loop"),
    ("source: {uri: /data/parts, options: {reconnect: {max_s: []}}}", "source.options.reconnect.max_s"),
    ("source: {uri: /data/parts, options: {speed: 3}}", "source.options"),
])
def test_odd_values_name_the_key(tmp_path, text, where):
    raw = dict(BASE, **yaml.safe_load(text))
    with pytest.raises(EdgeError) as err:
        validate(raw)
    assert str(err.value).startswith(where + ":") and "\n" not in str(err.value)
    path = tmp_path / "run.yaml"
    path.write_text(f"bundle: {tmp_path}\nsource: {tmp_path}\n" * ("source:" not in text)
                    + f"bundle: {tmp_path}\n" * ("source:" in text) + text + "\n")
    res = edge("run", path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and where in lines[0] and "Traceback" not in res.stderr


def test_duplicate_keys_are_refused_with_key_and_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("bundle: /a\nsource: /b\nengine:\n  batch: 4\n  precision: fp16\n  batch: 8\n")
    with pytest.raises(EdgeError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert "duplicate key 'batch'" in msg and "line 4" in msg and "line 6" in msg and str(path) in msg
    res = edge("run", path)
    assert res.returncode == 2 and "duplicate key 'batch'" in res.stderr and "Traceback" not in res.stderr
    # A merge key's values may be overridden beside it: that is not a duplicate.
    path.write_text("x: &e {batch: 4}\nengine:\n  <<: *e\n  batch: 8\n")
    assert load_config(str(path))["engine"] == {"batch": 8}


# ---- fuzzing ----------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["fp16", "auto", "latest", "onnxruntime", "flagged", "opc.tcp://x",
                                     "delay", "modbus", "gpio", "serial", "mqtt", "memory", "encoder"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(
        ["uri", "options", "kind", "precision", "batch", "threads", "threshold", "min_area", "db", "images",
         "quota_mb", "save", "format", "host", "port", "timing", "failsafe", "outputs", "type", "mode",
         "delay_ms", "fps", "width", "height", "reconnect", "initial_s", "max_s", "encoder", "source",
         "reject_line", "messages", "endpoint", "pulses", "register", "words"])), inner, max_size=5)),
    max_leaves=20)
configs = st.dictionaries(st.sampled_from(TOP + ("extra",)), values, max_size=len(TOP))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(configs)
def test_fuzz_validate_raises_only_edge_errors(raw):
    try:
        cfg = validate(dict(BASE, **raw))
    except EdgeError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(cfg, RunConfig)
        for number in (cfg.queue_size, cfg.deadline_ms, cfg.status_every_s, cfg.engine.batch):
            assert math.isfinite(number)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 configs.map(lambda d: yaml.safe_dump(d, allow_unicode=True))))
def test_fuzz_load_and_validate_raise_only_edge_errors(tmp_path_factory, content):
    path = os.path.join(str(tmp_path_factory.getbasetemp()), "fuzz.yaml")
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        validate(load_config(path))
    except EdgeError as exc:
        assert "\n" not in str(exc)


def test_unknown_key_with_a_newline_is_named_on_one_line():
    """A key holding a line break (found by the fuzz test) is shown escaped: one error line."""
    with pytest.raises(EdgeError) as err:
        validate(dict(BASE, **{"que\nue_size": 3}))
    assert "\n" not in str(err.value) and "que\\nue_size" in str(err.value)
