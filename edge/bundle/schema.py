"""Checking a manifest once, when a bundle is opened: every error names the manifest file and
the key path at fault (`input.height: must be an integer ...`), so that nothing later (the
preprocessor, an engine, the decision) meets a value it cannot use.

What is checked: the keys the runtime reads (method, input, threshold, graphs, files, plans,
torch_model) and every file the manifest names: a relative path inside the bundle, listed
under `files:` with its sha256 (torch_model carries its own sha256: it is checked when used
and not shipped to the line). Informational sections (training, evaluation, score_stats,
...) are free-form.
"""

import math
import posixpath
import re

from ..common.errors import EdgeError
from ..common.names import PRECISIONS
from .identity import ID_FILE

LAYOUTS = ("NHWC", "NCHW")
COLOUR_ORDERS = ("RGB", "BGR")
MAX_SIDE = 16384                       # graph input height/width
SHA256 = re.compile(r"^[0-9a-f]{64}$")
PLANS_DIR = "plans"


class ManifestError(EdgeError):
    """A manifest value at fault: `<manifest>: <key path>: <problem>`."""

    def __init__(self, key, problem, where):
        super().__init__(f"{key}: {problem}", where)


def _show(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finite_number(value, key, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(key, f"must be a number, got {_show(value)}", where)
    value = float(value) if not isinstance(value, float) else value
    if not math.isfinite(value):
        raise ManifestError(key, f"must be a finite number, got {value}", where)
    return value


def _mapping(value, key, where, what="a mapping"):
    if not isinstance(value, dict):
        raise ManifestError(key, f"must be {what}, got {_show(value)}", where)
    return value


def _int(value, key, where, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(key, f"must be an integer, got {_show(value)}", where)
    if not lo <= value <= hi:
        raise ManifestError(key, f"must be {lo}..{hi}, got {value}", where)
    return value


def bundle_path(name, key, where):
    """A file name the manifest gives: relative, '/'-separated, inside the bundle."""
    if not isinstance(name, str) or not name.strip():
        raise ManifestError(key, f"must be a file name inside the bundle, got {_show(name)}", where)
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ManifestError(key, f"must be a relative path inside the bundle, got {_show(name)}", where)
    parts = name.split("/")
    if ".." in parts or posixpath.normpath(name) != name or name in (".", "manifest.yaml", ID_FILE):
        raise ManifestError(key, f"must be a plain relative path inside the bundle, got {_show(name)}", where)
    return name


def _threshold(value, key, where):
    if not isinstance(value, dict):
        raise ManifestError(key, f"must be a mapping with a finite `value`, got {_show(value)}", where)
    if "value" not in value:
        raise ManifestError(key, "lacks `value`", where)
    finite_number(value["value"], key + ".value", where)


def _input(inp, where):
    _mapping(inp, "input", where)
    for side in ("height", "width"):
        if side not in inp:
            raise ManifestError("input", f"lacks `{side}`", where)
        _int(inp[side], f"input.{side}", where, 1, MAX_SIDE)
    if inp.get("layout", "NHWC") not in LAYOUTS:
        raise ManifestError("input.layout", f"must be one of {', '.join(LAYOUTS)}, got {_show(inp['layout'])}", where)
    if inp.get("dtype", "uint8") != "uint8":
        raise ManifestError("input.dtype", f"must be uint8, got {_show(inp['dtype'])}", where)
    for key in ("colour_order", "colour"):
        if key in inp and inp[key] not in COLOUR_ORDERS:
            raise ManifestError(f"input.{key}", f"must be one of {', '.join(COLOUR_ORDERS)}, "
                                                f"got {_show(inp[key])}", where)
    roi = inp.get("roi")
    if roi is not None:
        if not isinstance(roi, list) or len(roi) != 4:
            raise ManifestError("input.roi", f"must be [x, y, width, height] or null, got {_show(roi)}", where)
        for i, v in enumerate(roi):
            _int(v, f"input.roi[{i}]", where, 0 if i < 2 else 1, 1 << 20)


def _graphs(graphs, files, where):
    _mapping(graphs, "graphs", where)
    if not graphs:
        raise ManifestError("graphs", "names no graph", where)
    named = []
    for precision, entry in graphs.items():
        key = f"graphs.{precision}"
        if precision not in PRECISIONS:
            raise ManifestError(key, f"unknown precision (known: {', '.join(PRECISIONS)})", where)
        _mapping(entry, key, where)
        if "file" not in entry:
            raise ManifestError(key, "lacks `file`", where)
        named.append((key + ".file", entry["file"]))
        if "threshold" in entry:
            _threshold(entry["threshold"], key + ".threshold", where)
        for sub, value in entry.items():
            if isinstance(value, dict) and "file" in value:      # graphs.<precision>.<engine>
                named.append((f"{key}.{sub}.file", value["file"]))
                if "threshold" in value:
                    _threshold(value["threshold"], f"{key}.{sub}.threshold", where)
    for key, name in named:
        bundle_path(name, key, where)
        if name not in files:
            raise ManifestError(key, f"names {name!r}, which is not listed under `files` "
                                     f"(every file the runtime reads must carry a sha256)", where)


def _files(files, where):
    if isinstance(files, list):
        raise ManifestError("files", "must map each file name to its sha256, got a list", where)
    _mapping(files, "files", where, "a mapping of file name to sha256")
    if not files:
        raise ManifestError("files", "is empty (every file of the bundle must be listed with its sha256)", where)
    for name, digest in files.items():
        key = f"files[{_show(name)}]"
        bundle_path(name, key, where)
        if name == PLANS_DIR or name.startswith(PLANS_DIR + "/"):
            raise ManifestError(key, "plans are device-local and not listed under `files`", where)
        if not isinstance(digest, str) or not SHA256.match(digest):
            raise ManifestError(key, f"must be a sha256 (64 lowercase hex digits), got {_show(digest)}", where)


def _plans(plans, where):
    if plans is None:
        return
    _mapping(plans, "plans", where)
    for name, entry in plans.items():
        key = f"plans[{_show(name)}]"
        bundle_path(name, key, where)
        if not name.startswith(PLANS_DIR + "/"):
            raise ManifestError(key, f"a plan must lie in {PLANS_DIR}/", where)
        _mapping(entry, key, where)


def validate_manifest(m, where):
    """Raise ManifestError (an EdgeError) naming `where` and the key path for the first value
    the runtime could not use; return the manifest unchanged otherwise."""
    _mapping(m, "manifest", where, "a mapping of keys")
    for key in m:
        if not isinstance(key, str):
            raise ManifestError("manifest", f"keys must be strings, got {_show(key)}", where)
    if m.get("format") != 1:
        raise ManifestError("format", f"must be 1, got {_show(m.get('format'))}", where)
    for key in ("method", "input", "threshold", "graphs", "files"):
        if key not in m:
            raise ManifestError(key, "is missing", where)
    if not isinstance(m["method"], str) or not m["method"].strip():
        raise ManifestError("method", f"must be a name, got {_show(m['method'])}", where)
    if "name" in m and m["name"] is not None and not isinstance(m["name"], (str, int, float)):
        raise ManifestError("name", f"must be a string, got {_show(m['name'])}", where)
    _input(m["input"], where)
    _threshold(m["threshold"], "threshold", where)
    _files(m["files"], where)
    _graphs(m["graphs"], m["files"], where)
    _plans(m.get("plans"), where)
    torch_model = m.get("torch_model")
    if torch_model is not None:
        _mapping(torch_model, "torch_model", where)
        bundle_path(torch_model.get("file"), "torch_model.file", where)
        if not isinstance(torch_model.get("sha256"), str) or not SHA256.match(torch_model["sha256"]):
            raise ManifestError("torch_model.sha256", f"must be a sha256, got {_show(torch_model.get('sha256'))}", where)
    return m
