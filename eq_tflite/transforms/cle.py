"""Cross-layer equalization (DFQ, Nagel et al. 2019, section 4.1).

For a pair W1 -> act -> W2, channel i gets s_i = sqrt(r1_i / r2_i), with r1_i
the range (max |w|) of W1's output channel i and r2_i that of W2's input
channel i; W1_i and b1_i are divided by s_i and W2[:, i] multiplied by s_i,
so both ranges become sqrt(r1_i * r2_i). For a triple W1 -> depthwise -> W3 all
three ranges become the cube root of their product. Sweeps repeat until no
scale moves by more than ``tol`` (units that share a layer interact). The
float function is unchanged, up to RELU6 -> RELU when that policy is chosen.
"""
from __future__ import annotations

import numpy as np

from eq_tflite.transforms import (FloatState, in_channel_range, out_channel_range, scale_inputs,
                                  scale_outputs)
from eq_tflite.transforms.layer_units import equalization_units, relu6_in

MAX_SWEEPS = 100
TOL = 1e-6


def _safe(s: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def _equalize_pair(state: FloatState, a, b) -> float:
    r1 = out_channel_range(a, state.data(a.weight_input))
    r2 = in_channel_range(b, state.data(b.weight_input))
    s = _safe(np.sqrt(r1 / np.where(r2 > 0, r2, np.nan)))
    s = np.where((r1 > 0) & (r2 > 0), s, 1.0)
    scale_outputs(state, a, 1.0 / s)
    scale_inputs(state, b, s)
    return float(np.max(np.abs(np.log(s)), initial=0.0))


def _equalize_triple(state: FloatState, a, b, c) -> float:
    r1 = out_channel_range(a, state.data(a.weight_input))
    r2 = out_channel_range(b, state.data(b.weight_input))
    r3 = in_channel_range(c, state.data(c.weight_input))
    ok = (r1 > 0) & (r2 > 0) & (r3 > 0)
    target = np.cbrt(np.where(ok, r1 * r2 * r3, 1.0))
    s1 = np.where(ok, r1 / target, 1.0)           # W1 /= s1
    s2 = np.where(ok, target / np.where(ok, r3, 1.0), 1.0)  # W3 *= s2
    scale_outputs(state, a, 1.0 / s1)
    scale_inputs(state, b, s1)                    # compensates W1's scaling ...
    scale_outputs(state, b, 1.0 / s2)             # ... and scales the depthwise output
    scale_inputs(state, c, s2)
    return float(max(np.max(np.abs(np.log(s1)), initial=0.0), np.max(np.abs(np.log(s2)), initial=0.0)))


def equalize(state: FloatState, relu6: str = "relu", tol: float = TOL) -> dict:
    """Runs CLE to convergence on ``state``; returns a summary (units, sweeps, RELU6 replaced)."""
    units = equalization_units(state.graph, relu6)
    replaced = 0
    for unit in units:
        for op in relu6_in(unit):
            op.activation = "RELU"
            replaced += 1
    sweeps = 0
    for sweeps in range(1, MAX_SWEEPS + 1):
        moved = 0.0
        for unit in units:
            moved = max(moved, _equalize_pair(state, *unit) if len(unit) == 2
                        else _equalize_triple(state, *unit))
        if moved < tol:
            break
    summary = {"pairs": sum(len(u) == 2 for u in units), "triples": sum(len(u) == 3 for u in units),
               "sweeps": sweeps, "relu6_replaced": replaced}
    state.steps.append("cross_layer_equalization")
    state.notes.append(f"cross-layer equalization: {summary['pairs']} pairs, {summary['triples']} "
                       f"triples, {sweeps} sweeps"
                       + (f"; {replaced} fused RELU6 treated as RELU (--cle_relu6 relu)" if replaced else ""))
    return summary
