"""Writes an edited float graph (transforms' weights, added biases, activations) back to .tflite bytes.

The edited float model is what the rest of the pipeline runs on: TFLite's own
int8 conversion, activation statistics, the methods and the rewriter all see
the same graph.
"""
from __future__ import annotations

import numpy as np

from eq_tflite.graph import Graph
from eq_tflite.io import codec as fb

_ACTIVATION_CODES = {name: code for code, name in fb.ACTIVATIONS.items()}


def write_float_graph(float_model: bytes, graph: Graph) -> bytes:
    """``float_model`` with ``graph``'s constants, op inputs and fused activations."""
    model = fb.parse_model(float_model)
    sg = model.subgraphs[0]
    for t in graph.tensors[:len(sg.tensors)]:
        if t.data is None or t.dtype != np.float32:
            continue
        old = fb.buffer_array(model, sg.tensors[t.index])
        if old is None or not np.array_equal(old, t.data):
            fb.set_buffer(model, sg.tensors[t.index], np.asarray(t.data, np.float32))
    for t in graph.tensors[len(sg.tensors):]:
        new = fb.schema.TensorT()
        new.shape = np.asarray(t.shape, np.int32)
        new.type = fb.schema.TensorType.FLOAT32
        new.name = t.name
        sg.tensors.append(new)
        fb.set_buffer(model, new, np.asarray(t.data, np.float32))
    for op, fop in zip(sg.operators, graph.ops):
        op.inputs = np.asarray(fop.inputs, np.int32)
        opts = op.builtinOptions
        if opts is not None and hasattr(opts, "fusedActivationFunction"):
            opts.fusedActivationFunction = _ACTIVATION_CODES[fop.activation]
    return fb.serialize_model(model)
