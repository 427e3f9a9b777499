"""The resolve stage: one place decides every shipped number; simulator and file agree."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api, grid, resolve, simulate
from eq_tflite.graph import Graph, Op
from eq_tflite.grid import BitWidths
from eq_tflite.io import codec as fb
from eq_tflite.plan import Plan
from eq_tflite.quant_spec import INT32_MAX, WEIGHTED
from eq_tflite.rewrite.rewriter import read_metadata
from eq_tflite.verify import LEVELS_LIMIT_ALL, LEVELS_LIMIT_TENSOR, activation_levels, verify

CONV = Op(0, "CONV_2D", [0, 1, 2], [3])


def test_dead_channel_takes_median_live_step():
    w = np.zeros((3, 1, 1, 2))
    w[0], w[2] = 0.5, 1.0
    n = resolve.layer_numbers(CONV, "w", w, np.array([0.1, 0.2, 0.3]), "b", 0.01, None,
                              BitWidths(7, 7))
    live = np.array([0.5, 1.0]) / 63
    assert n.dead_channels == 1
    assert n.scales[1] == np.float32(np.median(live))
    assert np.all(n.values[1] == 0) and np.abs(n.values).max() == 63
    assert n.bias_values[1] == round(0.2 / (np.float32(0.01) * n.scales[1]))


def test_bias_overflow_grows_the_channel_step():
    w = np.full((2, 1, 1, 1), 1e-6)
    bias = np.array([1e3, 1e-3])
    n = resolve.layer_numbers(CONV, "w", w, bias, "b", 1e-4, None, BitWidths(8, 8))
    assert n.overflow_channels == 1
    assert np.abs(n.bias_values.astype(np.int64)).max() <= INT32_MAX
    real = n.real_bias()
    assert abs(real[0] - 1e3) / 1e3 < 1e-6  # still represents the bias
    assert n.scales[1] == np.float32(1e-6 / 127)  # the other channel is untouched


def test_bias_scale_is_float32_product():
    b, s_in, s_w = np.array([0.37, -1.2]), 0.0123, np.array([0.004, 0.0007])
    q, scale = resolve.bias_numbers(b, s_in, s_w)
    want = (np.float64(np.float32(s_in)) * s_w.astype(np.float32).astype(np.float64)).astype(np.float32)
    assert scale.dtype == np.float32 and np.array_equal(scale, want)
    assert np.array_equal(q, np.round(b / want.astype(np.float64)).astype(np.int32))


def test_int_weights_outside_the_range_are_refused():
    with pytest.raises(ValueError, match="4-bit range"):
        resolve.layer_numbers(CONV, "w", np.ones((1, 1, 1, 1)), None, None, 0.1,
                              np.array([0.1]), BitWidths(4, 8), int_weights=np.full((1, 1, 1, 1), 8))


def test_defaults_move_onto_the_b_bit_levels(small_float_tflite):
    graph = Graph.from_tflite(small_float_tflite)
    t = graph.tensors[graph.inputs[0]].name
    scale8, zp8 = 1.0 / 255, -128  # [0, 1] on 8 bits
    out = resolve.resolve(graph, Plan("x", BitWidths(6, 6)), defaults={t: (scale8, zp8)})
    assert out.activations[t] == grid.activation_params(0.0, 1.0, 6)
    assert resolve.resolve(graph, Plan("x", BitWidths(6, 6))).activations.get(t) is None


def _written_numbers(model_bytes: bytes, mapping: dict[int, str]):
    """(activation params by float name, {weight name: (ints, scales, bias ints, bias scales)})."""
    model = fb.parse_model(model_bytes)
    sg = model.subgraphs[0]
    acts, layers = {}, {}
    for i, name in mapping.items():
        t = sg.tensors[i]
        if fb.type_name(t.type) == "INT8" and fb.buffer_array(model, t) is None:
            acts[name] = (float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0]))
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind in WEIGHTED:
            _, w_pos, b_pos, _ = WEIGHTED[kind]
            w, b = sg.tensors[op.inputs[w_pos]], sg.tensors[op.inputs[b_pos]]
            layers[mapping[op.inputs[w_pos]]] = (
                fb.buffer_array(model, w), np.asarray(w.quantization.scale, np.float32),
                fb.buffer_array(model, b), np.asarray(b.quantization.scale, np.float32))
    return acts, layers


@pytest.mark.parametrize("example", ["resnet_fmnist", "mobilenetv2_fmnist"])
def test_simulator_and_written_model_agree_number_for_number(examples_dir, fmnist_calib, example):
    conv = api.convert_model(str(examples_dir / example), fmnist_calib, bits=7)
    graph = Graph.from_tflite(conv.float_model)
    quant, _ = simulate.plan_quant_params(graph, conv.plan)
    acts, layers = _written_numbers(conv.model, conv.rewrite_log.mapping)
    simulated = {graph.tensors[t].name: p for t, p in quant.activations.items()}
    assert acts and set(acts) <= set(simulated)
    for name, params in acts.items():
        assert simulated[name] == params, name
    assert len(layers) == len(graph.weighted_ops()) == len(quant.layers)
    for w, layer in quant.layers.items():
        ints, scales, bias_ints, bias_scales = layers[graph.tensors[w].name]
        assert np.array_equal(ints, layer.values) and np.array_equal(scales, layer.scales)
        assert np.array_equal(bias_ints, layer.bias_values)
        assert np.array_equal(bias_scales, layer.bias_scales)
    assert conv.report.ok  # verify also compared the file with the resolved numbers


@pytest.mark.parametrize("example", ["resnet_fmnist", "mobilenetv2_fmnist"])
def test_default_7bit_keeps_activations_inside_the_levels(examples_dir, fmnist_calib, fmnist_subset,
                                                          example):
    """Held-out images: the share outside the 7-bit levels stays within verify's limits.

    Measured on these 1,000 images with the defaults (EasyQuant, strict):
    ResNet 0.003% overall, worst tensor 0.3%; MobileNetV2 0.005%, worst 0.4%.
    """
    conv = api.convert_model(str(examples_dir / example), fmnist_calib, bits=7)
    levels = activation_levels(conv.model, [fmnist_subset[0]], 7)
    assert levels.total > 1_000_000
    assert levels.share <= LEVELS_LIMIT_ALL
    assert levels.worst()[1] <= LEVELS_LIMIT_TENSOR


def test_ranges_narrower_than_the_data_are_caught(resnet_float, fmnist_calib, fmnist_subset):
    """A plan that clips (halved min/max ranges) puts values outside; verify warns."""
    conv = api.convert_model(resnet_float, fmnist_calib, bits=7, method="minmax")
    graph = Graph.from_tflite(conv.float_model)
    narrow = Plan("narrow", conv.plan.bits, {n: (lo / 2, hi / 2) for n, (lo, hi)
                                             in conv.plan.activation_ranges.items()})
    from eq_tflite.rewrite import apply_plan
    model, _ = apply_plan(conv.tflite_int8, graph, narrow, conv.float_model)
    x = {graph.tensors[graph.inputs[0]].name: fmnist_subset[0][:200]}
    levels = activation_levels(model, x, 7)
    assert levels.share > LEVELS_LIMIT_ALL and levels.worst()[1] > LEVELS_LIMIT_TENSOR
    report = verify(model, samples=x)
    assert any("outside the 7-bit levels" in w for w in report.warnings)


def test_container_mode_is_labelled(resnet_float, fmnist_calib):
    conv = api.convert_model(resnet_float, fmnist_calib, bits=6, method="minmax",
                             activation_range="container")
    meta = read_metadata(conv.model)
    assert meta["activation_range"] == "container"
    assert meta["label"] == "W6A6 (6-bit step, 8-bit range)"
    assert "6-bit step, 8-bit range" in conv.report.summary()
    strict = api.convert_model(resnet_float, fmnist_calib, bits=6, method="minmax")
    assert read_metadata(strict.model)["label"] == "W6A6"


def _fixed_tie_graph(second: str) -> Graph:
    """x -> LOGISTIC -> a; x -> ``second`` -> b; CONCATENATION(a, b) -> c; LOGISTIC(x) -> d -> RESHAPE -> e."""
    from eq_tflite.graph import Tensor
    t = [Tensor(i, n, (1, 4), np.float32) for i, n in enumerate("xabcde")]
    ops = [Op(0, "LOGISTIC", [0], [1]), Op(1, second, [0], [2]), Op(2, "CONCATENATION", [1, 2], [3]),
           Op(3, "LOGISTIC", [0], [4]), Op(4, "RESHAPE", [4], [5])]
    return Graph(t, ops, [0], [3, 5], {x.name: x.index for x in t})


def test_fixed_output_at_a_concatenation_is_requantized_not_pinned():
    """A logistic output next to a free input of a CONCATENATION stays out of its group (TFLite
    requantizes it), so the concatenation keeps a b-bit range that holds the exp values;
    a RESHAPE after a logistic (no requantize) keeps the fixed 8-bit parameters."""
    graph = _fixed_tie_graph("EXP")
    groups = resolve.tied_groups(graph)
    assert groups[1] == (1,) and groups[2] == groups[3] == (2, 3) and groups[4] == (4, 5)
    assert resolve.requantized_fixed(graph, groups) == [1]
    params = resolve.activation_params(graph, {2: (0.0, 5.0), 3: (0.0, 5.0), 5: (0.0, 1.0)}, 7, groups)
    assert params[1] == params[4] == params[5] == (1 / 256, -128)
    assert params[3] == params[2] == grid.activation_params(0.0, 5.0, 7)
    plan = Plan("minmax", BitWidths(7, 7), activation_ranges={"b": (0.0, 5.0), "c": (0.0, 5.0), "e": (0.0, 1.0)})
    out = resolve.resolve(graph, plan)
    assert out.requantized == ["a"] and out.pinned == ["e"]


def test_concatenation_of_fixed_outputs_only_adopts_their_parameters():
    graph = _fixed_tie_graph("LOGISTIC")
    groups = resolve.tied_groups(graph)
    assert groups[3] == (1, 2, 3) and resolve.requantized_fixed(graph, groups) == []
    assert resolve.activation_params(graph, {3: (0.0, 1.0)}, 7, groups)[3] == (1 / 256, -128)
