"""b-bit quantization grids: the arithmetic the rewriter writes and methods score.

Weights: symmetric per output channel, integers in [-(2^(b-1)-1), 2^(b-1)-1]
(7-bit: [-63, 63]), zero point 0.

Activations: asymmetric per tensor. A calibrated real range [lo, hi] (always
widened to contain 0.0) maps onto the 2^b levels [-2^(b-1), 2^(b-1)-1] with
scale = (hi - lo) / (2^b - 1) and an integer zero point, so 0.0 is exact.

Two activation-range modes (``BitWidths.activation_range``):

* ``"strict"`` (default): the b-bit levels are the working range. Methods
  score and simulate Q = clip(round(x / s) + zp, -2^(b-1), 2^(b-1)-1), the
  papers' quantizer, and choose ranges so that the values really stay inside
  the levels (see README, "What b-bit means").
* ``"container"``: a b-bit *step* over an 8-bit range. Values beyond the
  calibrated range keep the int8 container's headroom [-128, 127], as a stock
  int8 kernel stores them, and methods may score and exploit that headroom.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT8_MIN, INT8_MAX = -128, 127
#: Width given to a tensor whose calibrated range is empty (constant activation).
MIN_RANGE = 1e-3


#: Activation-range modes (see module doc).
ACTIVATION_RANGES = ("strict", "container")


@dataclass(frozen=True)
class BitWidths:
    """Weight and activation bit widths (2..8) and the activation-range mode."""

    weights: int = 8
    activations: int = 8
    activation_range: str = "strict"

    def __post_init__(self) -> None:
        for name, b in (("weight", self.weights), ("activation", self.activations)):
            if not isinstance(b, (int, np.integer)) or not 2 <= b <= 8:
                raise ValueError(f"{name} bits must be an integer in 2..8, got {b!r}")
        if self.activation_range not in ACTIVATION_RANGES:
            raise ValueError(f"activation range must be one of {', '.join(ACTIVATION_RANGES)}, "
                             f"got {self.activation_range!r}")

    @property
    def strict(self) -> bool:
        """True when the b-bit levels bound the activations (the default)."""
        return self.activation_range == "strict"

    @property
    def label(self) -> str:
        """How to name these widths honestly, e.g. ``W7A7`` or ``W7A7 (7-bit step, 8-bit range)``."""
        name = f"W{self.weights}A{self.activations}"
        if not self.strict and self.activations < 8:
            name += f" ({self.activations}-bit step, 8-bit range)"
        return name

    @property
    def weight_qmax(self) -> int:
        return 2 ** (self.weights - 1) - 1

    @property
    def act_qmin(self) -> int:
        return -(2 ** (self.activations - 1))

    @property
    def act_qmax(self) -> int:
        return 2 ** (self.activations - 1) - 1

    @property
    def act_clip(self) -> tuple[int, int]:
        """Integer bounds the activation quantizer clips to: b-bit levels, or int8 (container)."""
        return (self.act_qmin, self.act_qmax) if self.strict else (INT8_MIN, INT8_MAX)


def activation_params(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """(scale, zero_point) mapping [lo, hi] onto the b-bit levels, 0.0 exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"activation range must be finite, got [{lo}, {hi}]")
    if hi - lo < MIN_RANGE * 1e-3:
        hi = lo + MIN_RANGE
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (hi - lo) / (qmax - qmin)
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return float(np.float32(scale)), zp


def activation_range(scale: float, zp: int, bits: int) -> tuple[float, float]:
    """The real range covered by the b-bit levels of (scale, zp)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return scale * (qmin - zp), scale * (qmax - zp)


def fake_quant_activation(x: np.ndarray, scale: float, zp: int,
                          clip: tuple[int, int] = (INT8_MIN, INT8_MAX)) -> np.ndarray:
    """Quantize-dequantize: clip(round(x / scale) + zp, *clip), back to real values.

    ``clip`` is ``BitWidths.act_clip``: the b-bit levels (strict) or the int8
    container (how a stock kernel stores values beyond the levels).
    """
    q = np.clip(np.round(x / scale) + zp, clip[0], clip[1])
    return ((q - zp) * scale).astype(np.float32)


def outside_levels(q: np.ndarray, bits: int) -> int:
    """Number of integer activation values outside the b-bit levels."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return int(np.count_nonzero((q < qmin) | (q > qmax)))


def weight_scales(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Per-channel absmax scales (step sizes); 0 for dead (all-zero) channels."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.max(np.abs(w), axis=red).astype(np.float64)
    return absmax / (2 ** (bits - 1) - 1)


def quantize_weights(w: np.ndarray, scales: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Integer weights round(w / s_c), clipped to the symmetric b-bit range."""
    qmax = 2 ** (bits - 1) - 1
    shape = [1] * w.ndim
    shape[axis] = -1
    s = np.asarray(scales, np.float64).reshape(shape)
    safe = np.where(s > 0, s, 1.0)
    q = np.where(s > 0, np.round(w / safe), 0)
    return np.clip(q, -qmax, qmax).astype(np.int8)


def fake_quant_weights(w: np.ndarray, scales: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Quantize-dequantize weights per channel on the b-bit grid."""
    shape = [1] * w.ndim
    shape[axis] = -1
    q = quantize_weights(w, scales, axis, bits).astype(np.float64)
    return (q * np.asarray(scales, np.float64).reshape(shape)).astype(np.float32)
