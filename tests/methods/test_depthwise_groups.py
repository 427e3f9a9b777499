"""Depthwise convolutions written as ``Conv2D(groups=channels)`` (ConvNeXt) are searched as depthwise.

TFLite keeps such a layer a grouped CONV_2D with filters [O, KH, KW, 1]. Its
block-diagonal matrix has KH*KW*C rows, C times the real weights, and the
layer walk used to quantize and multiply all of them for every candidate:
ConvNeXt-Tiny's EasyQuant took 2509 s (BENCHMARKS.md, architecture suite).
The layer walk now sees the depthwise op it computes (``GroupedAsDepthwise``);
grouped convolutions with several input channels per group keep the
block-diagonal matrix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eq_tflite import api, simulate
from eq_tflite.graph import Graph
from eq_tflite.methods import bitsplit, easyquant

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ops"


def _case(name: str):
    model = (FIXTURES / f"{name}.float.tflite").read_bytes()
    graph = Graph.from_tflite(model)
    x = (np.random.default_rng(5).random((8, *graph.tensors[graph.inputs[0]].shape[1:]),
                                         dtype=np.float32) - 0.5) * 3
    return model, graph, x


def test_view_computes_the_grouped_conv():
    _, graph, x = _case("depthwise_groups")
    op = next(op for op in graph.ops if op.type == "CONV_2D")
    w = graph.tensors[op.weight_input].data
    assert w.shape == (8, 3, 3, 1)
    plain = simulate.linear(graph, op, x)
    view = simulate.GroupedAsDepthwise.of(plain)
    assert view.op.type == "DEPTHWISE_CONV_2D" and view.multiplier == 1 and op.type == "CONV_2D"
    m = view.matrix(w)
    assert m.shape == (9, 8)  # the block-diagonal matrix is (72, 8)
    np.testing.assert_array_equal(view.weights(m), w)
    rows = view.rows(x)
    assert rows.shape == (8 * 36, 9, 8)
    np.testing.assert_allclose(view.apply(rows, m), plain.apply(plain.rows(x), plain.matrix(w)),
                               rtol=1e-5, atol=1e-6)


def test_grouped_conv_with_deeper_groups_keeps_its_matrix():
    _, graph, x = _case("grouped_conv")  # groups=4 on 8 channels: 2 input channels per group
    op = next(op for op in graph.ops if op.type == "CONV_2D")
    plain = simulate.linear(graph, op, x)
    assert simulate.GroupedAsDepthwise.of(plain) is plain


@pytest.mark.parametrize("method", ["easyquant", "bitsplit"])
def test_layer_walk_searches_the_depthwise_matrix(method, monkeypatch):
    model, _, x = _case("depthwise_groups")
    shapes = []
    if method == "easyquant":
        problem = easyquant._problem
        monkeypatch.setattr(easyquant, "_problem",
                            lambda *a: shapes.append((p := problem(*a)).matrix.shape) or p)
    else:
        layer_rows = bitsplit._layer_rows
        monkeypatch.setattr(bitsplit, "_layer_rows",
                            lambda *a: shapes.append((r := layer_rows(*a))[2].shape) or r)
    conv = api.convert_model(model, x, method=method, bits=8)
    assert shapes and set(shapes) == {(9, 8)}
    assert conv.report.ok and not conv.report.float_ops
    assert conv.report.cosine > 0.99, conv.report.cosine
