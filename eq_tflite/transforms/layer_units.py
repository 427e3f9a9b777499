"""Layer pairs W1 -> act -> W2 and triples W1 -> act -> depthwise -> act -> W3 (DFQ's CLE units).

A unit is valid when each intermediate tensor has exactly one consumer, which
reads it as its data input, the channel counts match, and the activation in
between is positively homogeneous: NONE or RELU. RELU6 is not (relu6(x/s) !=
relu6(x)/s); ``relu6="relu"`` admits it and the caller replaces it with RELU
(the DFQ paper's choice), ``relu6="skip"`` leaves such units out.
"""
from __future__ import annotations

from eq_tflite.graph import Graph, Op
from eq_tflite.op_table import ACTIVATIONS

#: Weighted ops CLE and SPIQ edit (TRANSPOSE_CONV left out).
SCALABLE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
RELU6_POLICIES = ("relu", "skip")


def _homogeneous(op: Op, relu6: str) -> bool:
    act = ACTIVATIONS.get(op.activation)
    return (act is not None and act.homogeneous) or (op.activation == "RELU6" and relu6 == "relu")


def _channels_out(graph: Graph, op: Op) -> int:
    return graph.tensors[op.weight_input].data.shape[op.channel_axis]


def _channels_in(graph: Graph, op: Op) -> int:
    return graph.tensors[op.weight_input].data.shape[-1]


def next_layer(graph: Graph, op: Op, relu6: str) -> Op | None:
    """The only consumer of ``op``'s output if it is a scalable weighted op reading it as data."""
    if op.type not in SCALABLE or not _homogeneous(op, relu6):
        return None
    out = op.outputs[0]
    if out in graph.outputs:
        return None
    users = graph.consumers(out)
    if len(users) != 1:
        return None
    nxt = users[0]
    if nxt.type not in SCALABLE or not graph.tensors[nxt.weight_input].is_const \
            or nxt.data_input != out or nxt.weight_input == out:
        return None
    if _channels_out(graph, op) != _channels_in(graph, nxt):
        return None
    if nxt.type == "DEPTHWISE_CONV_2D" and _channels_out(graph, nxt) != _channels_in(graph, nxt):
        return None  # depth multiplier > 1
    return nxt


def equalization_units(graph: Graph, relu6: str = "relu") -> list[tuple[Op, ...]]:
    """Pairs (A, B) and triples (A, depthwise, C) in topological order, no op twice as a middle."""
    if relu6 not in RELU6_POLICIES:
        raise ValueError(f"relu6 policy must be one of {RELU6_POLICIES}, got {relu6!r}")
    units: list[tuple[Op, ...]] = []
    middles: set[int] = set()
    for op in graph.weighted_ops():
        if op.index in middles:
            continue
        b = next_layer(graph, op, relu6)
        if b is None:
            continue
        c = next_layer(graph, b, relu6) if b.type == "DEPTHWISE_CONV_2D" else None
        if c is not None:
            units.append((op, b, c))
            middles.add(b.index)
        else:
            units.append((op, b))
    return units


def relu6_in(unit: tuple[Op, ...]) -> list[Op]:
    """Ops of ``unit`` (all but the last) whose fused RELU6 sits between scaled layers."""
    return [op for op in unit[:-1] if op.activation == "RELU6"]
