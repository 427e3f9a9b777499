"""Mixed precision: per-layer widths from user overrides or a weight-size budget.

Runs before the method and only decides ``BitWidths`` overrides (float-graph
names); every method then looks its layer's widths up (``resolve.layer_bits``)
and resolve, the rewriter and verify carry them per tensor.

* Layers are the weighted ops (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
  TRANSPOSE_CONV), named after their Keras layer (``layer_names``): the scope
  in front of the kernel op in the weight's name (``stem_conv`` for
  ``model_1/stem_conv_1/convolution``), not TFLite's fused 200-character name.
* ``--layer_bits REGEX=W[/A]`` sets the weights of every layer whose name
  matches (``re.search``) to W bits, and with ``/A`` its input and output
  activations to A bits. Later specs win over earlier ones.
* ``--keep_8bit input,first,last``: the model inputs at 8 bits (``input``);
  the layers no other layer precedes (``first``) or follows (``last``) at W8
  with 8-bit inputs and outputs (``last`` also keeps the model outputs at 8).
* Tied tensors (pooling, reshape, concat) share one scale, so one width: the
  widest of the group (``resolve.tensor_bits``).
* ``--weight_size KIB`` / ``--weight_size_ratio R``: the budget search below.

The budget search. In a stock file a weight costs 1 byte at 5-8 bits (the
int8 container) and half a byte at 2-4 bits, packed as INT4 (only where
LiteRT's kernels take INT4: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED; see
``rewrite.INT4_WEIGHT_OPS``). So the only choices that trade size for accuracy
are the model's weight width and 4 bits: 5-7 bits cost as much as 8 and 2-3
as much as 4. Each packable layer's sensitivity is its layer cosine at both
widths (float inputs from the calibration samples, weights on the width's grid
with the best per-channel clip; without data, the weight tensor's own cosine),
and an exact knapsack picks the set of 4-bit layers that fits the budget with
the smallest sum of (1 - cosine) losses. The method then runs on those widths
and verify checks the whole model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from eq_tflite import grid, simulate
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op
from eq_tflite.grid import BitWidths
from eq_tflite.metrics import mean_cosine

#: ``--keep_8bit`` items.
KEEP_8BIT = ("input", "first", "last")
#: Ops whose weights LiteRT runs packed as INT4 (rewrite.INT4_WEIGHT_OPS, measured there).
PACKABLE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
#: TensorFlow op names that end a weighted layer's scope in a tensor name.
_KERNEL_OPS = ("convolution", "Conv2D", "depthwise", "MatMul", "BiasAdd", "Conv2DBackpropInput",
               "conv2d_transpose", "Tensordot", "conv2d", "Conv2d")
#: Low width of the budget search (the INT4 container's widest).
LOW_BITS = 4


# --------------------------------------------------------------------------
# Layer names


def _layer_of(name: str) -> tuple[str, str] | None:
    """(model scope, layer scope) in front of a kernel op in a (fused) tensor name, or None."""
    for part in name.split(";"):
        comps = part.split("/")
        if len(comps) >= 2 and re.sub(r"\d+$", "", comps[-1].split(":")[0]) in _KERNEL_OPS:
            return comps[0], comps[-2]
    return None


def layer_names(graph: Graph) -> dict[int, str]:
    """Keras-style layer name of every weighted op (op index -> name), unique.

    From the weight's tensor name (then the output's): the scope in front of
    the kernel op. A Keras 3 SavedModel export suffixes every scope with
    ``_N`` (``model_1/stem_conv_1/convolution`` for layer ``stem_conv``); when
    every model scope carries such a suffix, the layer scope's is dropped too.
    Names without a kernel scope (a float .tflite from elsewhere) are the
    output's first name part.
    """
    ops = graph.weighted_ops()
    found = {}
    for op in ops:
        w, out = graph.tensors[op.weight_input].name, graph.tensors[op.outputs[0]].name
        found[op.index] = _layer_of(w) or _layer_of(out) or ("", out.split(";")[0])
    exported = bool(found) and all(re.search(r"_\d+$", m) for m, _ in found.values())
    seen: dict[str, int] = {}
    names = {}
    for op in ops:
        n = found[op.index][1]
        n = re.sub(r"_\d+$", "", n) if exported else n
        seen[n] = seen.get(n, 0) + 1
        names[op.index] = n if seen[n] == 1 else f"{n}#{seen[n]}"
    return names


# --------------------------------------------------------------------------
# Overrides


@dataclass(frozen=True)
class LayerSpec:
    """One ``--layer_bits REGEX=W[/A]``."""

    pattern: str
    weights: int
    activations: int | None = None


def parse_layer_bits(specs: Iterable[str] | None) -> list[LayerSpec]:
    """``REGEX=W`` or ``REGEX=W/A`` strings (2..8 bits), with one-line errors."""
    out = []
    for spec in specs or []:
        if not isinstance(spec, str) or "=" not in spec:
            raise EqTfliteError(f"--layer_bits must be NAME_REGEX=W or NAME_REGEX=W/A, got {spec!r}")
        pattern, _, widths = spec.rpartition("=")
        try:
            re.compile(pattern)
        except re.error as err:
            raise EqTfliteError(f"--layer_bits {spec!r}: bad regular expression ({err})") from None
        parts = widths.split("/")
        try:
            bits = [int(p) for p in parts]
        except ValueError:
            bits = []
        if not pattern or len(bits) not in (1, 2) or not all(2 <= b <= 8 for b in bits):
            raise EqTfliteError(f"--layer_bits must be NAME_REGEX=W or NAME_REGEX=W/A with widths "
                                f"2..8, got {spec!r}")
        out.append(LayerSpec(pattern, bits[0], bits[1] if len(bits) == 2 else None))
    return out


def parse_keep_8bit(items: Any) -> tuple[str, ...]:
    """``input,first,last`` (a string or a list) -> the items, checked."""
    if items is None:
        return ()
    if isinstance(items, str):
        items = [i for i in items.split(",") if i.strip()]
    items = tuple(str(i).strip() for i in items)
    bad = [i for i in items if i not in KEEP_8BIT]
    if bad:
        raise EqTfliteError(f"--keep_8bit takes {', '.join(KEEP_8BIT)} (comma-separated), "
                            f"got {', '.join(bad)}")
    return items


def _edges(graph: Graph) -> tuple[list[Op], list[Op]]:
    """(first, last) weighted ops: no weighted op before / after them on any path."""
    weighted = graph.weighted_ops()
    ids = {op.index for op in weighted}
    behind: set[int] = set()   # tensors computed from some weighted op's output
    for op in graph.ops:
        if op.index in ids or any(t in behind for t in op.inputs if t >= 0):
            behind.update(t for t in op.outputs if t >= 0)
    ahead: set[int] = set()    # tensors some weighted op reads (directly or later)
    for op in reversed(graph.ops):
        if op.index in ids or any(t in ahead for t in op.outputs if t >= 0):
            ahead.update(t for t in op.inputs if t >= 0)
    first = [op for op in weighted if op.data_input not in behind]
    last = [op for op in weighted if not any(t in ahead for t in op.outputs if t >= 0)]
    return first, last


def overrides(graph: Graph, bits: BitWidths, specs: Sequence[LayerSpec] = (),
              keep_8bit: Sequence[str] = ()) -> BitWidths:
    """``bits`` with the per-layer widths of ``--layer_bits`` specs and ``--keep_8bit`` items.

    ``keep_8bit`` goes last: a layer it names stays at 8 bits whatever a spec says.
    """
    names = layer_names(graph)
    by_index = {op.index: op for op in graph.weighted_ops()}
    w_bits: dict[str, int] = dict(bits.layer_weights)
    a_bits: dict[str, int] = dict(bits.tensor_activations)

    def set_layer(op: Op, w: int, a: int | None) -> None:
        w_bits[graph.tensors[op.weight_input].name] = w
        if a is not None:
            for t in [op.data_input, *op.outputs]:
                if t >= 0:
                    a_bits[graph.tensors[t].name] = a

    for spec in specs:
        hits = [i for i, n in names.items() if re.search(spec.pattern, n)]
        if not hits:
            shown = ", ".join(list(names.values())[:8]) + (", ..." if len(names) > 8 else "")
            raise EqTfliteError(f"--layer_bits {spec.pattern!r} matches no layer (layers: {shown})")
        for i in hits:
            set_layer(by_index[i], spec.weights, spec.activations)
    first, last = _edges(graph)
    if "input" in keep_8bit:
        for t in graph.inputs:
            a_bits[graph.tensors[t].name] = 8
    if "first" in keep_8bit:
        for op in first:
            set_layer(op, 8, 8)
    if "last" in keep_8bit:
        for op in last:
            set_layer(op, 8, 8)
        for t in graph.outputs:
            a_bits[graph.tensors[t].name] = 8
    return bits.with_overrides(w_bits, a_bits)


def describe(graph: Graph, bits: BitWidths, max_names: int = 6) -> list[str]:
    """Summary lines: which layers and how many tensors have which widths."""
    if not bits.mixed:
        return []
    names = layer_names(graph)
    per: dict[int, list[str]] = {}
    for op in graph.weighted_ops():
        per.setdefault(bits.weights_of(graph.tensors[op.weight_input].name), []).append(names[op.index])
    parts = []
    for b in sorted(per, reverse=True):
        ls = per[b]
        shown = f" ({', '.join(ls)})" if len(ls) <= max_names else ""
        parts.append(f"W{b} on {len(ls)} layers{shown}")
    acts: dict[int, int] = {}
    for _, b in bits.tensor_activations:
        acts[b] = acts.get(b, 0) + 1
    line = "widths: " + ", ".join(parts)
    if acts:
        line += "; " + ", ".join(f"A{b} on {n} tensors" for b, n in sorted(acts.items(), reverse=True)) \
            + f" (others A{bits.activations})"
    return [line]


# --------------------------------------------------------------------------
# Weight bytes and the budget search


def packable(graph: Graph) -> set[int]:
    """Indices of weighted ops whose weights can be stored as INT4 (every reader an INT4 op)."""
    readers: dict[int, set[str]] = {}
    for op in graph.ops:
        for t in op.inputs:
            readers.setdefault(t, set()).add(op.type)
    return {op.index for op in graph.weighted_ops()
            if op.type in PACKABLE and readers.get(op.weight_input, set()) <= PACKABLE}


def weight_bytes(graph: Graph, bits: BitWidths | None = None, packed: bool = True) -> int:
    """Bytes of the weighted ops' weight tensors in the file: 1 per weight (int8), half
    (INT4, rounded up per tensor) for packable layers of at most 4 bits when ``packed``.
    ``bits`` None: all int8."""
    can = packable(graph) if packed and bits is not None else set()
    total = 0
    for op in graph.weighted_ops():
        n = int(graph.tensors[op.weight_input].data.size)
        w = bits.weights_of(graph.tensors[op.weight_input].name) if bits is not None else 8
        total += (n + 1) // 2 if (op.index in can and w <= LOW_BITS) else n
    return total


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(1, -1).astype(np.float64), b.reshape(1, -1).astype(np.float64)
    return float(mean_cosine(a, b))


@dataclass
class Sensitivity:
    """What lowering each packable layer to ``LOW_BITS`` costs (op index -> loss).

    ``measure`` names the loss: ``output noise`` (the model outputs' noise power
    relative to their power, that layer alone at 4 bits), ``layer cosine`` (the
    layer's own output cosine drop) or ``weight cosine`` (no calibration data).
    """

    losses: dict[int, float] = field(default_factory=dict)
    measure: str = "layer cosine"
    cosines: dict[int, dict[int, float]] = field(default_factory=dict)  # layer/weight cosines per width


def sensitivity(graph: Graph, calibration: Mapping[str, np.ndarray], widths: Sequence[int],
                ops: Iterable[int] | None = None, samples: int = 16, max_rows: int = 2048,
                seed: int = 0) -> Sensitivity:
    """Layer output cosine of each op at each width (float inputs, best per-channel clip).

    Without calibration data, the cosine of the quantized weight tensor itself.
    """
    wanted = set(packable(graph) if ops is None else ops)
    out = Sensitivity()
    if not calibration:
        for op in graph.weighted_ops():
            if op.index in wanted:
                m = _channel_matrix(graph, op)
                out.cosines[op.index] = {b: _cos(m, _lowered(m, b)) for b in widths}
        out.measure = "weight cosine"
        return _cosine_losses(out)
    for op, fsim in _float_layers(graph, calibration, wanted, 0, samples):
        lin = fsim.linear(op)
        rows = _sampled_rows(lin, fsim.value(op.data_input), max_rows, seed)
        matrix = lin.matrix(fsim.value(op.weight_input)).astype(np.float64)
        bias = fsim.value(op.bias_input) if op.bias_input >= 0 else 0.0
        ref = simulate.apply_activation(op.activation, lin.apply(rows, matrix) + bias)
        cos = {}
        for b in widths:
            wq = grid.fake_quant_weights(matrix, grid.mse_weight_scales(matrix, b), 1, b)
            cos[b] = _cos(ref, simulate.apply_activation(op.activation,
                                                         lin.apply(rows, wq) + bias))
        out.cosines[op.index] = cos
    return _cosine_losses(out)


def _float_layers(graph: Graph, calibration: Mapping[str, np.ndarray], wanted: set[int],
                  start: int, samples: int) -> Iterator[tuple[Op, simulate.Executor]]:
    """Each wanted op, in graph order, with the float simulation of calibration samples
    ``start:start + samples`` up to its inputs."""
    fsim = simulate.Executor(graph, {k: v[start:start + samples] for k, v in calibration.items()})
    for op in graph.ops:
        if op.index in wanted:
            yield op, fsim
        fsim.step(op)


def _sampled_rows(lin: simulate.Linear, x: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Seeded im2col rows of ``lin`` on its input ``x`` (at most ``max_rows`` positions)."""
    from eq_tflite.methods.layerwise import sample_positions
    spatial = ((x[0].size // lin.weight_shape[1],) if lin.op.type == "FULLY_CONNECTED"
               else lin.out_spatial)
    positions, _, _ = sample_positions(x.shape[0], spatial, max_rows,
                                       np.random.default_rng([seed, lin.op.index]))
    return lin.rows(x, positions)


def _cosine_losses(sens: Sensitivity) -> Sensitivity:
    """Losses from cosines: the drop from the widest measured width to ``LOW_BITS``."""
    for i, cos in sens.cosines.items():
        sens.losses[i] = max(cos[max(cos)] - cos.get(LOW_BITS, cos[min(cos)]), 0.0)
    return sens


def _channel_matrix(graph: Graph, op: Op) -> np.ndarray:
    """``op``'s float weights as a (values per channel, channels) matrix."""
    w = np.asarray(graph.tensors[op.weight_input].data, np.float32)
    return np.moveaxis(w, op.channel_axis, -1).reshape(-1, w.shape[op.channel_axis])


def _lowered(matrix: np.ndarray, bits: int) -> np.ndarray:
    """A channel matrix on the ``bits`` grid (per channel, the least-MSE clip)."""
    return grid.fake_quant_weights(matrix, grid.mse_weight_scales(matrix, bits), 1, bits)


def lowered_weights(graph: Graph, op: Op, bits: int = LOW_BITS) -> np.ndarray:
    """``op``'s float weights on the ``bits`` grid (per channel, the least-MSE clip)."""
    shape = list(graph.tensors[op.weight_input].data.shape)
    shape.append(shape.pop(op.channel_axis))
    q = _lowered(_channel_matrix(graph, op), bits)
    return np.moveaxis(q.reshape(shape), -1, op.channel_axis)


def _noise(ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> float:
    """Sum over outputs of the noise power relative to the output's power."""
    total = 0.0
    for r, o in zip(ref, out):
        r64 = r.astype(np.float64)
        power = float(np.sum(r64 * r64))
        if power > 0:
            total += float(np.sum((o.astype(np.float64) - r64) ** 2)) / power
    return total


class NoFloatWeights(EqTfliteError):
    """The float model stores a layer's weights in another type: no output sensitivity."""


class _WeightPatcher:
    """Float model bytes with one weighted op's weights replaced.

    Patches the weight's float32 bytes where they sit in the file (found once;
    the bytes must occur exactly once), else edits the parsed model and
    serializes it.
    """

    def __init__(self, graph: Graph, float_model: bytes) -> None:
        self.graph, self.model = graph, bytes(float_model)
        self._parsed = None

    def with_weights(self, op: Op, values: np.ndarray) -> bytes:
        t = self.graph.tensors[op.weight_input]
        old = np.ascontiguousarray(np.asarray(t.data, np.float32)).tobytes()
        at = self.model.find(old)
        if at >= 0 and self.model.find(old, at + 1) < 0:
            buf = bytearray(self.model)
            buf[at:at + len(old)] = np.ascontiguousarray(values, np.float32).tobytes()
            return bytes(buf)
        from eq_tflite.io import codec as fb
        if self._parsed is None:
            self._parsed = fb.parse_model(self.model)
        tensor = self._parsed.subgraphs[0].tensors[op.weight_input]
        stored = fb.buffer_array(self._parsed, tensor)
        if stored is None or not np.issubdtype(stored.dtype, np.floating):
            raise NoFloatWeights(f"weights of op {op.index} are not stored as float")
        buf = self._parsed.buffers[tensor.buffer]
        saved = buf.data
        buf.data = np.frombuffer(np.ascontiguousarray(values, stored.dtype).tobytes(), np.uint8)
        try:
            return fb.serialize_model(self._parsed)
        finally:
            buf.data = saved


def _logits_as_outputs(graph: Graph, float_model: bytes) -> bytes:
    """``float_model`` with each SOFTMAX output replaced by its input (the logits).

    A confident sample's probabilities barely move under weight noise that
    flips a less confident one, so noise is measured on the logits.
    """
    producer = {t: op for op in graph.ops for t in op.outputs}
    outs = [producer[t].inputs[0] if t in producer and producer[t].type == "SOFTMAX" else t
            for t in graph.outputs]
    if outs == list(graph.outputs):
        return float_model
    from eq_tflite.io import codec as fb
    model = fb.parse_model(float_model)
    model.subgraphs[0].outputs = np.asarray(outs, np.int32)
    return fb.serialize_model(model)


def output_sensitivity(graph: Graph, float_model: bytes, calibration: Mapping[str, np.ndarray],
                       ops: Iterable[int] | None = None, samples: int = 16,
                       rounding: str = "nearest") -> Sensitivity:
    """Each op's cost of ``LOW_BITS`` weights, measured where it counts: at the model outputs.

    The float model runs (LiteRT) on ``samples`` calibration samples with one
    layer's weights on the 4-bit grid (the least-MSE per-channel clip) and the
    rest in float; the loss is the outputs' noise power relative to their
    power, summed over outputs (a softmax output is measured on its logits).
    Noise from independently quantized layers adds up, so the knapsack's sum of
    losses predicts the whole choice; a layer's own cosine does not, because it
    ignores what follows the layer (a 4-bit projection feeding a residual sum
    costs less than one feeding a depthwise).

    ``rounding="gptq"`` lowers the weights as EasyQuant ships 4-bit layers
    (GPTQ, H from the float inputs of other calibration samples when there
    are at least twice ``samples``): with one layer lowered its inputs are
    exact, so GPTQ's two targets coincide. Ops GPTQ does not cover keep
    nearest rounding.
    """
    from eq_tflite import runtime
    wanted = sorted(set(packable(graph) if ops is None else ops))
    float_model = _logits_as_outputs(graph, float_model)
    inputs = [np.asarray(calibration[graph.tensors[i].name][:samples]) for i in graph.inputs]
    n = inputs[0].shape[0]

    def outputs(model: bytes) -> list[np.ndarray]:
        return runtime.run_model(runtime.make_interpreter(model, builtin_kernels=False), inputs,
                                 batch_size=n)

    ref = outputs(float_model)
    patcher = _WeightPatcher(graph, float_model)
    out = Sensitivity(measure="output noise" + (" (GPTQ)" if rounding == "gptq" else ""))
    lowered = _gptq_lowered(graph, calibration, wanted, samples) if rounding == "gptq" else {}
    for i in wanted:
        op = graph.ops[i]
        w = lowered.get(i)
        w = lowered_weights(graph, op) if w is None else w
        out.losses[i] = _noise(ref, outputs(patcher.with_weights(op, w)))
    return out


def _gptq_lowered(graph: Graph, calibration: Mapping[str, np.ndarray], wanted: Sequence[int],
                  samples: int, max_rows: int = 2048, seed: int = 0) -> dict[int, np.ndarray]:
    """4-bit weights as EasyQuant will round them (GPTQ on float input rows of other samples)."""
    from eq_tflite import rounding
    n = len(next(iter(calibration.values())))
    start = samples if n >= 2 * samples else 0
    qmax = 2 ** (LOW_BITS - 1) - 1
    out = {}
    for op, fsim in _float_layers(graph, calibration, set(wanted), start, samples):
        lin = simulate.GroupedAsDepthwise.of(fsim.linear(op))
        solve = rounding.solver(lin)
        if solve is None or op.type == "TRANSPOSE_CONV":
            continue
        rows = _sampled_rows(lin, fsim.value(op.data_input), max_rows, seed).astype(np.float32)
        matrix = lin.matrix(fsim.value(op.weight_input)).astype(np.float64)
        scales = grid.mse_weight_scales(matrix, LOW_BITS)
        h = rounding.input_hessian(rows, solve is rounding.gptq_depthwise)
        out[op.index] = lin.weights((solve(matrix, scales, qmax, h) * scales[None])
                                    .astype(np.float32)).astype(np.float32)
    return out


@dataclass
class BudgetChoice:
    """What the budget search chose."""

    budget: int                       # bytes of weights allowed
    int8_bytes: int                   # all weights in the int8 container
    low: list[int] = field(default_factory=list)    # op indices lowered to LOW_BITS
    bytes: int = 0                    # weight bytes of the choice
    loss: float = 0.0                 # sum of the lowered layers' losses (Sensitivity.measure)
    measure: str = "layer cosine"     # what the losses are (Sensitivity.measure)
    frontier: list[tuple[float, int, float]] = field(default_factory=list)  # (ratio, bytes, loss)


def _knapsack(sizes: list[int], losses: list[float], need: int, units: int = 4000) -> list[int]:
    """Indices to lower: saved bytes (``sizes``) sum to at least ``need``, smallest loss.

    Solved as its complement, a 0/1 knapsack: keep (at the high width) the set
    of largest total loss whose savings fit in ``sum(sizes) - need``. Sizes are
    rounded up to ``capacity / units`` steps, so the real saving never falls short.
    """
    if need <= 0:
        return []
    capacity = sum(sizes) - need
    if capacity < 0:
        return list(range(len(sizes)))
    unit = max(capacity / units, 1.0)
    u = [int(np.ceil(s / unit)) for s in sizes]
    cap = int(capacity // unit)
    best = np.zeros(cap + 1)
    keep = np.zeros((len(sizes), cap + 1), bool)
    for i, (ui, li) in enumerate(zip(u, losses)):
        if ui > cap:
            continue
        cand = np.full(cap + 1, -1.0)
        cand[ui:] = best[:cap + 1 - ui] + li
        take = cand > best
        keep[i] = take
        best = np.where(take, cand, best)
    kept, c = set(), cap
    for i in reversed(range(len(sizes))):
        if keep[i, c]:
            kept.add(i)
            c -= u[i]
    return [i for i in range(len(sizes)) if i not in kept]


def search_budget(graph: Graph, bits: BitWidths, sens: Sensitivity, budget: int,
                  frontier_ratios: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0),
                  ) -> BudgetChoice:
    """Packable layers to lower to ``LOW_BITS`` so the weights fit ``budget`` bytes.

    Layers with a width of their own in ``bits`` (``--layer_bits``,
    ``--keep_8bit``) and layers that cannot be packed keep their widths.
    Raises EqTfliteError when even the smallest choice does not fit.
    """
    int8 = weight_bytes(graph)
    fixed_names = dict(bits.layer_weights)
    can = packable(graph)
    free = [op for op in graph.weighted_ops() if op.index in can and op.index in sens.losses
            and graph.tensors[op.weight_input].name not in fixed_names]
    high = bits.weights
    base = weight_bytes(graph, bits)  # every free layer at the model's width
    if high <= LOW_BITS:
        free = []
    sizes = [int(graph.tensors[op.weight_input].data.size) - (int(graph.tensors[op.weight_input].data.size) + 1) // 2
             for op in free]
    losses = [sens.losses[op.index] for op in free]
    smallest = base - sum(sizes)
    if budget < smallest:
        raise EqTfliteError(f"the weight budget {budget / 1024:.1f} KiB ({budget / int8:.2f} of the "
                            f"int8 weights) is below the smallest stock file's weights, "
                            f"{smallest / 1024:.1f} KiB ({smallest / int8:.2f}): every packable "
                            f"layer at {LOW_BITS} bits")
    low = _knapsack(sizes, losses, base - budget)
    choice = BudgetChoice(budget, int8, [free[i].index for i in low],
                          base - sum(sizes[i] for i in low), float(sum(losses[i] for i in low)),
                          sens.measure)
    for r in frontier_ratios:
        b = int(r * int8)
        if b < smallest:
            continue
        pick = _knapsack(sizes, losses, base - b)
        choice.frontier.append((r, base - sum(sizes[i] for i in pick),
                                float(sum(losses[i] for i in pick))))
    return choice


def apply_choice(graph: Graph, bits: BitWidths, choice: BudgetChoice) -> BitWidths:
    """``bits`` with the chosen layers at ``LOW_BITS``."""
    lowered = {graph.tensors[graph.ops[i].weight_input].name: LOW_BITS for i in choice.low}
    return bits.with_overrides({**dict(bits.layer_weights), **lowered}, dict(bits.tensor_activations))


def budget_bytes(graph: Graph, weight_size_kib: float | None, ratio: float | None) -> int | None:
    """The budget in bytes from ``--weight_size`` (KiB) or ``--weight_size_ratio`` (of int8)."""
    check_budget(weight_size_kib, ratio)
    if weight_size_kib is not None:
        return int(weight_size_kib * 1024)
    if ratio is not None:
        return int(ratio * weight_bytes(graph))
    return None


#: What the budget search ranks layers by (``api.convert_model(budget_sensitivity=...)``).
MEASURES = ("output", "output_gptq", "layer")


def check_budget(weight_size_kib: float | None, ratio: float | None, measure: str = "output") -> None:
    """One-line errors for bad budget arguments (before anything is loaded)."""
    if measure not in MEASURES:
        raise EqTfliteError(f"--budget_sensitivity takes {', '.join(MEASURES[:-1])} or {MEASURES[-1]}, "
                           f"got {measure!r}")
    if weight_size_kib is not None and ratio is not None:
        raise EqTfliteError("give --weight_size or --weight_size_ratio, not both")
    if weight_size_kib is not None:
        if isinstance(weight_size_kib, bool) or not (
                isinstance(weight_size_kib, (int, float)) and np.isfinite(weight_size_kib)
                and weight_size_kib > 0):
            raise EqTfliteError(f"--weight_size must be a positive number of KiB, got {weight_size_kib!r}")
    if ratio is not None:
        if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and np.isfinite(ratio)
                                           and 0 < ratio <= 1):
            raise EqTfliteError(f"--weight_size_ratio must be in (0, 1], got {ratio!r}")


def file_weight_bytes(model_bytes: bytes) -> int:
    """Bytes of the weighted ops' constant weight tensors as stored in a .tflite file
    (float32: 4 per value, int8: 1, INT4: packed, two per byte)."""
    from eq_tflite.io import codec as fb
    from eq_tflite.quant_spec import WEIGHTED
    model = fb.parse_model(model_bytes)
    sg = model.subgraphs[0]
    seen, total = set(), 0
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind not in WEIGHTED:
            continue
        i = int(op.inputs[WEIGHTED[kind][1]])
        buf = model.buffers[sg.tensors[i].buffer] if sg.tensors[i].buffer < len(model.buffers) else None
        if i in seen or buf is None or buf.data is None:
            continue
        seen.add(i)
        total += len(buf.data)
    return total
