"""``bitsplit``: Bit-Split and Stitching (Wang et al., ICML 2020 / TPAMI 2023).

Per output channel c, the b-bit integer weight is split into b-1 ternary bit
planes with power-of-two weights, ``q_c = sum_i 2^i B_i,c`` with
``B_i,c in {-1, 0, 1}^K``, and the real weight is ``alpha_c * q_c``. For each
weighted op in topological order, coordinate descent minimizes the layer's
response error

    sum_c || y_c - X_c (alpha_c q_c) ||^2

on sampled im2col rows: ``y`` is the float layer output before bias (an
unchanged bias cancels; see bias correction below), ``X`` the input rows from
the already-quantized model (earlier layers carry their Bit-Split weights and
every input is on its b-bit activation levels), so each layer also
compensates the error of everything before it. One descent round is

* the scale step: ``alpha_c = <y_c, X q_c> / ||X q_c||^2`` (exact), rounded
  to the nearest float32 (the value that ships);
* a plane step for each plane i (most significant first): every element of
  ``B_i`` in turn takes the ternary value that minimizes the objective with
  all else fixed (exact: a 1-D convex quadratic over {-1, 0, 1}).

No step can raise the objective; ``ResponseProblem`` works on
``H = X^T X`` and ``G = X^T Y`` so a step costs O(K^2 C) whatever the row
count. The planes are then stitched back into one ordinary integer
``q_c in [-(2^(b-1)-1), 2^(b-1)-1]``, which the plan ships as
``int_weights`` with ``weight_scales = alpha``. Widths 2..8; CONV_2D,
DEPTHWISE_CONV_2D (any multiplier), FULLY_CONNECTED and TRANSPOSE_CONV.

Bias correction (``bs_bias_correction``, default on; an addition to the
paper): where the op has a bias, a per-channel shift ``d_c`` joins the fit,
``||y_c - X_c alpha_c q_c - d_c||^2``. Minimizing over ``d`` first is the
same descent on centered rows and targets, so every guarantee above holds,
and the corrected float bias ships through ``Plan.float_weights``. Measured
(W4A8/W3A8, 10k test images, both examples): agreement +0.06 to +0.50 pp and
output cosine up in all four cases (W4A8: 0.99955 / 0.99683 vs 0.99943 /
0.99680; BENCHMARKS.md); off gives the paper's form.

Held-out samples (``bs_holdout``, default 0.25; an addition to the paper):
the paper's fit has (b-1)·K ternary unknowns per channel, and a late 1x1
convolution or the classifier of a real model sees few more rows than that
from the 64 images a user typically has, so the descent memorizes its rows
(EfficientNet-Lite1 W4A8 on 64 samples: 100% agreement on them, 42.8% on
other photos). So a seeded quarter of the calibration samples is kept out of
every layer's fit, and each output channel ships the candidate with the least
error on those held-out rows: plain absmax rounding (min/max's weights, so a
channel is never worse than min/max there), EasyQuant's steps when it ran
(``bs_activations=easyquant``), and for each ridge strength in ``bs_ridge``
the descent on the problem plus ``lam ||alpha_c q_c - w_c||^2`` (a pull
toward the float weights, :meth:`ResponseProblem.ridged`), early-stopped per
channel at its best held-out state; each with and without the fitted bias
shift. ``bs_holdout=0`` fits every sample with the first ridge strength (the
paper's form with ``bs_ridge=0``). ``bs_target=own`` fits the layer's own
float weights applied to the quantized-model rows instead of the float
model's output. Measured on the real-model suite: BENCHMARKS.md, section
"Bit-Split defaults on the real-model suite".

Start: per channel, the best of ``init_steps`` clipped-absmax steps
(``absmax * m / qmax``, m in [0.5, 1]) with plain rounding, scored on the
same objective with the least-squares alpha; its integers give the planes
(sign times the binary digits of ``|q|``).

Activations (``bs_activations``): ``mse`` (default), the paper's per-tensor
scale by iterative MSE: when a weighted op first reads a tensor group, the
step size alternates ``q = clip(round(x / s) + zp) - zp`` and
``s = <x, q> / <q, q>`` (Lloyd) from the min/max range, on the values the
already-quantized model feeds that op; in strict mode the step is then
widened until at most ``bs_clip_budget`` (0.1%, as EasyQuant) of the values
lie beyond the levels. ``easyquant`` runs EasyQuant first and keeps its
ranges; ``minmax`` keeps min/max. Measured (W4, 10k test images, output
cosine ResNet / MobileNetV2): at A8 MSE 0.99955 / 0.99683, EasyQuant's search
0.99948 / 0.99678, min/max 0.99945 / 0.99678; at A6 MSE 0.99871 / 0.99278,
EasyQuant's search 0.99686 / 0.99348, min/max 0.99869 / 0.99045. No
alternative wins on both models, so the default is the paper's, cheapest
search. Tables: BENCHMARKS.md, section "Bit-Split".

Composition: :func:`split_weights` is the weight step alone. Given a context,
any activation ranges (from DFQ, EasyQuant, a method chain) and optionally
another method's edited float weights, it returns ``int_weights``,
``weight_scales`` and corrected biases (``float_weights``) for them;
``bitsplit`` itself is that step plus an activation choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from eq_tflite import grid, methods, native, options, simulate
from eq_tflite.methods import method
from eq_tflite.methods.layerwise import Decision, Layer, Rows, Walked, walk
from eq_tflite.options import option
from eq_tflite.plan import MethodContext, Plan

ACTIVATION_CHOICES = ("mse", "easyquant", "minmax")
TARGET_CHOICES = ("float", "own")


@dataclass(frozen=True)
class Options:
    """Bit-Split options (keys ``bs_<field>``; ``seed`` is shared). Defaults: module doc."""

    rounds: int = option(3, "coordinate-descent rounds per layer", check=lambda v: v >= 0,
                         rule="must be >= 0")
    max_rows: int = option(4096, "cap on sampled output positions per layer (seeded; 0: all)",
                           check=lambda v: v >= 0, rule="must be >= 0 (0: all rows)")
    init_steps: int = option(20, "clipped-absmax steps tried per channel for the start",
                             check=lambda v: v >= 1, rule="must be >= 1")
    activations: str = option("mse", "activation ranges by iterative MSE (the paper's), "
                              "EasyQuant's search or min/max", choices=ACTIVATION_CHOICES)
    mse_iters: int = option(20, "iterations of the per-tensor MSE range", check=lambda v: v >= 0,
                            rule="must be >= 0")
    clip_budget: float = option(0.001, "strict mode: largest share of a tensor's values an MSE "
                                "range may clip", check=lambda v: 0 <= v <= 1,
                                rule="must be in [0, 1]")
    bias_correction: bool = option(True, "fit a per-channel bias shift with the weights "
                                   "(false: the paper's form)")
    holdout: float = option(0.25, "share of the calibration samples held out of each layer's fit "
                            "to choose, per output channel, among the candidate fits (0: fit "
                            "every sample, the paper's form)", check=lambda v: 0 <= v < 1,
                            rule="must be in [0, 1)")
    ridge: tuple = option((0.0, 0.1, 1.0), "ridge strengths toward the float weights, one "
                          "candidate fit each (without held-out samples the first is used)",
                          check=lambda v: len(v) >= 1 and all(0 <= r < float("inf") for r in v),
                          rule="must be one or more finite values >= 0")
    target: str = option("float", "fit the float model's layer output, or the layer's float "
                         "weights applied to the quantized model's inputs", choices=TARGET_CHOICES)
    seed: int = option(0, "seed for sampling rows and held-out samples", key="seed")

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "Options":
        """Reads and validates the ``bs_*`` keys (and ``seed``); missing keys take the defaults."""
        return options.parse(cls, "bs", values)


# --------------------------------------------------------------------------
# One layer: the response objective and its coordinate descent


class ResponseProblem:
    """``sum_c ||y_c - alpha_c X_c q_c||^2`` through ``H = X^T X``, ``G = X^T Y``.

    ``x`` is (R, K) rows shared by all channels, or (R, K, C) rows per output
    channel (depthwise); ``y`` is (R, C). Everything is float64. With
    ``with_bias`` a per-channel bias shift ``d_c`` joins the fit,
    ``||y_c - alpha_c X_c q_c - d_c||^2``: minimizing over ``d`` first leaves
    the same problem on centered rows and targets, and ``bias_shift`` gives
    the optimal ``d`` for any ``q``, ``alpha``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, with_bias: bool = False):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        self.x_mean = x.mean(axis=0) if with_bias else np.zeros(x.shape[1:])
        self.y_mean = y.mean(axis=0) if with_bias else np.zeros(y.shape[1:])
        x, y = x - self.x_mean, y - self.y_mean
        self.per_channel = x.ndim == 3
        if self.per_channel:
            self.h = np.einsum("rkc,rjc->kjc", x, x)          # (K, K, C)
            self.g = np.einsum("rkc,rc->kc", x, y)            # (K, C)
            self.diag = np.ascontiguousarray(np.einsum("kkc->kc", self.h))  # (K, C)
        else:
            self.h = np.ascontiguousarray(x.T @ x)             # (K, K) (row-major for the C
            self.g = np.ascontiguousarray(x.T @ y)             # (K, C)  plane step)
            self.diag = np.diag(self.h)[:, None]               # (K, 1)
        self.yy = np.einsum("rc,rc->c", y, y)                  # (C,)

    def ridged(self, strength: float, w: np.ndarray) -> "ResponseProblem":
        """The same problem plus ``lam ||alpha_c q_c - w_c||^2`` per channel.

        ``lam = strength * mean(diag(H))`` (per channel when rows are), so
        ``strength`` is scale-free: with whitened rows, 1 weighs the distance
        to the float weights ``w`` (K, C) as much as the response error. The
        pull toward ``w`` is the regularization that keeps a layer with few
        rows per weight (a late 1x1 convolution, the classifier) from fitting
        its calibration rows instead of the function.
        """
        if strength <= 0:
            return self
        out = object.__new__(ResponseProblem)
        out.__dict__.update(self.__dict__)
        w = np.asarray(w, np.float64)
        lam = strength * self.diag.mean(axis=0)                # (C,) or (1,)
        k = self.diag.shape[0]
        if self.per_channel:
            out.h = self.h + np.eye(k)[:, :, None] * lam
        else:
            lam = float(lam[0])
            out.h = self.h + lam * np.eye(k)
        out.diag = self.diag + lam
        out.g = self.g + lam * w
        out.yy = self.yy + lam * np.einsum("kc,kc->c", w, w)
        return out

    def bias_shift(self, q: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Optimal per-channel bias shift ``mean(y) - mean(x) . (alpha q)`` (0 without bias)."""
        w = np.asarray(q, np.float64) * alpha
        xw = np.einsum("kc,kc->c", self.x_mean, w) if self.per_channel else self.x_mean @ w
        return self.y_mean - xw

    def hq(self, q: np.ndarray) -> np.ndarray:
        """``H q`` per channel, (K, C)."""
        q = np.asarray(q, np.float64)
        return np.einsum("kjc,jc->kc", self.h, q) if self.per_channel else self.h @ q

    def column(self, k: int) -> np.ndarray:
        """Column k of H: (K, C) per channel, (K, 1) shared."""
        return self.h[:, k] if self.per_channel else self.h[:, k:k + 1]

    def objective(self, q: np.ndarray, alpha: np.ndarray, hq: np.ndarray | None = None
                  ) -> np.ndarray:
        """Per-channel squared response error of weights ``alpha * q``."""
        hq = self.hq(q) if hq is None else hq
        q = np.asarray(q, np.float64)
        return (self.yy - 2 * alpha * np.einsum("kc,kc->c", self.g, q)
                + alpha * alpha * np.einsum("kc,kc->c", q, hq))

    def best_alpha(self, q: np.ndarray, hq: np.ndarray | None = None,
                   current: np.ndarray | None = None) -> np.ndarray:
        """Least-squares scale per channel for fixed ``q``, nearest float32, positive.

        Channels with ``X q = 0`` keep ``current`` (0 without one). Where the
        optimum is not positive (the objective grows with alpha > 0) the
        scale halves, which cannot raise the objective either.
        """
        hq = self.hq(q) if hq is None else hq
        q = np.asarray(q, np.float64)
        num = np.einsum("kc,kc->c", self.g, q)
        den = np.einsum("kc,kc->c", q, hq)
        cur = np.zeros(q.shape[1]) if current is None else current
        with np.errstate(divide="ignore", invalid="ignore"):
            best = np.where(den > 0, num / den, cur)
        best = np.where(best > 0, best, cur / 2)
        return best.astype(np.float32).astype(np.float64)


class HeldOutRows:
    """Per-channel response error ``||y_c - X_c alpha_c q_c - d_c||^2`` on rows the fit did not see.

    Same row layouts as :class:`ResponseProblem`, uncentered: ``d`` is the
    bias shift fitted on the other rows, so the score includes how well that
    shift carries over.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        self.n = x.shape[0]
        self.per_channel = x.ndim == 3
        if self.per_channel:
            self.h = np.einsum("rkc,rjc->kjc", x, x)
            self.g = np.einsum("rkc,rc->kc", x, y)
        else:
            self.h = x.T @ x
            self.g = x.T @ y
        self.sx = x.sum(axis=0)                                # (K,) or (K, C)
        self.sy = y.sum(axis=0)                                # (C,)
        self.yy = np.einsum("rc,rc->c", y, y)

    def errors(self, q: np.ndarray, alpha: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
        """Per-channel squared error of weights ``alpha * q`` and bias shift ``d``."""
        w = np.asarray(q, np.float64) * alpha
        hw = np.einsum("kjc,jc->kc", self.h, w) if self.per_channel else self.h @ w
        err = self.yy - 2 * np.einsum("kc,kc->c", self.g, w) + np.einsum("kc,kc->c", w, hw)
        if d is not None:
            sxw = np.einsum("kc,kc->c", self.sx, w) if self.per_channel else self.sx @ w
            err = err - 2 * d * (self.sy - sxw) + self.n * d * d
        return err


def to_planes(q: np.ndarray, bits: int) -> np.ndarray:
    """Ternary planes (b-1, K, C) with ``q = sum_i 2^i planes[i]`` (sign times binary digits)."""
    mag, sign = np.abs(q.astype(np.int64)), np.sign(q.astype(np.int64))
    return np.stack([sign * ((mag >> i) & 1) for i in range(bits - 1)]).astype(np.int8)


def stitch(planes: np.ndarray) -> np.ndarray:
    """One integer per weight from ternary planes: ``sum_i 2^i planes[i]``."""
    weights = (1 << np.arange(len(planes), dtype=np.int64)).reshape(-1, *([1] * (planes.ndim - 1)))
    return (planes.astype(np.int64) * weights).sum(axis=0)


@dataclass
class SplitResult:
    """Stitched integers (K, C), scales (C,), and the objective after each step.

    ``history[0]`` is the start, then one entry per scale or plane step;
    ``absmax_objective`` is plain rounding with absmax steps, for reference.
    """

    q: np.ndarray
    alpha: np.ndarray
    history: list[float] = field(default_factory=list)
    absmax_objective: float = 0.0
    steps: int = 0
    monitor_end: np.ndarray | None = None   # monitor's score of the last state (no early stop)


def initial_split(problem: ResponseProblem, w: np.ndarray, bits: int, steps: int,
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Per channel, the best clipped-absmax rounding (with its least-squares alpha).

    Returns (q (K, C) int64, alpha (C,), objective of plain absmax rounding).
    """
    qmax = 2 ** (bits - 1) - 1
    absmax = np.abs(w).max(axis=0)
    live = absmax > 0
    best_q = np.zeros(w.shape, np.int64)
    best_a = np.zeros(w.shape[1])
    best_f = np.full(w.shape[1], np.inf)
    absmax_f = 0.0
    for m in np.linspace(1.0, 0.5, steps):
        step = np.where(live, absmax * m / qmax, 1.0)
        q = np.where(live, np.clip(np.round(w / step), -qmax, qmax), 0).astype(np.int64)
        hq = problem.hq(q)
        if m == 1.0:
            absmax_f = float(problem.objective(q, np.where(live, step, 0), hq).sum())
        a = problem.best_alpha(q, hq, np.where(live, step, 0).astype(np.float32).astype(np.float64))
        f = problem.objective(q, a, hq)
        better = f < best_f
        best_q[:, better], best_a[better], best_f[better] = q[:, better], a[better], f[better]
    return best_q, best_a, absmax_f


def _plane_step(problem: ResponseProblem, planes: np.ndarray, i: int, q: np.ndarray,
                alpha: np.ndarray, free: np.ndarray | None = None) -> int:
    """Element-wise exact minimization over plane ``i`` (in place); returns elements changed."""
    p = float(1 << i)
    hq = problem.hq(q)
    # The same loop in C (native/score.c), channels in parallel, the same numbers
    done = native.plane_step(problem.h, problem.diag, problem.g, hq, alpha, planes[i], q, free, p)
    if done is not None:
        return done
    a2 = alpha * alpha
    plane = planes[i]
    changed = 0
    for k in range(q.shape[0]):
        curv = a2 * problem.diag[k]                       # (C,) or (1,)->(C,)
        grad = a2 * hq[k] - alpha * problem.g[k]          # half the derivative in q_k
        with np.errstate(divide="ignore", invalid="ignore"):
            target = np.clip(np.round(plane[k] - grad / (curv * p)), -1, 1)
        d = p * (np.nan_to_num(target, nan=0.0) - plane[k])
        gain = 2 * d * grad + curv * d * d
        move = (d != 0) & (curv > 0) & (gain < 0)
        if free is not None:
            move &= free[k]
        if not move.any():
            continue
        d = np.where(move, d, 0.0)
        plane[k] += (d / p).astype(np.int8)
        q[k] += d.astype(np.int64)
        cols = np.flatnonzero(move)
        if len(cols) * 4 < len(move):  # few channels moved: update only theirs
            col = problem.column(k)
            hq[:, cols] += (col[:, cols] if col.shape[1] > 1 else col) * d[cols]
        else:
            hq += problem.column(k) * d
        changed += int(np.count_nonzero(move))
    return changed


Monitor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def bit_split(problem: ResponseProblem, w: np.ndarray, bits: int, rounds: int = 3,
              init_steps: int = 20, free: np.ndarray | None = None,
              monitor: Monitor | None = None) -> SplitResult:
    """Bit-Split coordinate descent on one layer; ``w`` is the (K, C) float weight matrix.

    ``free`` (K, C) marks the entries that may change; the others stay as the
    initial rounding left them (the structural zeros of a grouped convolution).
    ``monitor(q, alpha)`` scores a state per channel (lower is better; held-out
    rows): then each channel returns the state, among the start and the state
    after every step, that scored best (early stopping per channel), and
    ``history`` still records the fit objective of the descent.
    """
    q, alpha, absmax_f = initial_split(problem, np.asarray(w, np.float64), bits, init_steps)
    planes = to_planes(q, bits)
    result = SplitResult(q, alpha, [float(problem.objective(q, alpha).sum())], absmax_f)
    best_q, best_a = q.copy(), alpha.copy()
    best_e = monitor(q, alpha) if monitor is not None else None
    result.monitor_end = best_e

    def track() -> None:
        if monitor is None:
            return
        e = result.monitor_end = monitor(q, alpha)
        better = e < best_e
        best_q[:, better], best_a[better], best_e[better] = q[:, better], alpha[better], e[better]

    for _ in range(rounds):
        new = problem.best_alpha(q, current=alpha)
        keep = problem.objective(q, new) > problem.objective(q, alpha)  # float32 rounding guard
        alpha = np.where(keep, alpha, new)
        result.history.append(float(problem.objective(q, alpha).sum()))
        track()
        changed = 0
        for i in reversed(range(bits - 1)):
            changed += _plane_step(problem, planes, i, q, alpha, free)
            result.history.append(float(problem.objective(q, alpha).sum()))
            track()
        result.steps += 1
        if not changed:
            break
    if monitor is None:
        result.q, result.alpha = stitch(planes), alpha
    else:
        result.q, result.alpha = best_q, best_a
    return result


# --------------------------------------------------------------------------
# Activations: iterative MSE


def mse_range(values: np.ndarray, base: tuple[float, float], bits: grid.BitWidths,
              iters: int = 20, clip_budget: float = 0.001) -> tuple[float, float]:
    """Per-tensor range by iterative MSE (Lloyd), as a multiple of ``base`` about zero.

    In strict mode the step is then widened (bisection towards the base step)
    until at most ``clip_budget`` of the values lie beyond the levels.
    """
    s0, zp = grid.activation_params(*base, bits.activations)
    v = np.asarray(values)
    # sorted in its own dtype (float32 sorts twice as fast), then widened: the same array
    v = np.sort(v.ravel() if v.dtype == np.float32 else v.astype(np.float64).ravel()
                ).astype(np.float64)
    lo_q, hi_q = bits.act_qmin - zp, bits.act_qmax - zp
    s = s0
    for _ in range(iters):
        q = np.clip(np.round(v / s), lo_q, hi_q)
        den = float(q @ q)
        if den <= 0:
            break
        new = float(v @ q) / den
        if not new > 0 or abs(new - s) <= 1e-7 * s:
            break
        s = new
    if bits.strict and grid.share_outside(v, grid.level_bounds(s, zp, bits)) > clip_budget:
        lo_s, hi_s = s, max(s0, s)
        for _ in range(30):
            mid = 0.5 * (lo_s + hi_s)
            lo_s, hi_s = (lo_s, mid) if grid.share_outside(v, grid.level_bounds(mid, zp, bits)) <= clip_budget else (mid, hi_s)
        s = hi_s
    m = s / s0
    return base[0] * m, base[1] * m


# --------------------------------------------------------------------------
# The layer walk

RangeChooser = Callable[[np.ndarray, tuple[float, float], grid.BitWidths], tuple[float, float]]


def split_samples(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, held-out) calibration sample indices; ``round(n * holdout)`` held out.

    At least one sample is held out when ``holdout > 0`` and there are two or
    more samples, and at least one is always fitted.
    """
    k = min(max(int(round(n * holdout)), 1), n - 1) if holdout > 0 and n >= 2 else 0
    perm = np.random.default_rng([seed, 0x5b17]).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _layer_rows(layer: Layer, max_rows: int, rng: np.random.Generator, ids: np.ndarray,
                own_target: bool) -> tuple[Rows, np.ndarray, np.ndarray]:
    """(rows of samples ``ids``, float pre-bias target (R, C), float matrix (K, C)).

    The target is the float model's output, or with ``own_target`` this
    layer's float weights applied to the quantized-model rows (the layer then
    matches its own function and does not try to undo upstream error from a
    few samples). Depthwise rows are repeated per channel multiplier.
    """
    rows = layer.rows(max_rows, rng, ids)
    lin = rows.lin
    matrix = lin.matrix(layer.fsim.value(layer.op.weight_input)).astype(np.float64)
    target = lin.apply(rows.inputs.astype(np.float64), matrix) if own_target \
        else rows.float_output(matrix, np.float64)
    if lin.multiplier > 1:
        rows.inputs = np.repeat(rows.inputs, lin.multiplier, axis=2)
    return rows, target, matrix


@dataclass
class LayerFit:
    """One layer's shipped weights: integers (K, C), scales (C,), bias shift (C,) or None."""

    q: np.ndarray
    alpha: np.ndarray
    shift: np.ndarray | None
    info: dict[str, Any]


def fit_layer(problem: ResponseProblem, held: HeldOutRows | None, matrix: np.ndarray, bits: int,
              opts: Options, free: np.ndarray | None, correct: bool,
              start_scale: np.ndarray | None = None) -> LayerFit:
    """Bit-Split for one layer, chosen per channel on held-out rows.

    Without held-out rows: the descent with the first ``ridge`` strength (the
    paper's form with strength 0). With them, the candidates are plain
    absmax rounding (min/max's weights) and, for each ridge strength, the
    descent early-stopped per channel on the held-out rows; each channel
    ships the candidate, with or without the fitted bias shift, whose
    held-out error is least. ``start_scale`` (C,) adds plain rounding on
    another method's per-channel steps (EasyQuant's) as one more candidate.
    """
    norm_fit = max(float(problem.yy.sum()), 1e-30)
    if held is None:
        res = bit_split(problem.ridged(opts.ridge[0], matrix), matrix, bits, opts.rounds,
                        opts.init_steps, free)
        shift = problem.bias_shift(res.q, res.alpha) if correct else None
        return LayerFit(res.q, res.alpha, shift, {
            "rel_err_absmax": res.absmax_objective / norm_fit,
            "rel_err_init": res.history[0] / norm_fit,
            "rel_err_bitsplit": float(problem.objective(res.q, res.alpha).sum()) / norm_fit,
            "rounds": res.steps})

    def shift_of(q: np.ndarray, a: np.ndarray) -> np.ndarray | None:
        return problem.bias_shift(q, a) if correct else None

    def monitor(q: np.ndarray, a: np.ndarray) -> np.ndarray:
        return held.errors(q, a, shift_of(q, a))

    qmax = 2 ** (bits - 1) - 1
    absmax = np.abs(matrix).max(axis=0)
    step = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32).astype(np.float64)
    q0 = np.clip(np.round(matrix / step), -qmax, qmax).astype(np.int64)
    cands: list[tuple[str, np.ndarray, np.ndarray]] = [("absmax", q0, step)]
    if start_scale is not None:
        s = np.where(start_scale > 0, start_scale, step).astype(np.float32).astype(np.float64)
        cands.append(("given", np.clip(np.round(matrix / s), -qmax, qmax).astype(np.int64), s))
    info: dict[str, Any] = {}
    norm = max(float(held.yy.sum()), 1e-30)
    steps = 0
    for strength in opts.ridge:
        res = bit_split(problem.ridged(strength, matrix), matrix, bits, opts.rounds,
                        opts.init_steps, free, monitor)
        cands.append((f"ridge {strength:g}", res.q, res.alpha))
        info[f"held_rel_err_ridge{strength:g}_end"] = float(res.monitor_end.sum()) / norm
        steps = max(steps, res.steps)
    names, errs, choice = [], [], []
    for name, q, a in cands:
        for with_shift in ((True, False) if correct else (False,)):
            d = shift_of(q, a) if with_shift else None
            names.append(name + (" +shift" if with_shift else ""))
            errs.append(held.errors(q, a, d))
            choice.append((q, a, d))
    errs_a = np.stack(errs)                                   # (candidates, C)
    pick = np.argmin(errs_a, axis=0)
    c = np.arange(matrix.shape[1])
    q = np.stack([choice[i][0] for i in range(len(choice))])[pick, :, c].T   # (K, C)
    alpha = np.stack([choice[i][1] for i in range(len(choice))])[pick, c]
    shift = None
    if correct:
        zeros = np.zeros(matrix.shape[1])
        shift = np.stack([zeros if d is None else d for _, _, d in choice])[pick, c]
    info.update({
        "rel_err_absmax": float(problem.objective(q0, step).sum()) / norm_fit,
        "rel_err_bitsplit": float(problem.objective(q, alpha).sum()) / norm_fit,
        "held_rel_err_absmax": float(errs_a[0].sum()) / norm,
        "held_rel_err_chosen": float(errs_a[pick, c].sum()) / norm,
        "chosen": {n: int(np.count_nonzero(pick == i)) for i, n in enumerate(names)
                   if np.any(pick == i)},
        "rounds": steps})
    return LayerFit(q, alpha, shift, info)


def split_weights(ctx: MethodContext, activation_ranges: Mapping[str, tuple[float, float]],
                  options: Options | None = None, choose_range: RangeChooser | None = None,
                  float_weights: Mapping[str, np.ndarray] | None = None,
                  weight_scales: Mapping[str, np.ndarray] | None = None) -> Walked:
    """Bit-Split weights for the given activation ranges (the composable weight step).

    ``activation_ranges`` (float-graph names) fix the activation levels the
    quantized model uses; with ``choose_range`` the input group of each
    weighted op is instead decided when the walk reaches its first reader,
    from the values the quantized model feeds it and the group's given range.
    ``float_weights`` are another method's edited float constants (e.g. DFQ's
    equalized weights and biases): targets, weights and biases start from them.
    Returned ``activation_ranges`` are the given ones with those decisions;
    returned ``float_weights`` hold every bias the step corrected (put them in
    the plan together with the given edits). ``weight_scales`` (another
    method's per-channel steps, by weight name) join each layer's candidates
    when there are held-out samples (see :func:`fit_layer`).
    """
    opts = options or Options.parse(ctx.options)
    n = next(iter(ctx.calibration.values())).shape[0] if ctx.calibration else 0
    fit_ids, held_ids = split_samples(n, opts.holdout, opts.seed)
    edits = dict(float_weights or {})

    def solve(layer: Layer) -> Decision:
        op, graph = layer.op, layer.graph
        if layer.base_range is not None:
            layer.decide_input(choose_range(layer.input_values(), layer.base_range, layer.bits))
        own = opts.target == "own"
        rows, target, matrix = _layer_rows(layer, opts.max_rows,
                                           np.random.default_rng([opts.seed, op.index]), fit_ids, own)
        bias = graph.tensors[op.bias_input] if op.bias_input >= 0 else None
        b_values = None if bias is None else edits.get(bias.name, bias.data)
        correct = opts.bias_correction and b_values is not None
        problem = ResponseProblem(rows.inputs, target, with_bias=correct)
        held = None
        if len(held_ids):
            held_rows, held_target, _ = _layer_rows(
                layer, opts.max_rows, np.random.default_rng([opts.seed, op.index, 1]), held_ids, own)
            held = HeldOutRows(held_rows.inputs, held_target)
        w_t = graph.tensors[op.weight_input]
        grouped = simulate.conv_groups(op.type, w_t.shape, rows.lin.in_channels) > 1
        free = rows.lin.matrix(np.ones(w_t.shape, np.float32)) != 0 if grouped else None
        given = None if weight_scales is None else weight_scales.get(w_t.name)
        res = fit_layer(problem, held, matrix, layer.bits.weights, opts, free, correct,
                        None if given is None else np.asarray(given, np.float64).reshape(-1))
        new_bias = None
        if correct:
            new_bias = (np.asarray(b_values, np.float64) + res.shift).astype(np.float32)
        return Decision(res.alpha, {"rows": int(rows.inputs.shape[0]),
                                    "held_out_rows": 0 if held is None else held.n, **res.info},
                        rows.lin.weights(res.q).astype(np.int8), new_bias)

    return walk(ctx, activation_ranges, solve, desc="bitsplit",
                decide_inputs=choose_range is not None, weights=edits)


@method("bitsplit", default_samples=256, options=Options, prefix="bs", reads=("easyquant",),
        simulates=True)
def bitsplit(ctx: MethodContext) -> Plan:
    """Bit-Split and Stitching weights; activations by iterative MSE (or EasyQuant/min-max)."""
    opts = Options.parse(ctx.options)
    choice = opts.activations
    if choice == "easyquant":
        eq_plan = methods.get("easyquant")(ctx)
        base, scales = eq_plan.activation_ranges, eq_plan.weight_scales
    else:
        base, scales = methods.get("minmax")(ctx).activation_ranges, None
    def by_mse(values: np.ndarray, rng: tuple[float, float],
               bits: grid.BitWidths) -> tuple[float, float]:
        return mse_range(values, rng, bits, opts.mse_iters, opts.clip_budget)

    chooser = by_mse if choice == "mse" else None
    step = split_weights(ctx, base, opts, chooser, weight_scales=scales)
    return Plan("bitsplit", ctx.bits, activation_ranges=step.activation_ranges,
                weight_scales=step.weight_scales, int_weights=step.int_weights,
                float_weights=step.float_weights,
                layers=step.layers)
