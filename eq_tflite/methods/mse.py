"""``mse``: MSE-optimal per-tensor activation ranges and per-channel weight clips.

Activations: the float model runs on the calibration samples (LiteRT, as
``minmax``) and each activation tensor's values fill a ``bins``-bin histogram
over its min/max range. The range shrinks about zero, ``[lo, hi] * m`` for
``steps`` multipliers m in [``lowest``, 1], and each candidate is scored by
the quantization error of the histogram on its b-bit levels (bin centres,
rounded and clipped to the levels); the least error wins. In strict mode a
candidate may clip at most ``clip_budget`` of the values (0.1%, as
EasyQuant and Bit-Split), because stock kernels do not clip to the b-bit
levels at run time. Weights: per output channel, the clip of the absmax step
(1, 0.9, ..., 0.5) with the least weight MSE (``grid.mse_weight_scales``).

A per-tensor method in the manner of ai-edge-quantizer's MSE algorithm; the
cheapest way past min/max, no layer-wise search. Measured rows: BENCHMARKS.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from eq_tflite import grid, native, options, resolve
from eq_tflite.collect import collect_minmax, iterate_activations
from eq_tflite.methods import method
from eq_tflite.options import option
from eq_tflite.plan import MethodContext, Plan


@dataclass(frozen=True)
class Options:
    """MSE options (keys ``mse_<field>``)."""

    steps: int = option(50, "candidate ranges per tensor", check=lambda v: v >= 1,
                        rule="must be >= 1")
    lowest: float = option(0.2, "smallest candidate, as a multiple of the min/max range",
                           check=lambda v: 0 < v <= 1, rule="must be in (0, 1]")
    bins: int = option(2048, "histogram bins per tensor", check=lambda v: v >= 16,
                       rule="must be >= 16")
    clip_budget: float = option(0.001, "strict mode: largest share of a tensor's values a "
                                "range may clip", check=lambda v: 0 <= v <= 1,
                                rule="must be in [0, 1]")

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "Options":
        return options.parse(cls, "mse", values)


def best_range(counts: np.ndarray, lo: float, hi: float, bits: grid.BitWidths,
               opts: Options) -> tuple[float, float]:
    """The candidate range with the least quantization error of a histogram over [lo, hi]."""
    centers = lo + (np.arange(len(counts)) + 0.5) * (hi - lo) / len(counts)
    weights = counts.astype(np.float64)
    total = max(weights.sum(), 1.0)
    best, best_err = (lo, hi), np.inf
    for m in np.linspace(1.0, opts.lowest, opts.steps):
        scale, zp = grid.activation_params(lo * m, hi * m, bits.activations)
        if bits.strict:
            low, high = grid.level_bounds(scale, zp, bits)
            clipped = weights[(centers < low) | (centers >= high)].sum() / total
            if clipped > opts.clip_budget:
                break  # smaller ranges clip more
        q = grid.fake_quant_activation(centers, scale, zp, clip=bits.act_clip)
        err = float(weights @ (q - centers) ** 2)
        if err < best_err:
            best, best_err = (lo * m, hi * m), err
    return best


@method("mse", options=Options, prefix="mse")
def mse(ctx: MethodContext) -> Plan:
    """MSE-optimal per-tensor activation ranges; per-channel MSE weight clips."""
    opts = Options.parse(ctx.options)
    graph = ctx.graph
    stats = collect_minmax(graph, ctx.float_model, ctx.calibration, ctx.progress)
    tensors = [t for t, (lo, hi) in stats.minmax.items() if hi > lo]
    counts = {t: np.zeros(opts.bins, np.int64) for t in tensors}
    for values in iterate_activations(graph, ctx.float_model, ctx.calibration, tensors,
                                      desc="histograms", progress=ctx.progress):
        for t, v in values.items():
            if not native.histogram_into(counts[t], v, stats.minmax[t]):
                counts[t] += np.histogram(v, bins=opts.bins, range=stats.minmax[t])[0]
    widths = resolve.tensor_bits(graph, ctx.bits)
    ranges = dict(stats.ranges_by_name(graph))
    for t in tensors:
        bits = ctx.bits.uniform(activations=widths.get(t, ctx.bits.activations))
        ranges[graph.tensors[t].name] = best_range(counts[t], *stats.minmax[t], bits, opts)
    scales = {}
    for op in graph.weighted_ops():
        w = graph.tensors[op.weight_input]
        matrix = np.moveaxis(np.asarray(w.data, np.float64), op.channel_axis, -1)
        bits = resolve.layer_bits(graph, op, ctx.bits, widths).weights
        scales[w.name] = grid.mse_weight_scales(matrix.reshape(-1, matrix.shape[-1]), bits)
    return Plan("mse", ctx.bits, activation_ranges=ranges, weight_scales=scales)
