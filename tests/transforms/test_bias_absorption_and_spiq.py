"""Bias absorption and SPIQ keep the float function; absorption shrinks ranges, SPIQ equalizes them."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import moments, runtime
from eq_tflite.bn_stats import bn_stats_of
from eq_tflite.graph import Graph
from eq_tflite.io.sources import float_model_of
from eq_tflite.rewrite.float_model import write_float_graph
from eq_tflite.transforms import FloatState
from eq_tflite.transforms.bias_absorption import absorb
from eq_tflite.transforms.spiq import rescale


def _outputs(model: bytes, x: np.ndarray) -> np.ndarray:
    interp = runtime.make_interpreter(model)
    return runtime.run_model(interp, {interp.get_input_details()[0]["name"]: x})[0]


@pytest.fixture(scope="module")
def shifted_model():
    """conv3x3 + BN (beta well above 3 gamma) + ReLU -> conv1x1 -> GAP -> dense."""
    import keras
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    bn = keras.layers.BatchNormalization()
    x = keras.layers.ReLU()(bn(x))
    x = keras.layers.Conv2D(6, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(4)(x))
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.2, 0.5, 8), rng.uniform(1.0, 3.0, 8), np.zeros(8), np.ones(8)])
    return model


def test_bias_absorption_keeps_function_and_shrinks_range(shifted_model):
    float_model = float_model_of(shifted_model)
    graph = Graph.from_tflite(float_model)
    bn, _ = bn_stats_of(shifted_model, graph)
    state = FloatState.of(graph, bn)
    assert absorb(state) == 1
    ranges = {"before": moments.propagate(graph, {graph.tensors[graph.inputs[0]].name: (0, 1)},
                                          bn, 8.0),
              "after": moments.propagate(state.graph, {graph.tensors[graph.inputs[0]].name: (0, 1)},
                                         state.bn, 8.0)}
    first = graph.weighted_ops()[0].outputs[0]
    lo_b, hi_b = ranges["before"][first].range
    lo_a, hi_a = ranges["after"][first].range
    assert lo_a == lo_b == 0.0 and hi_a < hi_b - 0.5  # the always-on part moved downstream
    # On inputs whose pre-activations stay above c (what BN says of the data), nothing changes.
    x = np.random.default_rng(1).random((64, 10, 10, 3), dtype=np.float32)
    ref = _outputs(float_model, x)
    out = _outputs(write_float_graph(float_model, state.graph), x)
    assert np.max(np.abs(ref - out)) / np.max(np.abs(ref)) < 2e-2


def test_spiq_equalizes_channel_ranges_and_keeps_function(keras_examples, keras_floats,
                                                          fmnist_subset):
    float_model = keras_floats["resnet"]
    graph = Graph.from_tflite(float_model)
    bn, _ = bn_stats_of(str(keras_examples["resnet"]), graph)
    state = FloatState.of(graph, bn)
    name = graph.tensors[graph.inputs[0]].name
    assert rescale(state, {name: (0.0, 1.0)}, 8.0) == 3
    stats = moments.propagate(state.graph, {name: (0.0, 1.0)}, state.bn, 8.0)
    equalized = 0
    for op in state.graph.weighted_ops():
        st = stats[op.outputs[0]]
        widths = st.hi - st.lo
        live = widths > 1e-3 * widths.max()
        if op.activation == "RELU" and len(graph.consumers(op.outputs[0])) == 1:
            np.testing.assert_allclose(widths[live], widths[live].max(), rtol=1e-6)
            equalized += 1
    assert equalized == 3
    x = fmnist_subset[0][:200]
    ref, out = _outputs(float_model, x), _outputs(write_float_graph(float_model, state.graph), x)
    assert np.max(np.abs(ref - out)) / np.max(np.abs(ref)) <= 1e-4
