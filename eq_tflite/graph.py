"""The float graph that TFLite will run: ops and tensors of a float .tflite.

The TFLite converter has already folded BatchNorm into the weights and fused
activations into the ops, so scales chosen on this graph are the scales that
ship. Methods read this graph (and may propose edited float weights); they
never touch FlatBuffer bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eq_tflite.io import codec as fb
from eq_tflite.io.model import TfliteLike, TfliteModel
from eq_tflite.quant_spec import WEIGHTED, WEIGHTED_OPS


@dataclass
class Tensor:
    """A tensor of the float graph. ``data`` is set for constants only."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: Any
    data: np.ndarray | None = None
    signature: tuple[int, ...] | None = None  # shape_signature: -1 for a size left open

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class Op:
    """One operator. ``inputs`` holds tensor indices, -1 for an absent optional input."""

    index: int
    type: str
    inputs: list[int]
    outputs: list[int]
    options: Any = None
    activation: str = "NONE"

    # Operands of weighted ops, at the positions of ``quant_spec.WEIGHTED``
    # (TFLite layouts: CONV_2D weights [O, KH, KW, I]; DEPTHWISE_CONV_2D
    # [1, KH, KW, I*M]; FULLY_CONNECTED [O, I]; TRANSPOSE_CONV inputs are
    # (shape, weights, input, bias)).
    @property
    def data_input(self) -> int:
        return self.inputs[WEIGHTED[self.type][0]]

    @property
    def weight_input(self) -> int:
        return self.inputs[WEIGHTED[self.type][1]]

    @property
    def bias_input(self) -> int:
        pos = WEIGHTED[self.type][2]
        return self.inputs[pos] if len(self.inputs) > pos else -1

    @property
    def channel_axis(self) -> int:
        """Axis of the weight tensor that holds output channels."""
        return WEIGHTED[self.type][3]


@dataclass
class Graph:
    """Subgraph 0 of a float .tflite model, in execution (topological) order."""

    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    by_name: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_tflite(cls, model: TfliteLike) -> "Graph":
        """Builds the graph of a float .tflite model (bytes, or a handle: not parsed again)."""
        model = TfliteModel.of(model).model
        sg = model.subgraphs[0]
        tensors = []
        for i, t in enumerate(sg.tensors):
            shape = tuple(int(s) for s in t.shape) if t.shape is not None else ()
            sig = tuple(int(s) for s in t.shapeSignature) \
                if t.shapeSignature is not None and len(t.shapeSignature) else None
            tensors.append(Tensor(i, fb.tensor_name(t), shape, fb.numpy_dtype(t.type),
                                  fb.buffer_array(model, t), sig))
        ops = []
        for i, op in enumerate(sg.operators):
            opts = op.builtinOptions
            act = fb.ACTIVATIONS.get(getattr(opts, "fusedActivationFunction", 0), "NONE")
            ops.append(Op(i, fb.op_name(model, op), [int(x) for x in op.inputs],
                          [int(x) for x in op.outputs], opts, act))
        graph = cls(tensors, ops, [int(x) for x in sg.inputs], [int(x) for x in sg.outputs])
        graph.by_name = {t.name: t.index for t in tensors}
        return graph

    def producer(self, tensor: int) -> Op | None:
        for op in self.ops:
            if tensor in op.outputs:
                return op
        return None

    def consumers(self, tensor: int) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]

    def weighted_ops(self) -> list[Op]:
        """CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV ops with constant weights."""
        return [op for op in self.ops
                if op.type in WEIGHTED_OPS and self.tensors[op.weight_input].is_const]

    def activation_tensors(self) -> list[int]:
        """Non-constant float tensors: graph inputs and op outputs."""
        seen = list(self.inputs)
        for op in self.ops:
            seen.extend(op.outputs)
        return [i for i in dict.fromkeys(seen)
                if i >= 0 and not self.tensors[i].is_const and self.tensors[i].dtype == np.float32]
