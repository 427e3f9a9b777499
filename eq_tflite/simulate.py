"""Numpy executor of the float graph, optionally fake-quantized as deployed.

``Executor`` runs a ``Graph`` op by op on a batch (axis 0 = samples). Given
``QuantParams`` (the numbers ``eq_tflite.resolve`` decides, which the
rewriter writes) it models the int8 model:

* every activation tensor with params is stored as
  ``grid.fake_quant_activation(x, scale, zp, bits.act_clip)`` where it is
  produced (graph inputs when fed): clipped to the b-bit levels (strict) or
  to the int8 container (``activation_range="container"``);
* weighted ops use the resolved b-bit integer weights times their float32
  scales and the resolved int32 biases times their scales;
* fused activations are applied before the output is quantized.

Not modelled: fixed-point requantization (each op is within 1 LSB of
TFLite's int8 kernels given the same inputs, see tests/test_simulate.py) and
quantization of constant operands of non-weighted ops (e.g. MUL by a
constant).

Weighted ops are computed as ``rows @ matrix`` on im2col rows (``Linear``),
the same rows EasyQuant's search scores candidates on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from eq_tflite import grid
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op
from eq_tflite.grid import BitWidths
from eq_tflite.io.flatbuffer import schema
from eq_tflite.plan import Plan
from eq_tflite.quant_spec import WEIGHTED
from eq_tflite.resolve import LayerNumbers, resolve

#: Bytes of im2col rows materialized at once when running a whole layer.
_CHUNK_BYTES = 64 << 20

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "NONE": lambda x: x,
    "RELU": lambda x: np.maximum(x, 0),
    "RELU6": lambda x: np.clip(x, 0, 6),
    "RELU_N1_TO_1": lambda x: np.clip(x, -1, 1),
    "TANH": np.tanh,
}


def apply_activation(name: str, x: np.ndarray) -> np.ndarray:
    """Applies a fused activation by its schema name."""
    try:
        return _ACTIVATIONS[name](x)
    except KeyError:
        raise EqTfliteError(f"cannot simulate fused activation {name}") from None


@dataclass
class QuantParams:
    """Deployed quantization, keyed by tensor index.

    ``activations[t] = (scale, zp)``: tensor ``t`` is fake-quantized where it
    is produced; absent tensors stay float. ``layers[w]``: the shipped numbers
    (``resolve.LayerNumbers``) of the weighted op whose weight tensor is ``w``;
    absent weighted ops stay float.
    """

    bits: BitWidths
    activations: dict[int, tuple[float, int]] = field(default_factory=dict)
    layers: dict[int, LayerNumbers] = field(default_factory=dict)


def plan_quant_params(graph: Graph, plan: Plan) -> tuple[QuantParams, dict[int, np.ndarray]]:
    """The deployed quantization of a plan (``resolve.resolve``), and its float constant edits.

    Tensors without a plan range stay float.
    """
    numbers = resolve(graph, plan)
    idx = graph.by_name
    params = QuantParams(plan.bits, {idx[n]: p for n, p in numbers.activations.items()},
                         {idx[n]: layer for n, layer in numbers.layers.items()})
    weights = {idx[n]: np.asarray(v, np.float32) for n, v in plan.float_weights.items() if n in idx}
    return params, weights


# --------------------------------------------------------------------------
# Weighted ops as rows @ matrix


def _same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """(pad before, pad after) of TFLite SAME padding."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int],
             dilation: tuple[int, int], same: bool, pad_value: float = 0.0) -> np.ndarray:
    """View (N, Ho, Wo, KH, KW, C) of the receptive fields of an NHWC tensor."""
    pads = [(0, 0), (0, 0), (0, 0), (0, 0)]
    if same:
        for ax, k in ((1, kh), (2, kw)):
            pads[ax] = _same_padding(x.shape[ax], k, stride[ax - 1], dilation[ax - 1])
        x = np.pad(x, pads, constant_values=pad_value)
    effh, effw = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    v = sliding_window_view(x, (effh, effw), axis=(1, 2))
    v = v[:, ::stride[0], ::stride[1], :, ::dilation[0], ::dilation[1]]
    return v.transpose(0, 1, 2, 4, 5, 3)


def _transpose_conv_input(x: np.ndarray, out_hw: tuple[int, int], k: tuple[int, int],
                          stride: tuple[int, int], same: bool) -> np.ndarray:
    """Zero-dilated, padded input on which TRANSPOSE_CONV is a VALID stride-1 conv."""
    n, h, w, c = x.shape
    dil = np.zeros((n, (h - 1) * stride[0] + 1, (w - 1) * stride[1] + 1, c), x.dtype)
    dil[:, ::stride[0], ::stride[1]] = x
    pads = [(0, 0)]
    for size, o, kk, s in ((h, out_hw[0], k[0], stride[0]), (w, out_hw[1], k[1], stride[1])):
        before = max((size - 1) * s + kk - o, 0) // 2 if same else 0
        pads.append((kk - 1 - before, o + before - (size - 1) * s - 1))
    pads.append((0, 0))
    crop = tuple(slice(max(-a, 0), d + a + b if b < 0 else None)
                 for (a, b), d in zip(pads, dil.shape))
    return np.pad(dil, [(max(a, 0), max(b, 0)) for a, b in pads])[crop]


def weight_matrix(op_type: str, w: np.ndarray) -> np.ndarray:
    """The weight tensor of a weighted op as (K, C_out): output channels on axis 1.

    Per-channel fake quantization of the matrix (axis 1) equals that of the
    weight tensor on its channel axis.
    """
    if op_type == "FULLY_CONNECTED":
        return w.T
    if op_type == "DEPTHWISE_CONV_2D":
        return w.reshape(-1, w.shape[3])
    if op_type == "TRANSPOSE_CONV":
        w = w[:, ::-1, ::-1, :]
    return w.reshape(w.shape[0], -1).T


@dataclass(frozen=True)
class Linear:
    """A weighted op as ``out[r, c] = sum_k rows[r, k(, c)] * matrix[k, c] + bias[c]``.

    Rows are im2col rows, one per output position. Depthwise rows are
    (R, KH*KW, C_in) and output channel c reads input channel c // multiplier.
    """

    op: Op
    weight_shape: tuple[int, ...]
    in_channels: int
    out_spatial: tuple[int, ...] = ()  # (Ho, Wo) of conv-like ops
    transpose_out_hw: tuple[int, int] | None = None

    @property
    def multiplier(self) -> int:
        """Depth multiplier of a depthwise op, 0 for the others."""
        if self.op.type != "DEPTHWISE_CONV_2D":
            return 0
        return self.weight_shape[3] // self.in_channels

    def windows(self, x: np.ndarray) -> np.ndarray:
        """Receptive-field view (N, Ho, Wo, KH, KW, C) of a conv-like op."""
        o = self.op.options
        same = o.padding == schema.Padding.SAME
        kh, kw = self.weight_shape[1:3]
        if self.op.type == "TRANSPOSE_CONV":
            x = _transpose_conv_input(x, self.transpose_out_hw, (kh, kw),
                                      (o.strideH, o.strideW), same)
            return _windows(x, kh, kw, (1, 1), (1, 1), same=False)
        return _windows(x, kh, kw, (o.strideH, o.strideW),
                        (o.dilationHFactor, o.dilationWFactor), same)

    def rows(self, x: np.ndarray, positions: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """im2col rows of ``x`` at output ``positions`` (index arrays; all when None).

        Positions index (sample, row, col) for convolutions and the flattened
        rows of the input for FULLY_CONNECTED.
        """
        if self.op.type == "FULLY_CONNECTED":
            r = x.reshape(-1, self.weight_shape[1])
            return r if positions is None else r[positions[0]]
        v = self.windows(x)
        v = v.reshape(-1, *v.shape[3:]) if positions is None else v[positions]
        if self.op.type == "DEPTHWISE_CONV_2D":
            return v.reshape(v.shape[0], -1, v.shape[-1])
        return v.reshape(v.shape[0], -1)

    def apply(self, rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Pre-bias output (R, C_out) of ``rows`` with a (K, C_out) ``matrix``."""
        if self.op.type == "DEPTHWISE_CONV_2D":
            m = self.multiplier
            if m == 1:
                return np.einsum("rkc,kc->rc", rows, matrix)
            r, k, c = rows.shape
            return np.einsum("rkc,kcm->rcm", rows, matrix.reshape(k, c, m)).reshape(r, c * m)
        return rows @ matrix

    def _depthwise(self, x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Depthwise output (N, Ho, Wo, C·M) tap by tap on the window view (no im2col copy)."""
        v = self.windows(x)
        kh, kw, c = v.shape[3], v.shape[4], v.shape[5]
        m = self.multiplier
        w = matrix.reshape(kh * kw, c, m).astype(np.float32)
        out = np.zeros((*v.shape[:3], c, m), np.float32)
        tmp = np.empty_like(out)
        for k in range(kh * kw):
            np.multiply(v[:, :, :, k // kw, k % kw, :, None], w[k], out=tmp)
            out += tmp
        return out.reshape(*v.shape[:3], c * m)

    def run(self, x: np.ndarray, matrix: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Whole-layer output before the fused activation, chunked over samples."""
        positions = max(int(np.prod(self.out_spatial, dtype=np.int64)), 1)
        row_bytes = 4 * matrix.shape[0] * (self.in_channels if self.multiplier else 1)
        chunk = max(1, _CHUNK_BYTES // (positions * row_bytes))
        outs = []
        for s in range(0, x.shape[0], chunk):
            xs = x[s:s + chunk]
            y = self._depthwise(xs, matrix) if self.multiplier else self.apply(self.rows(xs), matrix)
            if bias is not None:
                y = y + bias
            if self.op.type == "FULLY_CONNECTED":
                if self.op.options.keepNumDims:
                    y = y.reshape(*xs.shape[:-1], -1)
            else:
                y = y.reshape(xs.shape[0], *self.out_spatial, -1)
            outs.append(y)
        return np.concatenate(outs, axis=0).astype(np.float32)


def linear(graph: Graph, op: Op, x: np.ndarray, out_shape: np.ndarray | None = None) -> Linear:
    """The ``Linear`` view of weighted op ``op`` for inputs shaped like ``x``.

    ``out_shape`` is TRANSPOSE_CONV's output-shape operand when it is computed.
    """
    wshape = tuple(graph.tensors[op.weight_input].shape)
    if op.type == "FULLY_CONNECTED":
        return Linear(op, wshape, wshape[1])
    tout = None
    if op.type == "TRANSPOSE_CONV":
        shape = _const(graph, op.inputs[0]) if out_shape is None else out_shape
        tout = (int(shape[1]), int(shape[2]))
    lin = Linear(op, wshape, x.shape[-1], (), tout)
    spatial = lin.windows(x[:1]).shape[1:3]
    return Linear(op, wshape, x.shape[-1], tuple(spatial), tout)


# --------------------------------------------------------------------------
# Other ops


def _pool(op: Op, x: np.ndarray, kind: str) -> np.ndarray:
    o = op.options
    same = o.padding == schema.Padding.SAME
    stride = (o.strideH, o.strideW)
    if kind == "max":
        v = _windows(x, o.filterHeight, o.filterWidth, stride, (1, 1), same, pad_value=-np.inf)
        return v.max(axis=(3, 4))
    v = _windows(x, o.filterHeight, o.filterWidth, stride, (1, 1), same)
    ones = _windows(np.ones((1, *x.shape[1:3], 1), x.dtype), o.filterHeight, o.filterWidth,
                    stride, (1, 1), same)
    return v.sum(axis=(3, 4)) / ones.sum(axis=(3, 4))


def _reshape(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    """RESHAPE/SQUEEZE/EXPAND_DIMS: to a computed shape operand, else the output's shape.

    A constant or absent shape operand holds the converter's batch size, so
    the output tensor's shape is used with its batch dimension left free.
    """
    if op.type == "RESHAPE" and len(op.inputs) > 1 and op.inputs[1] >= 0 \
            and not graph.tensors[op.inputs[1]].is_const:
        return xs[0].reshape(tuple(int(d) for d in xs[1]))
    shape = list(graph.tensors[op.outputs[0]].shape)
    if shape:
        shape[0] = -1
    return xs[0].reshape(shape)


def _strided_slice(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    o = op.options
    if o.ellipsisMask or o.newAxisMask:
        raise EqTfliteError("cannot simulate STRIDED_SLICE with ellipsis or new-axis masks")
    begin, end, strides = (np.asarray(v).astype(np.int64).ravel() for v in xs[1:4])
    index: list[int | slice] = []
    for i, (b, e, st) in enumerate(zip(begin, end, strides)):
        if o.shrinkAxisMask >> i & 1:
            index.append(int(b))
            continue
        e = b + e if getattr(o, "offset", False) else e
        index.append(slice(None if o.beginMask >> i & 1 else int(b),
                           None if o.endMask >> i & 1 else int(e), int(st)))
    return xs[0][tuple(index)]


def _const(graph: Graph, t: int) -> np.ndarray:
    data = graph.tensors[t].data
    if data is None:
        raise EqTfliteError(f"cannot simulate: tensor {graph.tensors[t].name} must be constant")
    return data


def _softmax(x: np.ndarray, beta: float) -> np.ndarray:
    z = (x - x.max(axis=-1, keepdims=True)) * beta
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _mean(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    axes = tuple(int(a) for a in np.atleast_1d(_const(graph, op.inputs[1])))
    return xs[0].mean(axis=axes, keepdims=bool(op.options.keepDims))


def _pad(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    pads = _const(graph, op.inputs[1]).astype(np.int64)
    value = float(xs[2].reshape(-1)[0]) if op.type == "PADV2" and len(xs) > 2 else 0.0
    return np.pad(xs[0], [tuple(p) for p in pads], constant_values=value)


_ELEMENTWISE: dict[str, Callable[..., np.ndarray]] = {
    "ADD": np.add, "SUB": np.subtract, "MUL": np.multiply,
    "MAXIMUM": np.maximum, "MINIMUM": np.minimum,
}

_OPS: dict[str, Callable[[Graph, Op, list[np.ndarray]], np.ndarray]] = {
    "MAX_POOL_2D": lambda g, op, xs: _pool(op, xs[0], "max"),
    "AVERAGE_POOL_2D": lambda g, op, xs: _pool(op, xs[0], "avg"),
    "MEAN": _mean,
    "RESHAPE": _reshape,
    "SQUEEZE": _reshape,
    "EXPAND_DIMS": _reshape,
    "TRANSPOSE": lambda g, op, xs: np.transpose(xs[0], tuple(int(a) for a in xs[1])),
    "SHAPE": lambda g, op, xs: np.asarray(xs[0].shape, np.int32),
    "STRIDED_SLICE": _strided_slice,
    "PACK": lambda g, op, xs: np.stack(xs, axis=op.options.axis),
    "GATHER": lambda g, op, xs: np.take(xs[0], xs[1], axis=op.options.axis),
    "REDUCE_PROD": lambda g, op, xs: np.prod(xs[0], axis=tuple(int(a) for a in np.atleast_1d(xs[1])),
                                             keepdims=bool(op.options.keepDims)),
    "PAD": _pad,
    "PADV2": _pad,
    "CONCATENATION": lambda g, op, xs: np.concatenate(xs, axis=op.options.axis),
    "SOFTMAX": lambda g, op, xs: _softmax(xs[0], op.options.beta),
    "LOGISTIC": lambda g, op, xs: 1.0 / (1.0 + np.exp(-xs[0])),
    "TANH": lambda g, op, xs: np.tanh(xs[0]),
    "RELU": lambda g, op, xs: np.maximum(xs[0], 0),
    "RELU6": lambda g, op, xs: np.clip(xs[0], 0, 6),
    "RELU_N1_TO_1": lambda g, op, xs: np.clip(xs[0], -1, 1),
    "HARD_SWISH": lambda g, op, xs: xs[0] * np.clip(xs[0] + 3, 0, 6) / 6,
    "LEAKY_RELU": lambda g, op, xs: np.where(xs[0] >= 0, xs[0], xs[0] * op.options.alpha),
    **{name: (lambda fn: lambda g, op, xs: fn(xs[0], xs[1]))(fn) for name, fn in _ELEMENTWISE.items()},
}

#: Op types the executor can run.
SUPPORTED_OPS = frozenset(_OPS) | frozenset(WEIGHTED)


def check_supported(graph: Graph) -> None:
    """Raises ``EqTfliteError`` naming every op type the executor cannot run."""
    missing = sorted({op.type for op in graph.ops if op.type not in SUPPORTED_OPS}
                     | {op.activation for op in graph.ops if op.activation not in _ACTIVATIONS})
    if missing:
        raise EqTfliteError("cannot simulate these ops of the float model: " + ", ".join(missing))


# --------------------------------------------------------------------------
# Executor


class Executor:
    """Runs ``graph`` op by op on one batch, releasing tensors no longer needed.

    ``inputs`` maps input tensor names to (N, ...) arrays. ``weights`` maps
    tensor indices to replacement float constants. ``keep`` lists tensors to
    retain after their last consumer ran.
    """

    def __init__(self, graph: Graph, inputs: Mapping[str, np.ndarray],
                 quant: QuantParams | None = None,
                 weights: Mapping[int, np.ndarray] | None = None,
                 keep: Iterable[int] = ()):
        check_supported(graph)
        self.graph = graph
        self.quant = quant
        self.weights = dict(weights or {})
        self.keep = set(keep) | set(graph.outputs)
        self.values: dict[int, np.ndarray] = {}
        self._uses: dict[int, int] = {}
        for op in graph.ops:
            for t in op.inputs:
                if t >= 0:
                    self._uses[t] = self._uses.get(t, 0) + 1
        for t in graph.inputs:
            name = graph.tensors[t].name
            if name not in inputs:
                raise EqTfliteError(f"no data for model input {name}")
            self._store(t, np.asarray(inputs[name], np.float32))

    def _store(self, t: int, value: np.ndarray) -> None:
        params = self.quant.activations.get(t) if self.quant else None
        self.values[t] = self._fake_quant(value, params) if params else value

    def _fake_quant(self, value: np.ndarray, params: tuple[float, int]) -> np.ndarray:
        return grid.fake_quant_activation(value, *params, clip=self.quant.bits.act_clip)

    def set_activation(self, t: int, params: tuple[float, int]) -> None:
        """Sets (scale, zp) of tensor ``t``; a live value is quantized now."""
        self.quant.activations[t] = params
        if t in self.values:
            self.values[t] = self._fake_quant(self.values[t], params)

    def value(self, t: int) -> np.ndarray:
        """The value of tensor ``t`` as consumers see it (constants included)."""
        if t in self.values:
            return self.values[t]
        if t in self.weights:
            return self.weights[t]
        data = self.graph.tensors[t].data
        if data is None:
            raise KeyError(f"tensor {self.graph.tensors[t].name} is not computed yet")
        return data

    def linear(self, op: Op) -> Linear:
        """The ``Linear`` view of weighted op ``op`` on its current input."""
        shape = self.value(op.inputs[0]) if op.type == "TRANSPOSE_CONV" else None
        return linear(self.graph, op, self.value(op.data_input), shape)

    def layer_weights(self, op: Op) -> tuple[np.ndarray, np.ndarray | None]:
        """(matrix-layout weights, bias) of weighted op ``op`` as deployed."""
        bias = self.value(op.bias_input) if op.bias_input >= 0 else None
        layer = self.quant.layers.get(op.weight_input) if self.quant else None
        if layer is None:
            return weight_matrix(op.type, self.value(op.weight_input)), bias
        real_bias = layer.real_bias()
        return weight_matrix(op.type, layer.real_weights()), \
            real_bias if real_bias is not None else bias

    def compute(self, op: Op) -> np.ndarray:
        """Output of ``op`` before its fused activation and output quantization."""
        if op.type in WEIGHTED:
            x = self.value(op.data_input)
            matrix, bias = self.layer_weights(op)
            return self.linear(op).run(x, matrix, bias)
        xs = [self.value(t) for t in op.inputs if t >= 0]
        dtype = self.graph.tensors[op.outputs[0]].dtype or np.float32
        return np.asarray(_OPS[op.type](self.graph, op, xs), dtype)

    def step(self, op: Op) -> np.ndarray:
        """Runs ``op``; returns its output after the fused activation, before quantization."""
        out = apply_activation(op.activation, self.compute(op))
        self._store(op.outputs[0], out)
        for t in op.inputs:
            if t in self._uses:
                self._uses[t] -= 1
                if self._uses[t] == 0 and t not in self.keep:
                    self.values.pop(t, None)
        return out


def run(graph: Graph, inputs: Mapping[str, np.ndarray], tensors: Iterable[int] | None = None,
        quant: QuantParams | None = None, weights: Mapping[int, np.ndarray] | None = None,
        batch_size: int = 64) -> dict[int, np.ndarray]:
    """Values of ``tensors`` (default: graph outputs) over all samples, in batches."""
    wanted = list(graph.outputs if tensors is None else tensors)
    n = next(iter(inputs.values())).shape[0]
    parts: dict[int, list[np.ndarray]] = {t: [] for t in wanted}
    for s in range(0, n, batch_size):
        ex = Executor(graph, {k: v[s:s + batch_size] for k, v in inputs.items()}, quant,
                      weights, keep=wanted)
        for op in graph.ops:
            ex.step(op)
        for t in wanted:
            parts[t].append(ex.value(t))
    return {t: np.concatenate(p, axis=0) for t, p in parts.items()}
