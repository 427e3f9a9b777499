"""The rewriter on a small real model: b-bit ranges, exact bias scales, ties, fixed scales."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api, grid, runtime
from eq_tflite.graph import Graph
from eq_tflite.io import codec as fb
from eq_tflite.plan import Plan
from eq_tflite.rewrite import apply_plan
from eq_tflite.quant_spec import WEIGHTED
from eq_tflite.rewrite.rewriter import read_metadata


def _ops(model):
    sg = model.subgraphs[0]
    return [(fb.op_name(model, op), op) for op in sg.operators]


def _quant(t):
    return float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])


@pytest.fixture(scope="module", params=[8, 7, 6, 4])
def converted(request, small_float_tflite, small_calibration):
    return api.convert_model(small_float_tflite, small_calibration, bits=request.param, method="minmax")


def test_weights_requantized_from_float_in_b_bit_range(converted):
    bits = converted.plan.bits
    model = fb.parse_model(converted.model)
    graph = Graph.from_tflite(converted.float_model)
    sg = model.subgraphs[0]
    checked = biases = 0
    for kind, op in _ops(model):
        if kind not in WEIGHTED:
            continue
        data_pos, w_pos, b_pos, axis = WEIGHTED[kind]
        w_t = sg.tensors[op.inputs[w_pos]]
        q = fb.buffer_array(model, w_t).astype(np.int32)
        s_w = np.asarray(w_t.quantization.scale, np.float64)
        w_float = graph.tensors[graph.by_name[fb.tensor_name(w_t)]].data if \
            fb.tensor_name(w_t) in graph.by_name else None
        red = tuple(i for i in range(q.ndim) if i != axis)
        # Absmax scales: every live channel reaches exactly +-qmax, none beyond.
        assert np.abs(q).max(axis=red).max() == bits.weight_qmax
        assert np.all(np.abs(q).max(axis=red) == bits.weight_qmax)
        if w_float is not None:  # requantized from float, not from the int8 values
            shape = [1] * q.ndim
            shape[axis] = -1
            expect = np.clip(np.round(w_float / s_w.astype(np.float32).astype(np.float64).reshape(shape)),
                             -bits.weight_qmax, bits.weight_qmax)
            np.testing.assert_array_equal(q, expect)
        checked += 1
        if b_pos >= len(op.inputs) or op.inputs[b_pos] < 0:
            continue  # the converter drops all-zero biases
        # Bias: int32, scale exactly float32(s_in * s_w[c]), zero point 0.
        b_t = sg.tensors[op.inputs[b_pos]]
        s_in = np.float64(sg.tensors[op.inputs[data_pos]].quantization.scale[0])
        np.testing.assert_array_equal(np.asarray(b_t.quantization.scale, np.float32),
                                      (s_in * s_w).astype(np.float32))
        assert fb.type_name(b_t.type) == "INT32" and set(b_t.quantization.zeroPoint) == {0}
        biases += 1
    assert (checked, biases) == (5, 4)  # 3 convs + depthwise + dense; the dense has a zero bias, dropped


def test_activations_zero_points_ties_and_fixed_scales(converted):
    bits = converted.plan.bits
    model = fb.parse_model(converted.model)
    sg = model.subgraphs[0]
    kinds = dict.fromkeys(k for k, _ in _ops(model))
    assert {"MAX_POOL_2D", "RESHAPE", "SOFTMAX"} <= set(kinds)
    for kind, op in _ops(model):
        out = sg.tensors[op.outputs[0]]
        if kind == "SOFTMAX":
            assert _quant(out) == (pytest.approx(1 / 256), -128)
        elif kind in ("MAX_POOL_2D", "RESHAPE"):
            assert _quant(sg.tensors[op.inputs[0]]) == _quant(out)
        elif fb.type_name(out.type) == "INT8":
            scale, zp = _quant(out)
            assert bits.act_qmin <= zp <= bits.act_qmax
    # A tensor the plan covers gets exactly the grid's parameters.
    graph = Graph.from_tflite(converted.float_model)
    conv_out = graph.tensors[graph.weighted_ops()[0].outputs[0]].name
    t = next(t for t in sg.tensors if fb.tensor_name(t) == conv_out)
    assert _quant(t) == grid.activation_params(*converted.plan.activation_ranges[conv_out],
                                               bits.activations)


def test_rewritten_constants_have_own_buffers(converted):
    model = fb.parse_model(converted.model)
    sg = model.subgraphs[0]
    used = [t.buffer for t in sg.tensors if fb.buffer_array(model, t) is not None]
    assert len(used) == len(set(used))


def test_signatures_and_metadata_survive(converted):
    model = fb.parse_model(converted.model)
    assert [s.signatureKey for s in model.signatureDefs] == [b"serving_default"]
    names = {m.name for m in model.metadata}
    assert {b"min_runtime_version", b"eq_tflite"} <= names
    meta = read_metadata(converted.model)
    assert meta["weight_bits"] == converted.plan.bits.weights and meta["method"] == "minmax"
    interp = runtime.make_interpreter(converted.model)
    assert list(interp.get_signature_list()) == ["serving_default"]


def test_minmax_8bit_close_to_tflite_int8(small_float_tflite, small_calibration):
    conv = api.convert_model(small_float_tflite, small_calibration, bits=8, method="minmax")
    x = small_calibration[:16]
    ours = runtime.run_model(runtime.make_interpreter(conv.model), [x])[0]
    theirs = runtime.run_model(runtime.make_interpreter(conv.tflite_int8), [x])[0]
    ref = runtime.run_model(runtime.make_interpreter(conv.float_model), [x])[0]
    # Same grid at 8 bits: the two int8 models differ by a few output LSBs at most,
    # and ours is no further from float than TFLite's.
    assert np.abs(ours - theirs).max() <= 4 / 256
    assert np.abs(ours - ref).mean() <= 1.5 * np.abs(theirs - ref).mean() + 1e-6


def test_custom_metadata_of_source_is_kept(small_float_tflite, small_calibration):
    model = fb.parse_model(small_float_tflite)
    buf = fb.schema.BufferT()
    buf.data = np.frombuffer(b"labels: a,b,c", np.uint8).copy()
    model.buffers.append(buf)
    meta = fb.schema.MetadataT()
    meta.name, meta.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata.append(meta)
    out = api.quantize(fb.serialize_model(model), small_calibration, bits=7, method="minmax")
    entries = {m.name: m.buffer for m in fb.parse_model(out).metadata}
    parsed = fb.parse_model(out)
    assert bytes(np.asarray(parsed.buffers[entries[b"TFLITE_METADATA"]].data, np.uint8)) == b"labels: a,b,c"


def test_bias_overflow_grows_weight_scale(small_float_tflite, small_calibration):
    conv = api.convert_model(small_float_tflite, small_calibration, bits=7, method="minmax")
    graph = Graph.from_tflite(conv.float_model)
    op = graph.weighted_ops()[1]  # second conv has a bias
    b_name = graph.tensors[op.bias_input].name
    bias = graph.tensors[op.bias_input].data.copy()
    bias[0] = 1e9  # cannot fit int32 at the absmax weight scale
    plan = Plan("minmax", conv.plan.bits, dict(conv.plan.activation_ranges), float_weights={b_name: bias})
    rewritten, log = apply_plan(conv.tflite_int8, graph, plan, conv.float_model)
    out = rewritten.to_bytes()
    sharing = sum(1 for o in graph.weighted_ops() if o.bias_input == op.bias_input)
    assert log.bias_overflow_channels == sharing  # channel 0 of each op using that bias
    model = fb.parse_model(out)
    sg = model.subgraphs[0]
    out_name = graph.tensors[op.outputs[0]].name
    int8_op = next(o for o in sg.operators if fb.tensor_name(sg.tensors[o.outputs[0]]) == out_name)
    b_t = sg.tensors[int8_op.inputs[2]]
    q0 = int(fb.buffer_array(model, b_t)[0])
    assert q0 <= 2 ** 31 - 1
    assert q0 * b_t.quantization.scale[0] == pytest.approx(1e9, rel=1e-6)


def test_dead_channel_and_constant_activation(tmp_path):
    """All-zero filters and an always-zero activation tensor give a valid model."""
    import keras
    import tensorflow as tf
    L = keras.layers
    inp = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, padding="same")(inp)
    dead = L.Conv2D(4, 1, activation="relu")(x)  # constant zero: weights 0, bias < 0
    out = L.Dense(3)(L.Flatten()(L.Concatenate()([x, dead])))
    model = keras.Model(inp, out)
    w, b = model.layers[1].get_weights()
    w[..., 1] = 0.0  # one dead channel in the first conv
    model.layers[1].set_weights([w, b])
    model.layers[2].set_weights([np.zeros_like(model.layers[2].get_weights()[0]), -np.ones(4)])
    flt = bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    data = np.random.default_rng(0).random((20, 8, 8, 2), dtype=np.float32)
    for method in ("minmax", "kl"):
        conv = api.convert_model(flt, data, bits=7, method=method)
        assert conv.report.ok and conv.rewrite_log.dead_channels >= 5
        out = runtime.run_model(runtime.make_interpreter(conv.model), [data])[0]
        assert np.all(np.isfinite(out))
        assert conv.report.cosine > 0.99


def test_int8_io(small_float_tflite, small_calibration):
    conv = api.convert_model(small_float_tflite, small_calibration, bits=7, method="minmax", int8_io=True)
    interp = runtime.make_interpreter(conv.model)
    assert interp.get_input_details()[0]["dtype"] == np.int8
    scale, zp = interp.get_input_details()[0]["quantization"]
    seen = small_calibration[:conv.num_calibration]  # the rest is held back for the check
    assert (scale, zp) == (pytest.approx(float(seen.max()) / 127), -64)  # [0, max] on 7 bits
    assert conv.report.cosine > 0.99
