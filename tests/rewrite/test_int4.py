"""Packed INT4 weights: the layout, LiteRT's builtin kernels, verify, and the delegate declining them."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api, runtime
from eq_tflite.io import codec as fb
from eq_tflite.quant_spec import WEIGHTED
from eq_tflite.rewrite.rewriter import INT4_WEIGHT_OPS, pack_int4_weights, unpack_int4_weights
from eq_tflite.verify import same_outputs, verify


def test_pack_unpack_round_trip():
    values = np.array([-8, 7, -1, 0, 1, 3, -5], np.int8)  # odd count: zero-padded
    packed = fb.pack_int4(values)
    assert packed.dtype == np.uint8 and len(packed) == 4
    assert packed[0] == 0x78  # element 0 in the low nibble (-8 = 0x8), element 1 high (7)
    np.testing.assert_array_equal(fb.unpack_int4(packed, (7,)), values)
    rng = np.random.default_rng(0)
    grid = rng.integers(-8, 8, (5, 3, 3, 4)).astype(np.int8)
    np.testing.assert_array_equal(fb.unpack_int4(fb.pack_int4(grid), grid.shape), grid)
    with pytest.raises(ValueError):
        fb.pack_int4(np.array([8]))


@pytest.fixture(scope="module")
def w4_model(small_float_tflite, small_calibration) -> bytes:
    return api.convert_model(small_float_tflite, small_calibration, weight_bits=4,
                             activation_bits=8, method="minmax").model


def _weight_types(model_bytes: bytes) -> dict[str, set[str]]:
    model = fb.parse_model(model_bytes)
    sg = model.subgraphs[0]
    out: dict[str, set[str]] = {}
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind in WEIGHTED:
            out.setdefault(kind, set()).add(fb.type_name(sg.tensors[op.inputs[WEIGHTED[kind][1]]].type))
    return out


def test_builtin_kernels_run_int4_bit_exact(w4_model, small_calibration):
    packed, n = pack_int4_weights(w4_model)
    types = _weight_types(packed)
    assert set(types) == INT4_WEIGHT_OPS and all(t == {"INT4"} for t in types.values())
    assert n == 5
    assert len(packed) < 0.8 * len(w4_model)
    data = {runtime.make_interpreter(w4_model).get_input_details()[0]["name"]: small_calibration}
    assert same_outputs(packed, w4_model, data) == []
    # a real difference is caught
    model = fb.parse_model(packed)
    sg = model.subgraphs[0]
    w = next(sg.tensors[op.inputs[1]] for op in sg.operators if fb.op_name(model, op) == "CONV_2D")
    vals = fb.buffer_array(model, w)
    vals.flat[0] = -vals.flat[0] if vals.flat[0] else 5
    fb.set_int4_buffer(model, w, vals)
    assert same_outputs(fb.serialize_model(model), w4_model, data) != []


def test_verify_reads_int4_weights(w4_model):
    packed, _ = pack_int4_weights(w4_model)
    report = verify(packed)
    assert report.ok, report.summary()
    assert report.int4_tensors == 5  # compared against the int8-container twin
    assert "5 INT4 weight tensors: outputs identical to the int8 container" in report.summary()
    assert verify(w4_model).int4_tensors == 0
    twin, n = unpack_int4_weights(packed)
    assert n == 5 and all(t == {"INT8"} for t in _weight_types(twin).values())
    a, b = fb.parse_model(twin), fb.parse_model(w4_model)
    for ta, tb in zip(a.subgraphs[0].tensors, b.subgraphs[0].tensors):
        va, vb = fb.buffer_array(a, ta), fb.buffer_array(b, tb)
        assert (va is None) == (vb is None) and (va is None or np.array_equal(va, vb))
    # a 5-bit value in an INT4 tensor is flagged against the model's 4-bit width
    model = fb.parse_model(packed)
    sg = model.subgraphs[0]
    w = next(sg.tensors[op.inputs[1]] for op in sg.operators if fb.op_name(model, op) == "CONV_2D")
    vals = fb.buffer_array(model, w)
    vals.flat[0] = -8
    fb.set_int4_buffer(model, w, vals)
    assert any("|weight| reaches 8 > 7" in e for e in verify(fb.serialize_model(model)).errors)


def test_wider_weights_stay_int8(small_float_tflite, small_calibration):
    w6 = api.convert_model(small_float_tflite, small_calibration, bits=6, method="minmax").model
    packed, n = pack_int4_weights(w6)
    assert n == 0 and all(t == {"INT8"} for t in _weight_types(packed).values())


def test_delegate_declines_int4_filters(w4_model, small_calibration):
    """With the delegate loaded, an INT4-packed model stays bit-exact with builtin: it claims no node."""
    from eq_tflite.delegate import DelegateNotBuiltError, delegate_stats, load_delegate
    try:
        d = load_delegate({"policy": "all"})
    except DelegateNotBuiltError:
        pytest.skip("delegate not built")
    packed, _ = pack_int4_weights(w4_model)
    x = small_calibration[:8]
    want = runtime.run_model(runtime.make_interpreter(packed), [x])
    got = runtime.run_model(runtime.make_interpreter(packed, delegates=[d]), [x])
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    stats = delegate_stats(d)
    assert stats["claimed"] == 0, stats
    # the same model in the int8 container is claimed (so the check above can fail)
    d8 = load_delegate({"policy": "all"})
    runtime.run_model(runtime.make_interpreter(w4_model, delegates=[d8]), [x])
    assert delegate_stats(d8)["claimed"] >= 1


def test_rewritten_model_keeps_no_orphan_buffers(w4_model, small_float_tflite, small_calibration):
    from eq_tflite.rewrite.rewriter import read_metadata
    model = fb.parse_model(w4_model)
    used = {0} | {t.buffer for t in model.subgraphs[0].tensors} | {m.buffer for m in model.metadata}
    assert used == set(range(len(model.buffers)))
    assert fb.drop_unused_buffers(model) == 0
    assert read_metadata(w4_model)["weight_bits"] == 4  # metadata buffers remapped correctly
    conv = api.convert_model(small_float_tflite, small_calibration, weight_bits=4, activation_bits=8,
                             method="minmax")
    assert len(conv.model) < len(conv.tflite_int8) + 2048  # TFLite's replaced weights are gone
