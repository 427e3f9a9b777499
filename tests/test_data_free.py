"""The data-free path: no random data, the --input_range rule, missing-BN messages,
per-tensor weights and an added bias tensor."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api
from eq_tflite.errors import EqTfliteError
from eq_tflite.evaluation import predict
from eq_tflite.io import codec as fb


def _accuracy(model: bytes, subset) -> float:
    x, y = subset
    return float(np.mean(predict(model, x).argmax(1) == y))


@pytest.fixture
def no_random(monkeypatch):
    """Makes every way of drawing random numbers fail."""
    # Import TensorFlow/Keras first: their modules evaluate ``np.random.RandomState | None`` at
    # import time, which fails once RandomState is patched (the test then depended on test order).
    import keras  # noqa: F401
    import tensorflow  # noqa: F401
    def forbidden(*args, **kwargs):
        raise AssertionError("random data was created")
    for name in ("default_rng", "random", "rand", "randn", "uniform", "normal", "random_sample",
                 "standard_normal", "RandomState"):
        monkeypatch.setattr(np.random, name, forbidden)


def test_data_free_conversion_never_creates_random_data(no_random, keras_examples, fmnist_subset):
    conv = api.convert_model(str(keras_examples["resnet"]), bits=8, input_range=(0.0, 1.0))
    assert conv.plan.steps == ["cross_layer_equalization", "bias_absorption", "dfq",
                               "bias_correction:data_free"]
    assert conv.num_calibration == 0 and conv.report.cosine is None
    # Float accuracy on this subset is 91.9%; measured 92.1%.
    assert _accuracy(conv.model, fmnist_subset) >= 0.90


def test_data_free_quantizer_runs_in_a_child(keras_floats, monkeypatch):
    """TF's quantizer on the data-free path runs in a child process, like the calibrated path's:
    a native crash there is one EqTfliteError line, not a dead caller (README, *How*)."""
    import os
    import signal

    from tensorflow.lite.python import convert as tfl_convert
    caller = os.getpid()

    def crash(*args, **kwargs):
        if os.getpid() == caller:  # in-process: fail the test instead of killing it
            raise RuntimeError("mlir_quantize ran in the caller's process")
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(tfl_convert, "mlir_quantize", crash)
    with pytest.raises(EqTfliteError) as err:
        api.convert_model(keras_floats["resnet"], bits=8, input_range=(0, 1))
    assert str(err.value).startswith("TFLite's int8 quantization crashed in native code (SIGSEGV)")
    assert "\n" not in str(err.value)


def test_data_free_needs_input_range(keras_examples):
    with pytest.raises(EqTfliteError, match="--input_range"):
        api.convert_model(str(keras_examples["resnet"]), bits=8)


@pytest.mark.parametrize("bad", [(1.0, 0.0), "0", (0.0, float("inf")), [(0, 1), (0, 1)]])
def test_bad_input_range(keras_floats, bad):
    with pytest.raises(EqTfliteError, match="--input_range"):
        api.convert_model(keras_floats["resnet"], bits=8, input_range=bad)


@pytest.mark.parametrize("method", ["minmax", "kl", "easyquant"])
def test_data_methods_need_data(keras_floats, method):
    with pytest.raises(EqTfliteError, match="--calibration_data"):
        api.convert_model(keras_floats["resnet"], bits=8, method=method, input_range=(0, 1))


def test_empirical_bias_correction_needs_data(keras_floats):
    with pytest.raises(EqTfliteError, match="empirical needs --calibration_data"):
        api.convert_model(keras_floats["resnet"], bits=8, input_range=(0, 1),
                          bias_correction="empirical")


def _notes(conv) -> str:
    return "\n".join(conv.plan.notes)


def test_savedmodel_has_no_bn_message(examples_dir, fmnist_subset):
    conv = api.convert_model(str(examples_dir / "resnet_fmnist"), bits=8, input_range=(0, 1))
    notes = _notes(conv)
    assert "is a SavedModel, whose BatchNorm TFLite folds: no BN statistics" in notes
    assert "bias absorption skipped: it needs BatchNorm statistics" in notes
    assert "every range is propagated from --input_range" in notes
    assert "E[x] propagated from --input_range" in notes
    assert _accuracy(conv.model, fmnist_subset) >= 0.5  # runs; worse than with BN (documented)


def test_float_tflite_has_no_bn_message(keras_floats, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(keras_floats["resnet"])
    assert "is a float .tflite, whose BatchNorm is folded" in _notes(
        api.convert_model(str(path), bits=8, input_range=(0, 1)))
    assert "float .tflite bytes, whose BatchNorm is folded" in _notes(
        api.convert_model(keras_floats["resnet"], bits=8, input_range=(0, 1)))


def _keras_without_bn():
    import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(6, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(5, use_bias=False)(x))


def test_keras_without_bn_message_and_added_bias():
    conv = api.convert_model(_keras_without_bn(), bits=8, input_range=(0, 1))
    notes = _notes(conv)
    assert "the Keras model has no BatchNorm layer after a conv/dense layer" in notes
    assert "added an all-zero bias tensor to 1 weighted ops" in notes
    # The dense layer had no bias; the shipped file has an int32 one, corrected.
    model = fb.parse_model(conv.model)
    sg = model.subgraphs[0]
    fcs = [op for op in sg.operators if fb.op_name(model, op) == "FULLY_CONNECTED"]
    bias = sg.tensors[fcs[0].inputs[2]]
    assert fb.type_name(bias.type) == "INT32"
    assert np.any(fb.buffer_array(model, bias) != 0)


def test_per_tensor_weights_are_single_scales_and_equal_per_channel(keras_floats, fmnist_subset):
    from eq_tflite import runtime
    conv = api.convert_model(keras_floats["mobilenetv2"], bits=8, input_range=(0, 1),
                             per_tensor_weights=True)
    model = fb.parse_model(conv.model)
    sg = model.subgraphs[0]
    weighted = [op for op in sg.operators
                if fb.op_name(model, op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(weighted) == 21
    for op in weighted:
        assert len(sg.tensors[op.inputs[1]].quantization.scale) == 1
        assert len(sg.tensors[op.inputs[2]].quantization.scale) == 1
    # The same numbers written per channel (all scales equal) run identically in LiteRT.
    for op in weighted:
        for pos in (1, 2):
            t = sg.tensors[op.inputs[pos]]
            n = t.shape[3 if fb.op_name(model, op) == "DEPTHWISE_CONV_2D" and pos == 1 else 0]
            t.quantization.scale = [t.quantization.scale[0]] * n
            t.quantization.zeroPoint = [0] * n
    per_channel = fb.serialize_model(model)
    x = fmnist_subset[0][:100]
    a = predict(conv.model, x)
    b = predict(per_channel, x)
    np.testing.assert_array_equal(a, b)
