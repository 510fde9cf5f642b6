"""Training world: data sets in MVTec AD layout, backbones, methods, export to a model bundle.

Modules that need torch import it themselves; data.py and evaluate.py do not,
so evaluation runs wherever ONNX Runtime does."""
