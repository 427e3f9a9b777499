"""``eq_tflite.verify --float_model`` takes the float model in any format.

A Keras model with an unnamed input is saved as ``.keras`` and exported as a
SavedModel: their TFLite inputs are named differently (``input_layer`` /
``keras_tensor``), so verify matches the samples to each model's inputs by
position when the names differ. One test per (converted-from, float-model) pair.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from eq_tflite import api, verify
from eq_tflite.io import codec as fb

FORMATS = ("keras", "saved_model", "tflite")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 3))  # unnamed: the SavedModel export calls it keras_tensor
    x = keras.layers.Conv2D(6, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    folder = tmp_path_factory.mktemp("formats")
    model.save(folder / "m.keras")
    model.export(str(folder / "sm"), verbose=False)
    (folder / "m.tflite").write_bytes(api.float_model_of(folder / "m.keras"))
    return {"keras": folder / "m.keras", "saved_model": folder / "sm", "tflite": folder / "m.tflite"}


@pytest.fixture(scope="module")
def data(sources) -> Path:
    path = sources["keras"].parent / "x.npy"
    np.save(path, np.random.default_rng(0).random((16, 10, 10, 3), dtype=np.float32))
    return path


@pytest.fixture(scope="module")
def int8_models(sources, data) -> dict[str, Path]:
    out = {}
    for name, src in sources.items():
        path = src.parent / f"q_{name}.tflite"
        path.write_bytes(api.quantize(str(src), np.load(data), bits=8, method="minmax"))
        out[name] = path
    return out


def _input_name(model: bytes) -> str:
    m = fb.parse_model(model)
    return fb.tensor_name(m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]])


def test_formats_name_their_inputs_differently(int8_models):
    names = {k: _input_name(p.read_bytes()) for k, p in int8_models.items()}
    assert names["keras"] != names["saved_model"], names


@pytest.mark.parametrize("converted,float_format",
                         [p for p in itertools.product(FORMATS, FORMATS) if p[0] != p[1]])
def test_verify_float_model_of_another_format(capsys, sources, data, int8_models, converted,
                                              float_format):
    code = verify.main(["verify", str(int8_models[converted])], str(sources[float_format]), str(data))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = next(ln for ln in captured.out.splitlines() if "output cosine" in ln)
    cosine = float(line.split("output cosine ")[1].split(",")[0])
    assert "on 16 samples" in line and cosine > 0.999, line


def test_verify_input_count_mismatch_is_one_line(capsys, sources, int8_models, tmp_path):
    """Two arrays for a one-input model: no positional guess, one error line."""
    path = tmp_path / "two.npz"
    x = np.zeros((2, 10, 10, 3), np.float32)
    np.savez(path, a=x, b=x)
    code = verify.main(["verify", str(int8_models["keras"])], str(sources["saved_model"]), str(path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
