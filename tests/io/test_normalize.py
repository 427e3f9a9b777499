"""Float .tflite files as shipped (io.normalize): float16 and sparse constants, old
operator codes, MediaPipe's Convolution2DTransposeBias, other custom ops.

Synthetic models are written in-test with the project's codec; LiteRT, which runs
DEQUANTIZE, DENSIFY and old operator codes itself, is the reference: the
normalized model must give bit-identical outputs. The real MediaPipe files are
used when the mediapipe package is installed (its files are only read).
"""
from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from eq_tflite import api
from eq_tflite.errors import EqTfliteError
from eq_tflite.io import codec as fb
from eq_tflite.io.normalize import custom_ops, normalize_float_tflite
from eq_tflite.runtime import make_interpreter, run_model
from tflite_builder import Builder

S = fb.schema



def _conv_model(weight_ops) -> tuple[bytes, np.ndarray]:
    """x [1,6,6,4] -> CONV_2D (8 filters 3x3, SAME) -> y, weights made by ``weight_ops``."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 3, 4)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0  # sparse enough to compress
    b = Builder()
    b.tensor("x", [1, 6, 6, 4])
    weight_ops(b, w)
    b.tensor("bias", [8], data=rng.normal(size=8).astype(np.float32))
    b.tensor("y", [1, 6, 6, 8])
    opts = S.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = S.Padding.SAME, 1, 1
    b.op(b.code(S.BuiltinOperator.CONV_2D), ["x", "w", "bias"], ["y"],
         S.BuiltinOptions.Conv2DOptions, opts)
    return b.io(["x"], ["y"]), w


def _fc_model(weight_ops, units: int = 8, features: int = 16) -> tuple[bytes, np.ndarray]:
    """x [1,16] -> FULLY_CONNECTED (8 units) -> y, weights made by ``weight_ops``."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(units, features)).astype(np.float32)
    w.reshape(units, -1, 4)[rng.random((units, features // 4)) < 0.5] = 0  # whole 1x4 blocks
    b = Builder()
    b.tensor("x", [1, features])
    weight_ops(b, w)
    b.tensor("y", [1, units])
    b.op(b.code(S.BuiltinOperator.FULLY_CONNECTED), ["x", "w", -1], ["y"],
         S.BuiltinOptions.FullyConnectedOptions, S.FullyConnectedOptionsT())
    return b.io(["x"], ["y"]), w


def _plain(b: Builder, w: np.ndarray) -> None:
    b.tensor("w", w.shape, data=w)


def _float16(b: Builder, w: np.ndarray) -> None:
    b.tensor("w_fp16", w.shape, S.TensorType.FLOAT16, data=w.astype(np.float16))
    b.tensor("w", w.shape)
    b.op(b.code(S.BuiltinOperator.DEQUANTIZE), ["w_fp16"], ["w"])


# -------------------------------------------------- a sparse encoder (test's own, recursive)

def encode_sparse(dense: np.ndarray, order, block_map, formats, index_dtype=np.int32):
    """(stored values, SparsityParametersT) of ``dense`` in TFLite's sparsity format."""
    rank = dense.ndim
    block = {}
    for level, dim in enumerate(order):
        if dim >= rank:
            block[dim - rank] = formats[level][1]
    sizes = []
    for dim in order:
        if dim < rank:
            sizes.append(dense.shape[dim] // block[block_map.index(dim)] if dim in block_map
                         else dense.shape[dim])
        else:
            sizes.append(block[dim - rank])
    n = len(order)
    segments = [[0] for _ in range(n)]
    indices = [[] for _ in range(n)]
    values = []

    def element(idx):
        orig = [0] * rank
        for level, dim in enumerate(order):
            if dim < rank:
                orig[dim] = idx[level]
        for level, dim in enumerate(order):
            if dim >= rank:
                k = dim - rank
                orig[block_map[k]] = orig[block_map[k]] * block[k] + idx[level]
        return dense[tuple(orig)]

    def subtree_nonzero(idx):
        if len(idx) == n:
            return element(idx) != 0
        return any(subtree_nonzero(idx + [i]) for i in range(sizes[len(idx)]))

    def walk(idx):
        level = len(idx)
        if level == n:
            values.append(element(idx))
            return
        kind = formats[level][0]
        children = range(sizes[level]) if kind == "dense" else \
            [i for i in range(sizes[level]) if subtree_nonzero(idx + [i])]
        if kind != "dense":
            indices[level].extend(children)
            segments[level].append(segments[level][-1] + len(children))
        for i in children:
            walk(idx + [i])

    walk([])
    sp = S.SparsityParametersT()
    sp.traversalOrder, sp.blockMap = list(order), list(block_map) or None
    vec_type = {np.int32: (S.SparseIndexVector.Int32Vector, S.Int32VectorT),
                np.uint16: (S.SparseIndexVector.Uint16Vector, S.Uint16VectorT),
                np.uint8: (S.SparseIndexVector.Uint8Vector, S.Uint8VectorT)}[index_dtype]
    sp.dimMetadata = []
    for level, (kind, size) in enumerate(formats):
        d = S.DimensionMetadataT()
        if kind == "dense":
            d.format, d.denseSize = S.DimensionType.DENSE, size
        else:
            d.format = S.DimensionType.SPARSE_CSR
            d.arraySegmentsType = d.arrayIndicesType = vec_type[0]
            d.arraySegments, d.arrayIndices = vec_type[1](), vec_type[1]()
            d.arraySegments.values = list(segments[level])
            d.arrayIndices.values = list(indices[level])
        sp.dimMetadata.append(d)
    return np.asarray(values, dense.dtype), sp


def _sparse(order, block_map, formats, index_dtype=np.int32, storage=np.float32):
    def make(b: Builder, w: np.ndarray) -> None:
        values, sp = encode_sparse(w.astype(storage), order, block_map, formats, index_dtype)
        ttype = S.TensorType.FLOAT16 if storage == np.float16 else S.TensorType.FLOAT32
        b.tensor("w_sparse", w.shape, ttype, data=values, sparsity=sp)
        b.tensor("w_dense", w.shape, ttype)
        b.op(b.code(S.BuiltinOperator.DENSIFY), ["w_sparse"], ["w_dense"])
        if storage == np.float16:
            b.tensor("w", w.shape)
            b.op(b.code(S.BuiltinOperator.DEQUANTIZE), ["w_dense"], ["w"])
        else:
            b.index["w"] = b.index["w_dense"]
    return make


def _outputs(model: bytes, x: np.ndarray, builtin: bool = True) -> list[np.ndarray]:
    return run_model(make_interpreter(model, builtin_kernels=builtin), [x])


def _ops(model: bytes) -> list[str]:
    m = fb.parse_model(model)
    return [fb.op_name(m, op) for op in m.subgraphs[0].operators]


def _weights(model: bytes) -> np.ndarray:
    m = fb.parse_model(model)
    sg = m.subgraphs[0]
    op = sg.operators[-1]
    return fb.buffer_array(m, sg.tensors[op.inputs[1]])


# ---------------------------------------------------------------- float16 and sparse

def test_float16_weights_expanded():
    shipped, w = _conv_model(_float16)
    plain, _ = _conv_model(_plain)
    out, done = normalize_float_tflite(shipped)
    assert done.float16_expanded == 1 and _ops(out) == ["CONV_2D"]
    np.testing.assert_array_equal(_weights(out), w.astype(np.float16).astype(np.float32))
    assert len(fb.parse_model(out).subgraphs[0].tensors) == 4  # the float16 tensor is gone
    x = np.random.default_rng(2).normal(size=(1, 6, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(out, x)[0], _outputs(shipped, x)[0])
    assert normalize_float_tflite(plain)[1].changed() is False


SPARSE_CASES = {
    # MediaPipe's layout: last dimension CSR with uint8 indices
    "csr_last_uint8": _sparse([0, 1, 2, 3], [], [("dense", 8), ("dense", 3), ("dense", 3),
                                                 ("csr", 0)], np.uint8),
    # two CSR levels, uint16 indices, stored as float16 (DENSIFY then DEQUANTIZE)
    "csr_two_levels_fp16": _sparse([0, 1, 2, 3], [], [("dense", 8), ("csr", 0), ("dense", 3),
                                                      ("csr", 0)], np.uint16, np.float16),
    # a permuted traversal order
    "permuted_order": _sparse([3, 0, 1, 2], [], [("dense", 4), ("csr", 0), ("dense", 3),
                                                 ("dense", 3)]),
}


@pytest.mark.parametrize("case", sorted(SPARSE_CASES))
def test_sparse_conv_weights_densified(case):
    shipped, w = _conv_model(SPARSE_CASES[case])
    out, done = normalize_float_tflite(shipped)
    assert done.densified == 1 and _ops(out) == ["CONV_2D"]
    expect = w.astype(np.float16).astype(np.float32) if "fp16" in case else w
    np.testing.assert_array_equal(_weights(out), expect)
    x = np.random.default_rng(3).normal(size=(1, 6, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(out, x)[0], _outputs(shipped, x)[0])


@pytest.mark.parametrize("order,formats", [
    # 1x4 blocks (TFLite's block-sparse FULLY_CONNECTED layout), rows dense, blocks CSR
    ([0, 1, 2], [("dense", 8), ("csr", 0), ("dense", 4)]),
    # column-major (CSC-like) blocks
    ([1, 0, 2], [("dense", 4), ("csr", 0), ("dense", 4)]),
])
def test_block_sparse_fc_weights_densified(order, formats):
    shipped, w = _fc_model(_sparse(order, [1], formats))
    out, done = normalize_float_tflite(shipped)
    assert done.densified == 1 and _ops(out) == ["FULLY_CONNECTED"]
    np.testing.assert_array_equal(_weights(out), w)
    x = np.random.default_rng(4).normal(size=(1, 16)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(out, x)[0], _outputs(shipped, x)[0])


def test_malformed_sparsity_is_one_line():
    shipped, _ = _conv_model(SPARSE_CASES["csr_last_uint8"])
    m = fb.parse_model(shipped)
    t = next(t for t in m.subgraphs[0].tensors if t.sparsity is not None)
    t.sparsity.dimMetadata[3].arrayIndices.values[0] = 200  # outside the dimension
    with pytest.raises(EqTfliteError, match="malformed sparsity parameters: level 3 has an index"):
        normalize_float_tflite(fb.serialize_model(m))


def test_old_operator_codes_filled_in():
    plain, _ = _conv_model(_plain)
    m = fb.parse_model(plain)
    m.operatorCodes[0].builtinCode = 0  # only deprecated_builtin_code (CONV_2D = 3) set
    old = fb.serialize_model(m)
    out, done = normalize_float_tflite(old)
    assert done.builtin_codes == 1
    assert fb.parse_model(out).operatorCodes[0].builtinCode == S.BuiltinOperator.CONV_2D
    x = np.random.default_rng(5).normal(size=(1, 6, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(out, x)[0], _outputs(plain, x)[0])


# ---------------------------------------------------------------- custom ops

def _transpose_conv_bias_reference(x, w, bias, stride, same):
    """MediaPipe's Convolution2DTransposeBias, written out (NHWC input, OHWI weights)."""
    _, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    pads = [max(0, k - (n - 1) % s - 1) if same else 0 for n, k, s in ((h, kh, stride[0]),
                                                                          (wd, kw, stride[1]))]
    oh, ow = stride[0] * (h - 1) + kh - pads[0], stride[1] * (wd - 1) + kw - pads[1]
    full = np.zeros((stride[0] * (h - 1) + kh, stride[1] * (wd - 1) + kw, o))
    for i in range(h):
        for j in range(wd):
            full[i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw] += \
                np.einsum("c,ohwc->hwo", x[0, i, j].astype(np.float64), w.astype(np.float64))
    top, left = pads[0] // 2, pads[1] // 2
    return (full[top:top + oh, left:left + ow] + bias)[None]


def _transpose_conv_bias_model(h, wd, k, stride, same, fp16_weights=True):
    rng = np.random.default_rng(6)
    w = rng.normal(size=(4, k, k, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    pads = [max(0, k - (n - 1) % stride - 1) if same else 0 for n in (h, wd)]
    out_shape = [1, stride * (h - 1) + k - pads[0], stride * (wd - 1) + k - pads[1], 4]
    b = Builder()
    b.tensor("x", [1, h, wd, 3])
    if fp16_weights:
        _float16(b, w)
        w = w.astype(np.float16).astype(np.float32)
    else:
        b.tensor("w", w.shape, data=w)
    b.tensor("bias", [4], data=bias)
    b.tensor("y", out_shape)
    b.op(b.code(S.BuiltinOperator.CUSTOM, "Convolution2DTransposeBias"), ["x", "w", "bias"], ["y"],
         custom=list(struct.pack("<iii", 1 if same else 2, stride, stride)))
    return b.io(["x"], ["y"]), w, bias


@pytest.mark.parametrize("h,wd,k,stride,same", [
    (8, 8, 2, 2, True),    # selfie_segmentation's case: no padding
    (5, 6, 3, 2, True),    # pad_total 0 on H (even), 1 on W
    (5, 4, 4, 2, True),    # pad_total 2 / 3: top/left offsets
    (4, 5, 3, 1, False),   # VALID, stride 1
    (3, 3, 3, 3, True),
])
def test_convolution2d_transpose_bias_lowered(h, wd, k, stride, same):
    shipped, w, bias = _transpose_conv_bias_model(h, wd, k, stride, same)
    assert custom_ops(shipped) == ["Convolution2DTransposeBias"]
    out, done = normalize_float_tflite(shipped)
    assert done.lowered == {"Convolution2DTransposeBias": 1}
    assert _ops(out) == ["TRANSPOSE_CONV"] and custom_ops(out) == []
    x = np.random.default_rng(7).normal(size=(1, h, wd, 3)).astype(np.float32)
    ref = _transpose_conv_bias_reference(x, w, bias, (stride, stride), same)
    for builtin in (True, False):  # LiteRT's builtin kernel and XNNPACK
        y = _outputs(out, x, builtin)[0]
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_lowered_transpose_conv_equals_original_under_xnnpack():
    """XNNPACK runs MediaPipe's custom op itself: the lowered model must match it exactly."""
    shipped, _, _ = _transpose_conv_bias_model(8, 8, 2, 2, True, fp16_weights=False)
    try:
        original = _outputs(shipped, np.zeros((1, 8, 8, 3), np.float32), builtin=False)
    except EqTfliteError:
        pytest.skip("this LiteRT's XNNPACK does not run Convolution2DTransposeBias")
    out, _ = normalize_float_tflite(shipped)
    x = np.random.default_rng(8).normal(size=(1, 8, 8, 3)).astype(np.float32)
    original = _outputs(shipped, x, builtin=False)[0]
    np.testing.assert_array_equal(_outputs(out, x, builtin=False)[0], original)


def _unknown_custom_op_model() -> bytes:
    b = Builder()
    b.tensor("x", [1, 4])
    b.tensor("y", [1, 4])
    b.op(b.code(S.BuiltinOperator.CUSTOM, "MyMagicOp"), ["x"], ["y"])
    return b.io(["x"], ["y"])


@pytest.mark.parametrize("allow_float,message", [
    (False, "the model has custom ops eq-tflite cannot quantize: MyMagicOp; re-run with "
            "--allow_float"),
    (True, "custom ops that TFLite's runtime has no kernel for, so it cannot even be "
           "calibrated: MyMagicOp"),
])
def test_unknown_custom_op_refused_by_name(allow_float, message):
    with pytest.raises(EqTfliteError) as err:
        api.convert_model(_unknown_custom_op_model(), np.zeros((4, 4), np.float32), method="minmax",
                          bits=8, allow_float=allow_float)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the real MediaPipe files

def _mediapipe_modules() -> Path | None:
    spec = importlib.util.find_spec("mediapipe")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "modules"
    return path if path.is_dir() else None


MEDIAPIPE = _mediapipe_modules()
needs_mediapipe = pytest.mark.skipif(
    MEDIAPIPE is None, reason="the mediapipe package (its .tflite files) is not installed; "
                              "pip install --no-deps mediapipe==0.10.14 to run these")


@needs_mediapipe
@pytest.mark.parametrize("rel,kind", [
    ("face_detection/face_detection_short_range.tflite", "float16+old codes"),
    ("face_detection/face_detection_full_range_sparse.tflite", "sparse"),
    ("holistic_landmark/hand_recrop.tflite", "old codes"),
])
def test_mediapipe_file_normalized_runs_identically(rel, kind):
    data = (MEDIAPIPE / rel).read_bytes()
    out, done = normalize_float_tflite(data, rel)
    assert done.changed()
    if "float16" in kind:
        assert done.float16_expanded > 0
    if "sparse" in kind:
        assert done.densified > 0
    if "old codes" in kind:
        assert done.builtin_codes > 0
    assert not {"DEQUANTIZE", "DENSIFY"} & set(_ops(out))
    m = fb.parse_model(out)
    shape = m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]].shape
    x = np.random.default_rng(9).uniform(-1, 1, size=shape).astype(np.float32)
    for a, b in zip(_outputs(data, x), _outputs(out, x)):
        np.testing.assert_array_equal(a, b)


@needs_mediapipe
def test_mediapipe_selfie_segmentation_lowered_equals_xnnpack():
    data = (MEDIAPIPE / "selfie_segmentation/selfie_segmentation.tflite").read_bytes()
    out, done = normalize_float_tflite(data)
    assert done.lowered == {"Convolution2DTransposeBias": 1} and custom_ops(out) == []
    x = np.random.default_rng(10).random((1, 256, 256, 3), dtype=np.float32)
    np.testing.assert_array_equal(_outputs(out, x, builtin=False)[0],
                                  _outputs(data, x, builtin=False)[0])
    y = _outputs(out, x)[0]  # LiteRT's builtin kernels run it too
    assert np.abs(y - _outputs(data, x, builtin=False)[0]).max() < 1e-3


def test_lowered_transpose_conv_runs_batched_one_sample_at_a_time():
    """Its output shape is a constant with batch 1: batched runs fall back to single samples."""
    shipped, _, _ = _transpose_conv_bias_model(4, 4, 2, 2, True)
    out, _ = normalize_float_tflite(shipped)
    x = np.random.default_rng(11).normal(size=(5, 4, 4, 3)).astype(np.float32)
    batched = run_model(make_interpreter(out), [x], batch_size=4)[0]
    single = np.concatenate([_outputs(out, x[i:i + 1])[0] for i in range(5)])
    assert batched.shape == (5, 8, 8, 4)
    np.testing.assert_array_equal(batched, single)


@needs_mediapipe
def test_mediapipe_blazeface_converts_as_shipped():
    """BlazeFace as shipped (float16, old codes, ADD+RELU fused by the quantizer before
    MAX_POOL_2D and channel PADs): min/max converts, verifies, and every tie is exact."""
    path = MEDIAPIPE / "face_detection/face_detection_short_range.tflite"
    x = np.random.default_rng(12).uniform(-1, 1, (8, 128, 128, 3)).astype(np.float32)
    conv = api.convert_model(str(path), x, method="minmax", bits=8)
    assert conv.report.ok and conv.report.float_ops == []
    assert conv.load_notes and "float16 constants expanded" in conv.load_notes[0]
    assert conv.rewrite_log.unmapped == []


def _detection_postprocess_model() -> bytes:
    """Two 1x1 convs (boxes, class scores) into TFLite_Detection_PostProcess, a custom op
    that LiteRT's builtin resolver (and so TF's calibrator) has a kernel for."""
    from flatbuffers import flexbuffers
    rng = np.random.default_rng(13)
    b = Builder()
    b.tensor("x", [1, 4, 4, 3])
    conv = b.code(S.BuiltinOperator.CONV_2D)
    opts = S.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = S.Padding.SAME, 1, 1
    reshape = b.code(S.BuiltinOperator.RESHAPE)
    b.tensor("zero_bias", [4], data=np.zeros(4, np.float32))
    b.tensor("shape", [3], S.TensorType.INT32, data=np.asarray([1, 16, 4], np.int32))
    for name in ("boxes", "scores"):
        b.tensor(f"{name}_w", [4, 1, 1, 3], data=rng.normal(size=(4, 1, 1, 3)).astype(np.float32))
        b.tensor(f"{name}_map", [1, 4, 4, 4])
        b.op(conv, ["x", f"{name}_w", "zero_bias"], [f"{name}_map"], S.BuiltinOptions.Conv2DOptions,
             opts)
        b.tensor(name, [1, 16, 4])
        options = S.ReshapeOptionsT()
        options.newShape = [1, 16, 4]
        b.op(reshape, [f"{name}_map", "shape"], [name], S.BuiltinOptions.ReshapeOptions, options)
    grid = np.linspace(0.1, 0.9, 16)
    b.tensor("anchors", [16, 4], data=np.stack([grid, grid[::-1], np.full(16, 0.2),
                                                 np.full(16, 0.2)], 1).astype(np.float32))
    for name, shape in (("det_boxes", [1, 5, 4]), ("det_classes", [1, 5]), ("det_scores", [1, 5]),
                        ("num_detections", [1])):
        b.tensor(name, shape)
    options = flexbuffers.Dumps({
        "max_detections": 5, "max_classes_per_detection": 1, "detections_per_class": 5,
        "use_regular_nms": False, "nms_score_threshold": 0.0, "nms_iou_threshold": 0.5,
        "num_classes": 3, "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0})
    b.op(b.code(S.BuiltinOperator.CUSTOM, "TFLite_Detection_PostProcess"),
         ["boxes", "scores", "anchors"], ["det_boxes", "det_classes", "det_scores", "num_detections"],
         custom=list(options))
    return b.io(["x"], ["det_boxes", "det_classes", "det_scores", "num_detections"])


def test_custom_op_with_a_litert_kernel_stays_float_with_allow_float():
    model = _detection_postprocess_model()
    x = np.random.default_rng(14).random((8, 4, 4, 3), dtype=np.float32)
    with pytest.raises(EqTfliteError, match="cannot quantize: TFLite_Detection_PostProcess; re-run"):
        api.convert_model(model, x, method="minmax", bits=8)
    conv = api.convert_model(model, x, method="minmax", bits=8, allow_float=True)
    assert conv.report.ok and conv.report.float_ops == ["CUSTOM:TFLite_Detection_PostProcess"]
    assert conv.load_notes == ["custom ops kept in float (--allow_float): TFLite_Detection_PostProcess"]
    assert conv.report.quantized_ops >= 2  # the convs are int8
