"""The run configuration (`edge run CONFIG.yaml`), validated up front: an error names the key
path and the value at fault. See deploy/config/example.yaml for a commented example.

    bundle: /opt/lineside/current
    source: file:///data/line.mp4          # or {uri: ..., options: {...}}
    mode: inspect-all                      # or latest
    engine: {kind: auto, precision: fp32, batch: 4, threads: null, dla: null}
    decision: {threshold: null, min_area: 0.0}
    deadline_ms: 500
    queue_size: 8
    records: {db: records.db, images: records/images, quota_mb: 1024, save: flagged, format: jpg}
    line: {...}                            # docs/line-io.md
    view: {host: 127.0.0.1, port: 8080}
    status_every_s: 2
    max_frames: null
"""

import os

import yaml

from ..common.errors import EdgeError
from ..common.validate import _choice, _known, _num, _str

TOP = ("bundle", "source", "mode", "engine", "decision", "deadline_ms", "queue_size", "records", "line",
       "view", "status_every_s", "max_frames")
MODES = ("inspect-all", "latest")


def load_config(path):
    if not os.path.isfile(path):
        raise EdgeError("config file not found", path)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise EdgeError(f"not valid YAML: {exc}".replace("\n", " "), path) from None
    if not isinstance(cfg, dict):
        raise EdgeError("must be a mapping of keys to values", path)
    return cfg


def _opt_num(d, key, where, lo, hi, kind=float):
    return None if d.get(key) is None else _num(d, key, where, lo, hi, None, kind)


def _source_uri(uri, path_of):
    """Relative file and folder sources are taken from the config file's folder."""
    for prefix in ("file://", "folder://", ""):
        rest = uri[len(prefix):]
        if uri.startswith(prefix) and rest and "://" not in rest and "!" not in rest and not os.path.isabs(rest):
            return prefix + path_of(rest)
    return uri


def validate(cfg, base_dir="."):
    """A normalised copy of the run configuration with defaults filled in; relative paths
    are taken from the config file's folder."""
    _known(cfg, TOP, "config")
    out = {}

    def path_of(value):
        return value if value is None or os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))

    out["bundle"] = path_of(_str(cfg, "bundle", "config", required=True))
    src = cfg.get("source")
    if isinstance(src, str):
        src = {"uri": src}
    _known(src if src is not None else {}, ("uri", "options"), "source")
    if src is None or not src.get("uri"):
        raise EdgeError("is required (a URI: folder, file://, v4l2://, rtsp://, csi://, gige://, gst://)", "source")
    options = src.get("options") or {}
    if not isinstance(options, dict):            # the source itself checks the option names
        raise EdgeError(f"must be a mapping, got {type(options).__name__}", "source.options")
    out["source"] = {"uri": _source_uri(_str(src, "uri", "source"), path_of), "options": dict(options)}
    out["mode"] = _choice(cfg, "mode", "config", MODES, "inspect-all")

    eng = cfg.get("engine") or {}
    _known(eng, ("kind", "precision", "batch", "threads", "dla"), "engine")
    out["engine"] = {"kind": _choice(eng, "kind", "engine", ("auto", "onnxruntime", "tensorrt"), "auto"),
                     "precision": _choice(eng, "precision", "engine", ("fp32", "fp16", "int8"), "fp32"),
                     "batch": _num(eng, "batch", "engine", 1, 64, 4),
                     "threads": _opt_num(eng, "threads", "engine", 1, 256, int),
                     "dla": _opt_num(eng, "dla", "engine", 0, 7, int)}       # TensorRT DLA core

    dec = cfg.get("decision") or {}
    _known(dec, ("threshold", "min_area"), "decision")
    out["decision"] = {"threshold": _opt_num(dec, "threshold", "decision", -1e12, 1e12),
                       "min_area": _num(dec, "min_area", "decision", 0.0, 1.0, 0.0, float)}
    out["deadline_ms"] = _num(cfg, "deadline_ms", "config", 1, 600000, 1000, float)
    out["queue_size"] = _num(cfg, "queue_size", "config", 1, 4096, 8)

    rec = cfg.get("records") or {}
    _known(rec, ("db", "images", "quota_mb", "save", "format"), "records")
    out["records"] = {"db": path_of(_str(rec, "db", "records", "records.db")),
                      "images": path_of(_str(rec, "images", "records")),
                      "quota_mb": _num(rec, "quota_mb", "records", 1, 10 ** 7, 1024, float),
                      "save": _choice(rec, "save", "records", ("flagged", "all", "none"), "flagged"),
                      "format": _choice(rec, "format", "records", ("png", "jpg"), "jpg")}
    if cfg.get("line") is not None:
        from ..outputs import validate_line_config
        out["line"] = validate_line_config(cfg["line"], "line", base_dir)
    else:
        out["line"] = None
    view = cfg.get("view")
    if view is not None:
        _known(view, ("host", "port"), "view")
        view = {"host": _str(view, "host", "view", "127.0.0.1"), "port": _num(view, "port", "view", 0, 65535, 8080)}
    out["view"] = view
    out["status_every_s"] = _num(cfg, "status_every_s", "config", 0.1, 3600, 2.0, float)
    out["max_frames"] = _opt_num(cfg, "max_frames", "config", 1, 10 ** 12, int)
    return out
