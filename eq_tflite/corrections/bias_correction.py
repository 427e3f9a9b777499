"""Bias correction (DFQ section 4.2): remove the mean shift that weight quantization causes.

The quantized weights W~ = W + eps shift each output's mean by eps . E[x].
Correcting the bias by b <- b - eps . E[x] removes it, with E[x] per input
channel of the layer:

* ``data_free``: the mean of the clipped normal that BN statistics give the
  layer's input (``eps`` meets E[x] from ``eq_tflite.moments``); for ReLU,
  E = beta (1 - Phi(-beta/gamma)) + gamma phi(-beta/gamma). Layers whose
  input has no BN behind it (the model input, of which only a range is
  known) are left uncorrected: a uniform guess over ``--input_range`` is no
  expectation (Fashion-MNIST's mean pixel is 0.30, not 0.5), and with coarse
  weights the wrong shift turned the correction into a loss (measured while
  developing: ResNet per-tensor W4A8, 82% without correction, 55% with the
  input corrected from a uniform guess, 10k test images);
* ``empirical``: the mean of the layer's input over the calibration data.

eps comes from the resolve stage (``eq_tflite.resolve``), i.e. from exactly the
integers and steps that ship, so it works after any method (EasyQuant's
searched steps included). Zero padding is ignored (as in the paper).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from eq_tflite import moments
from eq_tflite.graph import Graph
from eq_tflite.plan import Plan
from eq_tflite.resolve import resolve

MODES = ("off", "empirical", "data_free")


def output_shift(op, eps: np.ndarray, mean_in: np.ndarray) -> np.ndarray:
    """eps . E[x] per output channel of weighted op ``op``."""
    n = len(mean_in)
    x = moments.ChannelStats(mean_in, np.zeros(n), mean_in, mean_in)
    return moments.weighted_moments(op, eps, None, x)[0]


def correct_biases(graph: Graph, plan: Plan, input_means: Mapping[int, np.ndarray],
                   ) -> tuple[dict[str, np.ndarray], int]:
    """Corrected float biases by bias tensor name, and how many ops had no bias to correct."""
    numbers = resolve(graph, plan)
    corrected: dict[str, np.ndarray] = {}
    no_bias = 0
    for op in graph.weighted_ops():
        w_name = graph.tensors[op.weight_input].name
        layer = numbers.layers.get(w_name)
        if layer is None or op.data_input not in input_means:
            continue
        if op.bias_input < 0:
            no_bias += 1
            continue
        w = np.asarray(plan.float_weights.get(w_name, graph.tensors[op.weight_input].data), np.float64)
        eps = layer.real_weights().astype(np.float64) - w
        b_name = graph.tensors[op.bias_input].name
        b = np.asarray(plan.float_weights.get(b_name, graph.tensors[op.bias_input].data), np.float64)
        corrected[b_name] = (b - output_shift(op, eps, np.asarray(input_means[op.data_input],
                                                                  np.float64))).astype(np.float32)
    return corrected, no_bias


def data_free_means(graph: Graph, input_ranges: Mapping[str, tuple[float, float]], bn,
                    sigmas: float) -> dict[int, np.ndarray]:
    """E[x] per channel of every BN-backed activation tensor (clipped normals).

    Without any BN statistics (``bn`` None) every tensor's mean is propagated
    from the input range instead (the documented fallback).
    """
    stats = moments.propagate(graph, input_ranges, bn, sigmas)
    return {t: s.mean for t, s in stats.items() if s.bn_backed or bn is None}


def empirical_means(graph: Graph, float_model: bytes, calibration: Mapping[str, np.ndarray],
                    progress: bool = False) -> dict[int, np.ndarray]:
    """E[x] per channel (last axis) of every weighted op's data input over the calibration data."""
    from eq_tflite.collect import iterate_activations
    wanted = sorted({op.data_input for op in graph.weighted_ops()})
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for values in iterate_activations(graph, float_model, dict(calibration), wanted,
                                      desc="bias correction", progress=progress):
        for t, v in values.items():
            flat = v.reshape(-1, v.shape[-1]).astype(np.float64)
            sums[t] = sums.get(t, 0.0) + flat.sum(0)
            counts[t] = counts.get(t, 0) + flat.shape[0]
    return {t: s / max(counts[t], 1) for t, s in sums.items()}
