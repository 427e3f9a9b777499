"""The layer walk shared by the methods that decide layer by layer (EasyQuant, Bit-Split).

:func:`walk` visits the weighted ops in topological order with two
simulations (``eq_tflite.simulate``) advancing side by side on the two cores:
the float model, which gives the targets, and the model as it ships so far
(earlier layers carry the numbers ``resolve.layer_numbers`` makes from their
decisions, every decided tensor sits on its b-bit levels), which gives the
inputs. A method only supplies a per-layer solver: it gets a :class:`Layer`,
may fix the layer's input range (:meth:`Layer.decide_input`) and returns a
:class:`Decision` (weight steps, optionally integer weights and a corrected
bias, report fields). The driver writes the decision into the result, into
the quantized simulation and into one report row per layer.

Shared and tied inputs: tensors joined through same-scale ops (pool, reshape,
pad, concatenation: ``resolve.tied_groups``) form one group. The first
weighted reader of a group decides its range (``Layer.base_range`` is the
group's starting range then; None for later readers and for groups that hold
a fixed-scale tensor such as a softmax output), and the decision is written
on every member, so the rewriter's union of tied ranges is exactly that range.
"""
from __future__ import annotations

import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from eq_tflite import grid, resolve, simulate
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op
from eq_tflite.grid import BitWidths
from eq_tflite.plan import MethodContext
from eq_tflite.progress import progress_bar


def sample_positions(n: int, spatial: tuple[int, ...], max_rows: int,
                     rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], int, int]:
    """Seeded output positions: (index arrays, samples S, positions per sample P).

    Every sample keeps the same number of positions, drawn without replacement;
    with more samples than ``max_rows``, a seeded subset keeps one each; 0 keeps all.
    """
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


#: Bytes of float-model rows gathered at once by ``Rows.float_output``.
_FLOAT_ROW_BYTES = 64 << 20


@dataclass
class Rows:
    """Sampled im2col rows of one layer: positions, S samples x P positions each.

    ``inputs`` holds the rows the shipped model feeds; the same rows of the
    float model's input are gathered on demand (``float_output``), a block at a
    time: a depthwise layer's rows are large (4,096 x 25 x 1,152 floats, 472 MB,
    on EfficientNet-Lite1), and both sets at once were the walk's peak.
    """

    lin: simulate.Linear
    samples: int
    per_sample: int
    inputs: np.ndarray       # rows of the input the shipped model feeds (quantized simulation)
    float_rows: Callable[[slice], np.ndarray] = field(repr=False)  # float-model rows [block]

    def float_output(self, matrix: np.ndarray, dtype: Any = None) -> np.ndarray:
        """``lin.apply`` of the float model's rows (cast to ``dtype`` if given) with ``matrix``."""
        n = len(self.inputs)
        block = max(1, _FLOAT_ROW_BYTES // max(4 * self.inputs[0].size, 1))
        out = None
        for r0 in range(0, n, block):
            rows = self.float_rows(slice(r0, min(n, r0 + block)))
            y = self.lin.apply(rows if dtype is None else rows.astype(dtype), matrix)
            if out is None:
                out = np.empty((n, *y.shape[1:]), y.dtype)
            out[r0:r0 + len(y)] = y
        return out


@dataclass
class Decision:
    """What a solver decided for one layer.

    ``weight_scales``: per-output-channel steps; ``int_weights``: integer weights
    in the weight tensor's layout (None: rounded from the float weights);
    ``bias``: a corrected float bias (None: unchanged); ``report``: report fields.
    """

    weight_scales: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    int_weights: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass
class Layer:
    """One weighted op as the walk reaches it (see module doc)."""

    op: Op
    bits: BitWidths                          # the layer's own widths (mixed precision)
    group: tuple[int, ...]                   # the input's tied group
    base_range: tuple[float, float] | None   # the group's range to decide from; None: fixed
    fsim: simulate.Executor
    qsim: simulate.Executor | None
    _walk: "_Walk"

    @property
    def graph(self) -> Graph:
        return self.fsim.graph

    def input_values(self) -> np.ndarray:
        """The input as the shipped model feeds it (float when inputs are not quantized)."""
        return (self.qsim or self.fsim).value(self.op.data_input)

    def group_values(self) -> list[np.ndarray]:
        """The computed values of every tensor of the input's group, the input first."""
        sim = self.qsim or self.fsim
        return [self.input_values()] + [sim.values[t] for t in self.group
                                        if t != self.op.data_input and t in sim.values]

    def input_params(self) -> tuple[float, int]:
        """The input's current (scale, zero point)."""
        return self._walk.act_params[self.op.data_input]

    def decide_input(self, lo_hi: tuple[float, float]) -> None:
        """Fixes the input group's range (every member; the quantized input takes its levels)."""
        self._walk.decide(self.group, lo_hi, self.bits)

    def rows(self, max_rows: int, rng: np.random.Generator, ids: np.ndarray | None = None) -> Rows:
        """Seeded im2col rows of the layer (``sample_positions``), from samples ``ids`` (all)."""
        op, x_float = self.op, self.fsim.value(self.op.data_input)
        lin = simulate.GroupedAsDepthwise.of(self.fsim.linear(op))  # depthwise as Conv2D(groups=C)
        spatial = ((x_float[0].size // lin.weight_shape[1],) if op.type == "FULLY_CONNECTED"
                   else lin.out_spatial)
        ids = np.arange(x_float.shape[0]) if ids is None else ids
        positions, s, p = sample_positions(len(ids), spatial, max_rows, rng)
        if len(positions) == 1:  # flat rows (fully connected): sample * total + position
            total = int(np.prod(spatial, dtype=np.int64))
            positions = (ids[positions[0] // total] * total + positions[0] % total,)
        else:
            positions = (ids[positions[0]], *positions[1:])
        rows = lin.rows(self.input_values() if self.qsim is not None else x_float, positions)

        def float_rows(block: slice) -> np.ndarray:
            return rows[block] if self.qsim is None else \
                lin.rows(x_float, tuple(i[block] for i in positions))

        return Rows(lin, s, p, rows, float_rows)


Solver = Callable[[Layer], Decision]


@dataclass
class Walked:
    """The walk's decisions, keyed by float-graph tensor names, and its report rows."""

    activation_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    int_weights: dict[str, np.ndarray] = field(default_factory=dict)
    float_weights: dict[str, np.ndarray] = field(default_factory=dict)  # corrected biases
    layers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Walk:
    graph: Graph
    act_params: dict[int, tuple[float, int]]
    qsim: simulate.Executor | None
    out: Walked

    def decide(self, group: tuple[int, ...], lo_hi: tuple[float, float], bits: BitWidths) -> None:
        params = grid.activation_params(*lo_hi, bits.activations)
        for t in group:
            self.out.activation_ranges[self.graph.tensors[t].name] = lo_hi
            self.act_params[t] = params
            if self.qsim is not None:
                self.qsim.set_activation(t, params)


def deciders(graph: Graph, groups: Mapping[int, tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    """Input group of each weighted op -> the first op reading it (no fixed-scale groups)."""
    fixed = resolve.fixed_output_params(graph)
    out: dict[tuple[int, ...], int] = {}
    for op in graph.weighted_ops():
        g = groups.get(op.data_input, (op.data_input,))
        if g not in out and not any(t in fixed for t in g):
            out[g] = op.index
    return out


def walk(ctx: MethodContext, ranges: Mapping[str, tuple[float, float]], solve: Solver, *,
         desc: str, decide_inputs: bool = True, quantized_inputs: bool = True,
         weights: Mapping[str, np.ndarray] | None = None) -> Walked:
    """Runs ``solve`` on every weighted op of ``ctx.graph`` (see module doc).

    ``ranges``: starting activation ranges (float-graph names). ``decide_inputs``
    False: every range is final and no ``Layer.base_range`` is given.
    ``quantized_inputs`` False: inputs come from the float model (no quantized
    simulation). ``weights``: another step's edited float constants by name.
    """
    graph, bits = ctx.graph, ctx.bits
    simulate.check_supported(graph)
    idx = graph.by_name
    start_ranges = {idx[n]: r for n, r in ranges.items() if n in idx}
    groups = resolve.tied_groups(graph)
    decider = deciders(graph, groups) if decide_inputs else {}
    pending = {t for g in decider for t in g}
    widths = resolve.tensor_bits(graph, bits, groups)  # per-tensor widths (mixed precision)
    act_params = resolve.activation_params(graph, start_ranges, bits, groups)
    edits = {idx[n]: np.asarray(v, np.float32) for n, v in (weights or {}).items() if n in idx}
    fsim = simulate.Executor(graph, ctx.calibration, weights=edits)
    qsim = None
    if quantized_inputs:
        quant = simulate.QuantParams(bits, {t: p for t, p in act_params.items() if t not in pending},
                                     act_bits=widths)
        qsim = simulate.Executor(graph, ctx.calibration, quant, weights=edits)
    out = Walked(activation_ranges={graph.tensors[t].name: r for t, r in start_ranges.items()})
    state = _Walk(graph, act_params, qsim, out)
    # numpy releases the GIL in its array loops and BLAS: the float simulation runs on a thread
    pool = ThreadPoolExecutor(max_workers=1) if qsim is not None else None
    start, done = time.perf_counter(), 0
    try:
        for op in progress_bar(graph.weighted_ops(), desc=desc, enable=ctx.progress):
            t_sim = time.perf_counter()
            _advance(fsim, qsim, graph.ops[done:op.index], pool)
            t0 = time.perf_counter()
            group = groups.get(op.data_input, (op.data_input,))
            base = None
            if decider.get(group) == op.index:
                base = (min(start_ranges[t][0] for t in group if t in start_ranges),
                        max(start_ranges[t][1] for t in group if t in start_ranges))
            layer = Layer(op, resolve.layer_bits(graph, op, bits, widths), group, base,
                          fsim, qsim, state)
            decision = solve(layer)
            if op.data_input not in act_params:
                raise EqTfliteError(f"{desc}: no activation range for the input of "
                                    f"{op.type} {graph.tensors[op.outputs[0]].name}")
            _record(layer, decision, out)
            t1 = time.perf_counter()
            _advance(fsim, qsim, [op], pool)
            done = op.index + 1
            w = graph.tensors[op.weight_input]
            out.layers.append({
                "op_index": op.index, "op_type": op.type, "weight": w.name,
                "weight_shape": "x".join(str(d) for d in w.shape),
                "input": graph.tensors[op.data_input].name, "act_searched": base is not None,
                **decision.report, "seconds": round(t1 - t0, 3),
                "simulate_s": round(t0 - t_sim + time.perf_counter() - t1, 3),
                "elapsed_s": round(time.perf_counter() - start, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def _record(layer: Layer, decision: Decision, out: Walked) -> None:
    """Writes one decision into the result and the quantized simulation."""
    op, graph, fsim = layer.op, layer.graph, layer.fsim
    w = graph.tensors[op.weight_input]
    out.weight_scales[w.name] = decision.weight_scales
    if decision.int_weights is not None:
        out.int_weights[w.name] = decision.int_weights
    bias = graph.tensors[op.bias_input] if op.bias_input >= 0 else None
    b_values = decision.bias
    if b_values is not None:
        out.float_weights[bias.name] = b_values
    elif bias is not None:
        b_values = fsim.value(op.bias_input)
    if layer.qsim is not None:
        layer.qsim.quant.layers[op.weight_input] = resolve.layer_numbers(
            op, w.name, fsim.value(op.weight_input), b_values, None if bias is None else bias.name,
            layer.input_params()[0], decision.weight_scales, layer.bits, decision.int_weights)


def _advance(fsim: simulate.Executor, qsim: simulate.Executor | None, ops: list[Op],
             pool: ThreadPoolExecutor | None) -> None:
    """Steps both simulations through ``ops``, the float one on the pool's thread."""
    if qsim is None or pool is None:
        for op in ops:
            fsim.step(op, output=False)
        return
    pending = pool.submit(lambda: [fsim.step(op, output=False) for op in ops])
    for op in ops:
        qsim.step(op, output=False)
    pending.result()
