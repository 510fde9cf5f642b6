"""Checks for configuration values: every error names the key path and the value at fault.
Shared by the run configuration (edge/runtime/config.py) and the line section (edge/outputs/config.py)."""

import math

from .errors import EdgeError


def _known(d, keys, where):
    if not isinstance(d, dict):
        raise EdgeError(f"must be a mapping, got {type(d).__name__}", where)
    for k in d:
        if k not in keys:
            raise EdgeError(f"unknown key '{k}' (known: {', '.join(sorted(keys))})", where)


def _num(d, key, where, lo, hi, default, kind=int):
    v = d.get(key, default)
    path = f"{where}.{key}"
    if v is None:
        raise EdgeError("is required", path)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (kind is int and v != int(v)):
        raise EdgeError(f"must be {'an integer' if kind is int else 'a finite number'}, got {v!r}", path)
    if not lo <= v <= hi:
        raise EdgeError(f"must be {lo}..{hi}, got {v}", path)
    return kind(v)


def _choice(d, key, where, choices, default):
    v = d.get(key, default)
    if v not in choices:
        raise EdgeError(f"must be one of {', '.join(choices)}, got {v!r}", f"{where}.{key}")
    return v


def _str(d, key, where, default=None, required=False):
    v = d.get(key, default)
    if v is None and required:
        raise EdgeError("is required", f"{where}.{key}")
    if v is not None and not isinstance(v, str):
        raise EdgeError(f"must be a string, got {v!r}", f"{where}.{key}")
    return v


def _bool(d, key, where, default):
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise EdgeError(f"must be true or false, got {v!r}", f"{where}.{key}")
    return v
