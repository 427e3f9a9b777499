"""Models with dynamic spatial input sizes (``shape_signature`` -1 beyond the batch).

A fully convolutional model converted with ``Input((None, None, 3))`` stores
placeholder sizes (1x1) in its tensors' ``shape`` and -1 in their
``shape_signature``. eq-tflite calibrates it at the data's size: ``at_input_size``
returns the same model with every tensor's ``shape`` set to its size for that
input (LiteRT's own shape inference), while every ``shape_signature`` keeps its
-1 entries. The Python side (graph, methods, simulation) then sees real sizes,
TFLite's int8 conversion still sees the dynamic signature, and so does the
written model: it runs at any input size, as the float model did.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from eq_tflite.errors import EqTfliteError, first_line
from eq_tflite.io import codec as fb


def at_input_size(model_bytes: bytes, input_shapes: Sequence[Sequence[int]]) -> bytes:
    """``model_bytes`` with each tensor's ``shape`` for inputs of ``input_shapes`` (no batch).

    ``shape_signature`` stays as it is (dynamic sizes stay -1 there).
    """
    from eq_tflite import runtime
    interp = runtime.make_interpreter(model_bytes)
    try:
        for d, shape in zip(interp.get_input_details(), input_shapes):
            interp.resize_tensor_input(d["index"], (1, *shape), strict=False)
        interp.allocate_tensors()
        sizes = {d["index"]: tuple(int(v) for v in d["shape"]) for d in interp.get_tensor_details()}
    except (RuntimeError, ValueError) as err:
        raise EqTfliteError(f"the model cannot run at the calibration data's size "
                            f"{' and '.join('x'.join(map(str, s)) for s in input_shapes)}: "
                            f"{first_line(err)}") from None
    model = fb.flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    sg = model.subgraphs[0]
    for i, t in enumerate(sg.tensors):
        shape = sizes.get(i)
        if shape is None or t.shape is None or len(shape) != len(t.shape):
            continue
        if t.shapeSignature is None or not len(t.shapeSignature):
            t.shapeSignature = np.asarray(t.shape, np.int32)  # its size was fixed: keep it so
        t.shape = np.asarray(shape, np.int32)
    return fb.serialize_model(model)


def describe(signature: Sequence[int]) -> str:
    """``(?, ?, 3)`` for a signature without its batch dimension."""
    return "(" + ", ".join("?" if int(v) < 0 else str(int(v)) for v in signature[1:]) + ")"


def size_note(names: Mapping[str, tuple[Sequence[int], Sequence[int]]]) -> str:
    """The summary line: which inputs are dynamic and at which size they were calibrated."""
    parts = [f"{name} {describe(sig)} at {'x'.join(str(v) for v in shape[:-1]) or shape}"
             for name, (sig, shape) in names.items()]
    return ("dynamic input size: calibrated " + "; ".join(parts)
            + " (the data's size); the written model keeps its dynamic signature")
