"""BatchNorm statistics are read from Keras models and mapped onto the folded TFLite ops."""
from __future__ import annotations

import numpy as np

from eq_tflite.bn_stats import bn_stats_of
from eq_tflite.graph import Graph


def test_every_bn_maps_to_its_folded_op(keras_examples, keras_floats):
    import keras
    for key, n_bn, n_ops in (("resnet", 9, 10), ("mobilenetv2", 20, 21)):
        graph = Graph.from_tflite(keras_floats[key])
        stats, note = bn_stats_of(str(keras_examples[key]), graph)
        assert len(stats) == n_bn and not stats.unmatched, note
        assert note == f"BatchNorm statistics for {n_bn} of {n_ops} weighted ops"
        model = keras.models.load_model(keras_examples[key], compile=False)
        betas = sorted(tuple(np.round(layer.beta.numpy().astype(np.float64), 6))
                       for layer in model.layers
                       if isinstance(layer, keras.layers.BatchNormalization))
        assert sorted(tuple(np.round(b, 6)) for b in stats.beta.values()) == betas
        # The op without BN is the dense logits layer.
        no_bn = [op for op in graph.weighted_ops() if graph.tensors[op.outputs[0]].name not in stats]
        assert [op.type for op in no_bn] == ["FULLY_CONNECTED"]


def test_in_memory_keras_model(small_keras_model, small_float_tflite):
    graph = Graph.from_tflite(small_float_tflite)
    stats, note = bn_stats_of(small_keras_model, graph)
    assert len(stats) == 2 and all(np.all(g > 0) for g in stats.gamma.values()), note
