"""The .tflite codec: bytes to a ``ModelT`` and back, buffers, INT4 packing, schema names.

The only module that decodes and encodes .tflite bytes. Uses the schema
object API (``ModelT``) and ``flatbuffer_utils`` shipped with LiteRT (or
TensorFlow), never hand-parsed bytes. :func:`parse_model` checks every model
it decodes (``eq_tflite.io.validation``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from eq_tflite.errors import EqTfliteError

try:  # LiteRT's copies import without loading TensorFlow (seconds faster).
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
except ImportError:  # pragma: no cover - tf.lite-only environments
    from tensorflow.lite.python import schema_py_generated as schema  # type: ignore
    from tensorflow.lite.tools import flatbuffer_utils  # type: ignore

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8, schema.TensorType.INT16: np.int16,
    schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64,
    schema.TensorType.BOOL: np.bool_, schema.TensorType.FLOAT16: np.float16,
}
ACTIVATIONS = {v: k for k, v in vars(schema.ActivationFunctionType).items()
               if not k.startswith("_")}


def parse_model(data: bytes, what: str = "model") -> Any:
    """Parses .tflite bytes into a mutable ``ModelT``; EqTfliteError if corrupt.

    The FlatBuffer is decoded by pure-Python code (an out-of-range offset or
    length raises instead of reading stray memory), then
    :func:`eq_tflite.io.validation.check_model` checks what native code would
    otherwise trust.
    """
    data = bytes(data)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise EqTfliteError(f"{what} is not a valid .tflite file (missing 'TFL3' identifier)")
    root = int.from_bytes(data[:4], "little")
    if not 8 <= root <= len(data) - 4:
        raise EqTfliteError(f"{what} is a corrupt .tflite file (root offset {root} outside the "
                            f"{len(data)}-byte file)")
    try:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    except RecursionError:
        raise EqTfliteError(f"{what} is a corrupt .tflite file (nesting too deep)") from None
    except Exception as err:  # flatbuffers raises assorted errors on corruption
        raise EqTfliteError(f"{what} is a corrupt or truncated .tflite file ({type(err).__name__})") from None
    _absent_vectors_as_empty(model)
    _inline_external_buffers(model, data, what)
    from eq_tflite.io.validation import check_model  # it reads the schema helpers below
    check_model(model, what)
    return model


def _inline_external_buffers(model: Any, data: bytes, what: str) -> None:
    """Moves buffers stored after the FlatBuffer (``Buffer.offset``/``size``) into ``Buffer.data``.

    TFLite's converter writes constants that way for models over 2 GB, and
    ai-edge-quantizer does for any size; LiteRT reads both. Inlined, the rest of
    the pipeline sees one layout and serializes an ordinary (< 2 GB) file.
    """
    for b, buf in enumerate(model.buffers or []):
        if buf is None or (buf.offset or 0) <= 1:
            continue
        start, size = int(buf.offset), int(buf.size or 0)
        if size < 0 or start + size > len(data):
            raise EqTfliteError(f"{what} is a corrupt .tflite file: buffer {b} points at bytes "
                                f"[{start}, {start + size}) outside the {len(data)}-byte file")
        buf.data = np.frombuffer(data, np.uint8, size, start).copy()
        buf.offset, buf.size = 0, 0


def _absent_vectors_as_empty(model: Any) -> None:
    """An absent operand list is an empty one, as TFLite's loader reads it.

    FlatBuffers' C++ object API (TFLite's calibrator writes its model with it)
    omits empty vectors, so an op without inputs or outputs arrives with the
    field absent; the Python object API then gives None instead of [].
    """
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            if op.inputs is None:
                op.inputs = np.zeros(0, np.int32)
            if op.outputs is None:
                op.outputs = np.zeros(0, np.int32)
        for field_ in ("inputs", "outputs"):
            if getattr(sg, field_) is None:
                setattr(sg, field_, np.zeros(0, np.int32))


def canonical_bytes(data: bytes, what: str = "model") -> bytes:
    """``data`` checked and re-encoded by the FlatBuffer builder.

    Native code (TensorFlow's calibrator and quantizer, LiteRT) then only sees
    offsets and vector lengths written by the builder, never the file's own.
    """
    return serialize_model(parse_model(data, what))


def serialize_model(model: Any) -> bytes:
    """Packs a ``ModelT`` back to .tflite bytes."""
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_name(model: Any, op: Any) -> str:
    """Builtin op name (e.g. 'CONV_2D') or 'CUSTOM:<code>'."""
    codes = model.operatorCodes or []
    if not 0 <= op.opcodeIndex < len(codes):
        raise EqTfliteError(f"model is corrupt: opcode index {op.opcodeIndex} out of range")
    code = codes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{text(code.customCode)}"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def text(value: bytes | str) -> str:
    """A FlatBuffer string field (bytes in the object API) as str."""
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)


def tensor_name(tensor: Any) -> str:
    return text(tensor.name)


def numpy_dtype(tensor_type: int) -> Any:
    return _NUMPY_TYPES.get(tensor_type)


def type_name(tensor_type: int) -> str:
    return TYPE_NAMES.get(tensor_type, str(tensor_type))


def is_int8_activation(model: Any, tensor: Any) -> bool:
    """True for a non-constant INT8 tensor with per-tensor quantization (an activation)."""
    q = tensor.quantization
    return type_name(tensor.type) == "INT8" and buffer_array(model, tensor) is None \
        and q is not None and q.scale is not None and len(q.scale) == 1


def buffer_array(model: Any, tensor: Any) -> np.ndarray | None:
    """The constant data of ``tensor`` as a shaped numpy array, or None (INT4: unpacked int8)."""
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    if buf is None or buf.data is None or len(buf.data) == 0:
        return None
    shape = tuple(int(s) for s in tensor.shape) if tensor.shape is not None else ()
    if tensor.type == schema.TensorType.INT4:
        return unpack_int4(np.asarray(buf.data, dtype=np.uint8), shape)
    dtype = numpy_dtype(tensor.type)
    if dtype is None:
        return None
    arr = np.frombuffer(np.asarray(buf.data, dtype=np.uint8).tobytes(), dtype=dtype)
    return arr.reshape(shape).copy()


# INT4 constants (TensorType.INT4): the flattened row-major values, two per
# byte, element 2i in the low nibble and 2i+1 in the high nibble (two's
# complement), an odd count padded with a zero nibble. LiteRT's builtin
# CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED unpack this layout.


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Packed INT4 bytes (uint8) of integers in [-8, 7]; ValueError outside."""
    q = np.asarray(values).astype(np.int64).ravel()
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("INT4 values must lie in [-8, 7]")
    if q.size % 2:
        q = np.append(q, 0)
    nib = (q & 0x0F).astype(np.uint8)
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def unpack_int4(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """int8 values of packed INT4 ``data`` (see ``pack_int4``), shaped ``shape``."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    b = np.asarray(data, np.uint8)
    nib = np.stack([b & 0x0F, b >> 4], axis=1).reshape(-1)[:n].astype(np.int8)
    return np.where(nib > 7, nib - 16, nib).astype(np.int8).reshape(shape)


def set_int4_buffer(model: Any, tensor: Any, values: np.ndarray) -> None:
    """Makes ``tensor`` an INT4 constant holding ``values`` (packed, in a new buffer)."""
    buf = schema.BufferT()
    buf.data = pack_int4(values)
    model.buffers.append(buf)
    tensor.buffer = len(model.buffers) - 1
    tensor.type = schema.TensorType.INT4


def drop_unused_buffers(model: Any) -> int:
    """Removes buffers no tensor or metadata refers to (buffer 0 stays); returns how many."""
    used = {0}
    for sg in model.subgraphs:
        used.update(int(t.buffer) for t in sg.tensors)
    used.update(int(m.buffer) for m in model.metadata or [])
    used.update(int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else []))
    keep = [i for i in range(len(model.buffers)) if i in used]
    if len(keep) == len(model.buffers):
        return 0
    new_index = {old: new for new, old in enumerate(keep)}
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = new_index[int(t.buffer)]
    for m in model.metadata or []:
        m.buffer = new_index[int(m.buffer)]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [new_index[int(b)] for b in model.metadataBuffer]
    dropped = len(model.buffers) - len(keep)
    model.buffers = [model.buffers[i] for i in keep]
    return dropped


def set_buffer(model: Any, tensor: Any, array: np.ndarray) -> None:
    """Gives ``tensor`` its own new buffer holding ``array`` (un-shares dedup'd buffers)."""
    buf = schema.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8).copy()
    model.buffers.append(buf)
    tensor.buffer = len(model.buffers) - 1
