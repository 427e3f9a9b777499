"""Cross-layer equalization keeps the float function and equalizes the ranges."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import runtime
from eq_tflite.graph import Graph
from eq_tflite.rewrite.float_model import write_float_graph
from eq_tflite.transforms import FloatState, in_channel_range, out_channel_range
from eq_tflite.transforms.layer_units import equalization_units, relu6_in
from eq_tflite.transforms.cle import equalize


def _outputs(model: bytes, x: np.ndarray) -> np.ndarray:
    interp = runtime.make_interpreter(model)
    name = interp.get_input_details()[0]["name"]
    return runtime.run_model(interp, {name: x})[0]


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.parametrize("model", ["resnet", "mobilenetv2"])
def test_cle_keeps_float_outputs_and_equalizes(keras_floats, fmnist_subset, model):
    float_model = keras_floats[model]
    graph = Graph.from_tflite(float_model)
    state = FloatState.of(graph, None)
    summary = equalize(state, relu6="relu")
    assert summary["pairs"] + summary["triples"] >= 3
    # Reference: the same graph with only RELU6 -> RELU (CLE's documented policy), unscaled.
    ref_graph = Graph.from_tflite(float_model)
    for unit in equalization_units(ref_graph, "relu"):
        for op in relu6_in(unit):
            op.activation = "RELU"
    x = fmnist_subset[0][:200]
    ref = _outputs(write_float_graph(float_model, ref_graph), x)
    out = _outputs(write_float_graph(float_model, state.graph), x)
    assert _relative_error(ref, out) <= 1e-4
    # Ranges equalized: each inner channel's ranges on both sides agree.
    changed = 0
    for unit in equalization_units(state.graph, "relu"):
        a, b = unit[0], unit[1]
        r1 = out_channel_range(a, state.data(a.weight_input))
        r2 = (out_channel_range(b, state.data(b.weight_input)) if len(unit) == 3
              else in_channel_range(b, state.data(b.weight_input)))
        live = (r1 > 0) & (r2 > 0)
        np.testing.assert_allclose(r1[live], r2[live], rtol=1e-4)
        if len(unit) == 3:
            r3 = in_channel_range(unit[2], state.data(unit[2].weight_input))
            np.testing.assert_allclose(r2[live], r3[live], rtol=1e-4)
        before = out_channel_range(a, graph.tensors[a.weight_input].data)
        changed += int(np.any(np.abs(before - r1) > 1e-3 * before.max()))
    assert changed >= 3


def test_cle_on_relu_model_keeps_the_original_function(keras_floats, fmnist_subset):
    """ResNet has only ReLU between pairs: the edited model equals the original one."""
    float_model = keras_floats["resnet"]
    state = FloatState.of(Graph.from_tflite(float_model), None)
    assert equalize(state)["relu6_replaced"] == 0
    x = fmnist_subset[0][:200]
    assert _relative_error(_outputs(float_model, x),
                           _outputs(write_float_graph(float_model, state.graph), x)) <= 1e-4


def test_relu6_skip_policy_leaves_relu6_pairs(keras_floats):
    graph = Graph.from_tflite(keras_floats["mobilenetv2"])
    skip = equalization_units(graph, "skip")
    assert len(skip) == 1 and not any(relu6_in(u) for u in skip)  # the linear projection -> 1x1 conv
    assert len(equalization_units(graph, "relu")) == 7
