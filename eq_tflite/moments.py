"""Data-free per-channel statistics of every activation tensor (DFQ's clipped normals).

Each tensor is described per channel (its last axis) by a mean, a variance and
a range [lo, hi]. Sources:

* a model input: uniform on its ``--input_range`` [lo, hi];
* a weighted op with a BatchNorm behind it (``bn_stats``): the pre-activation
  output channel c is N(beta_c, gamma_c^2);
* a weighted op without BN: mean and variance propagated through the weights,
  inputs treated as independent (mean W.mu + b, variance W^2.var);
* ADD/SUB: means add, variances add (independence).

A fused or standalone ReLU/ReLU6 clips the normal N(m, s^2); the mean and
variance of the clipped normal are exact. The range of channel c is
[m - k*s, m + k*s] clipped by the activation (``sigmas`` = k).

Every other op passes statistics by its row's ``stats`` rule
(``eq_tflite.op_table``):

* ``pass`` (pooling, reshapes, resize, slicing, space/batch, ...): unchanged
  per channel (merged into one channel when the op moves channels around);
  ``pad`` adds the padding value to the range;
* ``add`` / ``mul`` / ``div``: by a constant, an exact affine map per channel
  (Rescaling, Normalization); of two tensors, independent operands (the
  product's range from its corners; ``x * x`` is a square). Swish and SE
  gates (x times a sigmoid) are products;
* ``elementwise`` (EXP, GELU, HARD_SWISH, LEAKY_RELU, SIN, ...): the op's own
  float kernel on the channel's range (a 257-point grid, for the range) and
  on Gauss-Hermite nodes of its clipped normal (for mean and variance);
* ``fixed``: the op's fixed int8 output interval (sigmoid, tanh, softmax);
* ``sum``, ``sqdiff``, ``matmul``, ``max``/``min``, ``concat``: see ``_RULES``.

An op without a rule (or whose rule gives no finite range) does not stop the
chain: its output takes the statistics of its first data input, and a note
names the op (``notes``), since a range must never be guessed silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from eq_tflite import op_table
from eq_tflite.bn_stats import BnStats
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op

#: Clip interval of each fused activation that is a clip (``op_table.ACTIVATIONS``).
ACTIVATION_CLIP = {name: a.clip for name, a in op_table.ACTIVATIONS.items() if a.clip is not None}


@dataclass
class ChannelStats:
    """Per-channel mean, variance and range of one tensor (arrays of equal length)."""

    mean: np.ndarray
    var: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    bn_backed: bool = False   # derived from BatchNorm statistics (not only from an input range)

    @property
    def range(self) -> tuple[float, float]:
        """The tensor's range: the union of its channels' ranges."""
        return float(np.min(self.lo)), float(np.max(self.hi))

    def merged(self) -> "ChannelStats":
        """One channel describing the whole tensor (channels equally likely)."""
        mean = float(np.mean(self.mean))
        var = float(np.mean(self.var + self.mean ** 2) - mean ** 2)
        return ChannelStats(np.array([mean]), np.array([max(var, 0.0)]),
                            np.array([np.min(self.lo)]), np.array([np.max(self.hi)]), self.bn_backed)


def _phi(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), np.exp(-0.5 * np.where(np.isfinite(x), x, 0.0) ** 2)
                    / math.sqrt(2 * math.pi), 0.0)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _cdf(x: np.ndarray) -> np.ndarray:
    return np.where(np.isposinf(x), 1.0, np.where(np.isneginf(x), 0.0,
                    0.5 * (1.0 + _erf(np.where(np.isfinite(x), x, 0.0) / math.sqrt(2)))))


def clipped_normal_moments(mean: np.ndarray, std: np.ndarray, lo: float, hi: float,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(E[Y], Var[Y]) of Y = clip(X, lo, hi), X ~ N(mean, std^2), per element.

    For ReLU (lo=0, hi=inf): E[Y] = m (1 - Phi(-m/s)) + s phi(-m/s), DFQ's formula.
    """
    m = np.asarray(mean, np.float64)
    s = np.maximum(np.asarray(std, np.float64), 1e-12)
    a, b = (lo - m) / s, (hi - m) / s
    pa, pb = _cdf(a), _cdf(b)
    fa, fb = _phi(a), _phi(b)
    inside = pb - pa
    lo_f = float(lo) if np.isfinite(lo) else 0.0   # an infinite bound has zero mass beyond it
    hi_f = float(hi) if np.isfinite(hi) else 0.0
    a_f = np.where(np.isfinite(a), a, 0.0)
    b_f = np.where(np.isfinite(b), b, 0.0)
    e1 = lo_f * pa + hi_f * (1 - pb) + m * inside + s * (fa - fb)
    e2 = (lo_f ** 2 * pa + hi_f ** 2 * (1 - pb) + (m ** 2 + s ** 2) * inside
          + 2 * m * s * (fa - fb) + s ** 2 * (a_f * fa - b_f * fb))
    return e1, np.maximum(e2 - e1 ** 2, 0.0)


def normal_stats(mean: np.ndarray, var: np.ndarray, activation: str, sigmas: float) -> ChannelStats:
    """Statistics of act(N(mean, var)) per channel, range mean +- sigmas*std clipped.

    A fused activation that is not a clip (TANH) maps the normal's statistics
    through its function (``function_stats``).
    """
    if activation not in ACTIVATION_CLIP:
        fn = op_table.ACTIVATIONS[activation].fn
        return function_stats(normal_stats(mean, var, "NONE", sigmas), lambda x: fn(x))
    lo_clip, hi_clip = ACTIVATION_CLIP[activation]
    std = np.sqrt(np.maximum(var, 0.0))
    if activation == "NONE":
        m, v = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    else:
        m, v = clipped_normal_moments(mean, std, lo_clip, hi_clip)
    lo = np.clip(mean - sigmas * std, lo_clip, hi_clip)
    hi = np.clip(mean + sigmas * std, lo_clip, hi_clip)
    return ChannelStats(m, v, lo, hi)


def _broadcast(stats: ChannelStats, n: int) -> ChannelStats:
    """``stats`` over ``n`` channels: tiled for a flattened NHWC tensor, else merged."""
    k = len(stats.mean)
    if k == n:
        return stats
    if n % k == 0:
        return ChannelStats(*(np.tile(a, n // k) for a in (stats.mean, stats.var, stats.lo, stats.hi)),
                            stats.bn_backed)
    m = stats.merged()
    return ChannelStats(*(np.full(n, a[0]) for a in (m.mean, m.var, m.lo, m.hi)), m.bn_backed)


def weighted_moments(op: Op, w: np.ndarray, bias: np.ndarray | None, x: ChannelStats,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) per output channel of a weighted op, inputs independent (padding ignored)."""
    w = np.asarray(w, np.float64)
    if op.type == "DEPTHWISE_CONV_2D":
        out = w.shape[3]
        x = _broadcast(x, len(x.mean))
        mult = out // len(x.mean) if len(x.mean) and out % len(x.mean) == 0 else 1
        mu = np.repeat(x.mean, mult) if mult > 1 else _broadcast(x, out).mean
        var = np.repeat(x.var, mult) if mult > 1 else _broadcast(x, out).var
        taps = w.reshape(-1, out)
        mean, variance = taps.sum(0) * mu, (taps ** 2).sum(0) * var
    else:
        mat = w.reshape(w.shape[0], -1, w.shape[-1]) if w.ndim == 4 else w[:, None, :]
        depth, c_in = mat.shape[-1], len(x.mean)
        groups = c_in // depth if (op.type == "CONV_2D" and c_in > depth and c_in % depth == 0
                                   and mat.shape[0] % (c_in // depth) == 0) else 1
        if groups > 1:  # grouped: output channel o reads only its group's input channels
            per = mat.shape[0] // groups
            parts = [slice(g * depth, (g + 1) * depth) for g in range(groups)]
            mean = np.concatenate([np.einsum("oki,i->o", mat[g * per:(g + 1) * per], x.mean[p])
                                   for g, p in enumerate(parts)])
            variance = np.concatenate([np.einsum("oki,i->o", mat[g * per:(g + 1) * per] ** 2,
                                                 x.var[p]) for g, p in enumerate(parts)])
        else:
            xin = _broadcast(x, mat.shape[-1])
            mean = np.einsum("oki,i->o", mat, xin.mean)
            variance = np.einsum("oki,i->o", mat ** 2, xin.var)
    if bias is not None:
        mean = mean + np.asarray(bias, np.float64)
    return mean, variance


def function_stats(x: ChannelStats, fn: Callable[[np.ndarray], np.ndarray]) -> ChannelStats:
    """Statistics of fn(X) per channel, X ~ N(mean, var) clipped to [lo, hi].

    Range: fn on 257 points spanning [lo, hi] (and 0 when inside); mean and
    variance: 24-node Gauss-Hermite quadrature of the clipped normal. Values
    fn leaves non-finite (LOG of a range reaching 0) are dropped; a channel
    with none left gives NaN, which the caller treats as "no rule".
    """
    lo, hi = np.asarray(x.lo, np.float64), np.asarray(x.hi, np.float64)
    grid = lo + (hi - lo) * np.linspace(0.0, 1.0, 257)[:, None]
    grid = np.concatenate([grid, np.clip(np.zeros_like(lo), lo, hi)[None]])
    nodes, weights = np.polynomial.hermite_e.hermegauss(24)
    std = np.sqrt(np.maximum(x.var, 0.0))
    pts = np.clip(x.mean + std * nodes[:, None], lo, hi)
    with np.errstate(all="ignore"):
        g = np.asarray(fn(grid.astype(np.float32)), np.float64).reshape(grid.shape)
        f = np.asarray(fn(pts.astype(np.float32)), np.float64).reshape(pts.shape)
    g = np.where(np.isfinite(g), g, np.nan)
    w = np.where(np.isfinite(f), weights[:, None], 0.0)
    f = np.where(np.isfinite(f), f, 0.0)
    total = w.sum(0)
    with np.errstate(all="ignore"):
        mean = (w * f).sum(0) / total
        var = np.maximum((w * f * f).sum(0) / total - mean ** 2, 0.0)
        out_lo, out_hi = np.nanmin(g, axis=0), np.nanmax(g, axis=0)
    return ChannelStats(mean, var, out_lo, out_hi, x.bn_backed)


def _merged(x: ChannelStats, n: int) -> ChannelStats:
    """``x`` over ``n`` channels: itself, tiled, or merged (see ``_broadcast``)."""
    return x if len(x.mean) == n else _broadcast(x, n)


def _channels(graph: Graph, t: int) -> int:
    shape = graph.tensors[t].shape
    return int(shape[-1]) if shape else 1


def _const_per_channel(graph: Graph, t: int, n: int) -> np.ndarray | None:
    """A constant operand as one value per channel (None: it varies along other axes)."""
    data = np.asarray(graph.tensors[t].data, np.float64)
    if data.size == 1:
        return np.full(n, float(data.reshape(-1)[0]))
    if data.shape and data.shape[-1] == n and data.size == n:
        return data.reshape(-1)
    return None


def _affine(x: ChannelStats, a: np.ndarray, b: np.ndarray) -> ChannelStats:
    """Statistics of a*X + b per channel."""
    lo, hi = a * x.lo + b, a * x.hi + b
    return ChannelStats(a * x.mean + b, a * a * x.var, np.minimum(lo, hi), np.maximum(lo, hi),
                        x.bn_backed)


def _product(a: ChannelStats, b: ChannelStats) -> ChannelStats:
    """Statistics of A*B, A and B independent; range from the corners."""
    corners = np.stack([a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi])
    var = a.var * b.var + a.var * b.mean ** 2 + b.var * a.mean ** 2
    return ChannelStats(a.mean * b.mean, var, corners.min(0), corners.max(0),
                        a.bn_backed and b.bn_backed)


class _NoRule(Exception):
    """The op's rule does not apply to these operands."""


def _binary(graph: Graph, op: Op, stats: dict[int, ChannelStats], sigmas: float) -> ChannelStats:
    """ADD, SUB, MUL, DIV, MAXIMUM, MINIMUM, SQUARED_DIFFERENCE (rule ``op_table`` names),
    with the op's fused activation."""
    act = op.activation
    if act != "NONE" and not (op_table.OPS[op.type].stats == "add" and act in ACTIVATION_CLIP
                              and all(t in stats for t in op.inputs[:2])):
        return _activated(_binary_linear(graph, op, stats, sigmas), act, sigmas)
    return _binary_linear(graph, op, stats, sigmas)


def _binary_linear(graph: Graph, op: Op, stats: dict[int, ChannelStats], sigmas: float
                   ) -> ChannelStats:
    kind = op_table.OPS[op.type].stats
    n = _channels(graph, op.outputs[0])
    a_t, b_t = op.inputs[0], op.inputs[1]
    if a_t in stats and b_t in stats:
        a, b = _merged(stats[a_t], n), _merged(stats[b_t], n)
        if kind == "add":
            sign = 1.0 if op.type == "ADD" else -1.0
            st = normal_stats(a.mean + sign * b.mean, a.var + b.var, op.activation, sigmas)
            st.bn_backed = a.bn_backed and b.bn_backed
            return st
        if kind == "mul":
            if a_t == b_t:
                return function_stats(a, np.square)
            return _product(a, b)
        if kind == "div" and (np.all(b.lo > 0) or np.all(b.hi < 0)):
            inv = ChannelStats(1.0 / b.mean, b.var / np.maximum(b.mean ** 4, 1e-30),
                               1.0 / b.hi, 1.0 / b.lo, b.bn_backed)
            return _product(a, inv)
        if kind == "sqdiff":
            d = normal_stats(a.mean - b.mean, a.var + b.var, "NONE", sigmas)
            return function_stats(ChannelStats(d.mean, d.var, np.minimum(d.lo, a.lo - b.hi),
                                               np.maximum(d.hi, a.hi - b.lo)), np.square)
        if kind in ("max", "min"):
            pick = np.maximum if kind == "max" else np.minimum
            return ChannelStats(pick(a.mean, b.mean), np.maximum(a.var, b.var), pick(a.lo, b.lo),
                                pick(a.hi, b.hi), a.bn_backed and b.bn_backed)
        raise _NoRule
    data, const = (a_t, b_t) if a_t in stats else (b_t, a_t)
    if data not in stats or graph.tensors[const].data is None:
        raise _NoRule
    x = _merged(stats[data], n)
    c = _const_per_channel(graph, const, n)
    if c is None:
        raise _NoRule
    first = data == a_t
    if kind == "add":
        if op.type == "SUB" and not first:
            return _affine(x, -np.ones(n), c)
        return _affine(x, np.ones(n), c if op.type == "ADD" else -c)
    if kind == "mul":
        return _affine(x, c, np.zeros(n))
    if kind == "div" and first and np.all(c != 0):
        return _affine(x, 1.0 / c, np.zeros(n))
    if kind in ("max", "min", "sqdiff", "div"):
        fn = {"max": np.maximum, "min": np.minimum, "sqdiff": lambda u, v: (u - v) ** 2,
              "div": lambda u, v: v / u}[kind]
        return function_stats(x, lambda v: fn(v, c))
    raise _NoRule


def propagate(graph: Graph, input_ranges: Mapping[str, tuple[float, float]],
              bn: BnStats | None, sigmas: float, notes: list[str] | None = None,
              ) -> dict[int, ChannelStats]:
    """ChannelStats of every activation tensor, in topological order (see module doc).

    ``notes`` receives one line per op whose output fell back to its input's
    statistics.
    """
    stats: dict[int, ChannelStats] = {}
    for t in graph.inputs:
        name = graph.tensors[t].name
        if name not in input_ranges:
            raise EqTfliteError(f"no --input_range for model input {name}")
        lo, hi = input_ranges[name]
        c = graph.tensors[t].shape[-1] if graph.tensors[t].shape else 1
        stats[t] = ChannelStats(np.full(c, (lo + hi) / 2), np.full(c, (hi - lo) ** 2 / 12),
                                np.full(c, float(lo)), np.full(c, float(hi)))
    fallbacks: list[str] = []
    for op in graph.ops:
        outs = [t for t in op.outputs if t >= 0 and graph.tensors[t].dtype == np.float32]
        if not outs:
            continue  # shape arithmetic (SHAPE, STRIDED_SLICE on int32, ...): no activation
        try:
            st = _op_stats(graph, op, stats, bn, sigmas)
            if not (np.all(np.isfinite(st.lo)) and np.all(np.isfinite(st.hi))):
                raise _NoRule
        except _NoRule:
            data = [stats[i] for i in op.inputs if i >= 0 and i in stats]
            if not data:
                raise EqTfliteError(f"data-free statistics cannot pass op {op.type} "
                                    f"({graph.tensors[outs[0]].name}): it reads no activation; "
                                    "give --calibration_data") from None
            st = data[0]
            fallbacks.append(op.type)
        for t in outs:
            stats[t] = _merged(st, _channels(graph, t))
    if fallbacks and notes is not None:
        kinds = sorted(set(fallbacks))
        notes.append(f"data-free statistics: no rule for {', '.join(kinds)} ({len(fallbacks)} "
                     "ops); each such output took its input's statistics")
    return stats


def _op_stats(graph: Graph, op: Op, stats: dict[int, ChannelStats], bn: BnStats | None,
              sigmas: float) -> ChannelStats:
    name = graph.tensors[op.outputs[0]].name
    row = op_table.rule(op.type)
    kind = row.stats if row is not None else None
    data = [stats[i] for i in op.inputs if i >= 0 and i in stats]
    n = _channels(graph, op.outputs[0])
    if kind == "weighted":
        if op.activation not in op_table.ACTIVATIONS:
            raise _NoRule
        if bn is not None and name in bn:
            st = normal_stats(bn.beta[name], bn.gamma[name] ** 2, op.activation, sigmas)
            st.bn_backed = True
            return st
        w = graph.tensors[op.weight_input].data
        b = graph.tensors[op.bias_input].data if op.bias_input >= 0 else None
        mean, var = weighted_moments(op, w, b, stats[op.data_input])
        return normal_stats(mean, var, op.activation, sigmas)
    if kind in ("add", "mul", "div", "sqdiff", "max", "min") and len(op.inputs) >= 2:
        return _binary(graph, op, stats, sigmas)
    if not data:
        raise _NoRule
    x = data[0]
    if kind == "clip":
        st = normal_stats(x.mean, x.var, op.type, sigmas)
        st.bn_backed = x.bn_backed
        lo, hi = ACTIVATION_CLIP[op.type]
        st.lo, st.hi = np.maximum(st.lo, np.clip(x.lo, lo, hi)), np.minimum(st.hi, np.clip(x.hi, lo, hi))
        st.lo, st.hi = np.minimum(st.lo, st.hi), np.maximum(st.lo, st.hi)
        return st
    if kind == "fixed":
        lo, hi = op_table.fixed_range(op.type)
        return ChannelStats(np.full(n, (lo + hi) / 2), np.full(n, (hi - lo) ** 2 / 12),
                            np.full(n, lo), np.full(n, hi))
    if kind == "pass":
        return _merged(x, n)
    if kind == "pad":
        value = 0.0
        if op.type == "PADV2" and len(op.inputs) > 2 and graph.tensors[op.inputs[2]].data is not None:
            value = float(np.ravel(graph.tensors[op.inputs[2]].data)[0])
        return _merged(ChannelStats(x.mean, x.var, np.minimum(x.lo, value), np.maximum(x.hi, value),
                                    x.bn_backed), n)
    if kind == "concat":
        axis = op.options.axis % max(len(graph.tensors[op.outputs[0]].shape), 1)
        if op.type == "CONCATENATION" and axis == len(graph.tensors[op.outputs[0]].shape) - 1 \
                and len(data) == len([i for i in op.inputs if i >= 0]):
            st = ChannelStats(*(np.concatenate([getattr(d, f) for d in data])
                                for f in ("mean", "var", "lo", "hi")),
                              all(d.bn_backed for d in data))
            if op.activation != "NONE":
                st = _activated(st, op.activation, sigmas)
            return _merged(st, n)
        merged = [d.merged() for d in data]
        return _merged(ChannelStats(np.array([np.mean([m.mean[0] for m in merged])]),
                                    np.array([max(m.var[0] for m in merged)]),
                                    np.array([min(m.lo[0] for m in merged)]),
                                    np.array([max(m.hi[0] for m in merged)]),
                                    all(d.bn_backed for d in data)), n)
    if kind == "sum":  # a sum of `count` values per output (SUM's reduced size, CUMSUM's axis)
        shape_in = graph.tensors[op.inputs[0]].shape
        count = int(np.prod(shape_in[1:] or (1,))) // max(
            int(np.prod(graph.tensors[op.outputs[0]].shape[1:] or (1,))), 1)
        axis = graph.tensors[op.inputs[1]].data if op.type == "CUMSUM" else None
        if axis is not None:
            count = int(shape_in[int(np.ravel(axis)[0])])
        count = max(count, 1)
        m = _merged(x, n)
        lo, hi = np.minimum(m.lo * count, m.lo), np.maximum(m.hi * count, m.hi)
        return ChannelStats(m.mean * count, m.var * count, lo, hi, m.bn_backed)
    if kind == "matmul":
        a, b = (stats.get(t) for t in op.inputs[:2])
        b = b if b is not None else _const_stats(graph, op.inputs[1])
        if a is None or b is None:
            raise _NoRule
        depth = graph.tensors[op.inputs[0]].shape[-2 if op.options and op.options.adjX else -1]
        same = op.inputs[0] == op.inputs[1]
        a, b = a.merged(), b.merged()
        mean = depth * a.mean * b.mean
        var = depth * (a.var * b.var + a.var * b.mean ** 2 + b.var * a.mean ** 2)
        st = normal_stats(mean, var, "NONE", sigmas)
        if same:  # x @ x^T: its diagonal sums squares, K (m^2 + v) on average
            sq = function_stats(a, np.square)
            st.hi = np.maximum(st.hi, depth * sq.mean + sigmas * np.sqrt(depth * sq.var))
        return _merged(st, n)
    if kind in ("elementwise", "prelu"):
        kernel = row.run
        consts = {i: graph.tensors[t].data for i, t in enumerate(op.inputs)
                  if t >= 0 and t not in stats and graph.tensors[t].data is not None}
        m = _merged(x, n)

        def fn(v: np.ndarray) -> np.ndarray:
            xs = [v if i == 0 else np.asarray(consts[i]) for i in range(len(op.inputs))
                  if i == 0 or i in consts]
            out = np.asarray(kernel(graph, op, xs), np.float64)
            if out.size != v.size:
                raise _NoRule
            return out.reshape(v.shape)

        return _activated(function_stats(m, fn), op.activation, sigmas)
    raise _NoRule


def _activated(st: ChannelStats, activation: str, sigmas: float) -> ChannelStats:
    """``st`` through a fused activation (a clip clips the range and the moments)."""
    if activation == "NONE":
        return st
    fn = op_table.ACTIVATIONS[activation].fn
    return function_stats(st, lambda v: fn(v))


def _const_stats(graph: Graph, t: int) -> ChannelStats | None:
    data = graph.tensors[t].data
    if data is None:
        return None
    d = np.asarray(data, np.float64).reshape(-1)
    return ChannelStats(np.array([d.mean()]), np.array([d.var()]), np.array([d.min()]),
                        np.array([d.max()]))
