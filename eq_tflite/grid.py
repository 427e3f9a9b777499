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
    """Weight and activation bit widths (2..8) and the activation-range mode.

    ``weights`` and ``activations`` are the model's widths; ``layer_weights``
    (weight tensor name -> bits) and ``tensor_activations`` (activation tensor
    name -> bits), both float-graph names, override them per layer / tensor
    (mixed precision, ``eq_tflite.mixed``). Methods look a layer's widths up
    (``resolve.layer_bits``) instead of reading the global ones.
    """

    weights: int = 8
    activations: int = 8
    activation_range: str = "strict"
    layer_weights: tuple[tuple[str, int], ...] = ()
    tensor_activations: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        pairs = [("weight", self.weights), ("activation", self.activations)]
        pairs += [(f"weight ({n})", b) for n, b in self.layer_weights]
        pairs += [(f"activation ({n})", b) for n, b in self.tensor_activations]
        for name, b in pairs:
            if not isinstance(b, (int, np.integer)) or not 2 <= b <= 8:
                raise ValueError(f"{name} bits must be an integer in 2..8, got {b!r}")
        if self.activation_range not in ACTIVATION_RANGES:
            raise ValueError(f"activation range must be one of {', '.join(ACTIVATION_RANGES)}, "
                             f"got {self.activation_range!r}")

    @property
    def mixed(self) -> bool:
        """True when some layer or tensor has its own width."""
        return bool(self.layer_weights or self.tensor_activations)

    def weights_of(self, name: str) -> int:
        """Width of the weight tensor ``name`` (float-graph name)."""
        return dict(self.layer_weights).get(name, self.weights)

    def activations_of(self, name: str) -> int:
        """Width of the activation tensor ``name`` (before tied groups are united)."""
        return dict(self.tensor_activations).get(name, self.activations)

    def uniform(self, weights: int | None = None, activations: int | None = None) -> "BitWidths":
        """These widths without per-layer overrides (one layer's widths)."""
        return BitWidths(self.weights if weights is None else int(weights),
                         self.activations if activations is None else int(activations),
                         self.activation_range)

    def with_overrides(self, layer_weights: dict[str, int] | None = None,
                       tensor_activations: dict[str, int] | None = None) -> "BitWidths":
        """These widths with per-layer/per-tensor overrides (entries equal to the default dropped)."""
        lw = {n: int(b) for n, b in (layer_weights or {}).items() if int(b) != self.weights}
        ta = {n: int(b) for n, b in (tensor_activations or {}).items() if int(b) != self.activations}
        return BitWidths(self.weights, self.activations, self.activation_range,
                         tuple(sorted(lw.items())), tuple(sorted(ta.items())))

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
        if self.mixed:
            parts = [f"W{b} on {n} layers" for b, n in _counts(self.layer_weights)]
            parts += [f"A{b} on {n} tensors" for b, n in _counts(self.tensor_activations)]
            name += f" mixed ({', '.join(parts)})"
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

    def clip_of(self, bits: int) -> tuple[int, int]:
        """``act_clip`` of a tensor of ``bits`` bits (mixed precision)."""
        return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if self.strict else (INT8_MIN, INT8_MAX)


def _counts(pairs: tuple[tuple[str, int], ...]) -> list[tuple[int, int]]:
    """(bits, how many) of per-layer overrides, widest first."""
    counts: dict[int, int] = {}
    for _, b in pairs:
        counts[b] = counts.get(b, 0) + 1
    return sorted(counts.items(), reverse=True)


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
                          clip: tuple[int, int] = (INT8_MIN, INT8_MAX),
                          in_place: bool = False) -> np.ndarray:
    """Quantize-dequantize: clip(round(x / scale) + zp, *clip), back to real values.

    ``clip`` is ``BitWidths.act_clip``: the b-bit levels (strict) or the int8
    container (how a stock kernel stores values beyond the levels).
    ``in_place``: overwrite ``x`` (a float32 array; same values).
    """
    out = x if in_place and isinstance(x, np.ndarray) and x.dtype == np.float32 else None
    q = np.divide(x, scale, out=out)  # one buffer, every step in place (same dtypes and values)
    if not isinstance(q, np.ndarray):  # a scalar
        return ((np.clip(np.round(q) + zp, clip[0], clip[1]) - zp) * scale).astype(np.float32)
    np.round(q, out=q)
    q += zp
    np.clip(q, clip[0], clip[1], out=q)
    q -= zp
    q *= scale
    return q.astype(np.float32, copy=False)


def outside_levels(q: np.ndarray, bits: int) -> int:
    """Number of integer activation values outside the b-bit levels."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return int(np.count_nonzero((q < qmin) | (q > qmax)))


def level_bounds(scale: float, zp: int, bits: BitWidths) -> tuple[float, float]:
    """Real values below the first or at/above the second round outside the b-bit levels."""
    return scale * (bits.act_qmin - zp - 0.5), scale * (bits.act_qmax - zp + 0.5)


def share_outside(sorted_values: np.ndarray, bounds: tuple[float, float],
                  total: int | None = None) -> float:
    """Share of ``total`` values (default: all given) below ``bounds[0]`` or at/above ``bounds[1]``.

    ``sorted_values`` may hold only a tensor's tails (the values any candidate could clip).
    """
    below = np.searchsorted(sorted_values, bounds[0], side="left")
    above = len(sorted_values) - np.searchsorted(sorted_values, bounds[1], side="left")
    return float(below + above) / max(len(sorted_values) if total is None else total, 1)


def weight_scales(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Per-channel absmax scales (step sizes); 0 for dead (all-zero) channels."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.max(np.abs(w), axis=red).astype(np.float64)
    return absmax / (2 ** (bits - 1) - 1)


#: Clips of the absmax step that ``mse_weight_scales`` tries.
WEIGHT_CLIPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def mse_weight_scales(matrix: np.ndarray, bits: int, clips: tuple[float, ...] = WEIGHT_CLIPS
                      ) -> np.ndarray:
    """Per-channel step (axis 1) with the least weight MSE among ``clips`` of the absmax step."""
    base = weight_scales(matrix, 1, bits)
    best, err = base, None
    for r in clips:
        s = base * r
        e = ((fake_quant_weights(matrix, s, 1, bits).astype(np.float64) - matrix) ** 2).sum(axis=0)
        if err is None:
            best, err = s, e
        else:
            better = e < err
            best, err = np.where(better, s, best), np.where(better, e, err)
    return best


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
