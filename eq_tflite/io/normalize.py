"""Stage 1b (load): a float .tflite as shipped becomes a plain float model.

Production files (MediaPipe's, for one) store what TFLite's runtime expands
on load; TensorFlow's calibrator and quantizer, and the rest of eq-tflite, want
plain float32 constants and builtin ops. :func:`normalize_float_tflite` runs
once, right after the file is read and before anything else sees it:

1. operator codes: files from before schema v3a set only
   ``deprecated_builtin_code``; ``builtin_code`` becomes the larger of the two
   (what TFLite's schema prescribes, ``GetBuiltinCode``);
2. sparse constants (TFLite's sparsity format: traversal order, block map,
   DENSE / SPARSE_CSR dimension metadata) are densified, and DENSIFY ops
   dropped: their outputs become the dense constants;
3. float16 constants behind DEQUANTIZE become float32 constants, and the
   DEQUANTIZE ops are dropped;
4. known custom ops with a builtin equivalent are lowered to builtins
   (MediaPipe's ``Convolution2DTransposeBias`` -> TRANSPOSE_CONV with bias);
5. tensors and buffers nothing refers to any more are removed.

Other custom ops are left in place; :func:`check_custom_ops` refuses them with
one line naming them (or keeps them in float with ``allow_float`` when
LiteRT's builtin resolver has a kernel for them).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eq_tflite.errors import EqTfliteError, first_line
from eq_tflite.io import codec as fb
from eq_tflite.io.model import TfliteLike, TfliteModel, as_bytes

schema = fb.schema


@dataclass
class Normalized:
    """What :func:`normalize_float_tflite` changed (counts; all zero: the file was plain)."""

    builtin_codes: int = 0
    densified: int = 0
    float16_expanded: int = 0
    lowered: dict[str, int] = field(default_factory=dict)
    tensors_dropped: int = 0

    def changed(self) -> bool:
        return bool(self.builtin_codes or self.densified or self.float16_expanded or self.lowered)

    def summary(self) -> str:
        """One line for the CLI summary ("" when nothing changed)."""
        parts = []
        if self.float16_expanded:
            parts.append(f"{self.float16_expanded} float16 constants expanded to float32")
        if self.densified:
            parts.append(f"{self.densified} sparse constants densified")
        if self.builtin_codes:
            parts.append(f"{self.builtin_codes} old operator codes filled in")
        for name, n in sorted(self.lowered.items()):
            parts.append(f"{n} {name} lowered to builtins")
        return "; ".join(parts)


def normalize_float_tflite(data: bytes, what: str = "model") -> tuple[bytes, Normalized]:
    """``data`` as a plain float .tflite (see the module docstring) and what changed.

    A file that needs none of the steps comes back re-encoded but otherwise
    unchanged. A malformed sparse tensor or custom op gives an EqTfliteError.
    """
    model = fb.parse_model(data, what)
    done = Normalized()
    done.builtin_codes = fill_builtin_codes(model)
    for g, sg in enumerate(model.subgraphs):
        done.densified += _densify_constants(model, sg, f"{what}: subgraph {g}")
        done.float16_expanded += _expand_float16(model, sg)
        for name, n in _lower_custom_ops(model, sg, f"{what}: subgraph {g}").items():
            done.lowered[name] = done.lowered.get(name, 0) + n
    if done.changed():
        for g, sg in enumerate(model.subgraphs):
            done.tensors_dropped += drop_unused_tensors(model, g)
        fb.drop_unused_buffers(model)
        drop_unused_op_codes(model)
    out = fb.serialize_model(model)
    fb.parse_model(out, f"{what} (normalized)")
    return out, done


# ---------------------------------------------------------------- operator codes


def fill_builtin_codes(model: Any) -> int:
    """Sets ``builtin_code = max(builtin_code, deprecated_builtin_code)``; returns how many changed.

    Old files (schema before v3a) only set the int8 ``deprecated_builtin_code``
    and leave ``builtin_code`` at its default 0 (ADD); readers take the larger.
    ``deprecated_builtin_code`` is kept as the schema asks of writers
    (capped at PLACEHOLDER_FOR_GREATER_OP_CODES).
    """
    changed = 0
    placeholder = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
    for code in model.operatorCodes or []:
        real = max(code.builtinCode, code.deprecatedBuiltinCode)
        if code.builtinCode != real:
            code.builtinCode = real
            changed += 1
        code.deprecatedBuiltinCode = min(real, placeholder)
    return changed


def _op_code(model: Any, builtin: int, version: int) -> int:
    """Index of the operator code for ``builtin`` (added, or its version raised, as needed)."""
    for i, code in enumerate(model.operatorCodes):
        if code.builtinCode == builtin and not code.customCode:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


# ---------------------------------------------------------------- sparse constants


def _ints_of(vector: Any) -> np.ndarray | None:
    """The values of an Int32Vector / Uint16Vector / Uint8Vector union member."""
    if vector is None or getattr(vector, "values", None) is None:
        return None
    return np.asarray(vector.values, dtype=np.int64)


def densify(values: np.ndarray, shape: tuple[int, ...], sparsity: Any, what: str) -> np.ndarray:
    """The dense array of a TFLite sparse tensor.

    ``values`` are the stored (non-zero) elements in traversal order. Level k
    of the traversal walks dimension ``traversal_order[k]``: original
    dimensions first, then the block dimensions (block k splits original
    dimension ``block_map[k]``). A DENSE level has ``dense_size`` entries; a
    SPARSE_CSR level lists, for each position of the level above, the indices
    ``array_indices[array_segments[p]:array_segments[p + 1]]``. Anything
    inconsistent raises EqTfliteError instead of reading out of range.
    """
    def bad(reason: str) -> EqTfliteError:
        return EqTfliteError(f"{what} has malformed sparsity parameters: {reason}")

    rank = len(shape)
    order = [int(v) for v in (sparsity.traversalOrder if sparsity.traversalOrder is not None else [])]
    block_map = [int(v) for v in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    levels = list(sparsity.dimMetadata or [])
    if not order:
        order = list(range(rank))
    if len(order) != rank + len(block_map) or sorted(order) != list(range(len(order))) \
            or len(levels) != len(order):
        raise bad(f"traversal order {order}, {len(block_map)} block dimensions and "
                  f"{len(levels)} dimension entries do not fit shape {list(shape)}")
    if any(not 0 <= b < rank for b in block_map) or len(set(block_map)) != len(block_map):
        raise bad(f"block map {block_map} for rank {rank}")
    if any(order[k] >= rank for k in range(rank)):
        raise bad(f"traversal order {order} visits a block dimension before an original one")
    block_size = [0] * len(block_map)
    for level, dim in enumerate(order):
        if dim >= rank:
            if levels[level].format != schema.DimensionType.DENSE or levels[level].denseSize <= 0:
                raise bad("a block dimension must be DENSE with a positive size")
            block_size[dim - rank] = int(levels[level].denseSize)
    # sizes of each traversal level's dimension (blocked original dims are divided)
    level_size = []
    for dim in order:
        if dim < rank:
            size = shape[dim]
            if dim in block_map:
                b = block_size[block_map.index(dim)]
                if size % b:
                    raise bad(f"dimension {dim} of size {size} is not a multiple of its block {b}")
                size //= b
        else:
            size = block_size[dim - rank]
        level_size.append(size)

    # Walk the levels breadth-first; paths stay in traversal (lexicographic) order.
    pos = np.zeros(1, np.int64)          # position of each path in the current level
    coords = np.zeros((1, 0), np.int64)  # index of each path at every level so far
    for level, meta in enumerate(levels):
        size = level_size[level]
        if meta.format == schema.DimensionType.DENSE:
            if int(meta.denseSize) != size:
                raise bad(f"level {level} dense size {meta.denseSize}, expected {size}")
            idx = np.tile(np.arange(size, dtype=np.int64), len(pos))
            pos = (np.repeat(pos, size) * size + idx)
            coords = np.concatenate([np.repeat(coords, size, axis=0), idx[:, None]], axis=1)
        elif meta.format == schema.DimensionType.SPARSE_CSR:
            seg, ind = _ints_of(meta.arraySegments), _ints_of(meta.arrayIndices)
            if seg is None or ind is None:
                raise bad(f"level {level} is SPARSE_CSR without segments or indices")
            if len(pos) and pos.max() + 1 >= len(seg):
                raise bad(f"level {level} has {len(seg)} segments for position {pos.max()}")
            if np.any(np.diff(seg) < 0) or seg[0] < 0 or seg[-1] > len(ind):
                raise bad(f"level {level} segments are not an increasing range of its "
                          f"{len(ind)} indices")
            if np.any(ind < 0) or np.any(ind >= size):
                raise bad(f"level {level} has an index outside [0, {size})")
            counts = seg[pos + 1] - seg[pos]
            starts = np.repeat(seg[pos], counts)
            within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
                np.cumsum(counts) - counts, counts)
            new_pos = starts + within
            coords = np.concatenate([np.repeat(coords, counts, axis=0), ind[new_pos][:, None]],
                                    axis=1)
            pos = new_pos
        else:
            raise bad(f"level {level} has unknown format {meta.format}")
    if len(pos) != values.size:
        raise bad(f"the traversal visits {len(pos)} elements but the buffer holds {values.size}")
    index = np.zeros((len(pos), rank), np.int64)
    for level, dim in enumerate(order):
        if dim < rank:
            index[:, dim] = coords[:, level]
    for level, dim in enumerate(order):
        if dim >= rank:
            k = dim - rank
            index[:, block_map[k]] = index[:, block_map[k]] * block_size[k] + coords[:, level]
    dense = np.zeros(shape, dtype=values.dtype)
    if len(pos):
        dense[tuple(index.T)] = values.ravel()
    return dense


def _sparse_values(model: Any, tensor: Any) -> np.ndarray | None:
    """The stored elements of a constant sparse tensor (1-D), or None without data."""
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    dtype = fb.numpy_dtype(tensor.type)
    if buf is None or buf.data is None or len(buf.data) == 0 or dtype is None:
        return None
    raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
    if len(raw) % np.dtype(dtype).itemsize:
        return None
    return np.frombuffer(raw, dtype=dtype)


def _densify_constants(model: Any, sg: Any, what: str) -> int:
    """Densifies every sparse constant, and drops DENSIFY ops; returns the densified count."""
    count = 0
    for t_index, tensor in enumerate(sg.tensors or []):
        if tensor.sparsity is None:
            continue
        values = _sparse_values(model, tensor)
        name = f"{what} tensor {t_index} ({fb.tensor_name(tensor)[:60]})"
        if values is None:
            raise EqTfliteError(f"{name} is sparse but not a constant of a known type and size; "
                                "eq-tflite only reads sparse constants")
        shape = tuple(int(s) for s in tensor.shape)
        fb.set_buffer(model, tensor, densify(values, shape, tensor.sparsity, name))
        tensor.sparsity = None
        count += 1
    kept = []
    for op in sg.operators or []:
        if fb.op_name(model, op) == "DENSIFY" and len(op.inputs) == 1 and len(op.outputs) == 1:
            src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            data = fb.buffer_array(model, src)
            if data is not None and dst.type == src.type:
                fb.set_buffer(model, dst, data.reshape([int(s) for s in dst.shape]))
                continue
        kept.append(op)
    sg.operators = kept
    return count


# ---------------------------------------------------------------- float16 constants


def _expand_float16(model: Any, sg: Any) -> int:
    """DEQUANTIZE(float16 constant) -> its float32 output as a constant; returns how many."""
    kept, count = [], 0
    for op in sg.operators or []:
        if fb.op_name(model, op) == "DEQUANTIZE" and len(op.inputs) == 1 and len(op.outputs) == 1:
            src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            data = fb.buffer_array(model, src)
            if src.type == schema.TensorType.FLOAT16 and dst.type == schema.TensorType.FLOAT32 \
                    and data is not None and op.outputs[0] not in list(sg.outputs):
                fb.set_buffer(model, dst, data.astype(np.float32).reshape(
                    [int(s) for s in dst.shape]))
                count += 1
                continue
        kept.append(op)
    sg.operators = kept
    return count


# ---------------------------------------------------------------- custom ops

#: TfLitePadding values in MediaPipe's custom options.
_PADDING = {1: schema.Padding.SAME, 2: schema.Padding.VALID}


def transpose_conv_bias_shape(in_hw: tuple[int, int], kernel_hw: tuple[int, int],
                              strides: tuple[int, int], same: bool) -> tuple[int, int]:
    """Output H, W of MediaPipe's Convolution2DTransposeBias (its Prepare's formula)."""
    out = []
    for size, k, s in zip(in_hw, kernel_hw, strides):
        pad = max(0, k - (size - 1) % s - 1) if same else 0
        out.append(s * (size - 1) + k - pad)
    return out[0], out[1]


def _lower_transpose_conv_bias(model: Any, sg: Any, op: Any, what: str) -> None:
    """Convolution2DTransposeBias(input, weights OHWI, bias) -> TRANSPOSE_CONV with bias.

    MediaPipe's custom options are a TfLiteTransposeConvParams struct (int32
    padding: 1 SAME, 2 VALID; int32 stride_width; int32 stride_height). Its
    kernel pads by ``pad_total // 2`` at the top/left, with ``pad_total`` as
    in ``transpose_conv_bias_shape``; builtin TRANSPOSE_CONV given that output
    shape computes the same padding, so the two agree element for element.
    """
    def bad(reason: str) -> EqTfliteError:
        return EqTfliteError(f"{what}: custom op Convolution2DTransposeBias {reason}")

    opts = bytes(op.customOptions if op.customOptions is not None else b"")
    if len(opts) < 12 or op.inputs is None or len(op.inputs) != 3 or len(op.outputs) != 1:
        raise bad("has unexpected options or operands (want input, weights, bias and "
                  "12 bytes of padding and strides)")
    padding, stride_w, stride_h = struct.unpack("<iii", opts[:12])
    if padding not in _PADDING or stride_w < 1 or stride_h < 1:
        raise bad(f"has padding {padding} / strides {stride_w}x{stride_h}")
    x, w, b = (sg.tensors[i] for i in op.inputs)
    y = sg.tensors[op.outputs[0]]
    w_data, b_data = fb.buffer_array(model, w), fb.buffer_array(model, b)
    if w_data is None or b_data is None or w_data.ndim != 4 or len(x.shape) != 4:
        raise bad("needs constant 4-D weights and bias and a 4-D input")
    if b_data.size != w_data.shape[0] or x.shape[3] != w_data.shape[3]:
        raise bad(f"has weights {list(w_data.shape)}, bias {list(b_data.shape)} and input "
                  f"{list(x.shape)} that do not fit")
    h, wd = transpose_conv_bias_shape((int(x.shape[1]), int(x.shape[2])),
                                      (w_data.shape[1], w_data.shape[2]),
                                      (stride_h, stride_w), padding == 1)
    out_shape = [int(x.shape[0]), h, wd, int(w_data.shape[0])]
    if y.shape is not None and len(y.shape) and [int(s) for s in y.shape] != out_shape:
        raise bad(f"output shape {list(y.shape)} is not the computed {out_shape}")
    if b_data.shape != (w_data.shape[0],):
        fb.set_buffer(model, b, b_data.reshape(-1))
        b.shape = [int(w_data.shape[0])]
    shape_t = schema.TensorT()
    shape_t.name = (fb.tensor_name(y) + "/output_shape").encode()
    shape_t.type = schema.TensorType.INT32
    shape_t.shape = [4]
    fb.set_buffer(model, shape_t, np.asarray(out_shape, np.int32))
    sg.tensors.append(shape_t)
    options = schema.TransposeConvOptionsT()
    options.padding = _PADDING[padding]
    options.strideW, options.strideH = stride_w, stride_h
    options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    op.opcodeIndex = _op_code(model, schema.BuiltinOperator.TRANSPOSE_CONV, 3)  # v3: bias
    op.builtinOptionsType = schema.BuiltinOptions.TransposeConvOptions
    op.builtinOptions = options
    op.customOptions = None
    op.inputs = [len(sg.tensors) - 1, op.inputs[1], op.inputs[0], op.inputs[2]]


#: Custom ops with a builtin lowering: name -> function(model, subgraph, op, what).
LOWERINGS = {"Convolution2DTransposeBias": _lower_transpose_conv_bias}


def _lower_custom_ops(model: Any, sg: Any, what: str) -> dict[str, int]:
    done: dict[str, int] = {}
    for op in sg.operators or []:
        name = fb.op_name(model, op)
        if name.startswith("CUSTOM:") and name[7:] in LOWERINGS:
            LOWERINGS[name[7:]](model, sg, op, what)
            done[name[7:]] = done.get(name[7:], 0) + 1
    return done


def custom_ops(model: TfliteLike) -> list[str]:
    """Names of the custom ops left in a model (sorted, without the CUSTOM: prefix)."""
    model = TfliteModel.of(model).model
    names = {fb.op_name(model, op) for sg in model.subgraphs for op in sg.operators or []}
    return sorted(n[7:] for n in names if n.startswith("CUSTOM:"))


def check_custom_ops(float_model: TfliteLike, allow_float: bool) -> list[str]:
    """Refuses custom ops with one line naming them; returns those kept in float.

    Without ``allow_float`` any custom op is refused (eq-tflite cannot quantize
    what it does not know). With it, a custom op stays in float if LiteRT's
    builtin op resolver (the one TFLite's calibrator uses) has a kernel for it,
    e.g. TFLite_Detection_PostProcess; otherwise nothing could even calibrate
    the model, and it is refused too.
    """
    names = custom_ops(float_model)
    if not names:
        return []
    listed = ", ".join(names)
    if not allow_float:
        raise EqTfliteError(f"the model has custom ops eq-tflite cannot quantize: {listed}; re-run "
                            "with --allow_float to keep them in float (if TFLite's runtime has "
                            "kernels for them)")
    from eq_tflite.runtime import make_interpreter
    try:
        make_interpreter(as_bytes(float_model)).allocate_tensors()
    except Exception as err:  # the resolver names the op it lacks; we name them all
        raise EqTfliteError(f"the model has custom ops that TFLite's runtime has no kernel for, so "
                            f"it cannot even be calibrated: {listed} ({first_line(err, 120)})"
                            ) from None
    return names


# ---------------------------------------------------------------- clean-up


def drop_unused_op_codes(model: Any) -> int:
    """Removes operator codes no op uses (TFLite's resolvers look up every listed code)."""
    used = sorted({int(op.opcodeIndex) for sg in model.subgraphs for op in sg.operators or []})
    if len(used) == len(model.operatorCodes):
        return 0
    new = {old: n for n, old in enumerate(used)}
    for sg in model.subgraphs:
        for op in sg.operators or []:
            op.opcodeIndex = new[int(op.opcodeIndex)]
    dropped = len(model.operatorCodes) - len(used)
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    return dropped


def drop_unused_tensors(model: Any, g: int) -> int:
    """Removes tensors of subgraph ``g`` that no op, subgraph I/O or signature uses."""
    sg = model.subgraphs[g]
    used = set(int(i) for i in list(sg.inputs) + list(sg.outputs))
    for op in sg.operators or []:
        for vec in (op.inputs, op.outputs, op.intermediates):
            used.update(int(i) for i in (vec if vec is not None else []) if i >= 0)
    sigs = [s for s in model.signatureDefs or [] if s.subgraphIndex == g]
    for s in sigs:
        used.update(int(m.tensorIndex) for m in list(s.inputs or []) + list(s.outputs or []))
    keep = [i for i in range(len(sg.tensors)) if i in used]
    if len(keep) == len(sg.tensors):
        return 0
    new = {old: n for n, old in enumerate(keep)}

    def remap(vec: Any) -> Any:
        return vec if vec is None else [new[int(i)] if i >= 0 else int(i) for i in vec]

    for op in sg.operators or []:
        op.inputs, op.outputs, op.intermediates = (remap(op.inputs), remap(op.outputs),
                                                   remap(op.intermediates))
    sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
    for s in sigs:
        for m in list(s.inputs or []) + list(s.outputs or []):
            m.tensorIndex = new[int(m.tensorIndex)]
    dropped = len(sg.tensors) - len(keep)
    sg.tensors = [sg.tensors[i] for i in keep]
    return dropped
