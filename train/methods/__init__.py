"""One module per method. Each provides a class with:
    name, pool (whether the embedder pools neighbourhoods),
    fit(emb) with emb the training embeddings N x C x h x w (float32 tensor), progress callback,
    head() -> nn.Module mapping N x C x h x w embeddings to N x h x w patch scores,
    params() -> dict recorded in the manifest.
The bare model (head) is kept apart from the training loop (train/trainer.py)."""

import math

from edge.common.errors import EdgeError

METHODS = {
    "patchcore": ("train.methods.patchcore", "PatchCore"),
    "padim": ("train.methods.padim", "Padim"),
}


def get_method(name):
    import importlib
    if name not in METHODS:
        raise EdgeError(f"unknown method '{name}' (choose from: {', '.join(METHODS)})")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)


def param(value, name, kind=float, lo=None, hi=None, lo_open=False):
    """A method parameter (--param NAME=VALUE) checked: the right kind, finite, in range.
    lo_open: the value must be above `lo`, not equal to it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and kind is int:
        ok = isinstance(value, int) or (math.isfinite(value) and value == int(value))
    if not ok or not math.isfinite(value):
        raise EdgeError(f"--param {name} must be {'an integer' if kind is int else 'a finite number'}, "
                        f"got {value!r}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        low = "" if lo is None else (f"more than {lo:g}" if lo_open else f"at least {lo:g}")
        high = "" if hi is None else f"at most {hi:g}"
        raise EdgeError(f"--param {name} must be {' and '.join(t for t in (low, high) if t)}, got {value!r}")
    return kind(value)
