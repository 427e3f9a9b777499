"""Chains compose: any step with any method, EasyQuant included."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api
from eq_tflite.chain import build_chain
from eq_tflite.errors import EqTfliteError


def test_defaults():
    assert build_chain(None, has_data=True) == build_chain("easyquant", True)
    free = build_chain(None, has_data=False)
    assert (free.method, free.cross_layer_equalization, free.bias_absorption,
            free.bias_correction) == ("dfq", True, True, "data_free")
    assert build_chain("dfq", True, bias_correction="off").bias_correction == "off"
    spiq = build_chain("spiq", False)
    assert spiq.spiq and not spiq.cross_layer_equalization and spiq.bias_correction == "off"
    with pytest.raises(EqTfliteError, match="--bias_correction must be one of"):
        build_chain("minmax", True, bias_correction="sometimes")


def test_easyquant_with_cle_and_bias_correction(keras_examples, fmnist_calib, fmnist_subset):
    conv = api.convert_model(str(keras_examples["resnet"]), fmnist_calib[:24], bits=6,
                             method="easyquant", cross_layer_equalization=True,
                             bias_correction="empirical",
                             method_options={"eq_steps": 12, "eq_max_rows": 512})
    assert conv.plan.steps == ["cross_layer_equalization", "easyquant", "bias_correction:empirical"]
    assert conv.plan.layers  # EasyQuant's own per-layer rows survive the chain
    graph = api.Graph.from_tflite(conv.float_model)
    biases = {graph.tensors[op.bias_input].name: graph.tensors[op.bias_input].data
              for op in graph.weighted_ops()}
    assert set(biases) <= set(conv.plan.float_weights)  # every bias corrected ...
    assert all(not np.array_equal(conv.plan.float_weights[n], b) for n, b in biases.items())
    x, y = fmnist_subset
    from eq_tflite.evaluation import predict
    assert float(np.mean(predict(conv.model, x).argmax(1) == y)) >= 0.88
