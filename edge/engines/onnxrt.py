"""ONNX Runtime engine: the default on a box without an NVIDIA GPU, and the reference
against which TensorRT plans are checked."""

import os

import numpy as np

from ..common.errors import EdgeError
from . import Engine


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self, graph_path, precision="fp32", threads=None, providers=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgeError("onnxruntime is not installed (pip install onnxruntime)") from None
        if not os.path.isfile(graph_path):
            raise EdgeError("graph not found", graph_path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        # Worker threads that spin between runs take the CPU the pipeline's other stages
        # need (capture, decisions, records) on a small box.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(graph_path, so, providers=providers)
            self.graph_path = graph_path
        except Exception as exc:
            raise EdgeError(f"ONNX Runtime cannot load the graph: {exc}", graph_path) from None
        self.precision = precision
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.max_batch = shape[0] if isinstance(shape[0], int) else 64
        self.providers = self.session.get_providers()

    def infer(self, frames):
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        amap, score = self.session.run(["anomaly_map", "score"], {self.input_name: frames})
        return amap, score
