"""One module per method. Each provides a class with:
    name, pool (whether the embedder pools neighbourhoods),
    fit(emb) with emb the training embeddings N x C x h x w (float32 tensor), progress callback,
    head() -> nn.Module mapping N x C x h x w embeddings to N x h x w patch scores,
    params() -> dict recorded in the manifest.
The bare model (head) is kept apart from the training loop (train/trainer.py)."""

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
