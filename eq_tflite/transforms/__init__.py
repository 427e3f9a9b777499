"""Weight-editing transforms that run before scale selection (DFQ, SPIQ).

Each transform edits a :class:`FloatState` (a private copy of the float graph
plus its BatchNorm statistics) and keeps the float function: cross-layer
equalization (``cle``), bias absorption (``bias_absorption``) and SPIQ
rescaling (``spiq``). ``layer_units`` finds the layer pairs and triples they act
on. Transforms never touch FlatBuffer bytes: ``eq_tflite.rewrite.float_model``
writes the edited graph back to a float .tflite.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from eq_tflite.bn_stats import BnStats
from eq_tflite.graph import Graph, Op, Tensor


@dataclass
class FloatState:
    """The float graph being edited, its BN statistics and a record of what changed."""

    graph: Graph
    bn: BnStats | None = None
    notes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    edited: set[str] = field(default_factory=set)  # names of constants whose values changed

    @classmethod
    def of(cls, graph: Graph, bn: BnStats | None) -> "FloatState":
        """A state over private copies of ``graph`` and ``bn``."""
        return cls(copy.deepcopy(graph), bn.copy() if bn is not None else None)

    def data(self, t: int) -> np.ndarray:
        return self.graph.tensors[t].data

    def set_data(self, t: int, value: np.ndarray) -> None:
        tensor = self.graph.tensors[t]
        tensor.data = np.asarray(value, np.float32).reshape(tensor.shape)
        self.edited.add(tensor.name)

    def out_name(self, op: Op) -> str:
        return self.graph.tensors[op.outputs[0]].name

    def bias(self, op: Op) -> int:
        """The op's bias tensor index, adding an all-zero float bias if the converter dropped it."""
        if op.bias_input >= 0:
            return op.bias_input
        w = self.data(op.weight_input)
        n = w.shape[op.channel_axis]
        name = f"{self.graph.tensors[op.weight_input].name}/eq_tflite_bias"
        t = Tensor(len(self.graph.tensors), name, (n,), np.float32, np.zeros(n, np.float32))
        self.graph.tensors.append(t)
        self.graph.by_name[name] = t.index
        from eq_tflite.quant_spec import WEIGHTED
        pos = WEIGHTED[op.type][2]
        while len(op.inputs) <= pos:
            op.inputs.append(-1)
        op.inputs[pos] = t.index
        self.edited.add(name)
        return t.index


def add_missing_biases(state: FloatState) -> int:
    """Gives every weighted op a bias tensor (zeros where the converter dropped it); returns how many."""
    added = 0
    for op in state.graph.weighted_ops():
        if op.bias_input < 0:
            state.bias(op)
            added += 1
    if added:
        state.notes.append(f"added an all-zero bias tensor to {added} weighted ops "
                           "that the converter had left without one")
    return added


# --- channel scaling shared by CLE and SPIQ -------------------------------------

def out_channel_range(op: Op, w: np.ndarray) -> np.ndarray:
    """max |w| per output channel."""
    axes = tuple(i for i in range(w.ndim) if i != op.channel_axis)
    return np.max(np.abs(w), axis=axes).astype(np.float64)


def in_channel_range(op: Op, w: np.ndarray) -> np.ndarray:
    """max |w| per input channel (depthwise: per channel)."""
    axes = tuple(range(w.ndim - 1)) if op.type != "FULLY_CONNECTED" else (0,)
    return np.max(np.abs(w), axis=axes).astype(np.float64)


def scale_outputs(state: FloatState, op: Op, factor: np.ndarray) -> None:
    """Multiplies the op's output channels by ``factor`` (weights, bias and BN stats)."""
    w = state.data(op.weight_input).astype(np.float64)
    shape = [1] * w.ndim
    shape[op.channel_axis] = -1
    state.set_data(op.weight_input, w * factor.reshape(shape))
    if op.bias_input >= 0:
        state.set_data(op.bias_input, state.data(op.bias_input).astype(np.float64) * factor)
    if state.bn is not None:
        state.bn.scale_channels(state.out_name(op), factor)


def scale_inputs(state: FloatState, op: Op, factor: np.ndarray) -> None:
    """Multiplies the op's weights on input channel i by ``factor[i]`` (depthwise: channel i)."""
    w = state.data(op.weight_input).astype(np.float64)
    if op.type == "FULLY_CONNECTED":
        w = w * factor.reshape(1, -1)
    else:
        w = w * factor.reshape(1, 1, 1, -1)
    state.set_data(op.weight_input, w)
