"""A quantized graph's arithmetic in floating point: what TensorRT computes, independent of the CPU.

ONNX Runtime fuses Q/DQ pairs into integer kernels whose results depend on the CPU: on x86
with AVX2 or AVX-512 but without VNNI its u8 x s8 kernels add pairs of products in 16 bits
with saturation (VPMADDUBSW), so the same graph scores differently on different boxes.
TensorRT does the arithmetic the Q/DQ pairs state, with int32 accumulation. This module
rewrites a quantized graph so that every quantization step is written out as float ops that
no runtime can fuse into integer kernels:

  QuantizeLinear(x, s, z)      -> Clip(Round(x / s) + z, qmin, qmax)    (float, integer-valued;
                                  ONNX Round rounds half to even, as QuantizeLinear and TensorRT do)
  DequantizeLinear(q, s, z)    -> (q - z) * s                           (a Cast first if q is integer)
  DequantizeLinear(weights)    -> the float weights (q - z) * s, folded
  MatMulInteger(a, B, za, zb)  -> (a - za) @ (B - zb)
  MatMulIntegerToFloat(...)    -> ((a - za) * sa) @ ((B - zb) * sb) + bias

Run under ONNX Runtime's float kernels, the result is the quantized arithmetic up to float32
rounding of the sums: the prediction for TensorRT (`model.int8.onnx`), and the exact
reference an integer kernel must match when it does not saturate (`model.int8.ort.onnx`).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convert.cpu import cpu_features, cpu_kernels  # noqa: F401  (kept importable from here)
from edge.common.errors import EdgeError

_RANGES = {TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255),
           TensorProto.INT16: (-32768, 32767), TensorProto.UINT16: (0, 65535)}
_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QLinearAdd", "ConvInteger", "QGemm", "QLinearMul")


class _Rewriter:
    def __init__(self, model):
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.count = 0
        self.floats = set()       # integer tensors of the graph that the rewrite made float

    def const(self, base, array):
        self.count += 1
        name = f"{base}/qdq_float_{self.count}"
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        self.inits[name] = self.model.graph.initializer[-1]
        return name

    def array(self, name):
        return None if not name or name not in self.inits else numpy_helper.to_array(self.inits[name])

    def node(self, op, inputs, output, name, **attrs):
        return helper.make_node(op, inputs, [output], name=name, **attrs)

    @staticmethod
    def _axis(node, default=1):
        return next((a.i for a in node.attribute if a.name == "axis"), default)

    def _per_axis(self, values, rank, axis):
        """Scale or zero point shaped to broadcast along `axis` of a tensor of `rank`."""
        v = np.asarray(values, np.float64)
        if v.ndim == 0 or v.size == 1:
            return v.reshape(())
        axis = axis % rank
        return v.reshape([-1] + [1] * (rank - 1 - axis))

    # ---- one rewrite per op ----------------------------------------------------------
    def quantize(self, n):
        s, z = self.array(n.input[1]), self.array(n.input[2]) if len(n.input) > 2 else None
        if s is None:
            raise EdgeError(f"QuantizeLinear {n.name}: its scale is not a constant")
        qtype = self.inits[n.input[2]].data_type if z is not None else TensorProto.UINT8
        if qtype not in _RANGES:
            raise EdgeError(f"QuantizeLinear {n.name}: type {TensorProto.DataType.Name(qtype)} not supported")
        lo, hi = _RANGES[qtype]
        x = self.array(n.input[0])
        if x is not None:                                       # a constant (weights): fold
            axis = self._axis(n)
            q = np.clip(np.round(x.astype(np.float64) / self._per_axis(s, x.ndim, axis))
                        + (0 if z is None else self._per_axis(z, x.ndim, axis)), lo, hi)
            self.model.graph.initializer.append(numpy_helper.from_array(q.astype(np.float32), n.output[0]))
            self.inits[n.output[0]] = self.model.graph.initializer[-1]
            return []
        if s.size != 1:
            raise EdgeError(f"QuantizeLinear {n.name}: per-axis activation scales are not supported")
        zf = 0.0 if z is None else float(np.asarray(z).reshape(-1)[0])
        p, out = n.name, n.output[0]
        nodes = [self.node("Div", [n.input[0], self.const(p, np.float32(s.reshape(())))], out + "/div", p + "/div"),
                 self.node("Round", [out + "/div"], out + "/round", p + "/round")]
        last = out + "/round"
        if zf:
            nodes.append(self.node("Add", [last, self.const(p, np.float32(zf))], out + "/zp", p + "/zp"))
            last = out + "/zp"
        nodes.append(self.node("Clip", [last, self.const(p, np.float32(lo)), self.const(p, np.float32(hi))], out,
                               p + "/clip"))
        self.floats.add(out)
        return nodes

    def dequantize(self, n):
        s, z = self.array(n.input[1]), self.array(n.input[2]) if len(n.input) > 2 else None
        if s is None:
            raise EdgeError(f"DequantizeLinear {n.name}: its scale is not a constant")
        q = self.array(n.input[0])
        if q is not None:                                       # weights: fold
            axis = self._axis(n)
            w = (q.astype(np.float64) - (0 if z is None else self._per_axis(z, q.ndim, axis))) \
                * self._per_axis(s, q.ndim, axis)
            self.model.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), n.output[0]))
            self.inits[n.output[0]] = self.model.graph.initializer[-1]
            return []
        if s.size != 1:
            raise EdgeError(f"DequantizeLinear {n.name}: per-axis activation scales are not supported")
        p, out, x, nodes = n.name, n.output[0], n.input[0], []
        if x not in self.floats:                                 # an integer tensor (the frames)
            nodes.append(self.node("Cast", [x], out + "/float", p + "/cast", to=TensorProto.FLOAT))
            x = out + "/float"
        zf = 0.0 if z is None else float(np.asarray(z).reshape(-1)[0])
        if zf:
            nodes.append(self.node("Sub", [x, self.const(p, np.float32(zf))], out + "/zp", p + "/zp"))
            x = out + "/zp"
        nodes.append(self.node("Mul", [x, self.const(p, np.float32(s.reshape(())))], out, p + "/scale"))
        return nodes

    def _left(self, n, x, zp_name, scale_name=None):
        """The integer left factor as float, zero point removed (and scaled)."""
        p, nodes = n.name, []
        if x not in self.floats:
            nodes.append(self.node("Cast", [x], p + "/a_float", p + "/a_cast", to=TensorProto.FLOAT))
            x = p + "/a_float"
        z = self.array(zp_name)
        if z is not None and float(np.asarray(z).reshape(-1)[0]):
            nodes.append(self.node("Sub", [x, self.const(p, np.float32(np.asarray(z).reshape(-1)[0]))],
                                   p + "/a_zp", p + "/a_zp"))
            x = p + "/a_zp"
        s = self.array(scale_name)
        if s is not None:
            nodes.append(self.node("Mul", [x, self.const(p, np.float32(s.reshape(())))], p + "/a_scaled", p + "/a_scale"))
            x = p + "/a_scaled"
        return nodes, x

    def _right(self, n, b_name, zp_name, scale=None):
        b = self.array(b_name)
        if b is None:
            raise EdgeError(f"{n.op_type} {n.name}: its right factor is not a constant")
        z = self.array(zp_name)
        w = b.astype(np.float64) - (0 if z is None else np.asarray(z, np.float64))   # per column: broadcasts
        if scale is not None:
            w = w * np.asarray(scale, np.float64)
        return self.const(n.name, w.astype(np.float32))

    def matmul_integer(self, n):
        get = lambda i: n.input[i] if len(n.input) > i and n.input[i] else None  # noqa: E731
        nodes, a = self._left(n, n.input[0], get(2))
        nodes.append(self.node("MatMul", [a, self._right(n, n.input[1], get(3))], n.output[0], n.name + "/matmul"))
        self.floats.add(n.output[0])
        return nodes

    def matmul_integer_to_float(self, n):
        get = lambda i: n.input[i] if len(n.input) > i and n.input[i] else None  # noqa: E731
        nodes, a = self._left(n, n.input[0], get(4), get(2))
        b = self._right(n, n.input[1], get(5), self.array(get(3)))
        bias = get(6)
        mm = n.output[0] + "/matmul" if bias else n.output[0]
        nodes.append(self.node("MatMul", [a, b], mm, n.name + "/matmul"))
        if bias:
            nodes.append(self.node("Add", [mm, bias], n.output[0], n.name + "/bias"))
        return nodes

    def run(self):
        old = list(self.model.graph.node)
        new = []
        for n in old:
            if n.op_type in _INTEGER_OPS:
                raise EdgeError(f"{n.op_type} {n.name}: an integer operator the float simulation does not rewrite")
            rewrite = {"QuantizeLinear": self.quantize, "DequantizeLinear": self.dequantize,
                       "MatMulInteger": self.matmul_integer,
                       "MatMulIntegerToFloat": self.matmul_integer_to_float}.get(n.op_type)
            new.extend(rewrite(n) if rewrite else [n])
        del self.model.graph.node[:]
        self.model.graph.node.extend(new)
        del self.model.graph.value_info[:]                    # integer tensors are float now
        for o in self.model.graph.output:
            if o.name in self.floats:
                o.type.tensor_type.elem_type = TensorProto.FLOAT
        used = {t for n in new for t in n.input}
        for i in [i for i in self.model.graph.initializer if i.name not in used]:
            self.model.graph.initializer.remove(i)
        return self.model


def float_simulation(model):
    """A copy of `model` (ModelProto or path) with its quantization written out as float ops."""
    if isinstance(model, str):
        model = onnx.load(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _Rewriter(m).run()
    opsets = {o.domain or "": o.version for o in m.opset_import}
    if opsets.get("", 0) < 13:                                 # Clip with inputs, Round
        raise EdgeError(f"the float simulation needs opset 13 or later (graph has {opsets.get('', 0)})")
    used = {n.domain or "" for n in m.graph.node}
    keep = [o for o in m.opset_import if (o.domain or "") in ("", "ai.onnx") or o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m


def save_float_simulation(src, dst):
    """Write the float simulation of the graph at `src` to `dst`; returns `dst`."""
    onnx.save(float_simulation(src), dst)
    return dst


def is_quantized(model):
    """True if the graph has any Q/DQ or integer op (a path or a ModelProto)."""
    if isinstance(model, str):
        model = onnx.load(model, load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "MatMulIntegerToFloat")
               + _INTEGER_OPS for n in model.graph.node)
