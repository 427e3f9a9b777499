"""Validation of a decoded model: what TFLite's loader and eq_tflite's stages rely on.

:func:`check_model` runs on every model :func:`eq_tflite.io.codec.parse_model`
decodes, before any native code (TensorFlow, LiteRT) or stage sees it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from eq_tflite.errors import EqTfliteError
from eq_tflite.io.codec import TYPE_NAMES, numpy_dtype, op_name, schema, type_name

#: Largest tensor (bytes) we accept; larger shapes are corruption, not models.
MAX_TENSOR_BYTES = 2 ** 31 - 1


def check_model(model: Any, what: str = "model") -> None:
    """Checks indices, shapes, buffer sizes and quantization parameters of a ``ModelT``.

    Raises EqTfliteError naming the first violation (the invariants TFLite's
    own loader relies on, plus what eq_tflite reads).
    """
    def bad(reason: str) -> EqTfliteError:
        return EqTfliteError(f"{what} is a corrupt .tflite file: {reason}")

    if not model.subgraphs:
        raise EqTfliteError(f"{what} has no subgraphs")
    main = model.subgraphs[0]
    if not _ints(main.inputs) or not _ints(main.outputs):
        raise bad("the main subgraph has no inputs or no outputs")
    buffers = model.buffers or []
    num_codes = len(model.operatorCodes or [])
    for c, code in enumerate(model.operatorCodes or []):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.CUSTOM \
                and not code.customCode:
            raise bad(f"operator code {c} is a custom op without a name")
    for b, buf in enumerate(buffers):
        if buf is not None and (buf.offset or 0) > 1:
            raise bad(f"buffer {b} keeps its data outside the FlatBuffer (models over 2 GB "
                      "are not supported)")
    for g, sg in enumerate(model.subgraphs):
        tensors = sg.tensors or []
        n = len(tensors)
        for t_index, tensor in enumerate(tensors):
            _check_tensor(tensor, f"subgraph {g} tensor {t_index}", len(buffers), buffers, bad)
        for kind, indices in (("input", sg.inputs), ("output", sg.outputs)):
            for i in _ints(indices):
                if not 0 <= i < n:
                    raise bad(f"subgraph {g} {kind} tensor index {i} out of range [0, {n})")
        for o, op in enumerate(sg.operators or []):
            if not 0 <= op.opcodeIndex < num_codes:
                raise bad(f"subgraph {g} op {o} opcode index {op.opcodeIndex} out of range "
                          f"[0, {num_codes})")
            for kind, indices, lowest in (("input", op.inputs, -1), ("output", op.outputs, 0),
                                          ("intermediate", op.intermediates, 0)):
                for i in _ints(indices):
                    if not lowest <= i < n:
                        raise bad(f"subgraph {g} op {o} {kind} tensor index {i} out of range")
        _check_weighted_ops(model, sg, g, bad)
    for s, sig in enumerate(model.signatureDefs or []):
        if not sig.signatureKey:
            raise bad(f"signature {s} has no key")
        _check_utf8(sig.signatureKey, f"signature {s}", bad)
        for m in list(sig.inputs or []) + list(sig.outputs or []):
            if not m.name:
                raise bad(f"signature {s} has an input or output without a name")
            _check_utf8(m.name, f"signature {s} entry", bad)
        if not 0 <= sig.subgraphIndex < len(model.subgraphs):
            raise bad(f"signature {s} subgraph index {sig.subgraphIndex} out of range")
        n = len(model.subgraphs[sig.subgraphIndex].tensors or [])
        for m in list(sig.inputs or []) + list(sig.outputs or []):
            if not 0 <= m.tensorIndex < n:
                raise bad(f"signature {s} tensor index {m.tensorIndex} out of range [0, {n})")
    for m in model.metadata or []:
        if not m.name:  # TFLite's readers compare metadata names without a null check (SIGSEGV)
            raise bad("a metadata entry has no name")
        _check_utf8(m.name, "metadata", bad)
        if not 0 <= m.buffer < len(buffers):
            raise bad(f"metadata buffer index {m.buffer} out of range [0, {len(buffers)})")
    for i in _ints(model.metadataBuffer):
        if not 0 <= i < len(buffers):
            raise bad(f"metadata buffer index {i} out of range [0, {len(buffers)})")


def _brief(values: list, limit: int = 8) -> str:
    """A list for a message: at most ``limit`` entries."""
    if len(values) <= limit:
        return str(list(values))
    return f"[{', '.join(map(str, values[:limit]))}, ... ({len(values)} entries)]"


def _ints(values: Any) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _check_utf8(value: Any, where: str, bad) -> None:
    """LiteRT decodes names as UTF-8 (and fails with a traceback otherwise)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            decoded = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"{where} name is not valid UTF-8") from None
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
            # native code cuts or strips such names, so they no longer match ours
            raise bad(f"{where} name {decoded[:40]!r} contains control characters")


def _check_tensor(tensor: Any, where: str, num_buffers: int, buffers: list, bad) -> None:
    _check_utf8(tensor.name, where, bad)
    if tensor.type not in TYPE_NAMES:
        raise bad(f"{where} has unknown type {tensor.type}")
    shape = _ints(tensor.shape)
    if any(d < 0 for d in shape):
        raise bad(f"{where} has negative dimension in shape {_brief(shape)}")
    if not 0 <= tensor.buffer < max(num_buffers, 1):
        raise bad(f"{where} buffer index {tensor.buffer} out of range [0, {num_buffers})")
    dtype = numpy_dtype(tensor.type)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if dtype is not None and count * np.dtype(dtype).itemsize > MAX_TENSOR_BYTES:
        raise bad(f"{where} shape {_brief(shape)} needs more than {MAX_TENSOR_BYTES} bytes")
    buf = buffers[tensor.buffer] if tensor.buffer < num_buffers else None
    size = 0 if buf is None or buf.data is None else len(buf.data)
    if size and dtype is not None and tensor.sparsity is None \
            and size != count * np.dtype(dtype).itemsize:
        raise bad(f"{where} holds {size} bytes of data but its shape {_brief(shape)} "
                  f"({type_name(tensor.type)}) needs {count * np.dtype(dtype).itemsize}")
    q = tensor.quantization
    if q is None:
        return
    scale, zero = _ints_or_floats(q.scale), _ints(q.zeroPoint)
    if (scale or zero) and len(scale) != len(zero):
        raise bad(f"{where} has {len(scale)} scales but {len(zero)} zero points")
    if type_name(tensor.type) in ("INT8", "UINT8", "INT16") and not scale \
            and (q.scale is not None or q.zeroPoint is not None):
        raise bad(f"{where} ({type_name(tensor.type)}) has empty quantization parameters")
    if len(scale) > 1:
        axis = q.quantizedDimension
        if not 0 <= axis < len(shape) or shape[axis] != len(scale):
            raise bad(f"{where} has {len(scale)} per-channel scales along axis {axis} of "
                      f"shape {_brief(shape)}")


def _ints_or_floats(values: Any) -> list:
    return [] if values is None else list(values)


def _check_weighted_ops(model: Any, sg: Any, g: int, bad) -> None:
    """Quantized weighted ops: every operand quantized, bias length = output channels."""
    from eq_tflite.quant_spec import WEIGHTED  # op layouts (quant_spec does not import back)

    tensors = sg.tensors or []
    for o, op in enumerate(sg.operators or []):
        kind = op_name(model, op)
        if kind not in WEIGHTED:
            continue
        data_pos, w_pos, b_pos, axis = WEIGHTED[kind]
        inputs = _ints(op.inputs)
        if max(data_pos, w_pos) >= len(inputs) or min(inputs[data_pos], inputs[w_pos]) < 0 \
                or not _ints(op.outputs):
            raise bad(f"subgraph {g} op {o} ({kind}) lacks its data or weight input")
        w = tensors[inputs[w_pos]]
        if type_name(w.type) not in ("INT8", "UINT8", "INT16", "INT4"):
            continue
        operands = [("data input", inputs[data_pos]), ("weights", inputs[w_pos])]
        if b_pos < len(inputs) and inputs[b_pos] >= 0:
            operands.append(("bias", inputs[b_pos]))
        for role, i in operands:
            q = tensors[i].quantization
            if q is None or not _ints_or_floats(q.scale) or not _ints(q.zeroPoint):
                raise bad(f"subgraph {g} op {o} ({kind}): quantized weights but its {role} "
                          "has no quantization parameters")
        w_shape = _ints(w.shape)
        if len(operands) == 3 and axis < len(w_shape):
            b_shape = _ints(tensors[operands[2][1]].shape)
            channels = w_shape[axis]
            if int(np.prod(b_shape)) != channels:
                raise bad(f"subgraph {g} op {o} ({kind}): bias shape {_brief(b_shape)} does not match "
                          f"{channels} output channels")
