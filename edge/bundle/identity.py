"""One identity for a bundle, used by install, records, `edge check` and the live view.

The bundle id is the sha256 of the canonical manifest (compact JSON, keys sorted) without the
entries `edge build` adds on the device (`plans:`). The manifest lists every file's sha256, so
the id covers the whole portable bundle, and building plans on the box does not change it.

`edge install` records the id beside the installed manifest (ID_FILE); every open of that
bundle recomputes it and refuses a manifest that changed since (a threshold edited on the box,
a file entry removed, ...).
"""

import base64
import datetime
import hashlib
import json
import os

from ..common.errors import EdgeError

BUILD_TIME_KEYS = ("plans",)      # added on the device; not part of the identity
ID_FILE = "manifest.sha256"       # written by `edge install` beside manifest.yaml
MAX_NODES = 200_000               # a manifest is small; YAML aliases must not blow it up
MAX_DEPTH = 64


def _canonical(value, budget, depth=0):
    """A JSON-ready copy of a parsed YAML value; exotic YAML types get a tagged string form so
    that every value has one canonical text. EdgeError when too large or too deep."""
    budget[0] -= 1
    if budget[0] < 0:
        raise EdgeError(f"manifest is too large (more than {MAX_NODES} values)")
    if depth > MAX_DEPTH:
        raise EdgeError(f"manifest is nested too deeply (more than {MAX_DEPTH} levels)")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else "!" + type(k).__name__ + ":" + json.dumps(
                _canonical(k, budget, depth + 1), sort_keys=True, separators=(",", ":"))
            out[key] = _canonical(v, budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, budget, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [json.dumps(_canonical(v, budget, depth + 1), sort_keys=True, separators=(",", ":"))
                 for v in value]
        return {"!set": sorted(items)}
    if isinstance(value, (datetime.date, datetime.datetime)):
        return str(value)                 # as json.dumps(default=str) always wrote it
    if isinstance(value, bytes):
        return "!binary:" + base64.b64encode(value).decode("ascii")
    return "!" + type(value).__name__ + ":" + str(value)


def canonical_manifest(manifest):
    """The bytes the id is computed over: the manifest without build-time entries."""
    if not isinstance(manifest, dict):
        raise EdgeError("manifest must be a mapping")
    portable = {k: v for k, v in manifest.items() if k not in BUILD_TIME_KEYS}
    data = _canonical(portable, [MAX_NODES])
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def bundle_id(manifest):
    """sha256 (hex) of the canonical manifest without build-time entries."""
    return hashlib.sha256(canonical_manifest(manifest)).hexdigest()


def read_recorded_id(folder):
    """The id recorded at install (ID_FILE), or None for a bundle that was not installed."""
    path = os.path.join(folder, ID_FILE)
    try:
        with open(path, "rb") as f:
            text = f.read(200).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgeError(f"cannot read the recorded manifest digest: {exc.strerror}", path) from None
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise EdgeError("recorded manifest digest is malformed (64 hex digits expected)", path)
    return text
