"""``kl``: TensorRT-style entropy calibration of activation ranges.

For each tensor, a 2048-bin histogram of |x| is reduced to 128 target bins for
every candidate threshold; the threshold minimizing KL(P || Q) wins (TensorRT's
scheme; 128 bins regardless of the bit width, as the EasyQuant reference code
does). Asymmetric tensors are clipped to [max(min, -T), min(max, T)].
"""
from __future__ import annotations

import numpy as np

from eq_tflite.collect import collect_histograms, collect_minmax
from eq_tflite.methods import register
from eq_tflite.plan import MethodContext, Plan

TARGET_BINS = 128


def kl_threshold(hist: np.ndarray, edge: float, target_bins: int = TARGET_BINS) -> float:
    """Threshold T in (0, edge] minimizing KL divergence of the clipped histogram."""
    bins = len(hist)
    hist = hist.astype(np.float64)
    if hist.sum() == 0 or edge <= 0:
        return edge
    best_i, best_kl = bins, np.inf
    for i in range(target_bins, bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # clip outliers into the last bin
        nonzero = hist[:i] != 0
        # Merge i bins into target_bins, then expand back over the non-empty bins.
        idx = (np.arange(i) * target_bins) // i
        merged = np.bincount(idx, weights=hist[:i], minlength=target_bins)
        counts = np.bincount(idx, weights=nonzero.astype(np.float64), minlength=target_bins)
        q = np.where(nonzero, merged[idx] / np.maximum(counts[idx], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        p, q = p / ps, q / qs
        mask = p > 0
        if np.any(mask & (q == 0)):
            kl = np.inf
        else:
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * edge / bins


@register("kl")
def kl(ctx: MethodContext) -> Plan:
    """Activation ranges from entropy calibration; weights = per-channel absmax."""
    stats = collect_minmax(ctx.graph, ctx.float_model, ctx.calibration, ctx.progress)
    collect_histograms(ctx.graph, ctx.float_model, ctx.calibration, stats, progress=ctx.progress)
    ranges = {}
    for i, (lo, hi) in stats.minmax.items():
        hist, edge = stats.histograms[i]
        t = min(kl_threshold(hist, edge), edge)
        ranges[ctx.graph.tensors[i].name] = (max(lo, -t), min(hi, t))
    return Plan("kl", ctx.bits, activation_ranges=ranges)
