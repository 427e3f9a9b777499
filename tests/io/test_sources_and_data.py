"""Model sources (SavedModel, .keras, .h5, .tflite, in-memory) and calibration formats."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api, runtime
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.io import calibration as calib


@pytest.fixture(scope="module")
def two_in_two_out():
    """A multi-input, multi-output Keras model."""
    import keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    a = keras.Input((10, 10, 2), name="left")
    b = keras.Input((6,), name="right")
    x = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu")(a))
    h = L.Concatenate()([x, L.Dense(8, activation="relu")(b)])
    return keras.Model([a, b], [L.Dense(3, name="cls")(h), L.Dense(1, name="reg")(h)])


def _two_in_data(n: int = 24) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"left": rng.random((n, 10, 10, 2), dtype=np.float32),
            "right": rng.normal(size=(n, 6)).astype(np.float32)}


@pytest.mark.parametrize("fmt", ["saved_model", "keras", "h5", "in_memory"])
def test_sources_multi_io(tmp_path, two_in_two_out, fmt):
    if fmt == "saved_model":
        src = tmp_path / "sm"
        two_in_two_out.export(str(src))
    elif fmt in ("keras", "h5"):
        src = tmp_path / f"model.{fmt}"
        two_in_two_out.save(src)
    else:
        src = two_in_two_out
    npz = tmp_path / "calib.npz"
    np.savez(npz, **_two_in_data())
    conv = api.convert_model(src, str(npz), bits=7, method="minmax")
    assert conv.report.ok and conv.report.cosine > 0.99
    interp = runtime.make_interpreter(conv.model)
    assert len(interp.get_input_details()) == 2 and len(interp.get_output_details()) == 2


def test_already_quantized_tflite_is_refused(tmp_path, small_float_tflite, small_calibration):
    path = tmp_path / "int8.tflite"
    path.write_bytes(api.quantize(small_float_tflite, small_calibration, method="minmax"))
    with pytest.raises(EqTfliteError, match="already quantized"):
        api.quantize(str(path), small_calibration, method="minmax")


def test_npz_needs_every_input(two_in_two_out):
    import tensorflow as tf
    flt = bytes(tf.lite.TFLiteConverter.from_keras_model(two_in_two_out).convert())
    specs = calib.input_specs(Graph.from_tflite(flt), api.signature_input_names(flt))
    data = calib.load_calibration(_two_in_data(), specs)
    assert {k: v.shape for k, v in data.items()} == {s.name: (24, *s.shape[1:]) for s in specs}
    with pytest.raises(EqTfliteError, match="no array for input 'right'"):
        calib.load_calibration({"left": _two_in_data()["left"]}, specs)
    with pytest.raises(EqTfliteError, match="has 2 inputs"):
        calib.load_calibration(_two_in_data()["left"], specs)


def test_image_directory(tmp_path, small_float_tflite):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    specs = calib.input_specs(Graph.from_tflite(small_float_tflite))
    data = calib.load_calibration(tmp_path, specs, mean=(0.5,), std=(0.25,))
    x = next(iter(data.values()))
    assert x.shape == (5, 12, 12, 3)
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6 and x.min() < -1.0  # (x/255-0.5)/0.25
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(EqTfliteError, match="cannot decode image"):
        calib.load_calibration(tmp_path, specs)


def test_empty_image_directory(tmp_path, small_float_tflite):
    specs = calib.input_specs(Graph.from_tflite(small_float_tflite))
    with pytest.raises(EqTfliteError, match="holds no images"):
        calib.load_calibration(tmp_path, specs)


def test_converter_failures_become_one_line_errors(monkeypatch, small_float_tflite, small_calibration):
    """Errors raised inside TFLite's calibrator or quantizer reach the user as EqTfliteError."""
    from tensorflow.lite.python import convert as tfl_convert
    from tensorflow.lite.python.optimize import calibrator

    def boom(*args, **kwargs):
        raise RuntimeError("internal converter failure\nwith a long C++ trace")

    monkeypatch.setattr(calibrator.Calibrator, "calibrate", boom)
    with pytest.raises(EqTfliteError, match="^TFLite calibration failed: internal converter failure$"):
        api.quantize(small_float_tflite, small_calibration, method="minmax")
    monkeypatch.undo()
    monkeypatch.setattr(tfl_convert, "mlir_quantize", boom)
    with pytest.raises(EqTfliteError, match="^TFLite int8 quantization failed: internal converter failure$"):
        api.quantize(small_float_tflite, small_calibration, method="minmax")
