"""SPIQ rescaling (Yvinec et al. 2022): per-channel static input scales folded into the weights.

A TFLite activation tensor has one scale, so SPIQ's per-input-channel scale is
realised as a rescaling of the pair W1 -> act -> W2 (the same units as CLE):
output channel c of W1 is multiplied by R / r_c and input channel c of W2 by
r_c / R, where r_c is the channel's data-free range (BN: beta +- k gamma,
clipped by the activation; ``eq_tflite.moments``) and R the widest channel's
range. Every channel of the tensor then spans the same range, so the one
per-tensor scale fits all of them, as per-channel input scales would.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from eq_tflite import moments
from eq_tflite.transforms import FloatState, scale_inputs, scale_outputs
from eq_tflite.transforms.layer_units import equalization_units, relu6_in

#: Channels narrower than this share of the widest one are left alone (dead channels).
MIN_SHARE = 1e-3


def rescale(state: FloatState, input_ranges: Mapping[str, tuple[float, float]], sigmas: float,
            relu6: str = "relu") -> int:
    """Equalizes the data-free channel ranges of every unit's inner tensors; returns how many."""
    units = equalization_units(state.graph, relu6)
    # Ranges before RELU6 -> RELU: a channel's range stays capped at 6, so the
    # strict activation levels still clip where RELU6 did.
    stats = moments.propagate(state.graph, input_ranges, state.bn, sigmas)
    for unit in units:
        for op in relu6_in(unit):
            op.activation = "RELU"
    done = 0
    for unit in units:
        for a, b in zip(unit[:-1], unit[1:]):
            st = stats[a.outputs[0]]
            r = np.asarray(st.hi - np.minimum(st.lo, 0.0), np.float64)
            wide = float(np.max(r, initial=0.0))
            if wide <= 0:
                continue
            s = np.where(r > MIN_SHARE * wide, r / wide, 1.0)
            scale_outputs(state, a, 1.0 / s)
            scale_inputs(state, b, s)
            done += 1
    state.steps.append("spiq")
    state.notes.append(f"SPIQ: per-channel input scales folded into {done} layer pairs")
    return done
