"""Applies a Plan onto the int8 .tflite produced by TFLite's own converter.

What it writes (see ``eq_tflite.grid`` for the grids):

* activation tensors: (scale, zero point) from the plan's range on the b-bit
  grid; tensors tied by same-scale ops share the union of their ranges;
  fixed-scale outputs (softmax, logistic, tanh) keep the spec's parameters;
* weights of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV:
  requantized from the *float* weights, per output channel, symmetric b-bit;
* int32 biases: round(b / (s_in * s_w[c])) with scale s_in * s_w[c]. A bias
  that would overflow int32 enlarges that channel's weight scale until it fits;
  dead (all-zero) channels get the median live scale so no division by zero.

Every rewritten constant gets a fresh buffer, so buffers that the converter
deduplicated are never patched for two tensors at once. Signatures and
metadata are kept; an ``eq_tflite`` metadata entry records bits and method.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eq_tflite import grid
from eq_tflite.graph import Graph
from eq_tflite.io import flatbuffer as fb
from eq_tflite.plan import Plan
from eq_tflite.rewrite.op_rules import EDGE_OPS, FIXED_OUTPUT_OPS, WEIGHTED, tied_tensors

INT32_MAX = 2 ** 31 - 1
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


def apply_plan(int8_model: bytes, graph: Graph, plan: Plan,
               float_model: bytes | None = None) -> tuple[bytes, RewriteLog]:
    """Returns the int8 model rewritten with ``plan``, and a log of the changes."""
    model = fb.parse_model(int8_model, "TFLite's int8 model")
    sg = model.subgraphs[0]
    log = RewriteLog()
    float_name = _map_to_float(model, sg, graph)
    _write_activations(model, sg, plan, float_name, log)
    _write_weights(model, sg, graph, plan, float_name, log)
    _write_metadata(model, plan, float_model)
    return fb.serialize_model(model), log


# --- tensor mapping ---------------------------------------------------------

def _map_to_float(model: Any, sg: Any, graph: Graph) -> dict[int, str]:
    """int8 tensor index -> float-graph tensor name (names, then op pairing)."""
    names = [fb.tensor_name(t) for t in sg.tensors]
    mapping = {i: n for i, n in enumerate(names) if n in graph.by_name}
    producer = {out: op for op in graph.ops for out in op.outputs}
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
            if src in mapping and dst not in mapping:
                mapping[dst] = mapping[src]
            elif dst in mapping and src not in mapping:
                mapping[src] = mapping[dst]
    return mapping


# --- activations ---------------------------------------------------------------

def _is_activation(model: Any, t: Any) -> bool:
    return fb.type_name(t.type) == "INT8" and fb.buffer_array(model, t) is None \
        and t.quantization is not None and t.quantization.scale is not None \
        and len(t.quantization.scale) == 1


def _params(t: Any) -> tuple[float, int]:
    return float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])


def _write_activations(model: Any, sg: Any, plan: Plan, float_name: dict[int, str],
                       log: RewriteLog) -> None:
    acts = [i for i, t in enumerate(sg.tensors) if _is_activation(model, t)]
    parent = {i: i for i in acts}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    fixed: dict[int, tuple[float, int]] = {}
    for op in sg.operators:
        kind = fb.op_name(model, op)
        members = [i for i in tied_tensors(kind, op.inputs, op.outputs) if i in parent]
        for m in members[1:]:
            parent[find(m)] = find(members[0])
        if kind in FIXED_OUTPUT_OPS:
            for out in op.outputs:
                if out in parent:
                    fixed[out] = _params(sg.tensors[out])
    groups: dict[int, list[int]] = {}
    for i in acts:
        groups.setdefault(find(i), []).append(i)
    bits = plan.bits.activations
    for members in groups.values():
        if len(members) > 1:
            log.tied_groups += 1
        pinned = [fixed[m] for m in members if m in fixed]
        if pinned:
            scale, zp = pinned[0]
            log.fixed_outputs += 1
        else:
            lo, hi = np.inf, -np.inf
            for m in members:
                r = plan.activation_ranges.get(float_name.get(m, ""))
                if r is None:  # not in the plan: keep TFLite's own calibrated range
                    r = grid.activation_range(*_params(sg.tensors[m]), 8)
                    log.unmapped.append(fb.tensor_name(sg.tensors[m]))
                lo, hi = min(lo, r[0]), max(hi, r[1])
            scale, zp = grid.activation_params(lo, hi, bits)
        for m in members:
            q = sg.tensors[m].quantization
            q.scale, q.zeroPoint, q.min, q.max = [scale], [zp], None, None
            log.activations += 1


# --- weights and biases -----------------------------------------------------------

def _write_weights(model: Any, sg: Any, graph: Graph, plan: Plan, float_name: dict[int, str],
                   log: RewriteLog) -> None:
    bits = plan.bits.weights
    qmax = plan.bits.weight_qmax
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind not in WEIGHTED:
            continue
        data_pos, w_pos, b_pos, axis = WEIGHTED[kind]
        w_idx = op.inputs[w_pos]
        w_t = sg.tensors[w_idx]
        if fb.type_name(w_t.type) != "INT8" or fb.buffer_array(model, w_t) is None:
            continue
        w_name = float_name.get(w_idx)
        if w_name is None:
            raise RuntimeError(f"cannot find the float weights of {kind} {fb.tensor_name(w_t)}")
        w = np.asarray(plan.float_weights.get(w_name, graph.tensors[graph.by_name[w_name]].data),
                       np.float64)
        s_in = np.float64(sg.tensors[op.inputs[data_pos]].quantization.scale[0])
        b_idx = op.inputs[b_pos] if b_pos < len(op.inputs) else -1
        bias = None
        if b_idx >= 0:
            b_name = float_name.get(b_idx)
            fb_data = graph.tensors[graph.by_name[b_name]].data if b_name in graph.by_name else None
            bias = np.asarray(plan.float_weights.get(b_name, fb_data if fb_data is not None
                                                     else np.zeros(w.shape[axis])), np.float64)
        scales = np.asarray(plan.weight_scales.get(w_name, grid.weight_scales(w, axis, bits)), np.float64)
        scales, dead = _fix_dead(scales)
        log.dead_channels += dead
        if bias is not None:
            need = np.abs(bias) / (s_in * (INT32_MAX - 1))
            grow = need > scales
            log.bias_overflow_channels += int(np.count_nonzero(grow))
            scales = np.where(grow, need * (1 + 1e-6), scales)
        s32 = scales.astype(np.float32)
        if w_name in plan.int_weights:
            q = np.asarray(plan.int_weights[w_name])
            if np.abs(q).max(initial=0) > qmax:
                raise ValueError(f"int_weights of {w_name} exceed the {bits}-bit range ±{qmax}")
            q = q.astype(np.int8)
        else:
            q = grid.quantize_weights(w, s32.astype(np.float64), axis, bits)
        fb.set_buffer(model, w_t, q.astype(np.int8))
        _set_quant(w_t, s32, axis)
        log.weights += 1
        if bias is not None:
            b_t = sg.tensors[b_idx]
            b_scale = (np.float64(np.float32(s_in)) * s32.astype(np.float64)).astype(np.float32)
            bq = np.clip(np.round(bias / b_scale.astype(np.float64)), -INT32_MAX, INT32_MAX)
            fb.set_buffer(model, b_t, bq.astype(np.int32))
            _set_quant(b_t, b_scale, 0)
            log.biases += 1


def _fix_dead(scales: np.ndarray) -> tuple[np.ndarray, int]:
    """Replaces zero/invalid channel scales (dead channels) with the median live scale."""
    ok = np.isfinite(scales) & (scales > 0)
    dead = int(np.count_nonzero(~ok))
    if dead:
        fill = float(np.median(scales[ok])) if ok.any() else 1.0
        scales = np.where(ok, scales, fill)
    return scales, dead


def _set_quant(t: Any, scales: np.ndarray, axis: int) -> None:
    q = t.quantization or fb.schema.QuantizationParametersT()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [0] * len(scales)
    q.quantizedDimension = axis
    q.min = q.max = None
    t.quantization = q


# --- metadata -------------------------------------------------------------------

def _write_metadata(model: Any, plan: Plan, float_model: bytes | None) -> None:
    """Keeps the float model's metadata and records how this model was made."""
    from eq_tflite import __version__

    existing = {_name(m) for m in (model.metadata or [])}
    if float_model is not None:
        src = fb.parse_model(float_model)
        for m in src.metadata or []:
            if _name(m) not in existing:
                _add_metadata(model, _name(m), bytes(np.asarray(src.buffers[m.buffer].data, np.uint8)))
                existing.add(_name(m))
    info = {"version": __version__, "method": plan.method,
            "weight_bits": plan.bits.weights, "activation_bits": plan.bits.activations}
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


def read_metadata(model_bytes: bytes) -> dict[str, Any] | None:
    """The ``eq_tflite`` metadata entry of a model written by this tool, or None."""
    model = fb.parse_model(model_bytes)
    for m in model.metadata or []:
        if _name(m) == METADATA_NAME:
            return json.loads(bytes(np.asarray(model.buffers[m.buffer].data, np.uint8)).decode())
    return None
