"""The numpy executor against LiteRT: float kernels to ~1e-5, int8 kernels to 1 LSB."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import resolve, runtime, simulate
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph, Op, Tensor
from eq_tflite.grid import BitWidths
from eq_tflite.io import codec as fb
from litert_probe import litert_tensors


def _cnn(batch_size=None):
    """conv+BN+ReLU, residual ADD, depthwise+ReLU6, maxpool, conv, mean, dense, softmax."""
    import keras
    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((12, 12, 3), batch_size=batch_size)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    y = L.ReLU(6.0)(L.DepthwiseConv2D(3, padding="same")(x))
    y = L.Conv2D(8, 1)(y)
    x = L.Add()([x, y])
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(12, 3, strides=2, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Softmax()(L.Dense(10)(x))
    model = keras.Model(inp, out)
    bn = next(l for l in model.layers if isinstance(l, L.BatchNormalization))
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.2, 8), rng.normal(0, 0.2, 8),
                    rng.uniform(0.5, 2.0, 8)])
    return model


def _op_zoo():
    """The other supported ops (fixed batch 1 so the converter emits no shape ops)."""
    import keras
    keras.utils.set_random_seed(4)
    L = keras.layers
    inp = keras.Input((15, 15, 3), batch_size=1)
    a = L.Conv2D(6, 3, strides=2, padding="same", activation="relu6")(inp)
    b = L.Conv2D(6, 3, dilation_rate=2, padding="same")(inp)
    b = L.AveragePooling2D(3, strides=2, padding="same")(b)
    c = L.Conv2DTranspose(4, 3, strides=2, padding="same")(L.Concatenate()([a, b]))
    c = L.Activation("hard_swish")(c)
    d = L.ZeroPadding2D(((1, 0), (0, 1)))(c)
    d = L.LeakyReLU(0.1)(L.DepthwiseConv2D(3, strides=2, depth_multiplier=3)(d))
    g = L.Multiply()([L.Subtract()([L.Activation("sigmoid")(d), L.Activation("tanh")(d)]), d])
    g = L.Conv2DTranspose(5, 2, strides=2, activation="relu")(g)
    g = L.Reshape((64, 5))(L.MaxPooling2D(3, strides=2, padding="same")(g))
    g = L.Lambda(lambda t: keras.ops.clip(t, -1.0, 1.0))(L.Dense(7)(g))
    out = L.Dense(10, activation="tanh")(L.Flatten()(g))
    return keras.Model(inp, out)


def _dynamic_batch():
    """Shape arithmetic emitted for a free batch size (SHAPE, STRIDED_SLICE, PACK)."""
    import keras
    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((6, 6, 2))
    x = L.Conv2DTranspose(3, 3, strides=2, padding="same")(inp)
    x = L.Permute((2, 1))(L.Reshape((144, 3))(x))
    return keras.Model(inp, L.Dense(5)(L.Flatten()(x)))


def _tflite(model, data=None) -> bytes:
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if data is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([d[None]] for d in data)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(conv.convert())


@pytest.fixture(scope="module")
def cnn() -> tuple[Graph, bytes]:
    model = _tflite(_cnn())
    return Graph.from_tflite(model), model


@pytest.mark.parametrize("which", ["cnn", "zoo", "dynamic"])
def test_float_matches_litert_on_every_tensor(which, cnn):
    if which == "cnn":
        graph, model = cnn
    else:
        model = _tflite(_op_zoo() if which == "zoo" else _dynamic_batch())
        graph = Graph.from_tflite(model)
    types = {op.type for op in graph.ops}
    expected = {"cnn": {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D", "MEAN",
                        "FULLY_CONNECTED", "SOFTMAX"},
                "zoo": {"TRANSPOSE_CONV", "AVERAGE_POOL_2D", "CONCATENATION", "HARD_SWISH", "PAD",
                        "LEAKY_RELU", "LOGISTIC", "TANH", "SUB", "MUL", "RESHAPE"},
                "dynamic": {"SHAPE", "STRIDED_SLICE", "PACK", "TRANSPOSE", "TRANSPOSE_CONV"}}[which]
    assert expected <= types
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    x = (np.random.default_rng(0).random((3, *shape), dtype=np.float32) - 0.3) * 3
    tensors = graph.activation_tensors()
    ours = simulate.run(graph, {graph.tensors[graph.inputs[0]].name: x}, tensors, batch_size=2)
    ref = litert_tensors(model, x, tensors)
    for t in tensors:
        assert ours[t].shape == ref[t].shape, graph.tensors[t].name
        err = np.abs(ours[t] - ref[t]).max() / max(np.abs(ref[t]).max(), 1e-6)
        assert err < 1e-5, (graph.tensors[t].name, err)


def test_quantized_ops_match_litert_int8_within_one_lsb():
    """With TFLite's own int8 parameters, each op reproduces its int8 kernel.

    Every op gets LiteRT's own int8 inputs; fixed-point requantization then
    differs from float rounding by at most 1 LSB, on few values. (Chained
    over a network, such 1-LSB differences drift further apart.)
    """
    keras_model = _cnn(batch_size=1)
    rng = np.random.default_rng(1)
    calib = rng.random((16, 12, 12, 3), dtype=np.float32)
    graph = Graph.from_tflite(_tflite(keras_model))
    int8 = _tflite(keras_model, calib)
    model = fb.parse_model(int8)
    sg = model.subgraphs[0]
    qops = [op for op in sg.operators if fb.op_name(model, op) not in ("QUANTIZE", "DEQUANTIZE")]
    assert [fb.op_name(model, op) for op in qops] == [op.type for op in graph.ops]
    quant, weights = simulate.QuantParams(BitWidths(8, 8)), {}
    pairs = {}
    for fop, qop in zip(graph.ops, qops):
        for ft, qt in zip(fop.inputs + fop.outputs, list(qop.inputs) + list(qop.outputs)):
            if ft >= 0:
                pairs[ft] = qt
    pairs[graph.inputs[0]] = sg.operators[0].outputs[0]  # the QUANTIZE output
    for ft, qt in pairs.items():
        q = sg.tensors[qt].quantization
        scale, zp = np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint)
        data = fb.buffer_array(model, sg.tensors[qt])
        if not graph.tensors[ft].is_const:
            quant.activations[ft] = (float(scale[0]), int(zp[0]))
        elif graph.tensors[ft].dtype == np.float32:
            axis = 0 if data.ndim == 1 else next(op.channel_axis for op in graph.weighted_ops()
                                                  if op.weight_input == ft)
            shape = [1] * data.ndim
            shape[axis] = -1
            weights[ft] = (data * scale.reshape(shape)).astype(np.float32)  # exact int8 values
    x = rng.random((4, 12, 12, 3), dtype=np.float32)
    interp = runtime.make_interpreter(int8, preserve_all_tensors=True)
    index = interp.get_input_details()[0]["index"]
    real: dict[int, list[np.ndarray]] = {t: [] for t in quant.activations}
    for n in range(len(x)):
        interp.set_tensor(index, x[n:n + 1])
        interp.invoke()
        for t, (scale, zp) in quant.activations.items():
            q = interp.get_tensor(pairs[t]).astype(np.float64)
            real[t].append(((q - zp) * scale).astype(np.float32))
    ex = simulate.Executor(graph, {graph.tensors[graph.inputs[0]].name: x}, quant, weights)
    for op in graph.ops:
        ex.values.update({t: np.concatenate(real[t]) for t in op.inputs if t in real})
        ex.step(op)
        t = op.outputs[0]
        lsb = np.abs(ex.values[t] - np.concatenate(real[t])) / quant.activations[t][0]
        assert lsb.max() <= 1 + 1e-4, (op.type, lsb.max())
        if op.type != "MEAN":  # TFLite's int8 MEAN rounds its integer sum its own way
            assert np.mean(lsb > 0.5) < 0.05, op.type


def test_unsupported_op_is_named():
    t = [Tensor(0, "x", (1, 4), np.float32), Tensor(1, "y", (1, 4), np.float32)]
    graph = Graph(t, [Op(0, "L2_NORMALIZATION", [0], [1])], [0], [1])
    with pytest.raises(EqTfliteError, match="L2_NORMALIZATION"):
        simulate.Executor(graph, {"x": np.zeros((1, 4), np.float32)})


def test_tied_tensors_share_merged_params(cnn):
    graph, _ = cnn
    pool = next(op for op in graph.ops if op.type == "MAX_POOL_2D")
    groups = resolve.tied_groups(graph)
    assert groups[pool.inputs[0]] == groups[pool.outputs[0]]
    ranges = {t: (-1.0, 1.0) for t in graph.activation_tensors()}
    ranges[pool.outputs[0]] = (-0.5, 3.0)
    params = resolve.activation_params(graph, ranges, 7)
    assert params[pool.inputs[0]] == params[pool.outputs[0]]
    softmax = next(op for op in graph.ops if op.type == "SOFTMAX")
    assert params[softmax.outputs[0]] == (1.0 / 256, -128)


def test_sampled_rows_by_sample_blocks_match_the_whole_window_view(monkeypatch):
    # Linear.rows gathers sampled rows a few samples at a time (no padded copy of the batch);
    # the rows are those of the whole batch's window view, in the positions' order
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 9, 9, 4)).astype(np.float32)
    for op_type, wshape in (("CONV_2D", (6, 3, 3, 4)), ("DEPTHWISE_CONV_2D", (1, 3, 3, 4))):
        op = Op(0, op_type, [0, 1, 2], [3])
        op.options = type("O", (), {"padding": fb.schema.Padding.SAME, "strideH": 2, "strideW": 2,
                                    "dilationHFactor": 1, "dilationWFactor": 1})()
        lin = simulate.Linear(op, wshape, 4)
        lin = simulate.Linear(op, wshape, 4, tuple(lin.windows(x[:1]).shape[1:3]))
        pos = (rng.integers(0, 7, 40), rng.integers(0, 5, 40), rng.integers(0, 5, 40))
        v = lin.windows(x)[pos]
        want = v.reshape(40, -1, 4) if op_type == "DEPTHWISE_CONV_2D" else v.reshape(40, -1)
        monkeypatch.setattr(simulate, "_CHUNK_BYTES", x[:1].nbytes * 2)  # blocks of 2 samples
        got = lin.rows(x, pos)
        assert np.array_equal(got, want)


def test_walk_steps_quantize_in_place_to_the_same_values(cnn):
    # step(op, output=False) (the layer walk) fake-quantizes a weighted op's output in place;
    # every stored tensor is the same as with step(op)
    graph, _ = cnn
    x = {graph.tensors[graph.inputs[0]].name:
         np.random.default_rng(2).random((3, 12, 12, 3), dtype=np.float32)}
    full = simulate.run(graph, x, tensors=graph.activation_tensors())
    quant = simulate.QuantParams(BitWidths(7, 7), {t: (float(np.abs(v).max()) / 60 + 1e-3, 0)
                                                    for t, v in full.items()})
    a = simulate.Executor(graph, x, quant, keep=graph.activation_tensors())
    b = simulate.Executor(graph, x, quant, keep=graph.activation_tensors())
    for op in graph.ops:
        assert a.step(op) is not None and b.step(op, output=False) is None
    for t in graph.activation_tensors():
        assert np.array_equal(a.values[t], b.values[t]), graph.tensors[t].name


def test_set_activation_quantizes_only_its_own_values_in_place(cnn):
    # a walk-stepped weighted output is quantized in place when its range is decided; a model
    # input (the caller's array) is quantized into a copy
    graph, _ = cnn
    x = np.random.default_rng(4).random((2, 12, 12, 3), dtype=np.float32)
    kept = x.copy()
    ex = simulate.Executor(graph, {graph.tensors[graph.inputs[0]].name: x},
                           simulate.QuantParams(BitWidths(7, 7)), keep=graph.inputs)
    first = graph.weighted_ops()[0]
    ex.step(first, output=False)
    out = first.outputs[0]
    produced = ex.values[out]
    ex.set_activation(graph.inputs[0], (0.01, 0))
    ex.set_activation(out, (0.05, 3))
    assert np.array_equal(x, kept) and ex.values[graph.inputs[0]] is not x
    assert ex.values[out] is produced
    assert np.allclose(produced / 0.05 + 3, np.round(produced / 0.05 + 3), atol=1e-3)
