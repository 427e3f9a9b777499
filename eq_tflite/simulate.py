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
* fused activations are applied before the output is quantized;
* ops TFLite keeps in float (the op table's float islands) compute in float
  on their dequantized inputs; tensors passed between such ops, and their
  model outputs, stay float (``op_table.float_tensors``).

The other ops run their float kernels from the op table
(``eq_tflite.op_table``); ops with several outputs (SPLIT, UNPACK) store each.
Not modelled: fixed-point requantization and lookup tables (each op is within
1 LSB of LiteRT's int8 kernel given the same inputs, see tests/test_op_table.py)
and quantization of constant operands of non-weighted ops (e.g. MUL by a
constant).

Weighted ops are computed as ``rows @ matrix`` on im2col rows (``Linear``),
the same rows EasyQuant's search scores candidates on.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np

from eq_tflite import grid, kernels, native, op_table
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op
from eq_tflite.grid import BitWidths
from eq_tflite.io.codec import schema
from eq_tflite.plan import Plan
from eq_tflite.quant_spec import WEIGHTED
from eq_tflite.resolve import LayerNumbers, resolve

#: Bytes of im2col rows materialized at once when running a whole layer.
_CHUNK_BYTES = 64 << 20


def apply_activation(name: str, x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Applies a fused activation by its schema name (``op_table.ACTIVATIONS``).

    ``in_place``: overwrite ``x`` (same values; a whole layer's output is not copied).
    """
    try:
        return op_table.ACTIVATIONS[name].fn(x, out=x if in_place else None)
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
    act_bits: dict[int, int] = field(default_factory=dict)  # per-tensor widths (mixed; else bits)

    def clip_of(self, t: int) -> tuple[int, int]:
        """Integer bounds tensor ``t`` is clipped to (its own width's levels when strict)."""
        return self.bits.clip_of(self.act_bits.get(t, self.bits.activations))


def plan_quant_params(graph: Graph, plan: Plan) -> tuple[QuantParams, dict[int, np.ndarray]]:
    """The deployed quantization of a plan (``resolve.resolve``), and its float constant edits.

    Tensors without a plan range stay float.
    """
    numbers = resolve(graph, plan)
    idx = graph.by_name
    params = QuantParams(plan.bits, {idx[n]: p for n, p in numbers.activations.items()},
                         {idx[n]: layer for n, layer in numbers.layers.items()},
                         {idx[n]: b for n, b in numbers.activation_bits.items()})
    weights = {idx[n]: np.asarray(v, np.float32) for n, v in plan.float_weights.items() if n in idx}
    return params, weights


# --------------------------------------------------------------------------
# Weighted ops as rows @ matrix


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


def weight_matrix(op_type: str, w: np.ndarray, in_channels: int | None = None) -> np.ndarray:
    """The weight tensor of a weighted op as (K, C_out): output channels on axis 1.

    Per-channel fake quantization of the matrix (axis 1) equals that of the
    weight tensor on its channel axis. A grouped CONV_2D (``in_channels`` a
    multiple G > 1 of the filters' depth) gives the block-diagonal matrix on
    the full im2col rows: output channel o reads only its group's inputs, the
    other entries are exact zeros (they stay zero under any per-channel scale).
    """
    if op_type == "FULLY_CONNECTED":
        return w.T
    if op_type == "DEPTHWISE_CONV_2D":
        return w.reshape(-1, w.shape[3])
    if op_type == "TRANSPOSE_CONV":
        w = w[:, ::-1, ::-1, :]
    groups = conv_groups(op_type, w.shape, in_channels)
    if groups > 1:
        o, kh, kw, depth = w.shape
        per = o // groups
        m = np.zeros((kh, kw, groups, depth, o), w.dtype)
        for g in range(groups):
            m[:, :, g, :, g * per:(g + 1) * per] = w[g * per:(g + 1) * per].transpose(1, 2, 3, 0)
        return m.reshape(kh * kw * groups * depth, o)
    return w.reshape(w.shape[0], -1).T


def matrix_weights(op_type: str, m: np.ndarray, shape: tuple[int, ...],
                   in_channels: int | None = None) -> np.ndarray:
    """Inverse of ``weight_matrix``: (K, C_out) back to the tensor's layout ``shape``."""
    if op_type == "FULLY_CONNECTED":
        return m.T.reshape(shape)
    if op_type == "DEPTHWISE_CONV_2D":
        return m.reshape(shape)
    groups = conv_groups(op_type, shape, in_channels)
    if groups > 1:
        o, kh, kw, depth = shape
        per = o // groups
        blocks = m.reshape(kh, kw, groups, depth, o)
        return np.concatenate([blocks[:, :, g, :, g * per:(g + 1) * per].transpose(3, 0, 1, 2)
                               for g in range(groups)], axis=0)
    w = m.T.reshape(shape)
    return w[:, ::-1, ::-1, :] if op_type == "TRANSPOSE_CONV" else w


def conv_groups(op_type: str, shape: tuple[int, ...], in_channels: int | None) -> int:
    """Groups of a CONV_2D with filters ``shape`` on ``in_channels`` inputs (1: not grouped)."""
    if op_type != "CONV_2D" or not in_channels or in_channels == shape[3]:
        return 1
    if in_channels % shape[3] or shape[0] % (in_channels // shape[3]):
        raise EqTfliteError(f"CONV_2D with {in_channels} input channels and filters {shape}: "
                            "the input channels are not a whole number of groups")
    return in_channels // shape[3]


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

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """``weight_matrix`` of weights ``w`` of this op (block-diagonal when grouped)."""
        return weight_matrix(self.op.type, w, self.in_channels)

    def weights(self, m: np.ndarray) -> np.ndarray:
        """``matrix_weights``: a (K, C_out) matrix back in this op's weight layout."""
        return matrix_weights(self.op.type, m, self.weight_shape, self.in_channels)

    def windows(self, x: np.ndarray) -> np.ndarray:
        """Receptive-field view (N, Ho, Wo, KH, KW, C) of a conv-like op."""
        o = self.op.options
        same = o.padding == schema.Padding.SAME
        kh, kw = self.weight_shape[1:3]
        if self.op.type == "TRANSPOSE_CONV":
            x = _transpose_conv_input(x, self.transpose_out_hw, (kh, kw),
                                      (o.strideH, o.strideW), same)
            return kernels.windows(x, kh, kw, (1, 1), (1, 1), same=False)
        return kernels.windows(x, kh, kw, (o.strideH, o.strideW),
                        (o.dilationHFactor, o.dilationWFactor), same)

    def _window_geometry(self, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(kernel, stride, dilation, pads before) of ``windows`` on an input of ``shape``."""
        o = self.op.options
        kernel = tuple(self.weight_shape[1:3])
        stride, dilation = (o.strideH, o.strideW), (o.dilationHFactor, o.dilationWFactor)
        pads = (0, 0)
        if o.padding == schema.Padding.SAME:
            pads = tuple(kernels.same_padding(shape[1 + a], kernel[a], stride[a], dilation[a])[0]
                         for a in (0, 1))
        return kernel, stride, dilation, pads

    def rows(self, x: np.ndarray, positions: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """im2col rows of ``x`` at output ``positions`` (index arrays; all when None).

        Positions index (sample, row, col) for convolutions and the flattened
        rows of the input for FULLY_CONNECTED.
        """
        if self.op.type == "FULLY_CONNECTED":
            r = x.reshape(-1, self.weight_shape[1])
            return r if positions is None else r[positions[0]]
        if positions is None:
            v = self.windows(x)
            v = v.reshape(-1, *v.shape[3:])
        elif self.op.type != "TRANSPOSE_CONV" and native.available() \
                and x.dtype == np.float32 and x.flags.c_contiguous:
            v = native.gather_windows(x, positions, *self._window_geometry(x.shape))
        else:  # a few samples' windows at a time: a padded copy of the whole batch is not made
            samples, step = positions[0], max(1, _CHUNK_BYTES // max(x[:1].nbytes, 1))
            v = np.empty((len(samples), *self.windows(x[:1]).shape[3:]), x.dtype)
            for s0 in np.unique(samples // step) * step:
                sel = np.nonzero((samples >= s0) & (samples < s0 + step))[0]
                v[sel] = self.windows(x[s0:s0 + step])[(samples[sel] - s0,
                                                         *(p[sel] for p in positions[1:]))]
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
        if native.available() and x.dtype == np.float32 and x.flags.c_contiguous:
            kernel, stride, dilation, pads = self._window_geometry(x.shape)
            same = self.op.options.padding == schema.Padding.SAME
            out_hw = tuple(kernels.output_size(x.shape[1 + a], kernel[a], stride[a], dilation[a],
                                               same) for a in (0, 1))
            return native.depthwise_conv(x, matrix, self.multiplier, kernel, stride, dilation,
                                         pads, out_hw)
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
        """Whole-layer output (float32) before the fused activation, chunked over samples.

        Each chunk is written into the one output array (a whole layer's output
        is the walk's largest buffer: no list of chunks and no concatenated copy).
        """
        positions = max(int(np.prod(self.out_spatial, dtype=np.int64)), 1)
        # a chunk bounds its rows and its product (a 1x1 expansion's product is wider than its rows)
        row_bytes = 4 * max(matrix.shape[0] * (self.in_channels if self.multiplier else 1),
                            matrix.shape[1])
        chunk = max(1, _CHUNK_BYTES // (positions * row_bytes))
        out = None
        for s in range(0, x.shape[0], chunk):
            xs = x[s:s + chunk]
            y = self._depthwise(xs, matrix) if self.multiplier else self.apply(self.rows(xs), matrix)
            if bias is not None:
                y += bias  # y is this chunk's own product (float32, or float64 with float64 inputs)
            if self.op.type == "FULLY_CONNECTED":
                if self.op.options.keepNumDims:
                    y = y.reshape(*xs.shape[:-1], -1)
            else:
                y = y.reshape(xs.shape[0], *self.out_spatial, -1)
            if out is None:
                out = np.empty((x.shape[0], *y.shape[1:]), np.float32)
            out[s:s + len(y)] = y
        return out


@dataclass(frozen=True)
class GroupedAsDepthwise(Linear):
    """A grouped CONV_2D with one input channel per group, seen as the depthwise op it computes.

    Keras writes a depthwise convolution as ``Conv2D(groups=channels)`` (ConvNeXt's
    7x7 convolutions) and TFLite keeps it a grouped CONV_2D with filters
    [O, KH, KW, 1]. The block-diagonal matrix of ``weight_matrix`` then has
    KH*KW*C rows of which KH*KW per column are not zero, and a layer search
    quantizes and multiplies all of them for every candidate (ConvNeXt-Tiny's
    EasyQuant spent 2188 of 2419 s on its 18 such layers). Here ``op`` carries the
    type DEPTHWISE_CONV_2D (same operand positions and window options), rows are
    (R, KH*KW, C) and the matrix (KH*KW, O): output channel o reads input channel
    o // (O / C), the same sums without the zeros. ``matrix`` and ``weights`` read
    and write the CONV_2D layout, so decisions land on the real tensor.
    """

    conv_shape: tuple[int, ...] = ()

    @classmethod
    def of(cls, lin: Linear) -> "Linear":
        """The view of ``lin`` when it is such a grouped CONV_2D, else ``lin`` itself."""
        shape = lin.weight_shape
        if lin.op.type != "CONV_2D" or shape[3] != 1 or conv_groups("CONV_2D", shape, lin.in_channels) <= 1:
            return lin
        o, kh, kw, _ = shape
        op = replace(lin.op, type="DEPTHWISE_CONV_2D")
        return cls(op, (1, kh, kw, o), lin.in_channels, lin.out_spatial, lin.transpose_out_hw, shape)

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """(KH*KW, O) of CONV_2D filters [O, KH, KW, 1]."""
        return w.reshape(w.shape[0], -1).T

    def weights(self, m: np.ndarray) -> np.ndarray:
        """A (KH*KW, O) matrix back in the CONV_2D layout [O, KH, KW, 1]."""
        return m.T.reshape(self.conv_shape)


def linear(graph: Graph, op: Op, x: np.ndarray, out_shape: np.ndarray | None = None) -> Linear:
    """The ``Linear`` view of weighted op ``op`` for inputs shaped like ``x``.

    ``out_shape`` is TRANSPOSE_CONV's output-shape operand when it is computed.
    """
    wshape = tuple(graph.tensors[op.weight_input].shape)
    if op.type == "FULLY_CONNECTED":
        return Linear(op, wshape, wshape[1])
    tout = None
    if op.type == "TRANSPOSE_CONV":
        shape = kernels.const(graph, op.inputs[0]) if out_shape is None else out_shape
        tout = (int(shape[1]), int(shape[2]))
    lin = Linear(op, wshape, x.shape[-1], (), tout)
    spatial = lin.windows(x[:1]).shape[1:3]
    return Linear(op, wshape, x.shape[-1], tuple(spatial), tout)


# --------------------------------------------------------------------------
# Which ops run


def check_supported(graph: Graph) -> None:
    """Raises ``EqTfliteError`` naming every op type the executor cannot run."""
    missing = op_table.unsupported({op.type for op in graph.ops}, {op.activation for op in graph.ops})
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
        self._owned: set[int] = set()  # values only this executor holds (step(op, output=False))
        self._float = op_table.float_tensors(graph)  # float islands' inner tensors: never quantized
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
        """Stores ``value`` as tensor ``t``, fake-quantized if it is quantized."""
        params = self.quant.activations.get(t) if self.quant and t not in self._float else None
        self.values[t] = self._fake_quant(value, params, t) if params else value

    def _fake_quant(self, value: np.ndarray, params: tuple[float, int], t: int) -> np.ndarray:
        """Quantized ``value`` of tensor ``t``: in place where only this executor holds it."""
        return grid.fake_quant_activation(value, *params, clip=self.quant.clip_of(t),
                                          in_place=t in self._owned)

    def set_activation(self, t: int, params: tuple[float, int]) -> None:
        """Sets (scale, zp) of tensor ``t``; a live value is quantized now."""
        self.quant.activations[t] = params
        if t in self.values:
            self.values[t] = self._fake_quant(self.values[t], params, t)

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
        channels = self.value(op.data_input).shape[-1]
        if layer is None:
            return weight_matrix(op.type, self.value(op.weight_input), channels), bias
        real_bias = layer.real_bias()
        return weight_matrix(op.type, layer.real_weights(), channels), \
            real_bias if real_bias is not None else bias

    def compute(self, op: Op) -> np.ndarray | list[np.ndarray]:
        """Output of ``op`` before its fused activation and output quantization.

        Ops with several outputs (SPLIT, SPLIT_V, UNPACK) give a list.
        """
        if op.type in WEIGHTED:
            x = self.value(op.data_input)
            matrix, bias = self.layer_weights(op)
            return self.linear(op).run(x, matrix, bias)
        xs = [self.value(t) for t in op.inputs if t >= 0]
        out = op_table.OPS[op.type].run(self.graph, op, xs)
        if isinstance(out, list):
            return [np.asarray(o, self.graph.tensors[t].dtype or np.float32)
                    for o, t in zip(out, op.outputs)]
        return np.asarray(out, self.graph.tensors[op.outputs[0]].dtype or np.float32)

    def step(self, op: Op, output: bool = True) -> np.ndarray | None:
        """Runs ``op``; returns its (first) output after the fused activation, before quantization.

        ``output`` False returns None: a weighted op's fresh output is then also
        fake-quantized in place (the layer walk's simulations: one copy of the
        largest tensors, not two).
        """
        out = self.compute(op)
        # a weighted op's output is a fresh array of this executor: its activation runs in place
        fresh = op.type in WEIGHTED
        outs = out if isinstance(out, list) else [apply_activation(op.activation, out,
                                                                   in_place=fresh)]
        for t, value in zip(op.outputs, outs):
            if t >= 0:
                if fresh and not output:  # nobody else gets this array
                    self._owned.add(t)
                self._store(t, value)
        for t in op.inputs:
            if t in self._uses:
                self._uses[t] -= 1
                if self._uses[t] == 0 and t not in self.keep:
                    self.values.pop(t, None)
                    self._owned.discard(t)
        return outs[0] if output else None


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
