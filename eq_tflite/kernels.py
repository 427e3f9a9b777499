"""Float numpy kernels of the non-weighted TFLite ops (LiteRT's reference semantics).

Each kernel is ``(graph, op, xs) -> array`` (or a list of arrays for ops with
several outputs), where ``xs`` are the values of the op's present inputs in
order, axis 0 holding the samples of a batch. The model's own batch size is
1 (or free), so an op that slices, tiles or reshapes axis 0 over the model's
whole batch keeps every sample. ``eq_tflite.op_table`` names the kernel of
each op; the weighted ops are ``simulate.Linear``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op
from eq_tflite.io.codec import schema


def const(graph: Graph, t: int) -> np.ndarray:
    """The data of constant tensor ``t``; EqTfliteError when it is computed."""
    data = graph.tensors[t].data
    if data is None:
        raise EqTfliteError(f"cannot simulate: tensor {graph.tensors[t].name} must be constant")
    return data


def _ints(v: Any) -> list[int]:
    return [int(a) for a in np.asarray(v).reshape(-1)]


def _axes(v: Any, ndim: int) -> tuple[int, ...]:
    return tuple(sorted({a % ndim for a in _ints(v)}))


# --------------------------------------------------------------------------
# Windows (pooling and the weighted ops' im2col rows)


def output_size(size: int, k: int, stride: int, dilation: int, same: bool) -> int:
    """Output length along one axis of a window op (TFLite SAME or VALID padding)."""
    if same:
        return -(-size // stride)
    return (size - (k - 1) * dilation - 1) // stride + 1


def same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """(pad before, pad after) of TFLite SAME padding."""
    eff = (k - 1) * dilation + 1
    out = output_size(size, k, stride, dilation, True)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def windows(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int],
            dilation: tuple[int, int], same: bool, pad_value: float = 0.0) -> np.ndarray:
    """View (N, Ho, Wo, KH, KW, C) of the receptive fields of an NHWC tensor."""
    pads = [(0, 0), (0, 0), (0, 0), (0, 0)]
    if same:
        for ax, k in ((1, kh), (2, kw)):
            pads[ax] = same_padding(x.shape[ax], k, stride[ax - 1], dilation[ax - 1])
        if any(p != (0, 0) for p in pads):  # np.pad copies even when nothing is padded
            x = np.pad(x, pads, constant_values=pad_value)
    effh, effw = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    v = sliding_window_view(x, (effh, effw), axis=(1, 2))
    v = v[:, ::stride[0], ::stride[1], :, ::dilation[0], ::dilation[1]]
    return v.transpose(0, 1, 2, 4, 5, 3)


def pool(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    o, x = op.options, xs[0]
    same = o.padding == schema.Padding.SAME
    stride = (o.strideH, o.strideW)
    if op.type == "MAX_POOL_2D":
        v = windows(x, o.filterHeight, o.filterWidth, stride, (1, 1), same, pad_value=-np.inf)
        return v.max(axis=(3, 4))
    v = windows(x, o.filterHeight, o.filterWidth, stride, (1, 1), same)
    ones = windows(np.ones((1, *x.shape[1:3], 1), x.dtype), o.filterHeight, o.filterWidth,
                   stride, (1, 1), same)
    return v.sum(axis=(3, 4)) / ones.sum(axis=(3, 4))


# --------------------------------------------------------------------------
# Shape ops


def reshape(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
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


def _whole_batch(graph: Graph, t: int, begin: int, end: int | None) -> bool:
    """True when [begin, end) on axis 0 covers the model's whole (size-1 or free) batch."""
    shape = graph.tensors[t].shape
    return begin == 0 and (end is None or (bool(shape) and shape[0] in (1, -1) and end in (1, -1)))


def strided_slice(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
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
        lo = None if o.beginMask >> i & 1 else int(b)
        hi = None if o.endMask >> i & 1 else int(e)
        if i == 0 and st == 1 and xs[0].ndim > 1 and _whole_batch(graph, op.inputs[0], lo or 0, hi):
            lo = hi = None
        index.append(slice(lo, hi, int(st)))
    return xs[0][tuple(index)]


def slice_(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    begin, size = _ints(xs[1]), _ints(xs[2])
    index = []
    for i, (b, s) in enumerate(zip(begin, size)):
        end = None if s == -1 else b + s
        if i == 0 and _whole_batch(graph, op.inputs[0], b, end):
            b, end = 0, None
        index.append(slice(b, end))
    return xs[0][tuple(index)]


def split(graph: Graph, op: Op, xs: list[np.ndarray]) -> list[np.ndarray]:
    axis = int(np.asarray(xs[0]).reshape(-1)[0]) % xs[1].ndim
    return np.split(xs[1], op.options.numSplits, axis=axis)


def split_v(graph: Graph, op: Op, xs: list[np.ndarray]) -> list[np.ndarray]:
    x, sizes = xs[0], _ints(xs[1])
    axis = int(np.asarray(xs[2]).reshape(-1)[0]) % x.ndim
    if -1 in sizes:
        sizes[sizes.index(-1)] = x.shape[axis] - (sum(sizes) + 1)
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def unpack(graph: Graph, op: Op, xs: list[np.ndarray]) -> list[np.ndarray]:
    axis = op.options.axis % xs[0].ndim
    return [np.take(xs[0], i, axis=axis) for i in range(xs[0].shape[axis])]


def pad(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    pads = [tuple(p) for p in const(graph, op.inputs[1]).astype(np.int64)]
    if op.type == "MIRROR_PAD":
        mode = "reflect" if op.options.mode == schema.MirrorPadMode.REFLECT else "symmetric"
        return np.pad(xs[0], pads, mode=mode)
    value = float(xs[2].reshape(-1)[0]) if op.type == "PADV2" and len(xs) > 2 else 0.0
    return np.pad(xs[0], pads, constant_values=value)


def tile(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    reps = _ints(xs[1])
    if reps and graph.tensors[op.inputs[0]].shape[:1] in ((1,), (-1,)):
        reps[0] = 1  # the model's batch of one: every sample tiled alike
    return np.tile(xs[0], reps)


def broadcast_to(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    shape = _ints(xs[1])
    if len(shape) == xs[0].ndim:
        shape[0] = xs[0].shape[0]
    return np.broadcast_to(xs[0], shape)


def space_to_batch(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    """NHWC SPACE_TO_BATCH_ND: batch index (i * bw + j) * N + n (n the sample)."""
    x, (bh, bw) = xs[0], _ints(xs[1])
    pads = [tuple(p) for p in np.asarray(xs[2]).astype(np.int64).reshape(-1, 2)]
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    n, h, w, c = x.shape
    x = x.reshape(n, h // bh, bh, w // bw, bw, c).transpose(2, 4, 0, 1, 3, 5)
    return x.reshape(bh * bw * n, h // bh, w // bw, c)


def batch_to_space(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    x, (bh, bw) = xs[0], _ints(xs[1])
    crops = np.asarray(xs[2]).astype(np.int64).reshape(-1, 2)
    b, h, w, c = x.shape
    n = b // (bh * bw)
    x = x.reshape(bh, bw, n, h, w, c).transpose(2, 3, 0, 4, 1, 5).reshape(n, h * bh, w * bw, c)
    (t, bot), (left, right) = crops
    return x[:, t:h * bh - bot, left:w * bw - right]


def depth_to_space(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    x, bs = xs[0], op.options.blockSize
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, bs, bs, c // bs ** 2).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * bs, w * bs, c // bs ** 2)


def space_to_depth(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    x, bs = xs[0], op.options.blockSize
    n, h, w, c = x.shape
    x = x.reshape(n, h // bs, bs, w // bs, bs, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // bs, w // bs, bs * bs * c)


def _resize_coords(out: int, size: int, align: bool, half: bool) -> np.ndarray:
    scale = np.float32((size - 1) / (out - 1) if align and out > 1 else size / out)
    pos = np.arange(out, dtype=np.float32)
    return (pos + np.float32(0.5)) * scale - np.float32(0.5) if half else pos * scale


def resize_bilinear(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    """LiteRT's bilinear resize: corners (floor, ceil) clamped to the input, weights from the offset."""
    x, (oh, ow) = xs[0], _ints(xs[1])
    o = op.options
    out = x
    for axis, size in ((1, oh), (2, ow)):
        pos = _resize_coords(size, x.shape[axis], o.alignCorners, o.halfPixelCenters)
        lo = np.maximum(np.floor(pos), 0).astype(np.int64)
        hi = np.minimum(np.ceil(pos), x.shape[axis] - 1).astype(np.int64)
        frac = (pos - lo).astype(np.float32)
        shape = [1] * x.ndim
        shape[axis] = -1
        frac = frac.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out


def resize_nearest(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    x, (oh, ow) = xs[0], _ints(xs[1])
    o = op.options
    out = x
    for axis, size in ((1, oh), (2, ow)):
        n = x.shape[axis]
        scale = np.float32((n - 1) / (size - 1) if o.alignCorners and size > 1 else n / size)
        pos = (np.arange(size, dtype=np.float32) + np.float32(0.5 if o.halfPixelCenters else 0)) * scale
        # align_corners rounds halves away from zero (TfLiteRound), else floor
        idx = np.floor(pos + np.float32(0.5)) if o.alignCorners else np.floor(pos)
        idx = np.clip(idx.astype(np.int64), 0, n - 1)
        out = np.take(out, idx, axis=axis)
    return out


# --------------------------------------------------------------------------
# Reductions and products


def reduce(fn):
    def kernel(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
        axes = _axes(xs[1], xs[0].ndim)
        return fn(xs[0], axis=axes, keepdims=bool(op.options.keepDims))
    return kernel


def batch_matmul(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    a, b = xs[0], xs[1]
    if op.options is not None and op.options.adjX:
        a = np.swapaxes(a, -1, -2)
    if op.options is not None and op.options.adjY:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def softmax(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    z = (xs[0] - xs[0].max(axis=-1, keepdims=True)) * op.options.beta
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    z = xs[0] - xs[0].max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    x = xs[0].astype(np.float64)
    if op.options is not None and op.options.approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def cumsum(graph: Graph, op: Op, xs: list[np.ndarray]) -> np.ndarray:
    axis = int(np.asarray(xs[1]).reshape(-1)[0]) % xs[0].ndim
    x = np.flip(xs[0], axis) if op.options.reverse else xs[0]
    out = np.cumsum(x, axis=axis)
    if op.options.exclusive:
        out = out - x
    return np.flip(out, axis) if op.options.reverse else out


def unary(fn):
    """A kernel applying ``fn`` to the first input."""
    return lambda graph, op, xs: fn(xs[0])


def binary(fn):
    """A kernel applying ``fn`` to the first two inputs (numpy broadcasting)."""
    return lambda graph, op, xs: fn(xs[0], xs[1])
