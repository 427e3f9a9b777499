"""Stage 5a (resolve): turns a Plan into the exact numbers that ship.

One function decides every number of the int8 model, keyed by float-graph
tensor names; the simulator scores these numbers (``simulate``), the rewriter
writes them (``rewrite``), and verify checks that the file holds them.

* Activations: (scale, zero point) per tensor. Tensors tied by same-scale ops
  (``quant_spec.tied_tensors``) get the union of their ranges; outputs of
  fixed-scale ops keep the spec's parameters at any width; tensors without a
  plan range take ``defaults`` (TFLite's own calibration) or stay float.
* Weights of weighted ops: per-output-channel float32 step sizes and b-bit
  integers, requantized from the plan's float weights (or taken from its
  ``int_weights``). Dead (all-zero) channels get the median live step, so no
  scale is zero. A bias that would overflow int32 enlarges that channel's step
  until it fits.
* Biases: int32 ``round(b / (s_in * s_w[c]))`` with scale
  ``float32(float32(s_in) * s_w[c])``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from eq_tflite import grid
from eq_tflite.graph import Graph, Op
from eq_tflite.grid import BitWidths
from eq_tflite.plan import Plan
from eq_tflite.quant_spec import FIXED_OUTPUT_PARAMS, INT32_MAX, MULTI_INPUT_TIED_OPS, tied_tensors

ActParams = tuple[float, int]


@dataclass
class LayerNumbers:
    """Shipped numbers of one weighted op (weights in the tensor's own layout)."""

    weight: str
    axis: int
    scales: np.ndarray                 # float32 per output channel
    values: np.ndarray                 # int8 integers in the b-bit range
    bias: str | None = None
    bias_scales: np.ndarray | None = None   # float32
    bias_values: np.ndarray | None = None   # int32
    dead_channels: int = 0
    overflow_channels: int = 0
    per_tensor: bool = False           # one step for the whole tensor (all ``scales`` equal)
    bits: int = 8                      # the layer's weight width

    @property
    def file_scales(self) -> np.ndarray:
        """Weight scales as written: one value when per-tensor."""
        return self.scales[:1] if self.per_tensor else self.scales

    @property
    def file_bias_scales(self) -> np.ndarray | None:
        """Bias scales as written: one value when per-tensor."""
        if self.bias_scales is None:
            return None
        return self.bias_scales[:1] if self.per_tensor else self.bias_scales

    def real_weights(self) -> np.ndarray:
        """Dequantized weights (float32), as the int8 kernel sees them."""
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return (self.values.astype(np.float64)
                * self.scales.astype(np.float64).reshape(shape)).astype(np.float32)

    def real_bias(self) -> np.ndarray | None:
        """Dequantized int32 bias (float32), or None without a quantized bias."""
        if self.bias_values is None:
            return None
        return (self.bias_values.astype(np.float64)
                * self.bias_scales.astype(np.float64)).astype(np.float32)


@dataclass
class Resolved:
    """Every shipped number of a plan, keyed by float-graph tensor names."""

    bits: BitWidths
    activations: dict[str, ActParams] = field(default_factory=dict)
    layers: dict[str, LayerNumbers] = field(default_factory=dict)  # by weight name
    activation_bits: dict[str, int] = field(default_factory=dict)  # width of every activation
    tied_groups: int = 0
    fixed_outputs: int = 0
    #: tensors requantized from a fixed range into a multi-input tie's scale (see tied_groups)
    requantized: list[str] = field(default_factory=list)
    #: tensors tied to a fixed-range output that keep its 8-bit parameters (at any width)
    pinned: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# Activations


def tied_groups(graph: Graph) -> dict[int, tuple[int, ...]]:
    """Maps each activation tensor to its same-scale group (sorted tensor indices).

    Fixed-range outputs (softmax, logistic, tanh) are special at a tie with
    several data inputs (CONCATENATION, PACK, MAXIMUM, MINIMUM): when other
    inputs there are free, the fixed input is requantized into the group's
    scale (TFLite's converter inserts a QUANTIZE for it), so it stays out of
    the group and the group keeps its own b-bit range. Only when every input
    carries the same fixed parameters does the output adopt them. A
    single-input tie (RESHAPE, STRIDED_SLICE, ...) after a fixed output always
    adopts them, as TFLite does: that group keeps the spec's 8-bit parameters
    at any width (``Resolved.pinned``).
    """
    parent = {t: t for t in graph.activation_tensors()}
    pinned = {t: p for t, p in fixed_output_params(graph).items() if t in parent}  # by group root

    def find(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def unite(members: list[int]) -> None:
        for t in members[1:]:
            a, b = find(t), find(members[0])
            if a != b:
                parent[a] = b
                if a in pinned:
                    pinned.setdefault(b, pinned.pop(a))

    multi = []
    for op in graph.ops:
        members = [t for t in tied_tensors(op.type, op.inputs, op.outputs) if t in parent]
        if op.type in MULTI_INPUT_TIED_OPS:
            multi.append(op)
        else:
            unite(members)
    for op in multi:  # after every single-input tie, in graph order
        ins = [t for t in op.inputs if t in parent]
        pins = [pinned.get(find(t)) for t in ins]
        if not (pins and None not in pins and len(set(pins)) == 1):
            ins = [t for t, p in zip(ins, pins) if p is None]  # the fixed ones are requantized
        unite(ins + [t for t in op.outputs if t in parent])
    groups: dict[int, list[int]] = {}
    for t in parent:
        groups.setdefault(find(t), []).append(t)
    return {t: tuple(sorted(g)) for g in groups.values() for t in g}


def requantized_fixed(graph: Graph, groups: Mapping[int, tuple[int, ...]]) -> list[int]:
    """Fixed-range tensors that a multi-input tie requantizes (see :func:`tied_groups`)."""
    fixed = fixed_output_params(graph)
    out = set()
    for op in graph.ops:
        if op.type in MULTI_INPUT_TIED_OPS and op.outputs:
            group = groups.get(op.outputs[0], ())
            out |= {t for t in op.inputs if t in groups and t not in group
                    and any(m in fixed for m in groups[t])}
    return sorted(out)


def fixed_output_params(graph: Graph) -> dict[int, ActParams]:
    """Tensors whose int8 parameters the spec fixes (softmax, logistic, tanh, log-softmax)."""
    return {op.outputs[0]: FIXED_OUTPUT_PARAMS[op.type]
            for op in graph.ops if op.type in FIXED_OUTPUT_PARAMS}


def tensor_bits(graph: Graph, bits: BitWidths,
                groups: Mapping[int, tuple[int, ...]] | None = None) -> dict[int, int]:
    """Width of every activation tensor (index): the widest of its tied group's members.

    Tied tensors share one (scale, zero point), so one width: a tensor kept at
    8 bits keeps the tensors tied to it at 8 bits too.
    """
    if not bits.tensor_activations:
        return {t: bits.activations for t in graph.activation_tensors()}
    groups = tied_groups(graph) if groups is None else groups
    own = dict(bits.tensor_activations)
    out = {}
    for t in graph.activation_tensors():
        out[t] = max(own.get(graph.tensors[m].name, bits.activations) for m in groups.get(t, (t,)))
    return out


def layer_bits(graph: Graph, op: Op, bits: BitWidths,
               widths: Mapping[int, int] | None = None) -> BitWidths:
    """One weighted op's widths (uniform): its weight's width, its data input's width.

    ``widths``: ``tensor_bits`` of the graph (computed when None).
    """
    if not bits.mixed:
        return bits
    widths = tensor_bits(graph, bits) if widths is None else widths
    return bits.uniform(bits.weights_of(graph.tensors[op.weight_input].name),
                        widths.get(op.data_input, bits.activations))


def activation_params(graph: Graph, ranges: Mapping[int, tuple[float, float]],
                      bits: int | BitWidths,
                      groups: Mapping[int, tuple[int, ...]] | None = None,
                      ) -> dict[int, ActParams]:
    """(scale, zp) per tensor index: ranges united over tied groups, fixed outputs kept.

    ``bits``: one width for all, or the plan's ``BitWidths`` (each tensor on
    its own width, ``tensor_bits``). A group with a fixed-scale member takes
    the fixed parameters on every member (the kernels of the tying ops
    require one scale).
    """
    groups = tied_groups(graph) if groups is None else groups
    widths = tensor_bits(graph, bits, groups) if isinstance(bits, BitWidths) else {}
    default = bits.activations if isinstance(bits, BitWidths) else bits
    fixed = fixed_output_params(graph)
    params: dict[int, ActParams] = {}
    per_group: dict[tuple[int, ...], ActParams] = {}  # computed once per group, then copied
    for t in sorted(set(ranges) | set(fixed)):
        members = groups.get(t, (t,))
        if members not in per_group:
            pinned = [fixed[m] for m in members if m in fixed]
            rs = [ranges[m] for m in members if m in ranges]
            per_group[members] = pinned[0] if pinned else grid.activation_params(
                min(r[0] for r in rs), max(r[1] for r in rs), widths.get(t, default))
        params[t] = per_group[members]
    return params


# --------------------------------------------------------------------------
# Weights and biases


def fix_dead_channels(scales: np.ndarray) -> tuple[np.ndarray, int]:
    """Replaces zero or invalid channel steps (dead channels) with the median live step."""
    scales = np.asarray(scales, np.float64)
    ok = np.isfinite(scales) & (scales > 0)
    dead = int(np.count_nonzero(~ok))
    if dead:
        fill = float(np.median(scales[ok])) if ok.any() else 1.0
        scales = np.where(ok, scales, fill)
    return scales, dead


def bias_numbers(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(int32 values, float32 scales) of a bias: scale float32(float32(s_in) * s_w[c])."""
    b_scale = (np.float64(np.float32(input_scale))
               * np.asarray(weight_scales, np.float32).astype(np.float64)).astype(np.float32)
    step = b_scale.astype(np.float64)
    q = np.round(np.asarray(bias, np.float64) / np.where(step > 0, step, 1.0))
    q = np.where(step > 0, np.clip(q, -INT32_MAX, INT32_MAX), 0)
    return q.astype(np.int32), b_scale


def layer_numbers(op: Op, weight_name: str, w: np.ndarray, bias: np.ndarray | None,
                  bias_name: str | None, input_scale: float | None,
                  scales: np.ndarray | None, bits: BitWidths,
                  int_weights: np.ndarray | None = None, per_tensor: bool = False) -> LayerNumbers:
    """The shipped numbers of one weighted op.

    ``w``/``bias`` are float values (the plan's edits applied); ``scales`` the
    plan's per-channel steps (None: absmax); ``input_scale`` the data input's
    activation scale (None: the input stays float, so the bias does too).
    ``per_tensor``: every channel takes the largest step (one scale per tensor).
    """
    axis = op.channel_axis
    w = np.asarray(w, np.float64)
    if scales is None:
        scales = grid.weight_scales(w, axis, bits.weights)
    scales, dead = fix_dead_channels(scales)
    if per_tensor:
        scales, dead = np.full_like(scales, float(np.max(scales))), 0
    grown = 0
    if bias is not None and input_scale is not None and int_weights is None:
        need = np.abs(np.asarray(bias, np.float64)) / (np.float64(input_scale) * (INT32_MAX - 1))
        if per_tensor:
            need = np.full_like(need, float(np.max(need)))
        grow = need > scales
        grown = int(np.count_nonzero(grow))
        scales = np.where(grow, need * (1 + 1e-6), scales)
    s32 = scales.astype(np.float32)
    if int_weights is not None:
        q = np.asarray(int_weights)
        if np.abs(q).max(initial=0) > bits.weight_qmax:
            raise ValueError(f"int_weights of {weight_name} exceed the {bits.weights}-bit "
                             f"range ±{bits.weight_qmax}")
        q = q.astype(np.int8)
    else:
        q = grid.quantize_weights(w, s32.astype(np.float64), axis, bits.weights)
    numbers = LayerNumbers(weight_name, axis, s32, q, bias_name, dead_channels=dead,
                           overflow_channels=grown, per_tensor=per_tensor, bits=bits.weights)
    if bias is not None and input_scale is not None:
        numbers.bias_values, numbers.bias_scales = bias_numbers(bias, input_scale, s32)
    return numbers


# --------------------------------------------------------------------------
# The whole plan


def resolve(graph: Graph, plan: Plan, defaults: Mapping[str, ActParams] | None = None) -> Resolved:
    """Every number ``plan`` ships on ``graph``.

    ``defaults`` gives (scale, zp) of tensors the plan leaves out (the rewriter
    passes TFLite's own 8-bit calibration); their real range is moved onto the
    b-bit levels. Without a default such tensors stay float (the simulator).
    """
    bits = plan.bits
    idx = graph.by_name
    ranges = {idx[n]: r for n, r in plan.activation_ranges.items() if n in idx}
    for name, p in (defaults or {}).items():
        t = idx.get(name)
        if t is not None and t not in ranges:
            ranges[t] = grid.activation_range(*p, 8)
    groups = tied_groups(graph)
    widths = tensor_bits(graph, bits, groups)
    params = activation_params(graph, ranges, bits, groups)
    out = Resolved(bits, {graph.tensors[t].name: p for t, p in params.items()})
    out.activation_bits = {graph.tensors[t].name: b for t, b in widths.items()}
    out.tied_groups = len({g for g in groups.values() if len(g) > 1})
    fixed = fixed_output_params(graph)
    out.fixed_outputs = len(fixed)
    out.requantized = [graph.tensors[t].name for t in requantized_fixed(graph, groups)]
    out.pinned = [graph.tensors[t].name for t in sorted(params) if t not in fixed
                  and any(m in fixed for m in groups.get(t, ()))]
    for op in graph.weighted_ops():
        w_name = graph.tensors[op.weight_input].name
        w = plan.float_weights.get(w_name, graph.tensors[op.weight_input].data)
        bias, b_name = None, None
        if op.bias_input >= 0:
            b_name = graph.tensors[op.bias_input].name
            data = graph.tensors[op.bias_input].data
            bias = plan.float_weights.get(b_name, data if data is not None
                                          else np.zeros(w.shape[op.channel_axis]))
        in_params = params.get(op.data_input)
        out.layers[w_name] = layer_numbers(
            op, w_name, w, bias, b_name, None if in_params is None else in_params[0],
            plan.weight_scales.get(w_name), layer_bits(graph, op, bits, widths),
            plan.int_weights.get(w_name),
            plan.per_tensor_weights)
    return out
