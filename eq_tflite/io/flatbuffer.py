"""The only module that reads and writes .tflite bytes.

Uses the schema object API (``ModelT``) and ``flatbuffer_utils`` shipped with
LiteRT (or TensorFlow), never hand-parsed bytes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from eq_tflite.errors import EqTfliteError
from eq_tflite.io.atomic import existing_ancestor, name_max, short as _short, temp_probe
from eq_tflite.io.atomic import write_atomic  # noqa: F401  (re-exported: the model writer)

try:  # LiteRT's copies import without loading TensorFlow (seconds faster).
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
except ImportError:  # pragma: no cover - tf.lite-only environments
    from tensorflow.lite.python import schema_py_generated as schema  # type: ignore
    from tensorflow.lite.tools import flatbuffer_utils  # type: ignore

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
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
    length raises instead of reading stray memory), then :func:`check_model`
    checks what native code would otherwise trust.
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
    if tensor.type not in _TYPE_NAMES:
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


def serialize_model(model: Any) -> bytes:
    """Packs a ``ModelT`` back to .tflite bytes."""
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def check_output_path(path: str | os.PathLike, inputs: tuple = (), what: str = "output") -> Path:
    """Checks, before any work, that :func:`write_atomic` can write ``path``.

    Refuses: an empty path or a name over the file system's limit, an existing
    directory, a parent that is a file, an unwritable location, ``path`` being
    one of ``inputs`` (it would overwrite the user's model or data), and
    ``path`` inside an input that is a directory (a SavedModel: any depth,
    symlinks resolved). Nothing is created: a temp file is probed and removed.
    """
    if str(path) == "":
        raise EqTfliteError(f"empty {what} path")
    p = Path(path)
    if not p.name or p.name in (".", ".."):
        raise EqTfliteError(f"{what} {_short(p)} is not a file name")
    try:
        ancestor = existing_ancestor(p.parent)
        limit = name_max(ancestor)
        if len(os.fsencode(p.name)) > limit:
            raise EqTfliteError(f"{what} file name is {len(os.fsencode(p.name))} bytes long, over the "
                                f"file system's limit of {limit}")
        if p.is_dir():
            raise EqTfliteError(f"{what} {_short(p)} is a directory")
        check_not_inputs(p, inputs, what)
        if not ancestor.is_dir():
            raise EqTfliteError(f"cannot write {what} {_short(p)}: {_short(ancestor)} is a file, "
                                "not a directory")
        temp_probe(p, ancestor)
    except OSError as err:
        raise EqTfliteError(f"cannot write {what} {_short(p)}: {err.strerror or type(err).__name__}") from None
    return p


def check_not_inputs(path: Path, inputs: tuple, what: str = "output") -> None:
    """Refuses ``path`` if it is one of ``inputs`` or inside an input directory."""
    for src in inputs:
        if src is None or isinstance(src, (bytes, bytearray)) or not isinstance(src, (str, os.PathLike)):
            continue
        src = Path(src)
        if _same_path(path, src):
            raise EqTfliteError(f"{what} {_short(path)} is the input {_short(src)}; refusing to "
                                "overwrite it (choose another --output)")
        if _inside(path, src):
            raise EqTfliteError(f"{what} {_short(path)} is inside the input directory {_short(src)}; "
                                "refusing to write into it (choose another --output)")


def _inside(path: Path, directory: Path) -> bool:
    """True if ``path`` lies (at any depth, symlinks resolved) in the existing ``directory``."""
    try:
        if not directory.is_dir():
            return False
        real, folder = os.path.realpath(path), os.path.realpath(directory)
        return real != folder and os.path.commonpath([real, folder]) == folder
    except (OSError, ValueError):
        return False


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


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
    return _TYPE_NAMES.get(tensor_type, str(tensor_type))


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


def read_file(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``; EqTfliteError (one line) for anything but a readable file."""
    if str(path) == "":
        raise EqTfliteError(f"empty {what} path")
    p = Path(path)
    try:
        if p.is_dir():
            raise EqTfliteError(f"{p} is a directory, not a {what}")
        return p.read_bytes()
    except FileNotFoundError:
        raise EqTfliteError(f"no such file: {p}") from None
    except OSError as err:
        raise EqTfliteError(f"cannot read {_short(p)}: {err.strerror or type(err).__name__}") from None

