"""--output_range: a model output quantized over the user's range (eq_tflite/output_ranges.py)."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api
from eq_tflite.errors import EqTfliteError
from eq_tflite.runtime import make_interpreter, run_model


@pytest.fixture(scope="module")
def two_outputs():
    """A small CNN with raw logits (``logits``) and their softmax (``probs``) as outputs."""
    import keras
    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = L.GlobalAveragePooling2D()(x)
    logits = L.Dense(6, name="logits", kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    probs = L.Softmax(name="probs")(logits)
    model = keras.Model(inp, {"logits": logits, "probs": probs})
    data = np.random.default_rng(0).random((40, 8, 8, 3), dtype=np.float32)
    from eq_tflite.io.sources import float_model_of
    return float_model_of(model, []), data  # float .tflite bytes: converted once for every test


def _logits_index(conv: api.Conversion, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float logits, int8 model logits) on ``data``: the output that is not a softmax."""
    ref = run_model(make_interpreter(conv.float_model), [data])
    out = run_model(make_interpreter(conv.model), [data])
    i = next(k for k, r in enumerate(ref) if not np.allclose(r.sum(-1), 1.0, atol=1e-3))
    return ref[i], out[i]


def test_output_range_sets_the_grid(two_outputs):
    model, data = two_outputs
    base = api.convert_model(model, data, bits=8, method="minmax")
    ref, out_base = _logits_index(base, data)
    assert ref.min() < -0.7 and ref.max() > 0.7          # the calibrated range is wider than [-0.5, 0.5]
    conv = api.convert_model(model, data, bits=8, method="minmax", output_range=["logits=-0.5,0.5"])
    ref, out = _logits_index(conv, data)
    step = 1.0 / 255  # the zero point is nudged so that 0 is a level: the ends move by < 1 step
    assert out.min() >= -0.5 - step and out.max() <= 0.5 + step
    assert np.allclose(out / step, np.round(out / step), atol=1e-3)
    inside = np.abs(ref) < 0.45
    assert inside.sum() > 20
    # the output's grid step: 1/255 instead of the calibrated range / 255 (about 3x coarser)
    assert np.diff(np.unique(out)).min() == pytest.approx(step, rel=1e-3)
    assert np.diff(np.unique(out_base)).min() > 2.5 * step
    assert np.abs(out - ref)[inside].mean() < 2 * step
    assert any("output logits: range [-0.5, 0.5]" in n for n in conv.plan.notes)


@pytest.mark.parametrize("spec, message", [
    (["nope=-1,1"], "has no output 'nope'"),
    (["probs=-1,1"], "scale fixed by the int8 spec"),
    (["logits=1,-1"], "finite LO < HI"),
    (["logits=a,b"], "two numbers"),
    (["logits"], "NAME=LO,HI"),
])
def test_output_range_refusals(two_outputs, spec, message):
    model, data = two_outputs
    with pytest.raises(EqTfliteError, match=message):
        api.convert_model(model, data, bits=8, method="minmax", output_range=spec)
