"""``easyquant``: EasyQuant scale search (Wu et al., 2020) on the deployed grids.

Layer by layer in topological order (``Graph.weighted_ops``), EQ alternates
``rounds`` times (a) a search of the per-output-channel weight scales with
the input activation scale fixed, each channel keeping the argmax of its own
cosine, then (b) a search of the per-tensor scale of the layer's input with
the weights fixed, scored by the whole layer output. The objective is the
mean over calibration samples of the cosine between the float layer output
and the quantized one. Candidates are the multipliers ``S = m·S0`` with
``m`` spaced linearly in [alpha, beta] (i.e. step sizes ``s0 / m``; for
activations the range [lo, hi] / m about zero) plus the current scale, which
wins ties, so neither step can lower the layer's cosine (a step whose winner
scores below the current scales is undone).

Scoring uses exactly the numbers that ship (``eq_tflite.resolve``): weights
on the symmetric b-bit grid, the input quantized onto the b-bit levels *with
the clip* (``grid.fake_quant_activation`` with ``BitWidths.act_clip``; 0.0
exact) and int32 biases as written. Strict mode (the default) also skips
candidate input ranges that would clip more than ``eq_clip_budget`` (0.1%) of
the input tensor's calibration values, because stock kernels do not clip to
the b-bit levels at run time: a range the search chose to clip would let
those values use the int8 headroom. Measured with the default search on the
examples (10k test images, output cosine for budget 0 / 0.1% / none): W7
ResNet 0.99974/0.99978/0.99978, MobileNetV2 0.99916/0.99931/0.99931; W5
ResNet 0.99580/0.99671/0.99667, MobileNetV2 0.98705/0.99078/0.99046; at 0.1%
0.001-0.005% of all activations lie outside the levels at W7. With
``activation_range="container"`` the search scores the int8 container (the
old behaviour) and reports ``act_outside_levels``.

Defaults, measured on the two example models (real int8 models in LiteRT,
10k test images, 50 calibration samples; "agreement" = top-1 agreement with
float, "cos" = output cosine; seeds 0-2 of the default spread ~0.1 pp):

* ``eq_inputs="quantized"`` (the paper): layer l's input comes from a numpy
  simulation (``eq_tflite.simulate``) of the model whose earlier layers
  already carry their EQ scales; the target always comes from the float
  model. ``"float"`` feeds float inputs instead. Quantized inputs gave a
  higher output cosine in all four cases (ResNet W7/W6, MobileNetV2 W7/W6:
  0.99981/0.99918/0.99959/0.99821 vs 0.99972/0.99826/0.99948/0.99812) and
  equal or better agreement.
* ``eq_objective="activation"``: the cosine is taken after the layer's fused
  activation (what the next layer reads; the reference code scores after
  ReLU). The weight search scores every candidate on the accumulator from XᵀX
  and XᵀY (``GramScorer``), keeps each channel's ``eq_preselect`` (8) best and
  scores those exactly after the activation. ``"linear"`` scores the
  accumulator (after the bias, before the activation) and uses the Gram
  scores alone. Decided on real ImageNet models (issue 15; 64 calibration
  crops, 500 held-out crops of other photos, W7A7, agreement / output cosine
  vs float): EfficientNet-Lite1 activation 87.8% / 0.99052 against linear
  84.6% / 0.98020 (TFLite's own INT8: 84.4% / 0.98537); EfficientNet-Lite0
  (the issue's run) 99.25% / 0.99484 against 96.75% / 0.99002. ReLU6 clips
  much of what a linear objective spends its precision on. On the Fashion-MNIST
  examples the two tied (linear won 4 of 6 model x width cells on cosine by
  at most 0.00020, activation won MobileNetV2 W6 by 0.3 pp agreement), so the
  real models decide.
* ``eq_init="mse"``: activations start from the ``mse`` method's per-tensor
  ranges (``methods/mse.py``: least histogram quantization error within the
  clip budget), the search then scales them by [alpha, beta]. Decided on the
  real-model suite (held-out samples; BENCHMARKS.md, "Defaults chosen on the
  suite"), against the old start from min/max (``"max"``): W8A8 selfie
  segmentation mask IoU 0.718 vs 0.571, BlazeFace detections IoU 0.618 vs
  0.547, palm detection 0.432 vs 0.298, hand landmarks 3.70 vs 3.68 px (even),
  EfficientNet-Lite1 92.6% / 0.99567 vs 92.0% / 0.99578, Lite2 93.8% /
  0.99665 vs 92.4% / 0.99669; W7A7 Lite1 89.8% / 0.99083 vs 88.6% / 0.99075,
  Lite2 91.0% / 0.98837 vs 89.8% / 0.98769. A min/max start leaves the
  search's ±2x window around ranges set by a few outliers, where MediaPipe's
  models lose most. ``"kl"`` (``methods/kl.py``'s thresholds) starts from
  ranges that lose a lot at 7 bits (MobileNetV2 example W7: agreement 89.8%
  vs 99.3%). Weights start from per-channel absmax.
* ``eq_rounds=1`` (the paper): a second round changed agreement by
  -0.11..+0.10 pp for 1.5-2x the time.
* ``eq_max_rows=4096``: each layer is scored on at most this many output
  positions (im2col rows): every sample keeps the same number of positions,
  drawn without replacement with a generator seeded by (seed, op index);
  with more samples than rows, a seeded subset of samples keeps one
  position each; 0 keeps all rows. 1024, 4096, 16384 and all rows were
  within seed noise of each other; the cap bounds time and memory on
  larger inputs.

* ``eq_rounding="gptq"`` for layers of at most ``eq_rounding_bits`` (4) weight
  bits: once a layer's steps are chosen, its weights take GPTQ's
  error-compensating rounding on those steps (``eq_tflite/rounding.py``; H from
  the layer's sampled input rows as the shipped model feeds them, 10% damping),
  kept only where it raises the layer cosine over nearest rounding (the report
  row's ``cos_gptq``). The plan then carries the integers (``int_weights``).
  Decided on the real-model suite, W4A8, 500 held-out samples against float,
  nearest -> gptq: EfficientNet-Lite1 59.4% / 0.87769 -> 68.2% / 0.88296,
  Lite2 58.8% / 0.86619 -> 59.6% / 0.86754; output cosines BlazeFace
  0.97921 / 0.81257 -> 0.98470 / 0.89701, selfie 0.64407 -> 0.66501, palm
  0.94555 / 0.97899 -> 0.95370 / 0.98014, hand landmarks 0.99404 -> 0.99552.
  Not above 4 bits: at W7A7 on Lite2 (every layer) the cosine rose 0.98837 ->
  0.98928 but agreement fell 91.0% -> 88.8%.
* ``eq_gptq_target="auto"``: GPTQ's own objective matches the layer's float
  weights on the quantized model's inputs; ``"float"`` matches the float
  model's layer output instead (``rounding.corrected_target``), which also
  makes up for the error of the layers before. Per layer, "auto" fits both on
  the even samples, scores them on the odd ones (and back) and keeps the
  better. Suite rows (sweep ``eq_w4a8__gptq_target_*``), W4A8, 500 held-out
  crops, layer / float / auto: Lite1 68.2% / 0.88296, 66.0% / 0.91623,
  70.2% / 0.92634; Lite2 59.6% / 0.86754, 70.8% / 0.92122, 71.0% / 0.93032;
  detections IoU BlazeFace 0.219 / 0.271 / 0.234, palm 0.000 / 0.161 / 0.232;
  selfie mask IoU 0.608 / 0.647 / 0.614; hand 9.13 / 7.55 / 7.35 px. "float"
  alone overfits where little error comes from upstream: Lite1 at a 60%
  weight budget 81.8% / 0.96788 -> 77.4% / 0.96475 (in-process), where
  "auto" keeps "layer" (81.8% / 0.96788).

Shared and tied inputs: the layer walk (``methods/layerwise.py``) lets the
first weighted reader of each tied group search the group's scale on its own
input, and writes the chosen range on every member. Later readers search
weights only, as do layers whose input group holds a fixed-scale tensor
(softmax, logistic, tanh). Every other tensor keeps its initial range.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from eq_tflite import grid, methods, native, options, resolve, rounding, simulate
from eq_tflite.errors import EqTfliteError
from eq_tflite.grid import BitWidths
from eq_tflite.methods import method
from eq_tflite.methods.layerwise import Decision, Layer, walk
from eq_tflite.options import option
from eq_tflite.metrics import cosine_from_parts
from eq_tflite.plan import MethodContext, Plan

#: Float elements of candidate outputs held at once during a search.
_CHUNK_ELEMENTS = 1 << 23
#: Float elements of input rows (or outputs) the input search scores at once
#: (whole samples; 8 MB, so a block's passes run in cache).
_BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class Options:
    """EasyQuant options (keys ``eq_<field>``; ``seed`` is shared). Defaults: module doc."""

    steps: int = option(100, "candidate scales per search", check=lambda v: v >= 1,
                        rule="must be >= 1")
    alpha: float = option(0.5, "lowest candidate, as a multiple of the initial scale",
                          check=lambda v: v > 0, rule="must be > 0")
    beta: float = option(2.0, "highest candidate, as a multiple of the initial scale",
                         check=lambda v: v > 0, rule="must be > 0")
    rounds: int = option(1, "alternating rounds (weights, then the input scale)",
                         check=lambda v: v >= 0, rule="must be >= 0")
    init: str = option("mse", "initial activation ranges: the mse method's ranges, min/max or "
                       "KL thresholds", choices=("mse", "max", "kl"))
    inputs: str = option("quantized", "layer inputs from the already-quantized model (the paper) "
                         "or from the float model", choices=("quantized", "float"))
    objective: str = option("activation", "layer cosine after the fused activation (the weight "
                            "search scores the --eq_preselect best linear candidates per channel "
                            "exactly) or before it", choices=("activation", "linear"))
    preselect: int = option(8, "weight candidates per channel scored exactly after the activation",
                            check=lambda v: v >= 1, rule="must be >= 1")
    max_rows: int = option(4096, "cap on sampled output positions per layer (seeded; 0: all)",
                           check=lambda v: v >= 0, rule="must be >= 0 (0: all rows)")
    clip_budget: float = option(0.001, "strict mode: largest share of a tensor's calibration "
                                "values a chosen input range may clip",
                                check=lambda v: 0 <= v <= 1, rule="must be in [0, 1]")
    search: str = option("coarse_to_fine", "input-scale search over every 10th candidate, then "
                         "around the best, or over all candidates",
                         choices=("coarse_to_fine", "exhaustive"))
    rounding: str = option("gptq", "weight rounding on the chosen steps: nearest, or GPTQ's "
                           "error-compensating rounding on the sampled input rows (eq_tflite/"
                           "rounding.py; kept only where it raises the layer cosine) for layers of "
                           "at most --eq_rounding_bits weight bits", choices=("nearest", "gptq"))
    rounding_bits: int = option(4, "widest weights that --eq_rounding gptq rounds",
                                check=lambda v: 2 <= v <= 8, rule="must be in 2..8")
    gptq_target: str = option("auto", "what GPTQ's rounding matches: the float model's layer "
                              "output (upstream error included), the layer's float weights on "
                              "the shipped inputs (GPTQ's own target), or per layer whichever "
                              "scores better on held-out samples", choices=("auto", "float", "layer"))
    seed: int = option(0, "seed for sampling rows", key="seed")

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "Options":
        """Reads and validates the ``eq_*`` keys (and ``seed``); missing keys take the defaults."""
        return options.parse(cls, "eq", values)

    def validate(self) -> None:
        if self.alpha > self.beta:
            raise EqTfliteError("need 0 < eq_alpha <= eq_beta")

    def multipliers(self) -> np.ndarray:
        """Candidate multipliers m of the initial scale multiplier S0."""
        return np.linspace(self.alpha, self.beta, self.steps)


# --------------------------------------------------------------------------
# Scoring


def quantize_into(x: np.ndarray, scale: float, zp: int, out: np.ndarray,
                  clip: tuple[int, int] = (grid.INT8_MIN, grid.INT8_MAX)) -> np.ndarray:
    """The integers ``q - zp`` of ``grid.fake_quant_activation`` written into ``out``."""
    np.divide(x, scale, out=out)
    np.round(out, out=out)
    np.clip(out, clip[0] - zp, clip[1] - zp, out=out)
    return out


def fake_quant_into(x: np.ndarray, scale: float, zp: int, out: np.ndarray,
                    clip: tuple[int, int] = (grid.INT8_MIN, grid.INT8_MAX)) -> np.ndarray:
    """``grid.fake_quant_activation`` written into ``out`` (same values, bit for bit)."""
    quantize_into(x, scale, zp, out, clip)
    out *= scale
    return out


def _float32(scales: np.ndarray) -> np.ndarray:
    """Step sizes as the rewriter stores them (float32), kept in float64."""
    return np.asarray(scales, np.float32).astype(np.float64)


@dataclass
class InputTails:
    """Sorted values of a tensor beyond ``fraction`` of its range, to count clipped values.

    Activation candidates are the ranges ``[lo, hi] / m`` with ``m <= beta``, so
    their levels reach beyond ``[lo, hi] / beta``: only values outside
    ``fraction * [lo, hi]`` (``fraction < 1 / beta``) can be clipped by any of them.
    """

    values: np.ndarray
    total: int

    @classmethod
    def of(cls, x: np.ndarray, lo: float, hi: float, fraction: float) -> "InputTails":
        """The tails of ``x``, picked a block at a time (no full-size masks of a large tensor)."""
        flat = x.reshape(-1)
        if native.available() and flat.dtype == np.float32 and flat.flags.c_contiguous:
            tail = native.tails(flat, lo * fraction, hi * fraction)
        else:
            step = _CHUNK_ELEMENTS
            tail = np.concatenate([b[(b < lo * fraction) | (b > hi * fraction)]
                                   for b in (flat[i:i + step] for i in range(0, flat.size, step))]
                                  or [flat[:0]])
        # sorted in its own dtype (float32 sorts twice as fast), then widened: the same array
        return cls(np.sort(tail).astype(np.float64), flat.size)

    def share_outside(self, bounds: tuple[float, float]) -> float:
        """Share of all values below ``bounds[0]`` or at/above ``bounds[1]``."""
        return grid.share_outside(self.values, bounds, self.total)


@dataclass
class GroupTails:
    """The tails of every computed tensor of a tied group: a range clips the worst member's share.

    The group's range is searched on the decider's own input only. That input can
    be a small relative of a member the decider never reads: in a squeeze-excite
    block the pooled tensor (AVERAGE_POOL_2D keeps its input's scale) decides the
    range of the feature map it was pooled from, which the block's MUL then
    reads. Counting only the pooled values let the search halve the feature
    map's range on selfie segmentation (mask IoU 0.61 against min/max's 0.67).
    """

    members: list[InputTails]

    def share_outside(self, bounds: tuple[float, float]) -> float:
        return max(m.share_outside(bounds) for m in self.members)


#: Rows per block of a Gram sum on integer rows: |q| <= 255, so every partial sum
#: of a block stays below 2**24 and float32 products and sums are exact.
_EXACT_ROWS = 256


def _gram(x: np.ndarray, integers: bool) -> np.ndarray:
    """Σ_r x_rᵀ x_r in float64: (R, K) -> (K, K); depthwise (R, K, C) -> (C, K, K).

    Summed over blocks of rows, so a depthwise layer's channel-major copy is one
    block at a time (not the whole (C, R, K) tensor). ``integers``: ``x`` holds
    integers of magnitude <= 255 (quantized rows); each block is then summed
    exactly in float32 (``_EXACT_ROWS``), twice as fast as float64.
    """
    dtype = np.float32 if integers else np.float64
    depthwise = x.ndim == 3
    if depthwise and integers and native.available() and x.dtype == np.float32 \
            and x.flags.c_contiguous:
        return native.depthwise_gram(x)
    out = np.zeros((x.shape[2], x.shape[1], x.shape[1]) if depthwise else (x.shape[1],) * 2)
    step = _EXACT_ROWS if integers else 1024
    for s in range(0, x.shape[0], step):
        if depthwise:
            b = np.ascontiguousarray(x[s:s + step].transpose(2, 0, 1), dtype)  # (C, r, K)
            out += np.matmul(b.transpose(0, 2, 1), b)
        else:
            b = np.asarray(x[s:s + step], dtype)
            out += b.T @ b
    return out


class GramScorer:
    """Per-channel cosines of ``X·W + b`` against targets ``Y`` from Gram matrices.

    For a fixed input X (R, K) and target Y (R, C), channel c of a candidate
    weight matrix W scores
    ``<X w_c + b_c, y_c> = w_c·(XᵀY)_c + b_c·Σ_r y_rc`` and
    ``|X w_c + b_c|² = w_cᵀ (XᵀX) w_c + 2 b_c (Σ_r x_r)·w_c + R b_c²``,
    so XᵀX (K, K), XᵀY (K, C) and the column sums are computed once (float64)
    and each candidate costs O(K²·C) instead of O(R·K·C). Depthwise layers use
    one (K, K) Gram matrix per channel. Exact up to float64 rounding.

    ``step``: the rows are ``x = step · q`` with integer ``q`` (pass ``q`` as
    ``x``), as quantized inputs are; XᵀX is then summed exactly on the integers
    (``_gram``) and scaled by step². The O(K²·J·C) product XᵀX·W of a plain
    layer runs in float32 (twice as fast as float64; its cosines differ from
    float64's by 5e-8 on a 384-input layer, see the tests, while neighbouring
    candidates differ by 1e-6 and more), everything else in float64.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, step: float | None = None):
        self.depthwise = x.ndim == 3  # (R, K, C): channel c reads x[:, :, c]
        y64 = y.astype(np.float64)
        scale = 1.0 if step is None else float(step)
        self.rows = x.shape[0]
        self.gram = _gram(x, step is not None) * (scale * scale)   # (K, K) or (C, K, K)
        if self.depthwise:
            self.xy = np.einsum("rkc,rc->kc", x, y64, dtype=np.float64) * scale  # (K, C)
            self.x_sum = np.sum(x, axis=0, dtype=np.float64) * scale             # (K, C)
        else:
            self.xy = (x.T.astype(np.float64) @ y64) * scale                    # (K, C)
            self.x_sum = np.sum(x, axis=0, dtype=np.float64) * scale             # (K,)
        self.y_sum = y64.sum(axis=0)   # (C,)
        self.y_norm = np.einsum("rc,rc->c", y64, y64)
        self.gram32 = None if self.depthwise else self.gram.astype(np.float32)

    def cosines(self, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Cosines (J, C) of candidate weights ``w`` (K, J, C) with biases (J, C) or None."""
        k, j, c = w.shape
        if native.available() and w.dtype == np.float32 and w.flags.c_contiguous:
            # the same float64 sums (k in order, as einsum sums) without float64 copies of w
            gw = ((self.gram @ w.astype(np.float64).transpose(2, 0, 1)).transpose(1, 2, 0)
                  if self.depthwise else (self.gram32 @ w.reshape(k, j * c)).reshape(k, j, c))
            dot, norm, xw = native.gram_parts(w, self.xy, gw, self.x_sum)
        else:
            w32, w = w, w.astype(np.float64)
            dot = np.einsum("kjc,kc->jc", w, self.xy)
            if self.depthwise:
                gw = (self.gram @ w.transpose(2, 0, 1)).transpose(1, 2, 0)
                xw = np.einsum("kc,kjc->jc", self.x_sum, w)
            else:
                gw = (self.gram32 @ w32.reshape(k, j * c).astype(np.float32)).reshape(k, j, c)
                xw = np.einsum("k,kjc->jc", self.x_sum, w)
            norm = np.einsum("kjc,kjc->jc", w, gw)
        if bias is not None:
            bias = np.asarray(bias, np.float64)
            dot = dot + bias * self.y_sum
            norm = norm + 2 * bias * xw + self.rows * bias * bias
        return cosine_from_parts(dot, np.maximum(norm, 0.0), self.y_norm)


@dataclass
class LayerProblem:
    """One weighted op on sampled im2col rows.

    ``rows`` are the input rows (from the quantized or the float model),
    ``target`` the float layer output (S samples, P positions, C channels).
    """

    lin: simulate.Linear
    rows: np.ndarray
    target: np.ndarray
    matrix: np.ndarray      # (K, C) float weights
    bias: np.ndarray | None
    activation: str         # applied to quantized outputs ("NONE": linear objective)
    bits: BitWidths
    tails: "GroupTails | None" = None  # extreme values of the input's tied group (strict mode)
    linear_target: np.ndarray | None = None  # target before the activation (for preselection)
    preselect: int = 8

    def clipped_share(self, act: tuple[float, int]) -> float:
        """Largest share of a tied group member's values that the b-bit levels of ``act`` clip."""
        return self.tails.share_outside(grid.level_bounds(*act, self.bits))

    def _output(self, out: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Bias and activation applied to a fresh product ``out``, in place."""
        if bias is not None:
            out += bias
        return simulate.apply_activation(self.activation, out, in_place=True)

    def _bias(self, in_scale: float, w_scales: np.ndarray) -> np.ndarray | None:
        """The int32-rounded bias as it ships (dead channels take the median step)."""
        if self.bias is None:
            return None
        q, step = resolve.bias_numbers(self.bias, in_scale,
                                       resolve.fix_dead_channels(w_scales)[0])
        return (q * step.astype(np.float64)).astype(np.float32)

    def outside_levels(self, act: tuple[float, int]) -> float:
        """Fraction of sampled input values beyond the b-bit levels (before any clip).

        Counted against the levels' real bounds (``grid.level_bounds``: the values
        that round outside), two comparisons instead of quantizing every row.
        """
        lo, hi = grid.level_bounds(*act, self.bits)
        out = np.count_nonzero(self.rows < lo) + np.count_nonzero(self.rows >= hi)
        return out / max(self.rows.size, 1)

    def weight_candidates(self, scales: np.ndarray) -> np.ndarray:
        """Dequantized weights (K, J, C) on the b-bit grid for candidate step sizes (J, C)."""
        j, c = scales.shape
        if native.available() and self.matrix.dtype == np.float32:
            return native.fake_quant_weights(np.ascontiguousarray(self.matrix), scales,
                                             self.bits.weights)
        return grid.fake_quant_weights(np.tile(self.matrix, (1, j)), scales.reshape(-1), 1,
                                       self.bits.weights).reshape(-1, j, c)

    def uses_gram(self) -> bool:
        """True when the weight search scores candidates from Gram matrices (see ``GramScorer``).

        That pays off for depthwise layers and when 2·K < rows. With an
        activation after the product, the Gram scores of the linear output only
        preselect each channel's ``preselect`` best candidates, which are then
        scored exactly.
        """
        if self.activation != "NONE" and self.linear_target is None:
            return False
        return self.lin.op.type == "DEPTHWISE_CONV_2D" or 2 * self.matrix.shape[0] < self.rows.shape[0]

    def search_weights(self, act: tuple[float, int], current: np.ndarray,
                       initial: np.ndarray, mults: np.ndarray) -> np.ndarray:
        """Per-channel argmax of the channel cosine over ``current`` and ``initial / m``.

        Each output column is scored against its channel's target. Where
        ``uses_gram``, every candidate's linear output is scored from XᵀX and
        XᵀY (``GramScorer``: O(K²·C) per candidate instead of O(rows·K·C));
        with an activation objective those scores only pick each channel's
        ``preselect`` best candidates (plus the current one), which are then
        scored exactly after the activation. Otherwise the weight matrix is
        tiled once per candidate and multiplied with the rows.
        """
        xq = np.empty_like(self.rows)
        if self._fused():
            native.fake_quant_into(self.rows, *act, xq, self.bits.act_clip, scale_back=False)
        else:
            quantize_into(self.rows, *act, xq, self.bits.act_clip)
        cands = np.concatenate([current[None], _float32(initial[None] / mults[:, None])])
        r, c = xq.shape[0], self.matrix.shape[1]
        k = self.matrix.shape[0]
        t = self.target.reshape(r, c)
        if self.lin.op.type == "DEPTHWISE_CONV_2D" and self.lin.multiplier > 1:
            xq = np.repeat(xq, self.lin.multiplier, axis=2)
        gram = None
        if self.uses_gram():  # on the integers, then the rows become fake_quant_into's values
            gram = GramScorer(xq, t if self.activation == "NONE" else
                              self.linear_target.reshape(r, c), step=act[0])
        xq *= act[0]  # fake_quant_into's values, bit for bit
        t_norm = np.einsum("rc,rc->c", t, t, dtype=np.float64)
        per = max(1, _CHUNK_ELEMENTS // (c * max(k, 1 if gram else r)))
        scores = []
        for s in range(0, len(cands), per):
            scales = cands[s:s + per]
            wq = self.weight_candidates(scales)
            bias = None if self.bias is None else np.stack(
                [self._bias(act[0], sc) for sc in scales])
            if gram is not None:
                scores.append(gram.cosines(wq, bias))
            else:
                scores.append(self._direct_cosines(xq, t, t_norm, wq, bias))
        scores = np.concatenate(scores)
        if gram is not None and self.activation != "NONE":
            # Exact after-activation scores for each channel's best linear candidates
            # (candidate 0, the current scales, is always among them and first).
            top = np.argsort(-scores[1:], axis=0, kind="stable")[:self.preselect - 1] + 1
            picks = np.concatenate([np.zeros((1, c), int), top])
            chosen = cands[picks, np.arange(c)]
            wq = self.weight_candidates(chosen)
            bias = None if self.bias is None else np.stack(
                [self._bias(act[0], sc) for sc in chosen])
            exact = self._direct_cosines(xq, t, t_norm, wq, bias)
            return chosen[exact.argmax(axis=0), np.arange(c)]  # first maximum: current wins ties
        best = scores.argmax(axis=0)  # first maximum: current wins ties
        return cands[best, np.arange(c)]

    def _direct_cosines(self, xq: np.ndarray, t: np.ndarray, t_norm: np.ndarray,
                        wq: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Channel cosines (J, C) of candidate weights (K, J, C), computed on the rows."""
        r, c = t.shape
        j = wq.shape[1]
        depthwise = self.lin.op.type == "DEPTHWISE_CONV_2D"
        if self._fused() and (not depthwise or self.lin.multiplier == 1):
            tc = np.ascontiguousarray(t)
            if depthwise:
                dot, norm = native.channel_scores(tc, self.activation, bias, rows=xq, weights=wq)
            else:
                dot, norm = native.channel_scores(
                    tc, self.activation, bias,
                    products=(xq @ wq.reshape(wq.shape[0], -1)).reshape(r, j, c))
            return cosine_from_parts(dot, norm, t_norm)
        # Depthwise: a block of channels at a time (each channel's sums are the same, bit for
        # bit), so the products (R, J, C) and einsum's float64 buffers stay one block (on
        # EfficientNet-Lite's 1,152-channel layers they were the search's peak). Plain: one block.
        step = max(1, _CHUNK_ELEMENTS // max(r * j, 1)) if depthwise else max(c, 1)
        dot, norm = np.empty((j, c)), np.empty((j, c))
        for c0 in range(0, c, step):
            sl = slice(c0, c0 + step)
            out = np.einsum("rkc,kjc->rjc", xq[:, :, sl], wq[:, :, sl]) if depthwise \
                else (xq @ wq.reshape(wq.shape[0], -1)).reshape(r, j, c)
            out = self._output(out, None if bias is None else bias[..., sl])
            dot[:, sl] = np.einsum("rjc,rc->jc", out, t[:, sl], dtype=np.float64)
            norm[:, sl] = np.einsum("rjc,rjc->jc", out, out, dtype=np.float64)
        return cosine_from_parts(dot, norm, t_norm)

    def layer_scores(self, cands: list[tuple[float, int]], w_scales: np.ndarray) -> np.ndarray:
        """Layer cosine (mean over samples) of each input candidate (scale, zp) with ``w_scales``.

        With a linear objective and fewer inputs than outputs (K < C), the
        output norms come from ``xq·(W Wᵀ)·xq`` and the dot products from
        ``xq·(Y Wᵀ)``, O(rows·K²) per candidate instead of O(rows·K·C).
        """
        wq = grid.fake_quant_weights(self.matrix, w_scales, 1, self.bits.weights)
        r = self.rows.shape[0]
        k, c = wq.shape
        bias = [None if self.bias is None else self._bias(a[0], w_scales) for a in cands]
        small_k = (self.activation == "NONE" and self.lin.op.type != "DEPTHWISE_CONV_2D"
                   and 2 * k <= c)
        if not small_k:
            return self._blocked_scores(cands, wq, bias)
        t = self.target.reshape(r, c)
        m_rows = t @ wq.T                                          # (R, K)
        h = wq @ wq.T                                              # (K, K)
        s, p = self.target.shape[:2]
        t_norm = np.einsum("spc,spc->s", self.target, self.target, dtype=np.float64)
        per = max(1, _CHUNK_ELEMENTS // max(self.rows.size, r * k))
        buf = np.empty((min(per, len(cands)) * r, *self.rows.shape[1:]), self.rows.dtype)
        scores = []
        for s0 in range(0, len(cands), per):
            chunk = cands[s0:s0 + per]
            xq = buf[:len(chunk) * r]
            for i, a in enumerate(chunk):
                fake_quant_into(self.rows, *a, xq[i * r:(i + 1) * r], self.bits.act_clip)
            x3 = xq.reshape(len(chunk), r, k)
            norm = np.einsum("jrk,jrk->jr", x3, (xq @ h).reshape(len(chunk), r, k),
                             dtype=np.float64)
            dot = np.einsum("jrk,rk->jr", x3, m_rows, dtype=np.float64)
            if bias[0] is not None:
                bs = np.stack(bias[s0:s0 + len(chunk)]).astype(np.float64)    # (J, C)
                wb = bs @ wq.T.astype(np.float64)                             # (J, K)
                norm += 2 * np.einsum("jrk,jk->jr", x3, wb) + (bs * bs).sum(1)[:, None]
                dot += (t.astype(np.float64) @ bs.T).T
            scores.append(cosine_from_parts(dot.reshape(-1, s, p).sum(2),
                                            np.maximum(norm.reshape(-1, s, p).sum(2), 0.0),
                                            t_norm).mean(1))
        return np.concatenate(scores)

    def _blocked_scores(self, cands: list[tuple[float, int]], wq: np.ndarray,
                        bias: list[np.ndarray | None]) -> np.ndarray:
        """``layer_scores`` on the rows, a block of whole samples at a time.

        Every candidate is scored on one block before the next block is read,
        so its quantize, product and activation passes run on cached rows
        (``_BLOCK_ELEMENTS``) instead of streaming all rows from memory once
        per pass and candidate.
        """
        s, p, c = self.target.shape
        per_sample = p * max(self.rows[0].size, c)
        spb = max(1, _BLOCK_ELEMENTS // per_sample)
        dot, norm = np.empty((len(cands), s)), np.empty((len(cands), s))
        t_norm = np.einsum("spc,spc->s", self.target, self.target, dtype=np.float64)
        fused = self._fused()
        depthwise = fused and self.lin.multiplier == 1
        buf = None if depthwise else np.empty((min(spb, s) * p, *self.rows.shape[1:]),
                                              self.rows.dtype)
        clip = self.bits.act_clip
        for s0 in range(0, s, spb):
            s1 = min(s, s0 + spb)
            rows = self.rows[s0 * p:s1 * p]
            t = self.target[s0:s1]
            if depthwise:  # every candidate's quantize, product, bias, activation and sums
                dot[:, s0:s1], norm[:, s0:s1] = native.sample_scores(
                    t, self.activation, None if bias[0] is None else np.stack(bias),
                    rows=rows, matrix=wq, cands=cands, clip=clip)
                continue
            xq = buf[:len(rows)]
            for i, a in enumerate(cands):
                if fused:
                    native.fake_quant_into(rows, *a, xq, clip)
                    dot[i, s0:s1], norm[i, s0:s1] = native.sample_scores(
                        t, self.activation, bias[i], products=self.lin.apply(xq, wq))
                    continue
                fake_quant_into(rows, *a, xq, clip)
                out = self._output(self.lin.apply(xq, wq), bias[i]).reshape(s1 - s0, p * c)
                t2 = t.reshape(s1 - s0, p * c)
                dot[i, s0:s1] = np.einsum("sk,sk->s", out, t2, dtype=np.float64)
                norm[i, s0:s1] = np.einsum("sk,sk->s", out, out, dtype=np.float64)
        return cosine_from_parts(dot, norm, t_norm).mean(1)

    def _fused(self) -> bool:
        """True when the C loops (``eq_tflite.native``) can score this layer's candidates."""
        return (native.available() and self.activation in native.ACTIVATION_BOUNDS
                and self.rows.dtype == np.float32 and self.target.dtype == np.float32
                and self.rows.flags.c_contiguous and self.target.flags.c_contiguous)

    def evaluate(self, act: tuple[float, int], w_scales: np.ndarray) -> float:
        """Layer cosine of one choice of scales (``layer_scores`` of one candidate)."""
        return float(self.layer_scores([act], w_scales)[0])


# --------------------------------------------------------------------------
# The method: the search below, on the shared layer walk


@method("easyquant", default_samples=50, options=Options, prefix="eq", reads=("mse",),
        simulates=True)
def easyquant(ctx: MethodContext) -> Plan:
    """EasyQuant: per-layer cosine-maximizing weight and input activation scales."""
    opts = Options.parse(ctx.options)
    init_plan = methods.get({"max": "minmax"}.get(opts.init, opts.init))(ctx)

    def solve(layer: Layer) -> Decision:
        problem = _problem(opts, layer)
        row, act_range, scales = _search(problem, opts, layer.input_params(), layer.base_range)
        if layer.base_range is not None:
            layer.decide_input(act_range)
        q = None
        if opts.rounding == "gptq" and layer.bits.weights <= opts.rounding_bits:
            q = _gptq(problem, layer.input_params(), scales, row, opts.gptq_target)
        return Decision(scales, row, None if q is None else problem.lin.weights(q).astype(np.int8))

    done = walk(ctx, init_plan.activation_ranges, solve, desc="easyquant",
                quantized_inputs=opts.inputs == "quantized")
    return Plan("easyquant", ctx.bits, activation_ranges=done.activation_ranges,
                weight_scales=done.weight_scales, int_weights=done.int_weights, layers=done.layers)


def _gptq(problem: LayerProblem, act: tuple[float, int], scales: np.ndarray,
          row: dict[str, Any], target: str = "auto") -> np.ndarray | None:
    """GPTQ integers (K, C) on ``scales`` for the layer's quantized input rows, or None.

    ``target`` (``Options.gptq_target``): "layer" rounds to match the layer's
    float weights on the shipped inputs (GPTQ's objective), "float" to match
    the float model's layer output (``rounding.corrected_target``), "auto"
    takes whichever scores the better layer cosine on held-out samples (fit
    on the even samples, scored on the odd ones and back; report row
    ``gptq_target``). None where nearest rounding scores at least as well on
    the rows (the report's ``cos_gptq`` says what GPTQ reached), and for
    layers it does not cover: depthwise with a multiplier, grouped convolutions.
    """
    solve = rounding.solver(problem.lin)
    if solve is None:
        return None
    depthwise = solve is rounding.gptq_depthwise
    qmax = problem.bits.weight_qmax
    bias = None if problem.bias is None else problem._bias(act[0], scales)

    def fit(h: np.ndarray, cross: np.ndarray | None, corrected: bool) -> np.ndarray:
        matrix = rounding.corrected_target(problem.matrix, h, cross, depthwise) if corrected \
            else problem.matrix
        return solve(matrix, scales, qmax, h)

    def score(p: LayerProblem, q: np.ndarray) -> float:
        return float(p._blocked_scores([act], (q * _float32(scales)[None]).astype(np.float32),
                                       [bias])[0])

    samples = problem.target.shape[0]
    if target == "auto" and samples >= 2:
        folds = [_samples(problem, slice(i, None, 2)) for i in (0, 1)]
        stats = [_rounding_stats(f, act, depthwise, True) for f in folds]
        held = {t: sum(score(folds[1 - i], fit(*stats[i], t == "float")) for i in (0, 1))
                for t in ("layer", "float")}
        target = "float" if held["float"] > held["layer"] else "layer"
        h, cross = stats[0][0] + stats[1][0], stats[0][1] + stats[1][1]
    else:
        target = "layer" if target == "auto" else target
        h, cross = _rounding_stats(problem, act, depthwise, target == "float")
    q = fit(h, cross, target == "float")
    cos = score(problem, q)
    row["cos_gptq"] = cos
    row["gptq_target"] = target
    return q if cos > row["cos_eq"] else None


def _samples(problem: LayerProblem, which: slice) -> LayerProblem:
    """The problem on a subset of its samples (rows are sample-major)."""
    s, p = problem.target.shape[:2]
    rows = problem.rows.reshape(s, p, *problem.rows.shape[1:])[which]
    lt = problem.linear_target
    return dataclasses.replace(problem, rows=rows.reshape(-1, *problem.rows.shape[1:]),
                               target=problem.target[which],
                               linear_target=None if lt is None else lt[which])


def _rounding_stats(problem: LayerProblem, act: tuple[float, int], depthwise: bool,
                    with_cross: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """H = X_qᵀ·X_q and (``with_cross``, else None) X_qᵀ·(X_f·W − X_q·W) on the layer's input
    rows quantized at ``act`` (X_f·W from the float target: the target's bias is the float bias)."""
    linear = problem.linear_target if problem.linear_target is not None else problem.target
    linear = linear.reshape(len(problem.rows), -1)
    h, cross = 0.0, (0.0 if with_cross else None)
    block = max(1, (1 << 22) // max(problem.rows[0].size, 1))
    buf = np.empty((min(block, len(problem.rows)), *problem.rows.shape[1:]), np.float32)
    for r0 in range(0, len(problem.rows), block):
        chunk = problem.rows[r0:r0 + block]
        xq = fake_quant_into(chunk, *act, buf[:len(chunk)], problem.bits.act_clip)
        h = h + rounding.input_hessian(xq, depthwise)
        if not with_cross:
            continue
        err = linear[r0:r0 + len(chunk)] - problem.lin.apply(xq, problem.matrix)
        if problem.bias is not None:
            err = err - problem.bias
        err = err.astype(np.float64)
        cross = cross + (np.einsum("rkc,rc->kc", xq, err) if depthwise
                         else xq.T.astype(np.float64) @ err)
    return h, cross


def _problem(opts: Options, layer: Layer) -> LayerProblem:
    """Sampled rows of the layer: float target, input rows from the quantized (or float) model.

    In strict mode a deciding layer also counts, over every computed member of
    its input group, the values a candidate range would clip.
    """
    op, fsim, bits = layer.op, layer.fsim, layer.bits
    rows = layer.rows(opts.max_rows, np.random.default_rng([opts.seed, op.index]))
    lin, s, p = rows.lin, rows.samples, rows.per_sample
    matrix = lin.matrix(fsim.value(op.weight_input)).astype(np.float32)
    bias = fsim.value(op.bias_input) if op.bias_input >= 0 else None
    activation = op.activation if opts.objective == "activation" else "NONE"
    target = rows.float_output(matrix)
    if bias is not None:
        target = target + bias
    linear_target = target.reshape(s, p, -1) if activation != "NONE" else None
    target = simulate.apply_activation(activation, target).reshape(s, p, -1)
    tails = None
    if bits.strict and layer.base_range is not None:
        tails = GroupTails([InputTails.of(v, *layer.base_range, 0.9 / opts.beta)
                            for v in layer.group_values()])
    return LayerProblem(lin, rows.inputs, target, matrix, bias, activation, bits, tails,
                        linear_target, opts.preselect)


#: Coarse-to-fine input search: every COARSE-th candidate, then all candidates
#: between the best coarse one's neighbours (the same final resolution).
COARSE = 10


def _input_scores(problem: LayerProblem, cands: list[tuple[float, int]], w_scales: np.ndarray,
                  search: str) -> np.ndarray:
    """Layer cosine per input candidate (NaN where not evaluated); candidate 0 always scored.

    ``coarse_to_fine`` scores candidate 0 and every ``COARSE``-th one, then every
    candidate within ``COARSE`` positions of the best of those; ``exhaustive``
    scores all of them.
    """
    n = len(cands)
    if search == "exhaustive" or n <= 3 * COARSE:
        return problem.layer_scores(cands, w_scales)
    scores = np.full(n, np.nan)
    coarse = sorted({0, *range(1, n, COARSE), n - 1})
    scores[coarse] = problem.layer_scores([cands[i] for i in coarse], w_scales)
    best = 1 + int(np.nanargmax(scores[1:]))  # refine on the grid (0 is the current range)
    fine = [i for i in range(max(1, best - COARSE + 1), min(n, best + COARSE))
            if np.isnan(scores[i])]
    if fine:
        scores[fine] = problem.layer_scores([cands[i] for i in fine], w_scales)
    return scores


def _search(problem: LayerProblem, opts: Options, act: tuple[float, int],
            base_range: tuple[float, float] | None,
            ) -> tuple[dict[str, Any], tuple[float, float] | None, np.ndarray]:
    """Alternates weight and activation searches on one layer.

    ``act`` is the input's (scale, zp) to start from; ``base_range`` the
    range whose multiples are the activation candidates (None: weights only).
    Returns (report fields, chosen input range, weight step sizes).
    """
    bits = problem.bits
    mults = opts.multipliers()
    initial = _float32(grid.weight_scales(problem.matrix, 1, bits.weights))
    scales, act_range, init_act = initial, base_range, act
    cos_init = problem.evaluate(act, scales)
    cos = cos_init
    for _ in range(opts.rounds):
        new = problem.search_weights(act, scales, initial, mults)
        if base_range is None:
            new_cos = problem.evaluate(act, new)
            if new_cos >= cos:
                scales, cos = new, new_cos
            continue
        lo, hi = base_range
        ranges = [act_range] + [(lo / m, hi / m) for m in mults]
        cands = [grid.activation_params(*r, bits.activations) for r in ranges]
        if bits.strict and problem.tails is not None:
            keep = [0] + [i for i in range(1, len(cands))
                          if problem.clipped_share(cands[i]) <= opts.clip_budget]
            ranges, cands = [ranges[i] for i in keep], [cands[i] for i in keep]
        # Candidate 0 is the current input range: its score is the new weights' cosine.
        scores = _input_scores(problem, cands, new, opts.search)
        if scores[0] >= cos:
            scales, cos = new, float(scores[0])
        else:  # the new weights lost on the whole layer: search the input with the old ones
            scores = _input_scores(problem, cands, scales, opts.search)
        k = int(np.nanargmax(scores))  # first maximum: the current range wins ties
        if scores[k] >= cos:
            act, act_range, cos = cands[k], ranges[k], float(scores[k])
    live = initial > 0
    ratio = scales[live] / initial[live] if live.any() else np.ones(1)
    row = {"rows": int(problem.rows.shape[0]), "cos_init": cos_init, "cos_eq": cos,
           "act_scale_ratio": act[0] / init_act[0],
           "act_outside_levels": problem.outside_levels(act),
           "w_ratio_mean": float(ratio.mean()), "w_ratio_min": float(ratio.min()),
           "w_ratio_max": float(ratio.max())}
    return row, act_range, scales
