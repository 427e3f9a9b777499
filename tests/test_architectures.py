"""The architecture suite's fast subset (issue 16): small hand-built shapes along every path.

Each model is built from ``benchmarks.architectures`` (random seeded weights,
built-in Keras layers only), saved as .keras, and converted in-process along
the suite's four paths with the command line TFLite needed (no allow_float):
EasyQuant at the default 7 bits, min/max at 8 bits, Bit-Split, and the data-free
chain from the input range. Every result must pass verify and run bit-exactly
with the delegate claiming every node it supports. The whole suite (keras.
applications too) is ``tools/benchmark_architectures.py``; it never runs here.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.architectures import ARCHITECTURES, build, calibration_samples  # noqa: E402
from eq_tflite import api, runtime  # noqa: E402
from eq_tflite.io import codec as fb  # noqa: E402
from eq_tflite.resolve import Resolved  # noqa: E402
from eq_tflite.verify import verify  # noqa: E402

#: path -> convert_model keyword arguments (data-free gets the input range, no data)
PATHS = {
    "default": {"bits": 7},
    "minmax": {"method": "minmax", "bits": 8},
    "bitsplit": {"method": "bitsplit", "bits": 7, "method_options": {"bs_rounds": 1}},
    "datafree": {"bits": 7},
}
#: (model, path) pairs: every path on the YOLO head (fixed-range outputs at a CONCATENATION
#: next to EXP and SPLIT_V), and the paths that failed before issue 16 on the others: a
#: DeepLab head (dilated convolutions, a Resizing pooling branch, a Normalization layer),
#: RegNet-style grouped convolutions, a U-Net (bilinear resizing, a sigmoid tied to a
#: STRIDED_SLICE).
CASES = [("yolo_head", p) for p in PATHS] + [
    ("deeplab_head", "default"), ("deeplab_head", "datafree"),
    ("regnet_grouped", "default"), ("regnet_grouped", "bitsplit"), ("unet", "default")]
MODELS = sorted({name for name, _ in CASES})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("architectures")
    return {name: build(name, cache) for name in MODELS}


@pytest.fixture(scope="module")
def converted(built):
    """(model, path) -> Conversion, each converted once. Calibrated paths start from the
    float .tflite (TF's own Keras conversion, done once per model); the data-free path from
    the .keras file, whose BatchNorm statistics it uses."""
    floats, done = {}, {}

    def get(name: str, path: str):
        if (name, path) not in done:
            arch, folder = ARCHITECTURES[name], built[name]
            kwargs = dict(PATHS[path])
            if path == "datafree":
                done[name, path] = api.convert_model(str(folder / "model.keras"),
                                                     input_range=[r for _, r in arch.inputs], **kwargs)
            else:
                if name not in floats:
                    floats[name] = api.float_model_of(str(folder / "model.keras"))
                done[name, path] = api.convert_model(floats[name], calibration_samples(arch)[0],
                                                     num_calibration_samples=32, **kwargs)
        return done[name, path]
    get.floats = floats
    return get


def _bit_exact_with_delegate(model: bytes, x: np.ndarray) -> int:
    from eq_tflite.delegate import delegate_stats, load_delegate
    ref = runtime.run_model(runtime.make_interpreter(model), [x])
    d = load_delegate({"policy": "all"})
    got = runtime.run_model(runtime.make_interpreter(model, delegates=[d]), [x])
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)
    return delegate_stats(d)["claimed"]


@pytest.mark.parametrize("name,path", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_converts_verifies_and_runs_bit_exact(converted, name, path):
    result = converted(name, path)
    report = verify(result.model)
    assert report.ok, report.summary()
    assert not report.float_ops, report.float_ops  # fully int8, as TFLite's own conversion
    claimed = _bit_exact_with_delegate(result.model, calibration_samples(ARCHITECTURES[name])[0][:8])
    assert claimed >= 3  # the convolutions ran on the delegate, not only the builtin kernels


def _tensor(model: bytes, kind: str) -> list:
    m = fb.parse_model(model)
    sg = m.subgraphs[0]
    return [sg.tensors[op.outputs[0]] for op in sg.operators if fb.op_name(m, op) == kind]


def test_yolo_concat_keeps_its_range_and_requantizes_the_sigmoids(built, converted):
    """At 7 bits the concatenation of sigmoid and exp outputs keeps a 7-bit scale that covers
    the exp values (not the logistic's fixed [0, 1)), and each logistic keeps 1/256."""
    result = converted("yolo_head", "default")
    for t in _tensor(result.model, "LOGISTIC"):
        assert (float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])) == (1 / 256, -128)
    (concat,) = _tensor(result.model, "CONCATENATION")
    scale, zp = float(concat.quantization.scale[0]), int(concat.quantization.zeroPoint[0])
    assert -64 <= zp <= 63
    x = calibration_samples(ARCHITECTURES["yolo_head"])[0]
    import keras
    out = np.asarray(keras.models.load_model(built["yolo_head"] / "model.keras")(x[:8]))
    top = (63 + 0.5 - zp) * scale  # values above round beyond the concatenation's 7-bit levels
    assert out.max() > 1.0 and top > 1.0  # exp outputs beyond the sigmoid's range are kept ...
    # ... within EasyQuant's clip budget (0.1% of the calibration values; 8 samples here)
    assert np.mean(out > top) <= 0.002
    assert any("requantized into a concatenation's 7-bit scale" in n for n in result.plan.notes)
    # TFLite's requantize ops stay between each logistic and the concatenation
    assert len(_tensor(result.model, "QUANTIZE")) >= 1 + 3


def test_unet_sigmoid_slice_keeps_fixed_parameters_at_7_bits(converted):
    """A sigmoid's output tied to a STRIDED_SLICE (no requantize in TFLite's model either):
    the slice keeps the logistic's 8-bit parameters at 7 bits, verify accepts them, and the
    summary says so (at 8 bits there is nothing to say)."""
    result = converted("unet", "default")
    (sliced,) = _tensor(result.model, "STRIDED_SLICE")
    assert (float(sliced.quantization.scale[0]), int(sliced.quantization.zeroPoint[0])) == (1 / 256, -128)
    assert any("keep its 8-bit parameters" in n for n in result.plan.notes)
    assert verify(result.model).ok
    assert api.fixed_range_notes(Resolved(result.plan.bits, pinned=["t"]), 8) == []
