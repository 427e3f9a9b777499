"""Bias absorption (DFQ section 4.2): move the always-on part of a ReLU layer's output downstream.

For W1 -> ReLU -> W2 with BN statistics (beta, gamma) on W1's output,
c = max(0, beta - 3 gamma) per channel; b1 -= c and b2 += W2 . c. Since
relu(x - c) = relu(x) - c whenever x >= c (true for all but ~0.1% of the
values under the BN's normal), the float function is kept, and W1's output
range shrinks towards zero, which helps per-tensor activation ranges.

W2 must not zero-pad its input (1x1 kernels, VALID padding, or dense): with
padding, the padded zeros would also receive the +W2.c term. Padded consumers
are left out unless ``padded=True`` (the paper's approximation, measured in
BENCHMARKS.md).
"""
from __future__ import annotations

import numpy as np

from eq_tflite.transforms import FloatState
from eq_tflite.transforms.layer_units import equalization_units

#: DFQ's choice: shift by beta - 3 gamma (about 0.13% of a normal lies below).
SIGMAS = 3.0


def pads_input(graph, op) -> bool:
    """True if ``op`` zero-pads its input (SAME padding with a kernel larger than 1x1)."""
    if op.type == "FULLY_CONNECTED":
        return False
    w = graph.tensors[op.weight_input].data
    if w.shape[1] == 1 and w.shape[2] == 1:
        return False
    return getattr(op.options, "padding", 0) == 0  # Padding.SAME


def absorb(state: FloatState, relu6: str = "relu", padded: bool = False) -> int:
    """Absorbs biases along every pair with BN statistics; returns the number of pairs changed."""
    graph = state.graph
    if state.bn is None:
        return 0
    pairs = []
    for unit in equalization_units(graph, relu6):
        pairs += list(zip(unit[:-1], unit[1:]))
    done = skipped_pad = 0
    for a, b in pairs:
        name = state.out_name(a)
        if a.activation != "RELU" or name not in state.bn:
            continue
        if pads_input(graph, b) and not padded:
            skipped_pad += 1
            continue
        c = np.maximum(0.0, state.bn.beta[name] - SIGMAS * state.bn.gamma[name])
        if not np.any(c > 0):
            continue
        b1 = state.bias(a)
        state.set_data(b1, state.data(b1).astype(np.float64) - c)
        state.bn.shift(name, -c)
        w2 = state.data(b.weight_input).astype(np.float64)
        if b.type == "FULLY_CONNECTED":
            delta = w2 @ c
        elif b.type == "DEPTHWISE_CONV_2D":
            delta = w2.reshape(-1, w2.shape[-1]).sum(0) * c
        else:
            delta = np.einsum("oyxi,i->o", w2, c)
        b2 = state.bias(b)
        state.set_data(b2, state.data(b2).astype(np.float64) + delta)
        done += 1
    state.steps.append("bias_absorption")
    note = f"bias absorption: {done} layer pairs"
    if skipped_pad:
        note += f" ({skipped_pad} pairs left out: the consumer zero-pads its input)"
    state.notes.append(note)
    return done
