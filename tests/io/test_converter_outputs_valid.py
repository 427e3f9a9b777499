"""The validator (io.codec.parse_model, io.validation) accepts what TFLite's own converter writes.

Every conversion already validates TFLite's calibrated model and its int8 model
(``tflite_quantizer``); here the float, calibrated and int8 files of several
architectures are checked one by one. Tie groups: a YOLO-like head's SPLIT_V
outputs, and a BlazeFace-like block whose ADD+RELU the quantizer fuses (the
fused tensor was unmapped and kept TFLite's own, round-tripped scale: one
float32 step off its group, and a bias scale off s_in * s_w).
"""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api
from eq_tflite.io import codec as fb
from eq_tflite import tflite_quantizer as t8


def _deeplab_head():
    """Atrous branch, image-pooling branch (GAP, 1x1 conv, Resizing), concat, upsample."""
    import keras
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, strides=4, padding="same", activation="relu")(inp)
    p = L.GlobalAveragePooling2D(keepdims=True)(x)
    p = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False)(p)))
    p = L.Resizing(8, 8, interpolation="bilinear")(p)
    a = L.Conv2D(8, 3, dilation_rate=2, padding="same", activation="relu")(x)
    y = L.Conv2D(4, 1)(L.Concatenate()([x, p, a]))
    return keras.Model(inp, L.Resizing(32, 32)(y))


def _yolo_head():
    """A detection head: one conv, SPLIT_V into boxes / objectness / classes."""
    import keras
    import tensorflow as tf
    L = keras.layers
    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.Conv2D(9, 1)(x)
    boxes, obj, cls = L.Lambda(lambda t: tf.split(t, [4, 1, 4], axis=-1))(x)
    return keras.Model(inp, [boxes, L.Activation("sigmoid")(obj), L.Softmax()(cls)])


def _unet():
    import keras
    L = keras.layers
    keras.utils.set_random_seed(2)
    inp = keras.Input((16, 16, 3))
    d = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(16, 3, padding="same", activation="relu")(L.MaxPooling2D()(d))
    u = L.UpSampling2D(interpolation="bilinear")(b)
    return keras.Model(inp, L.Conv2D(2, 1)(L.Concatenate()([d, u])))


BUILDERS = {"deeplab_head": _deeplab_head, "yolo_head": _yolo_head, "unet": _unet}


def _float(name: str) -> bytes:
    import tensorflow as tf
    return bytes(tf.lite.TFLiteConverter.from_keras_model(BUILDERS[name]()).convert())


def _data(model: bytes, n: int = 8) -> np.ndarray:
    m = fb.parse_model(model)
    shape = [int(s) for s in m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]].shape[1:]]
    return np.random.default_rng(0).random((n, *shape), dtype=np.float32)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_converter_outputs_pass_the_validator(name, monkeypatch):
    float_model = _float(name)
    fb.parse_model(float_model, f"{name} float")
    calibrated = []
    check = t8._check_ranges_finite

    def keep(model: bytes) -> None:  # runs in the conversion's child: record via its result
        calibrated.append(model)
        check(model)
    monkeypatch.setattr(t8, "_check_ranges_finite", keep)
    x = _data(float_model)
    int8 = t8._calibrate_and_quantize(float_model, {"x": x}, ["x"], False)
    assert len(calibrated) == 1
    for what, data in (("calibrated", calibrated[0]), ("int8", int8)):
        model = fb.parse_model(data, f"{name} {what}")
        assert len(model.subgraphs[0].operators) > 0


def test_absent_operand_lists_read_as_empty(small_float_tflite):
    """FlatBuffers' C++ object API omits empty vectors; TFLite's loader reads them as empty."""
    m = fb.parse_model(small_float_tflite)
    m.subgraphs[0].operators[0].intermediates = None
    m.subgraphs[0].operators[-1].outputs = None  # written without the vector at all
    back = fb.parse_model(fb.serialize_model(m))
    assert list(back.subgraphs[0].operators[-1].outputs) == []


def test_yolo_head_ties_are_bit_identical():
    """SPLIT_V outputs (and every same-scale group) get one (scale, zero point), bit for bit."""
    float_model = _float("yolo_head")
    x = _data(float_model, 16)
    conv = api.convert_model(float_model, x, method="minmax", bits=8)
    assert conv.report.ok
    m = fb.parse_model(conv.model)
    sg = m.subgraphs[0]
    split = [op for op in sg.operators if fb.op_name(m, op) in ("SPLIT_V", "SPLIT")]
    assert split
    for op in split:
        tied = [sg.tensors[i] for i in [op.inputs[-1] if fb.op_name(m, op) == "SPLIT" else
                                        op.inputs[0]] + list(op.outputs)]
        params = {(np.float32(t.quantization.scale[0]).tobytes(), int(t.quantization.zeroPoint[0]))
                  for t in tied}
        assert len(params) == 1


def _blazeface_block() -> bytes:
    """BlazeFace's pattern as MediaPipe ships it: ADD and RELU as separate float ops, then
    MAX_POOL_2D and a channel PAD; TFLite's quantizer fuses ADD+RELU into one tensor named
    "relu;add", a name the float graph does not have."""
    from tflite_builder import Builder
    S = fb.schema
    rng = np.random.default_rng(3)
    b = Builder()
    b.tensor("x", [1, 8, 8, 4])

    def conv(name, src, cin, cout):
        b.tensor(f"{name}_w", [cout, 3, 3, cin], data=rng.normal(0, 0.5, (cout, 3, 3, cin)).astype(np.float32))
        b.tensor(f"{name}_b", [cout], data=rng.normal(0, 0.1, cout).astype(np.float32))
        b.tensor(name, [1, 8, 8, cout] if name != "head" else [1, 4, 4, cout])
        opts = S.Conv2DOptionsT()
        opts.padding, opts.strideW, opts.strideH = S.Padding.SAME, 1, 1
        b.op(codes["conv"], [src, f"{name}_w", f"{name}_b"], [name], S.BuiltinOptions.Conv2DOptions, opts)

    codes = {"conv": b.code(S.BuiltinOperator.CONV_2D), "add": b.code(S.BuiltinOperator.ADD),
             "relu": b.code(S.BuiltinOperator.RELU), "pool": b.code(S.BuiltinOperator.MAX_POOL_2D),
             "pad": b.code(S.BuiltinOperator.PAD)}
    conv("c1", "x", 4, 4)
    conv("c2", "c1", 4, 4)
    b.tensor("add", [1, 8, 8, 4])
    b.op(codes["add"], ["x", "c2"], ["add"], S.BuiltinOptions.AddOptions, S.AddOptionsT())
    b.tensor("relu", [1, 8, 8, 4])
    b.op(codes["relu"], ["add"], ["relu"])
    b.tensor("pool", [1, 4, 4, 4])
    pool = S.Pool2DOptionsT()
    pool.padding, pool.strideW, pool.strideH, pool.filterWidth, pool.filterHeight = \
        S.Padding.VALID, 2, 2, 2, 2
    b.op(codes["pool"], ["relu"], ["pool"], S.BuiltinOptions.Pool2DOptions, pool)
    b.tensor("pads", [4, 2], S.TensorType.INT32,
             data=np.asarray([[0, 0], [0, 0], [0, 0], [0, 4]], np.int32))
    b.tensor("padded", [1, 4, 4, 8])
    b.op(codes["pad"], ["pool", "pads"], ["padded"], S.BuiltinOptions.PadOptions, S.PadOptionsT())
    conv("head", "padded", 8, 6)
    return b.io(["x"], ["head"])


@pytest.mark.parametrize("method,bits", [("minmax", 8), ("easyquant", 7)])
def test_fused_tensors_share_their_group_scale(method, bits):
    """The fused "relu;add" tensor is the RELU output: it takes the plan's numbers, so
    MAX_POOL_2D and PAD stay bit-identical and the head conv's bias scale is s_in * s_w."""
    float_model = _blazeface_block()
    x = np.random.default_rng(4).normal(size=(24, 8, 8, 4)).astype(np.float32)
    conv = api.convert_model(float_model, x, method=method, bits=bits)
    assert conv.report.ok, conv.report.summary()
    assert conv.rewrite_log.unmapped == []
    m = fb.parse_model(conv.model)
    sg = m.subgraphs[0]
    fused = [t for t in sg.tensors if ";" in fb.tensor_name(t)]
    assert fused and conv.rewrite_log.mapping[sg.tensors.index(fused[0])] == "relu"
    for op in sg.operators:
        if fb.op_name(m, op) in ("MAX_POOL_2D", "PAD"):
            a, b = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            assert np.float32(a.quantization.scale[0]).tobytes() == \
                np.float32(b.quantization.scale[0]).tobytes()
