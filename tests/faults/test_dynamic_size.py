"""A fully convolutional model with dynamic height and width is calibrated at the data's size.

Before, 24x20 data was refused ("expected (N, 1, 1, 3)": the placeholder sizes
of the model's ``shape``). Now the pipeline runs at the data's size, the
summary says so, and the written model keeps its dynamic signature: it runs at
any size and agrees with the float model there.
"""
from __future__ import annotations

import numpy as np
import pytest
from absl import flags

from eq_tflite import api, convert, runtime
from eq_tflite.io import codec as fb
from eq_tflite.metrics import mean_cosine


@pytest.fixture(scope="module")
def fcn(tmp_path_factory):
    import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1)(x))
    folder = tmp_path_factory.mktemp("fcn")
    (folder / "fcn.tflite").write_bytes(api.float_model_of(model))
    np.save(folder / "x.npy", np.random.default_rng(0).random((16, 24, 20, 3), dtype=np.float32))
    return folder


def run_cli(args):
    flags.FLAGS.unparse_flags()
    return convert.main(flags.FLAGS(["eq-tflite", *args, "--noprogress"]))


def _io_signatures(model: bytes):
    m = fb.parse_model(model)
    sg = m.subgraphs[0]
    return [tuple(int(v) for v in sg.tensors[i].shapeSignature) for i in (*sg.inputs, *sg.outputs)]


def test_dynamic_fcn_calibrates_at_the_data_size(capsys, fcn):
    out = fcn / "q.tflite"
    assert run_cli([str(fcn / "fcn.tflite"), "--calibration_data", str(fcn / "x.npy"),
                    "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dynamic input size: calibrated image (?, ?, 3) at 24x20 (the data's size); the written " \
           "model keeps its dynamic signature" in text, text
    model = out.read_bytes()
    assert _io_signatures(model) == [(-1, -1, -1, 3), (-1, -1, -1, 4)]
    # it runs at another size and agrees with the float model there
    x = np.random.default_rng(1).random((4, 12, 16, 3), dtype=np.float32)
    got = runtime.run_model(runtime.make_interpreter(model), [x])[0]
    want = runtime.run_model(runtime.make_interpreter((fcn / "fcn.tflite").read_bytes()), [x])[0]
    assert got.shape == (4, 12, 16, 4)
    assert mean_cosine(want.reshape(4, -1), got.reshape(4, -1)) > 0.995


def test_dynamic_fcn_still_checks_the_fixed_sizes(capsys, fcn, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 24, 20, 5), np.float32))
    assert run_cli([str(fcn / "fcn.tflite"), "--calibration_data", str(bad),
                    "--output", str(tmp_path / "q.tflite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: calibration data for 'image' has shape (4, 24, 20, 5), expected " \
                      "(N, ?, ?, 3)", err
