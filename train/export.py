"""Export of the graph to ONNX, and the check that the exported graph agrees with PyTorch."""

import warnings

import numpy as np
import torch

OPSET = 17


def export_onnx(graph, path, hw):
    """One graph per model: frames (batch x H x W x 3 uint8) -> anomaly_map, score."""
    dummy = torch.zeros(1, hw[0], hw[1], 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (dummy,), path, input_names=["frames"], output_names=["anomaly_map", "score"],
            dynamic_axes={"frames": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
            opset_version=OPSET, dynamo=False, do_constant_folding=True)
    _finish(path, hw)


def _finish(path, hw):
    """The exporter's shape arithmetic folded into constants and the TensorFlow-style `Pad`
    in front of strided convolutions folded into the convolutions' own pads
    (`convert.quantize.preprocess_graph`: ONNX Runtime spent a sixth of the frame on those
    pads); then the output dims the exporter could not follow: only the batch is dynamic."""
    import onnx

    from convert.quantize import preprocess_graph
    model = preprocess_graph(path)
    for out, dims in zip(model.graph.output, (["batch", hw[0], hw[1]], ["batch"])):
        shape = out.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
    onnx.checker.check_model(model)
    onnx.save(model, path)


def torch_infer(graph, images, batch=16):
    maps, scores = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            m, s = graph(torch.from_numpy(images[i:i + batch]))
            maps.append(m.numpy())
            scores.append(s.numpy())
    return np.concatenate(maps), np.concatenate(scores)


def agreement(ref, got):
    """Largest differences between two (maps, scores) pairs, absolute and relative to the score range."""
    (rm, rs), (gm, gs) = ref, got
    scale = float(max(np.abs(rs).max(), 1e-6))
    return {"max_abs_map": float(np.abs(rm - gm).max()), "max_abs_score": float(np.abs(rs - gs).max()),
            "max_rel_score": float(np.abs(rs - gs).max() / scale)}
