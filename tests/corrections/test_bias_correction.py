"""Bias correction lowers a layer's mean output error (data-free and empirical)."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite.bn_stats import bn_stats_of
from eq_tflite.collect import iterate_activations
from eq_tflite.corrections.bias_correction import (correct_biases, data_free_means,
                                                   empirical_means)
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.plan import Plan
from eq_tflite.resolve import resolve
from eq_tflite.simulate import linear, weight_matrix


def _mean_output_error(graph, op, layer, bias_q, x):
    """Mean over samples and positions of (quantized - float) output, per channel."""
    w = graph.tensors[op.weight_input].data
    b = graph.tensors[op.bias_input].data
    lin = linear(graph, op, x)
    ref = lin.run(x, weight_matrix(op.type, w), b)
    out = lin.run(x, weight_matrix(op.type, layer.real_weights()), bias_q)
    return (out - ref).reshape(-1, ref.shape[-1]).mean(0)


@pytest.mark.parametrize("mode", ["data_free", "empirical"])
def test_bias_correction_lowers_mean_output_error(keras_examples, keras_floats, fmnist_calib,
                                                  fmnist_subset, mode):
    float_model = keras_floats["mobilenetv2"]
    graph = Graph.from_tflite(float_model)
    # Per-tensor 4-bit weights: a large, biased weight error.
    plan = Plan("minmax", BitWidths(4, 8), per_tensor_weights=True)
    name = graph.tensors[graph.inputs[0]].name
    if mode == "data_free":
        bn, _ = bn_stats_of(str(keras_examples["mobilenetv2"]), graph)
        means = data_free_means(graph, {name: (0.0, 1.0)}, bn, 6.0)
    else:
        means = empirical_means(graph, float_model, {name: fmnist_calib}, progress=False)
    corrected, _ = correct_biases(graph, plan, means)
    layers = resolve(graph, plan).layers
    x_test = {name: fmnist_subset[0][:64]}
    ops = graph.weighted_ops()
    wanted = [op.data_input for op in ops]
    inputs = next(iterate_activations(graph, float_model, x_test, wanted, batch_size=64,
                                      progress=False))
    if mode == "data_free":  # the first conv reads the image: no BN behind it, no correction
        assert len(corrected) == len(ops) - 1
        assert graph.tensors[ops[0].bias_input].name not in corrected
    else:
        assert len(corrected) == len(ops)
    ops = [op for op in ops if graph.tensors[op.bias_input].name in corrected]
    improved = 0
    for op in ops:
        layer = layers[graph.tensors[op.weight_input].name]
        b_name = graph.tensors[op.bias_input].name
        before = _mean_output_error(graph, op, layer, graph.tensors[op.bias_input].data,
                                    inputs[op.data_input])
        after = _mean_output_error(graph, op, layer, corrected[b_name], inputs[op.data_input])
        improved += float(np.mean(np.abs(after))) < float(np.mean(np.abs(before)))
    # Most layers' mean output error drops on held-out test images.
    assert improved >= 0.75 * len(ops), (improved, len(ops))
