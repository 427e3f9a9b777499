"""verify() catches each broken invariant, and its CLI reports it."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api, verify as verify_mod
from eq_tflite.io import codec as fb


@pytest.fixture(scope="module")
def model7(small_float_tflite, small_calibration) -> bytes:
    return api.quantize(small_float_tflite, small_calibration, bits=7, method="minmax")


def _edit(model_bytes: bytes, fn) -> bytes:
    model = fb.parse_model(model_bytes)
    fn(model, model.subgraphs[0])
    return fb.serialize_model(model)


def _first(model, sg, kind):
    return next(op for op in sg.operators if fb.op_name(model, op) == kind)


def test_clean_model_passes(model7, small_float_tflite, small_calibration):
    report = verify_mod.verify(model7, float_model=small_float_tflite, samples={"serving_default_image:0": small_calibration[:8]})
    assert report.ok, report.summary()
    assert report.bits.weights == 7 and report.quantized_ops == 9
    assert report.cosine > 0.999 and report.samples == 8


def test_weight_beyond_bits(model7):
    def bump(model, sg):
        w = sg.tensors[_first(model, sg, "CONV_2D").inputs[1]]
        q = fb.buffer_array(model, w)
        q.flat[0] = 100
        fb.set_buffer(model, w, q)
    report = verify_mod.verify(_edit(model7, bump))
    assert any("reaches 100 > 63" in e for e in report.errors)


def test_bias_scale_and_zero_point_and_ties(model7):
    def break_all(model, sg):
        op = _first(model, sg, "CONV_2D")
        sg.tensors[op.inputs[2]].quantization.scale[0] *= 1.01
        sg.tensors[op.outputs[0]].quantization.zeroPoint = [100]  # outside 7-bit [-64, 63]
        pool = _first(model, sg, "MAX_POOL_2D")
        sg.tensors[pool.outputs[0]].quantization.scale = [0.5]
    errors = verify_mod.verify(_edit(model7, break_all)).errors
    assert any("bias scale != s_in * s_w" in e for e in errors)
    assert any("zero point 100 outside the 7-bit range" in e for e in errors)
    assert any("MAX_POOL_2D" in e and "tied tensors" in e for e in errors)


def test_cli(tmp_path, capsys, model7):
    good, bad = tmp_path / "good.tflite", tmp_path / "bad.tflite"
    good.write_bytes(model7)
    bad.write_bytes(b"garbage")
    assert verify_mod.main(["verify", str(good)]) == 0
    assert "verify: OK" in capsys.readouterr().out
    assert verify_mod.main(["verify", str(bad)]) == 2
    assert "not a valid .tflite" in capsys.readouterr().err


def test_cli_with_float_model_and_data(tmp_path, capsys, model7, small_float_path, small_calibration_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(model7)
    assert verify_mod.main(["verify", str(model)], str(small_float_path), str(small_calibration_path)) == 0
    assert "vs float on 48 samples: output cosine 0.99" in capsys.readouterr().out


def test_kept_tensor_batches_are_bounded_by_bytes(resnet_float, fmnist_calib):
    # every tensor of a batch stays in the interpreter: batches shrink to the byte bound,
    # and the values are the same as in one big batch
    from eq_tflite import runtime
    from eq_tflite.graph import Graph
    graph = Graph.from_tflite(resnet_float)
    tensors = graph.activation_tensors()[:6]
    x = [fmnist_calib[:10]]
    def read(**kw):
        return [dict(values) for values in runtime.iterate_tensors(resnet_float, x, tensors, **kw)]
    big, small = read(batch_size=10), read(batch_size=10, max_bytes=1)
    assert len(big) == 1 and len(small) == 10
    for t in tensors:
        assert np.array_equal(big[0][t], np.concatenate([b[t] for b in small]))
    stale = list(runtime.iterate_tensors(resnet_float, x, tensors, batch_size=5))
    with pytest.raises(RuntimeError, match="after the next batch"):
        stale[0][tensors[0]]  # values are copied out while their batch is the interpreter's
