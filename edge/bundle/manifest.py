"""The model bundle: the contract between the training world and the line.

A bundle is one folder:
  manifest.yaml   what the graph expects and what it was measured to do
  model.onnx      the FP32 graph (uint8 frames in; anomaly_map and score out)
  model.fp16.onnx, model.int8.onnx   optional precision variants
  model.int8.ort.onnx                 INT8 in the form ONNX Runtime runs fast on CPUs
  plans/          TensorRT plans built on the device, named by GPU, TensorRT version, precision
Every file except the manifest and plans/ is listed in the manifest with its sha256, and a
bundle whose files are missing or altered is refused. The manifest is checked once, on open
(edge/bundle/schema.py: key paths in every message); its id (edge/bundle/identity.py) is
checked against the one recorded at install, where there is one.
"""

import copy
import os

import yaml

from ..common.errors import EdgeError
from ..common.fsutil import atomic_write_text, read_limited, sha256_file
from .identity import ID_FILE, bundle_id, read_recorded_id
from .schema import validate_manifest

MANIFEST = "manifest.yaml"
MAX_MANIFEST_BYTES = 4 << 20     # a manifest is a few kB; anything near this is not one
FORMAT = 1
GRAPH_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# Variants with a second graph for one engine, recorded as graphs.<precision>.<engine>.
ENGINE_GRAPH_FILES = {("int8", "onnxruntime"): "model.int8.ort.onnx"}


def load_manifest(mpath):
    """The parsed manifest file; EdgeError (never another exception) for anything unreadable."""
    return parse_manifest(read_limited(mpath, MAX_MANIFEST_BYTES, "manifest"), mpath)


def parse_manifest(data, where):
    """YAML bytes or text -> the manifest mapping (not yet validated)."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return yaml.safe_load(data)
    except UnicodeDecodeError:
        raise EdgeError("manifest is not UTF-8 text", where) from None
    except yaml.YAMLError as exc:
        raise EdgeError(f"manifest is not valid YAML: {' '.join(str(exc).split())}", where) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:   # e.g. a date 2024-13-45
        raise EdgeError(f"manifest has a value YAML cannot read: {exc}", where) from None


def dump_yaml(data):
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


class Bundle:
    def __init__(self, path, verify=True):
        self.path = os.path.abspath(path)
        mpath = os.path.join(self.path, MANIFEST)
        if not os.path.isdir(self.path):
            raise EdgeError("bundle folder not found", path)
        if not os.path.isfile(mpath):
            raise EdgeError("not a bundle (no manifest.yaml)", path)
        self.manifest = validate_manifest(load_manifest(mpath), mpath)
        self.id = bundle_id(self.manifest)
        recorded = read_recorded_id(self.path)
        if recorded is not None and recorded != self.id:
            raise EdgeError(f"manifest changed since install (its digest {self.id[:12]} is not the "
                            f"{recorded[:12]} recorded in {ID_FILE})", mpath)
        if verify:
            self.verify()

    # ---- integrity -------------------------------------------------------------------
    def verify(self):
        real = os.path.realpath(self.path)
        for name, digest in self.manifest["files"].items():
            fpath = os.path.join(self.path, *name.split("/"))
            if not os.path.realpath(fpath).startswith(real + os.sep):
                raise EdgeError("bundle file lies outside the bundle (a link?)", fpath)
            if not os.path.isfile(fpath):
                raise EdgeError("bundle file missing", fpath)
            if sha256_file(fpath) != digest:
                raise EdgeError("bundle file altered (sha256 does not match the manifest)", fpath)

    # ---- what the graph expects --------------------------------------------------------
    @property
    def method(self):
        return self.manifest["method"]

    @property
    def input_hw(self):
        inp = self.manifest["input"]
        return int(inp["height"]), int(inp["width"])

    @property
    def roi(self):
        return self.manifest["input"].get("roi")

    @property
    def threshold(self):
        return float(self.manifest["threshold"]["value"])

    def threshold_for(self, precision="fp32", engine=None):
        """A precision variant's own threshold where `edge quantize` set one (the bundle's rule
        applied to the variant's scores on the same held-out good images), else the bundle's.
        `engine`: the threshold of that engine's own graph where the variant has one."""
        own = self.graph_entry(precision, engine, required=False).get("threshold")
        return float(own["value"]) if own else self.threshold

    def precisions(self):
        return list(self.manifest["graphs"])

    def graph_entry(self, precision="fp32", engine=None, required=True):
        """graphs.<precision>, or graphs.<precision>.<engine> where the variant has a graph of
        its own for that engine (INT8 for ONNX Runtime)."""
        graphs = self.manifest["graphs"]
        if precision not in graphs:
            if not required:
                return {}
            raise EdgeError(f"bundle has no {precision} graph (has: {', '.join(graphs)}); "
                            f"make it with `edge quantize {self.path} --precision {precision}`")
        entry = graphs[precision]
        sub = entry.get(engine) if engine else None
        return sub if isinstance(sub, dict) and "file" in sub else entry

    def graph_path(self, precision="fp32", engine=None):
        return os.path.join(self.path, self.graph_entry(precision, engine)["file"])

    # ---- changing a bundle (atomically) ----------------------------------------------
    def add_file(self, name, src_path=None):
        """Record a file already in the bundle folder (or move src_path there) with its sha256."""
        dst = os.path.join(self.path, name)
        if src_path is not None and os.path.abspath(src_path) != dst:
            os.replace(src_path, dst)
        self.manifest["files"][name] = sha256_file(dst)

    def save(self):
        """Write the manifest atomically. An installed bundle (one with a recorded digest) is
        sealed: only build-time entries (plans) may change."""
        mpath = os.path.join(self.path, MANIFEST)
        validate_manifest(self.manifest, mpath)
        recorded = read_recorded_id(self.path)
        if recorded is not None and bundle_id(self.manifest) != recorded:
            raise EdgeError("an installed bundle is sealed: only `edge build` plans may be added "
                            "(change the bundle where it was made, then pack and install it again)", mpath)
        atomic_write_text(mpath, dump_yaml(self.manifest))

    def copy_manifest(self):
        return copy.deepcopy(self.manifest)


def write_manifest(folder, manifest):
    """Fill in the sha256 of every listed file and write manifest.yaml atomically."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["files"] = {name: sha256_file(os.path.join(folder, name)) for name in manifest.get("files", {})}
    atomic_write_text(os.path.join(folder, MANIFEST), dump_yaml(manifest))
    return manifest
