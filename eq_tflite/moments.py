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
[m - k*s, m + k*s] clipped by the activation (``sigmas`` = k). Pooling and
reshapes keep per-channel statistics; an op without a rule raises
EqTfliteError naming it, since a range must never be guessed silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from eq_tflite.bn_stats import BnStats
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op
from eq_tflite.quant_spec import WEIGHTED

#: Clip interval of each fused activation.
ACTIVATION_CLIP = {"NONE": (-np.inf, np.inf), "RELU": (0.0, np.inf), "RELU6": (0.0, 6.0),
                   "RELU_N1_TO_1": (-1.0, 1.0)}
#: Ops that pass per-channel statistics through unchanged.
_PASS_THROUGH = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "QUANTIZE", "DEQUANTIZE",
                           "SQUEEZE", "RESHAPE", "EXPAND_DIMS", "PAD", "PADV2"})
_STANDALONE_ACT = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}
_FIXED_RANGE = {"SOFTMAX": (0.0, 1.0), "LOGISTIC": (0.0, 1.0), "TANH": (-1.0, 1.0)}


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
    """Statistics of act(N(mean, var)) per channel, range mean +- sigmas*std clipped."""
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
        xin = _broadcast(x, mat.shape[-1])
        mean = np.einsum("oki,i->o", mat, xin.mean)
        variance = np.einsum("oki,i->o", mat ** 2, xin.var)
    if bias is not None:
        mean = mean + np.asarray(bias, np.float64)
    return mean, variance


def propagate(graph: Graph, input_ranges: Mapping[str, tuple[float, float]],
              bn: BnStats | None, sigmas: float) -> dict[int, ChannelStats]:
    """ChannelStats of every activation tensor, in topological order (see module doc)."""
    stats: dict[int, ChannelStats] = {}
    for t in graph.inputs:
        name = graph.tensors[t].name
        if name not in input_ranges:
            raise EqTfliteError(f"no --input_range for model input {name}")
        lo, hi = input_ranges[name]
        c = graph.tensors[t].shape[-1] if graph.tensors[t].shape else 1
        stats[t] = ChannelStats(np.full(c, (lo + hi) / 2), np.full(c, (hi - lo) ** 2 / 12),
                                np.full(c, float(lo)), np.full(c, float(hi)))
    for op in graph.ops:
        out = op.outputs[0]
        if graph.tensors[out].dtype != np.float32:
            continue  # shape arithmetic (SHAPE, STRIDED_SLICE on int32, ...): no activation
        stats[out] = _op_stats(graph, op, stats, bn, sigmas)
    return stats


def _op_stats(graph: Graph, op: Op, stats: dict[int, ChannelStats], bn: BnStats | None,
              sigmas: float) -> ChannelStats:
    name = graph.tensors[op.outputs[0]].name
    data = [stats[i] for i in op.inputs if i >= 0 and i in stats]
    if op.type in WEIGHTED:
        if op.activation not in ACTIVATION_CLIP:
            raise EqTfliteError(f"data-free statistics: unsupported fused activation {op.activation}")
        if bn is not None and name in bn:
            st = normal_stats(bn.beta[name], bn.gamma[name] ** 2, op.activation, sigmas)
            st.bn_backed = True
            return st
        w = graph.tensors[op.weight_input].data
        b = graph.tensors[op.bias_input].data if op.bias_input >= 0 else None
        mean, var = weighted_moments(op, w, b, stats[op.data_input])
        return normal_stats(mean, var, op.activation, sigmas)
    if op.type in ("ADD", "SUB") and len(data) == 2:
        n = max(len(data[0].mean), len(data[1].mean))
        a, b = _broadcast(data[0], n), _broadcast(data[1], n)
        sign = 1.0 if op.type == "ADD" else -1.0
        st = normal_stats(a.mean + sign * b.mean, a.var + b.var, op.activation, sigmas)
        st.bn_backed = a.bn_backed and b.bn_backed
        return st
    if op.type in _STANDALONE_ACT and data:
        x = data[0]
        st = normal_stats(x.mean, x.var, _STANDALONE_ACT[op.type], sigmas)
        st.bn_backed = x.bn_backed
        return st
    if op.type in _FIXED_RANGE:
        lo, hi = _FIXED_RANGE[op.type]
        n = graph.tensors[op.outputs[0]].shape[-1]
        mid = (lo + hi) / 2
        return ChannelStats(np.full(n, mid), np.full(n, (hi - lo) ** 2 / 12), np.full(n, lo),
                            np.full(n, hi))
    if op.type == "MEAN" or op.type in _PASS_THROUGH:
        x = data[0]
        shape = graph.tensors[op.outputs[0]].shape
        n = shape[-1] if shape else 1
        if op.type in ("PAD", "PADV2"):
            x = ChannelStats(x.mean, x.var, np.minimum(x.lo, 0.0), np.maximum(x.hi, 0.0),
                             x.bn_backed)
        return x if len(x.mean) == n else _broadcast(x, n)
    if op.type == "CONCATENATION":
        return ChannelStats(*(np.concatenate([getattr(d, f) for d in data])
                              for f in ("mean", "var", "lo", "hi")),
                            all(d.bn_backed for d in data))
    raise EqTfliteError(f"data-free statistics cannot pass op {op.type} "
                        f"({name}); give --calibration_data")
