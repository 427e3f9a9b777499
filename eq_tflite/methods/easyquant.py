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
those values use the int8 headroom. Measured at 7 bits on the examples (10k
test images), a budget of 0.1% left 0.003-0.005% of all activations outside
the levels with the best output cosine; budget 0 (ranges cover the data)
lost cosine (ResNet 0.99971 vs 0.99978; MobileNetV2 W5 0.98557 vs 0.98937);
no budget tied or lost (MobileNetV2 W5 0.98896). With
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
* ``eq_objective="activation"``: the cosine is taken after the fused
  activation (what the next layer reads; the reference code scores after
  ReLU too); ``"linear"`` scores the accumulator before it. The two tied
  within seed noise (agreement differences -0.12..+0.15 pp, no consistent
  sign).
* ``eq_init="max"``: activations start from the calibration min/max;
  ``"kl"`` (``methods/kl.py``'s thresholds) starts from ranges that lose a
  lot at 7 bits and the ±2x search does not recover them (MobileNetV2 W7:
  agreement 89.8% vs 99.3%). Weights start from per-channel absmax.
* ``eq_rounds=1`` (the paper): a second round changed agreement by
  -0.11..+0.10 pp for 1.5-2x the time.
* ``eq_max_rows=4096``: each layer is scored on at most this many output
  positions (im2col rows): every sample keeps the same number of positions,
  drawn without replacement with a generator seeded by (seed, op index);
  with more samples than rows, a seeded subset of samples keeps one
  position each; 0 keeps all rows. 1024, 4096, 16384 and all rows were
  within seed noise of each other; the cap bounds time and memory on
  larger inputs.

Shared and tied inputs: tensors joined through same-scale ops (pool,
reshape, pad, concatenation: ``simulate.tied_groups``) form one group. The
first weighted consumer (topological order) of any tensor of a group searches
the group's scale on its own input and the chosen range is written on every
tensor name of the group, so the rewriter's union of tied ranges is exactly
that range. Later consumers search weights only, as do layers whose input
group holds a fixed-scale tensor (softmax, logistic, tanh). Every other
tensor keeps its initial range.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from eq_tflite import grid, methods, resolve, simulate
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op
from eq_tflite.grid import BitWidths
from eq_tflite.methods import register
from eq_tflite.metrics import cosine_from_parts
from eq_tflite.plan import MethodContext, Plan
from eq_tflite.progress import progress_bar

#: Float elements of candidate outputs held at once during a search.
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Options:
    """EasyQuant options (``ctx.options`` keys ``eq_*`` and ``seed``)."""

    steps: int = 100
    alpha: float = 0.5
    beta: float = 2.0
    rounds: int = 1
    init: str = "max"
    inputs: str = "quantized"
    objective: str = "activation"
    max_rows: int = 4096
    clip_budget: float = 0.001
    seed: int = 0

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> "Options":
        """Reads and validates ``eq_*`` options; missing keys take the defaults."""
        d = cls()
        try:
            o = cls(steps=int(options.get("eq_steps", d.steps)),
                    alpha=float(options.get("eq_alpha", d.alpha)),
                    beta=float(options.get("eq_beta", d.beta)),
                    rounds=int(options.get("eq_rounds", d.rounds)),
                    init=str(options.get("eq_init", d.init)),
                    inputs=str(options.get("eq_inputs", d.inputs)),
                    objective=str(options.get("eq_objective", d.objective)),
                    max_rows=int(options.get("eq_max_rows", d.max_rows)),
                    clip_budget=float(options.get("eq_clip_budget", d.clip_budget)),
                    seed=int(options.get("seed", d.seed)))
        except (TypeError, ValueError) as err:
            raise EqTfliteError(f"bad easyquant option: {err}") from None
        checks = [(o.steps >= 1, "eq_steps must be >= 1"),
                  (0 < o.alpha <= o.beta, "need 0 < eq_alpha <= eq_beta"),
                  (o.rounds >= 0, "eq_rounds must be >= 0"),
                  (o.init in ("max", "kl"), "eq_init must be 'max' or 'kl'"),
                  (o.inputs in ("quantized", "float"), "eq_inputs must be 'quantized' or 'float'"),
                  (o.objective in ("activation", "linear"),
                   "eq_objective must be 'activation' or 'linear'"),
                  (o.max_rows >= 0, "eq_max_rows must be >= 0 (0: all rows)"),
                  (0 <= o.clip_budget <= 1, "eq_clip_budget must be in [0, 1]")]
        for ok, msg in checks:
            if not ok:
                raise EqTfliteError(msg)
        return o

    def multipliers(self) -> np.ndarray:
        """Candidate multipliers m of the initial scale multiplier S0."""
        return np.linspace(self.alpha, self.beta, self.steps)


# --------------------------------------------------------------------------
# Scoring


def fake_quant_into(x: np.ndarray, scale: float, zp: int, out: np.ndarray,
                    clip: tuple[int, int] = (grid.INT8_MIN, grid.INT8_MAX)) -> np.ndarray:
    """``grid.fake_quant_activation`` written into ``out`` (same values, bit for bit)."""
    np.divide(x, scale, out=out)
    np.round(out, out=out)
    np.clip(out, clip[0] - zp, clip[1] - zp, out=out)
    out *= scale
    return out


def _float32(scales: np.ndarray) -> np.ndarray:
    """Step sizes as the rewriter stores them (float32), kept in float64."""
    return np.asarray(scales, np.float32).astype(np.float64)


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
    input_values: np.ndarray | None = None  # sorted values of the whole input tensor

    def clipped_share(self, act: tuple[float, int]) -> float:
        """Share of the input tensor's values that the b-bit levels of ``act`` clip."""
        scale, zp = act
        lo = scale * (self.bits.act_qmin - zp - 0.5)
        hi = scale * (self.bits.act_qmax - zp + 0.5)
        v = self.input_values
        below = np.searchsorted(v, lo, side="left")
        above = len(v) - np.searchsorted(v, hi, side="left")
        return float(below + above) / max(len(v), 1)

    def _output(self, out: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        if bias is not None:
            out += bias
        return simulate.apply_activation(self.activation, out)

    def _bias(self, in_scale: float, w_scales: np.ndarray) -> np.ndarray | None:
        """The int32-rounded bias as it ships (dead channels take the median step)."""
        if self.bias is None:
            return None
        q, step = resolve.bias_numbers(self.bias, in_scale,
                                       resolve.fix_dead_channels(w_scales)[0])
        return (q * step.astype(np.float64)).astype(np.float32)

    def layer_cosines(self, out: np.ndarray) -> np.ndarray:
        """Mean over samples of the cosine, for outputs (J, R, C)."""
        s, p, c = self.target.shape
        out = out.reshape(len(out), s, p * c)
        t = self.target.reshape(s, p * c)
        dot = np.einsum("jsk,sk->js", out, t)
        return cosine_from_parts(dot, np.einsum("jsk,jsk->js", out, out), np.einsum("sk,sk->s", t, t)).mean(1)

    def evaluate(self, act: tuple[float, int], w_scales: np.ndarray) -> float:
        """Layer cosine of one choice of scales, with the grid's own quantizers."""
        xq = grid.fake_quant_activation(self.rows, *act, clip=self.bits.act_clip)
        wq = grid.fake_quant_weights(self.matrix, w_scales, 1, self.bits.weights)
        out = self._output(self.lin.apply(xq, wq), self._bias(act[0], w_scales))
        return float(self.layer_cosines(out.astype(np.float64)[None])[0])

    def outside_levels(self, act: tuple[float, int]) -> float:
        """Fraction of sampled input values beyond the b-bit levels (before any clip)."""
        q = np.round(self.rows / act[0]) + act[1]
        bits = self.bits
        return float(np.mean((q < bits.act_qmin) | (q > bits.act_qmax)))

    def search_weights(self, act: tuple[float, int], current: np.ndarray,
                       initial: np.ndarray, mults: np.ndarray) -> np.ndarray:
        """Per-channel argmax of the channel cosine over ``current`` and ``initial / m``.

        Candidates for all channels are evaluated with one matrix product per
        chunk: the weight matrix is tiled once per candidate, quantized per
        column, and each output column is scored against its channel's target.
        """
        xq = fake_quant_into(self.rows, *act, np.empty_like(self.rows), self.bits.act_clip)
        cands = np.concatenate([current[None], _float32(initial[None] / mults[:, None])])
        r, c = xq.shape[0], self.matrix.shape[1]
        t = self.target.reshape(r, c)
        t_norm = np.einsum("rc,rc->c", t, t)
        depthwise = self.lin.op.type == "DEPTHWISE_CONV_2D"
        if depthwise and self.lin.multiplier > 1:
            xq = np.repeat(xq, self.lin.multiplier, axis=2)
        scores = []
        per = max(1, _CHUNK_ELEMENTS // (r * c))
        for s in range(0, len(cands), per):
            scales = cands[s:s + per]
            j = len(scales)
            wq = grid.fake_quant_weights(np.tile(self.matrix, (1, j)), scales.reshape(-1), 1,
                                         self.bits.weights).reshape(-1, j, c)
            if depthwise:
                out = np.einsum("rkc,kjc->rjc", xq, wq)
            else:
                out = (xq @ wq.reshape(-1, j * c)).reshape(r, j, c)
            bias = None if self.bias is None else np.stack(
                [self._bias(act[0], sc) for sc in scales])
            out = self._output(out, bias)
            scores.append(cosine_from_parts(np.einsum("rjc,rc->jc", out, t),
                               np.einsum("rjc,rjc->jc", out, out), t_norm))
        best = np.concatenate(scores).argmax(axis=0)  # first maximum: current wins ties
        return cands[best, np.arange(c)]

    def search_activation(self, cands: list[tuple[float, int]], w_scales: np.ndarray) -> int:
        """Index of the candidate (scale, zp) with the best layer cosine (first wins ties)."""
        wq = grid.fake_quant_weights(self.matrix, w_scales, 1, self.bits.weights)
        r = self.rows.shape[0]
        per = max(1, _CHUNK_ELEMENTS // max(self.rows.size, r * wq.shape[1]))
        buf = np.empty((min(per, len(cands)) * r, *self.rows.shape[1:]), self.rows.dtype)
        scores = []
        for s in range(0, len(cands), per):
            chunk = cands[s:s + per]
            xq = buf[:len(chunk) * r]
            for i, a in enumerate(chunk):
                fake_quant_into(self.rows, *a, xq[i * r:(i + 1) * r], self.bits.act_clip)
            out = self.lin.apply(xq, wq).reshape(len(chunk), r, -1)
            bias = None if self.bias is None else np.stack(
                [self._bias(a[0], w_scales) for a in chunk])[:, None]
            scores.append(self.layer_cosines(self._output(out, bias)))
        return int(np.argmax(np.concatenate(scores)))


# --------------------------------------------------------------------------
# Layer walk


def sample_positions(n: int, spatial: tuple[int, ...], max_rows: int,
                     rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], int, int]:
    """Seeded output positions: (index arrays, samples S, positions per sample P)."""
    total = int(np.prod(spatial, dtype=np.int64)) if spatial else 1
    samples = np.arange(n)
    if max_rows and n > max_rows:
        samples = np.sort(rng.choice(n, max_rows, replace=False))
    per = total if not max_rows else min(total, max(1, max_rows // len(samples)))
    if per == total:
        flat = np.broadcast_to(np.arange(total), (len(samples), total))
    else:
        flat = np.sort(np.argsort(rng.random((len(samples), total)), axis=1)[:, :per], axis=1)
    s = np.repeat(samples, per)
    flat = flat.reshape(-1)
    if len(spatial) == 2:
        return (s, flat // spatial[1], flat % spatial[1]), len(samples), per
    return (s * total + flat,), len(samples), per


def _deciders(graph: Graph, groups: dict[int, tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    """Group of each weighted op's input -> index of the op that searches its scale."""
    fixed = resolve.fixed_output_params(graph)
    decider: dict[tuple[int, ...], int] = {}
    for op in graph.weighted_ops():
        g = groups.get(op.data_input, (op.data_input,))
        if g not in decider and not any(t in fixed for t in g):
            decider[g] = op.index
    return decider


def _shipped(graph: Graph, op: Op, act_params: Mapping[int, tuple[float, int]],
             scales: np.ndarray, bits: BitWidths) -> resolve.LayerNumbers:
    """The numbers that ship for ``op`` with the chosen scales (``resolve.layer_numbers``)."""
    bias = graph.tensors[op.bias_input] if op.bias_input >= 0 else None
    w = graph.tensors[op.weight_input]
    return resolve.layer_numbers(op, w.name, w.data, None if bias is None else bias.data,
                                 None if bias is None else bias.name,
                                 act_params[op.data_input][0], scales, bits)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@register("easyquant")
def easyquant(ctx: MethodContext) -> Plan:
    """EasyQuant: per-layer cosine-maximizing weight and input activation scales."""
    opts = Options.parse(ctx.options)
    start = time.perf_counter()
    graph, bits = ctx.graph, ctx.bits
    simulate.check_supported(graph)
    init_plan = methods.get("minmax" if opts.init == "max" else "kl")(ctx)
    init_ranges = {graph.by_name[n]: r for n, r in init_plan.activation_ranges.items()}
    groups = resolve.tied_groups(graph)
    decider = _deciders(graph, groups)
    act_params = resolve.activation_params(graph, init_ranges, bits.activations, groups)
    pending = {t for g in decider for t in g}

    fsim = simulate.Executor(graph, ctx.calibration)
    qsim = None
    if opts.inputs == "quantized":
        quant = simulate.QuantParams(bits, {t: p for t, p in act_params.items()
                                            if t not in pending})
        qsim = simulate.Executor(graph, ctx.calibration, quant)
    plan = Plan("easyquant", bits,
                activation_ranges={graph.tensors[t].name: r for t, r in init_ranges.items()})
    done = 0
    for op in progress_bar(graph.weighted_ops(), desc="easyquant", enable=ctx.progress):
        for prev in graph.ops[done:op.index]:
            fsim.step(prev)
            if qsim is not None:
                qsim.step(prev)
        t0 = time.perf_counter()
        group = groups.get(op.data_input, (op.data_input,))
        searched = decider.get(group) == op.index
        lo = min(init_ranges[t][0] for t in group if t in init_ranges)
        hi = max(init_ranges[t][1] for t in group if t in init_ranges)
        problem = _problem(ctx, opts, op, fsim, qsim)
        row, act_range, scales = _search(problem, opts, act_params[op.data_input],
                                         (lo, hi) if searched else None)
        plan.weight_scales[graph.tensors[op.weight_input].name] = scales
        if searched:
            params = grid.activation_params(*act_range, bits.activations)
            for t in group:
                plan.activation_ranges[graph.tensors[t].name] = act_range
                act_params[t] = params
                if qsim is not None:
                    qsim.set_activation(t, params)
        if qsim is not None:
            qsim.quant.layers[op.weight_input] = _shipped(graph, op, act_params, scales, bits)
            qsim.step(op)
        fsim.step(op)
        done = op.index + 1
        row = {"op_index": op.index, "op_type": op.type,
               "weight": graph.tensors[op.weight_input].name,
               "weight_shape": "x".join(str(d) for d in graph.tensors[op.weight_input].shape),
               "input": graph.tensors[op.data_input].name, "act_searched": searched, **row,
               "seconds": round(time.perf_counter() - t0, 3),
               "elapsed_s": round(time.perf_counter() - start, 3),
               "peak_rss_mb": round(_peak_rss_mb(), 1)}
        plan.layers.append(row)
    return plan


def _problem(ctx: MethodContext, opts: Options, op: Op, fsim: simulate.Executor,
             qsim: simulate.Executor | None) -> LayerProblem:
    """Samples rows of ``op``: float target, input rows from the quantized (or float) model."""
    x_float = fsim.value(op.data_input)
    lin = fsim.linear(op)
    if op.type == "FULLY_CONNECTED":
        spatial: tuple[int, ...] = (x_float[0].size // lin.weight_shape[1],)
    else:
        spatial = lin.out_spatial
    rng = np.random.default_rng([opts.seed, op.index])
    positions, s, p = sample_positions(x_float.shape[0], spatial, opts.max_rows, rng)
    matrix = simulate.weight_matrix(op.type, fsim.value(op.weight_input)).astype(np.float32)
    bias = fsim.value(op.bias_input) if op.bias_input >= 0 else None
    activation = op.activation if opts.objective == "activation" else "NONE"
    target = lin.apply(lin.rows(x_float, positions), matrix)
    if bias is not None:
        target = target + bias
    target = simulate.apply_activation(activation, target).reshape(s, p, -1)
    x_in = x_float if qsim is None else qsim.value(op.data_input)
    rows = lin.rows(x_in, positions)
    values = np.sort(x_in, axis=None) if ctx.bits.strict else None
    return LayerProblem(lin, rows, target, matrix, bias, activation, ctx.bits, values)


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
        new_cos = problem.evaluate(act, new)
        if new_cos >= cos:
            scales, cos = new, new_cos
        if base_range is None:
            continue
        lo, hi = base_range
        ranges = [act_range] + [(lo / m, hi / m) for m in mults]
        cands = [grid.activation_params(*r, bits.activations) for r in ranges]
        if bits.strict and problem.input_values is not None:
            keep = [0] + [i for i in range(1, len(cands))
                          if problem.clipped_share(cands[i]) <= opts.clip_budget]
            ranges, cands = [ranges[i] for i in keep], [cands[i] for i in keep]
        k = problem.search_activation(cands, scales)
        new_cos = problem.evaluate(cands[k], scales)
        if new_cos >= cos:
            act, act_range, cos = cands[k], ranges[k], new_cos
    live = initial > 0
    ratio = scales[live] / initial[live] if live.any() else np.ones(1)
    row = {"rows": int(problem.rows.shape[0]), "cos_init": cos_init, "cos_eq": cos,
           "act_scale_ratio": act[0] / init_act[0],
           "act_outside_levels": problem.outside_levels(act),
           "w_ratio_mean": float(ratio.mean()), "w_ratio_min": float(ratio.min()),
           "w_ratio_max": float(ratio.max())}
    return row, act_range, scales
