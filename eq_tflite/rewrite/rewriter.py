"""Stage 5b (rewrite): writes a plan's resolved numbers onto TFLite's int8 model.

``eq_tflite.resolve`` decides every number (activation scales and zero
points, per-channel weight scales, b-bit integer weights, int32 biases); this
module only maps the int8 model's tensors onto float-graph names and writes
those numbers. Tensors the plan leaves out keep TFLite's own calibrated range,
moved onto the b-bit levels.

Every rewritten constant gets a fresh buffer, so buffers that the converter
deduplicated are never patched for two tensors at once; the buffers they
replace are dropped (when the handle is serialized), so the file holds each
weight once. Signatures and
metadata are kept; an ``eq_tflite`` metadata entry records bits, method and
the activation-range mode.

The rewrite and the optional INT4 packing edit one model handle
(``eq_tflite.io.model``): TFLite's int8 model is parsed once, and the result
serialized once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eq_tflite import grid
from eq_tflite import resolve as resolve_mod
from eq_tflite.graph import Graph
from eq_tflite.io import codec as fb
from eq_tflite.io.model import TfliteLike, TfliteModel
from eq_tflite.plan import Plan
from eq_tflite.quant_spec import EDGE_OPS, WEIGHTED, tied_tensors

METADATA_NAME = "eq_tflite"


@dataclass
class RewriteLog:
    """What the rewriter did, for the CLI summary and tests."""

    activations: int = 0
    weights: int = 0
    biases: int = 0
    tied_groups: int = 0
    fixed_outputs: int = 0
    dead_channels: int = 0
    bias_overflow_channels: int = 0
    unmapped: list[str] = field(default_factory=list)
    #: int8 tensor index -> float-graph tensor name
    mapping: dict[int, str] = field(default_factory=dict)
    #: the numbers written (``eq_tflite.resolve``)
    resolved: resolve_mod.Resolved | None = None
    #: int8 tensor index -> bit width, for weights and activations (mixed precision)
    weight_widths: dict[int, int] = field(default_factory=dict)
    activation_widths: dict[int, int] = field(default_factory=dict)
    #: weight tensors stored as packed INT4 (``apply_plan(..., pack_int4=True)``)
    int4_tensors: int = 0


def apply_plan(int8_model: TfliteLike, graph: Graph, plan: Plan, float_model: bytes | None = None,
               *, pack_int4: bool = False) -> tuple[TfliteModel, RewriteLog]:
    """The int8 model rewritten with ``plan``, and a log (with the numbers written).

    A :class:`TfliteModel` is edited in place (and returned); bytes are parsed
    first. ``pack_int4`` then stores the weights that fit as packed INT4
    (:func:`pack_int4_weights`; ``log.int4_tensors`` counts them).
    """
    handle = TfliteModel.of(int8_model, "TFLite's int8 model")
    model = handle.edit()
    sg = model.subgraphs[0]
    log = RewriteLog()
    log.mapping = map_to_float(model, graph)
    acts = [i for i, t in enumerate(sg.tensors) if fb.is_int8_activation(model, t)]
    defaults = {log.mapping[i]: _params(sg.tensors[i]) for i in acts if i in log.mapping}
    numbers = log.resolved = resolve_mod.resolve(graph, plan, defaults)
    log.tied_groups, log.fixed_outputs = numbers.tied_groups, numbers.fixed_outputs
    unmapped = _write_activations(sg, acts, numbers, log)
    _copy_tied_params(model, sg, acts, unmapped, log.activation_widths)
    _write_weights(model, sg, numbers, log)
    _write_metadata(model, plan, float_model, log)
    if pack_int4:  # verify checks the packed file against its int8-container twin
        log.int4_tensors = _pack_int4(handle)
    return handle, log


# --- INT4 packing -----------------------------------------------------------------

#: Weighted ops whose LiteRT builtin kernels take packed INT4 weights, measured
#: with ai-edge-litert 2.3 (tests/rewrite/test_int4.py): outputs bit-exact with
#: the int8-container form. TRANSPOSE_CONV was not measured and stays int8.
INT4_WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})


def pack_int4_weights(model: TfliteLike) -> tuple[bytes, int]:
    """The model with every int8 weight of ``INT4_WEIGHT_OPS`` within [-7, 7] stored as INT4.

    Returns (model bytes, number of weight tensors packed). Values, scales
    and everything else stay as they are; a weight shared by an op that
    cannot take INT4, or with values beyond 4 bits, stays int8. In a mixed
    model (per-layer widths in the metadata), only layers of at most 4 bits
    are packed.
    """
    handle = TfliteModel.of(model)
    packed = _pack_int4(handle)
    return handle.to_bytes(), packed


def _pack_int4(handle: TfliteModel) -> int:
    """Packs ``handle``'s INT4-able weights in place (see :func:`pack_int4_weights`); how many."""
    widths, default = recorded_widths(handle)[0], (read_metadata(handle) or {}).get("weight_bits", 8)
    model = handle.edit()
    sg = model.subgraphs[0]
    readers: dict[int, set[str]] = {}
    for op in sg.operators:
        for i in op.inputs:
            readers.setdefault(int(i), set()).add(fb.op_name(model, op))
    packed = 0
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind not in INT4_WEIGHT_OPS:
            continue
        t = sg.tensors[op.inputs[WEIGHTED[kind][1]]]
        w = fb.buffer_array(model, t)
        w_idx = int(op.inputs[WEIGHTED[kind][1]])
        if fb.type_name(t.type) != "INT8" or w is None or np.abs(w.astype(np.int32)).max(initial=0) > 7 \
                or not readers[w_idx] <= INT4_WEIGHT_OPS \
                or (widths and widths.get(w_idx, default) > 4):
            continue
        fb.set_int4_buffer(model, t, w)
        packed += 1
    return packed


def unpack_int4_weights(model: TfliteLike) -> tuple[bytes, int]:
    """The model with every INT4 constant stored as int8 (its int8-container twin), and how many.

    A model without INT4 constants comes back as it is (not parsed again).
    """
    handle = TfliteModel.of(model)
    if not any(t.type == fb.schema.TensorType.INT4 for t in handle.model.subgraphs[0].tensors):
        return handle.to_bytes(), 0
    twin = TfliteModel(handle.to_bytes())  # a copy, edited
    model = twin.edit()
    unpacked = 0
    for t in model.subgraphs[0].tensors:
        if t.type == fb.schema.TensorType.INT4:
            values = fb.buffer_array(model, t)
            if values is None:
                continue
            fb.set_buffer(model, t, values.astype(np.int8))
            t.type = fb.schema.TensorType.INT8
            unpacked += 1
    return twin.to_bytes(), unpacked


# --- tensor mapping ---------------------------------------------------------

def map_to_float(model: Any, graph: Graph) -> dict[int, str]:
    """int8 tensor index -> float-graph tensor name (names, then op pairing)."""
    sg = model.subgraphs[0]
    names = [fb.tensor_name(t) for t in sg.tensors]
    mapping = {i: n for i, n in enumerate(names) if n in graph.by_name}
    # Single-output ops only: a multi-output op's renamed outputs ("a;b", "a;b1") are
    # matched by position in _map_renamed_outputs, never by a name part.
    int8_producer = {int(op.outputs[0]): fb.op_name(model, op) for op in sg.operators
                     if len(op.outputs) == 1}
    for i, name in enumerate(names):
        if i not in mapping and ";" in name and i in int8_producer:
            fused = _fused_name(graph, name, int8_producer[i])
            if fused is not None:
                mapping[i] = fused
    producer = {out: op for op in graph.ops for out in op.outputs}
    fixed_groups = _fixed_range_tensors(graph)
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind in WEIGHTED:
            out = names[op.outputs[0]]
            fop = producer.get(graph.by_name.get(out, -1))
            if fop is None or fop.type != kind:
                continue
            for pos in WEIGHTED[kind][1:3]:
                if pos < len(op.inputs) and op.inputs[pos] >= 0 and pos < len(fop.inputs) \
                        and fop.inputs[pos] >= 0:
                    mapping[op.inputs[pos]] = graph.tensors[fop.inputs[pos]].name
        elif kind in EDGE_OPS:
            src, dst = op.inputs[0], op.outputs[0]
            if src in mapping and mapping[src] in fixed_groups and \
                    fb.type_name(sg.tensors[dst].type) == fb.type_name(sg.tensors[src].type):
                continue  # a requantize of a fixed range into a multi-input tie: not the same numbers
            if src in mapping and dst not in mapping:
                mapping[dst] = mapping[src]
            elif dst in mapping and src not in mapping:
                mapping[src] = mapping[dst]
    _map_renamed_outputs(model, graph, mapping)
    return mapping


def _fixed_range_tensors(graph: Graph) -> set[str]:
    """Names of float tensors with spec-fixed parameters (fixed outputs and the groups tied to them)."""
    fixed = resolve_mod.fixed_output_params(graph)
    groups = resolve_mod.tied_groups(graph)
    return {graph.tensors[m].name for t in fixed for m in groups.get(t, (t,))}


def _map_renamed_outputs(model: Any, graph: Graph, mapping: dict[int, str]) -> None:
    """Outputs the quantizer renamed (SPLIT's "a;b", "a;b1"), by position in the float op
    of the same type that reads the same activation tensors."""
    sg = model.subgraphs[0]

    def key(kind: str, names: list[str]) -> tuple[str, tuple[str, ...]]:
        return kind, tuple(names)

    floats = {key(op.type, [graph.tensors[t].name for t in op.inputs
                            if t >= 0 and not graph.tensors[t].is_const]): op for op in graph.ops}
    for op in sg.operators:
        outs = [o for o in op.outputs if o >= 0]
        if not outs or all(o in mapping for o in outs):
            continue
        ins = [t for t in op.inputs if t >= 0 and fb.buffer_array(model, sg.tensors[t]) is None]
        if not all(t in mapping for t in ins):
            continue
        fop = floats.get(key(fb.op_name(model, op), [mapping[t] for t in ins]))
        if fop is None or len(fop.outputs) != len(op.outputs):
            continue
        for q, f in zip(op.outputs, fop.outputs):
            if q >= 0 and f >= 0:
                mapping.setdefault(q, graph.tensors[f].name)


#: Activation ops TFLite's quantizer fuses into the op before them.
_FUSABLE_ACTIVATIONS = frozenset({"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1"})


def _fused_name(graph: Graph, name: str, kind: str) -> str | None:
    """The float tensor that an int8 output named "a;b;..." of a ``kind`` op stands for, or None.

    TFLite's quantizer fuses ops the float file keeps apart (ADD then RELU
    becomes one ADD with a fused RELU) and names the fused output after all of
    them. A part qualifies if the float graph makes it with a ``kind`` op, or
    with a fusable activation applied to a ``kind`` op's output; of those, the
    fused tensor holds the values of the last one. Anything less certain
    (names merged from constants, folded PADs) stays unmapped.
    """
    producer = {out: op for op in graph.ops for out in op.outputs}

    def made_by_kind(t: int) -> bool:
        op = producer.get(t)
        if op is None:
            return False
        if op.type == kind:
            return True
        before = producer.get(op.inputs[0]) if op.inputs else None
        return op.type in _FUSABLE_ACTIVATIONS and before is not None and before.type == kind

    parts = [p for p in dict.fromkeys(name.split(";"))
             if p in graph.by_name and made_by_kind(graph.by_name[p])]
    if len(parts) <= 1:
        return parts[0] if parts else None
    index = {graph.by_name[p]: p for p in parts}
    upstream = {t for op in graph.ops for t in op.inputs if t in index
                and any(o in index and o != t for o in op.outputs)}
    last = [p for t, p in index.items() if t not in upstream]
    return last[0] if len(last) == 1 else None


# --- activations ---------------------------------------------------------------

def _params(t: Any) -> tuple[float, int]:
    return float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])


def _write_activations(sg: Any, acts: list[int], numbers: resolve_mod.Resolved,
                       log: RewriteLog) -> set[int]:
    """Writes each int8 activation's plan numbers; returns the tensors without any."""
    bits = numbers.bits.activations
    unmapped = set()
    for i in acts:
        t = sg.tensors[i]
        params = numbers.activations.get(log.mapping.get(i, ""))
        log.activation_widths[i] = numbers.activation_bits.get(log.mapping.get(i, ""), bits)
        if params is None:  # not in the float graph: TFLite's range on the b-bit levels
            log.unmapped.append(fb.tensor_name(t))
            unmapped.add(i)
            params = grid.activation_params(*grid.activation_range(*_params(t), 8), bits)
        q = t.quantization
        q.scale, q.zeroPoint, q.min, q.max = [params[0]], [params[1]], None, None
        log.activations += 1
    return unmapped


def _copy_tied_params(model: Any, sg: Any, acts: list[int], unmapped: set[int],
                      widths: dict[int, int] | None = None) -> int:
    """Gives every same-scale group of the int8 model one (scale, zero point); returns changes.

    The plan's numbers already tie the float graph's groups, but a group of the
    int8 model can also hold tensors the float graph does not have (fused
    names, converter-made tensors) whose parameters came from TFLite's own
    range. The group's parameters are decided once, and copied bit for bit:
    those of its first member with plan numbers (``resolve`` gave them all the
    same), else of its first member; ``widths`` (tensor -> bits) follow them.
    """
    act_set = set(acts)
    parent = {i: i for i in acts}

    def find(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for op in sg.operators:
        members = [t for t in tied_tensors(fb.op_name(model, op), list(op.inputs), list(op.outputs))
                   if t in act_set]
        for t in members[1:]:
            parent[find(t)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for t in acts:
        groups.setdefault(find(t), []).append(t)
    changed = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        planned = [t for t in members if t not in unmapped]
        source = sg.tensors[(planned or members)[0]].quantization
        if widths is not None and (planned or members)[0] in widths:
            for t in members:
                widths[t] = widths[(planned or members)[0]]
        for t in members:
            q = sg.tensors[t].quantization
            if (list(q.scale), list(q.zeroPoint)) != (list(source.scale), list(source.zeroPoint)):
                q.scale, q.zeroPoint = list(source.scale), list(source.zeroPoint)
                changed += 1
    return changed


# --- weights and biases -----------------------------------------------------------

def _write_weights(model: Any, sg: Any, numbers: resolve_mod.Resolved, log: RewriteLog) -> None:
    written: set[int] = set()

    def own(op: Any, pos: int) -> Any:
        """The op's operand tensor at ``pos``, copied first if another op's numbers are on it."""
        i = int(op.inputs[pos])
        if i in written:
            sg.tensors.append(copy_tensor(sg.tensors[i]))
            log.mapping[len(sg.tensors) - 1] = log.mapping.get(i, "")
            i = len(sg.tensors) - 1
            op.inputs[pos] = i
        written.add(i)
        return sg.tensors[i]

    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind not in WEIGHTED:
            continue
        _, w_pos, b_pos, axis = WEIGHTED[kind]
        w_idx = op.inputs[w_pos]
        w_t = sg.tensors[w_idx]
        if fb.type_name(w_t.type) != "INT8" or fb.buffer_array(model, w_t) is None:
            continue
        layer = numbers.layers.get(log.mapping.get(w_idx, ""))
        if layer is None:
            raise RuntimeError(f"cannot find the float weights of {kind} {fb.tensor_name(w_t)}")
        w_t = own(op, w_pos)
        fb.set_buffer(model, w_t, layer.values.astype(np.int8))
        _set_quant(w_t, layer.file_scales, axis)  # one scale when per-tensor
        log.weight_widths[int(op.inputs[w_pos])] = layer.bits
        log.weights += 1
        log.dead_channels += layer.dead_channels
        log.bias_overflow_channels += layer.overflow_channels
        b_idx = op.inputs[b_pos] if b_pos < len(op.inputs) else -1
        if b_idx >= 0 and layer.bias_values is not None:
            b_t = own(op, b_pos)
            fb.set_buffer(model, b_t, layer.bias_values.astype(np.int32))
            _set_quant(b_t, layer.file_bias_scales, 0)
            log.biases += 1


def copy_tensor(t: Any) -> Any:
    """A new tensor with ``t``'s type, shape and name (buffer and quantization set later)."""
    c = fb.schema.TensorT()
    c.shape, c.type, c.name = t.shape, t.type, t.name
    c.buffer = 0
    c.quantization = fb.schema.QuantizationParametersT()
    return c


def _set_quant(t: Any, scales: np.ndarray, axis: int) -> None:
    q = t.quantization or fb.schema.QuantizationParametersT()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [0] * len(scales)
    q.quantizedDimension = axis
    q.min = q.max = None
    t.quantization = q


# --- metadata -------------------------------------------------------------------

def _write_metadata(model: Any, plan: Plan, float_model: bytes | None,
                    log: RewriteLog | None = None) -> None:
    """Keeps the float model's metadata and records how this model was made.

    A mixed-precision plan also records every tensor whose width differs from
    the model's (``"mixed"``: int8 tensor index -> bits), which verify checks
    each tensor against.
    """
    from eq_tflite import __version__

    existing = {_name(m) for m in (model.metadata or [])}
    if float_model is not None:
        src = fb.parse_model(float_model)
        for m in src.metadata or []:
            if _name(m) not in existing:
                _add_metadata(model, _name(m), bytes(np.asarray(src.buffers[m.buffer].data, np.uint8)))
                existing.add(_name(m))
    info = {"version": __version__, "method": plan.method,
            "weight_bits": plan.bits.weights, "activation_bits": plan.bits.activations,
            "activation_range": plan.bits.activation_range, "label": plan.bits.label}
    if plan.bits.mixed and log is not None:
        info["mixed"] = {
            "weight_bits": {str(i): b for i, b in sorted(log.weight_widths.items())
                            if b != plan.bits.weights},
            "activation_bits": {str(i): b for i, b in sorted(log.activation_widths.items())
                                if b != plan.bits.activations}}
    if METADATA_NAME in existing:
        model.metadata = [m for m in model.metadata if _name(m) != METADATA_NAME]
    _add_metadata(model, METADATA_NAME, json.dumps(info, sort_keys=True).encode())


def _name(m: Any) -> str:
    return fb.text(m.name)


def _add_metadata(model: Any, name: str, data: bytes) -> None:
    buf = fb.schema.BufferT()
    buf.data = np.frombuffer(data, np.uint8).copy()
    model.buffers.append(buf)
    meta = fb.schema.MetadataT()
    meta.name = name
    meta.buffer = len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [meta]


def recorded_widths(model: TfliteLike) -> tuple[dict[int, int], dict[int, int]]:
    """(weight widths, activation widths) by int8 tensor index that a mixed model records
    (tensors not listed have the model's widths); two empty dicts for other models."""
    mixed = (read_metadata(model) or {}).get("mixed") or {}
    return ({int(i): int(b) for i, b in (mixed.get("weight_bits") or {}).items()},
            {int(i): int(b) for i, b in (mixed.get("activation_bits") or {}).items()})


def read_metadata(model: TfliteLike) -> dict[str, Any] | None:
    """The ``eq_tflite`` metadata entry of a model written by this tool, or None."""
    data = TfliteModel.of(model).metadata(METADATA_NAME)
    return None if data is None else json.loads(data.decode())
