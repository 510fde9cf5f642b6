"""Names and defaults that several parts must agree on, kept here once."""

import os

# Graph precisions a bundle can hold; fp32 is the trained graph, the others come from `edge quantize`.
PRECISIONS = ("fp32", "fp16", "int8")
VARIANT_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp32")

# Inference engines (edge/engines/); "auto" picks TensorRT when it and a GPU are present.
ENGINE_KINDS = ("onnxruntime", "tensorrt")
ENGINE_CHOICES = ("auto",) + ENGINE_KINDS

# Where `edge install` keeps bundles on the line-side box (current/ and previous/ links under it).
DEFAULT_ROOT = "/opt/lineside"


def install_root(explicit=None):
    """The install root: the given one, else $LINESIDE_ROOT, else DEFAULT_ROOT."""
    return explicit or os.environ.get("LINESIDE_ROOT") or DEFAULT_ROOT
