"""Stage 3 (collect): activation statistics from the float model.

Runs the float .tflite in LiteRT with ``experimental_preserve_all_tensors``
(the same graph and kernels TFLite's own calibration runs) and streams
per-tensor statistics, so memory stays bounded by one batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from eq_tflite import runtime
from eq_tflite.graph import Graph
from eq_tflite.progress import progress_bar


def iterate_activations(graph: Graph, float_model: bytes, calibration: dict[str, np.ndarray],
                        tensors: list[int], batch_size: int = 16,
                        desc: str = "collect", progress: bool = True,
                        ) -> Iterator[dict[int, np.ndarray]]:
    """Yields, per batch of samples, {tensor index: float values} for ``tensors``."""
    arrays = [calibration[graph.tensors[i].name] for i in graph.inputs]
    yield from runtime.iterate_tensors(
        float_model, arrays, tensors, batch_size,
        lambda starts, batch: progress_bar(starts, desc=desc, enable=progress, unit_scale=batch))


@dataclass
class ActivationStats:
    """Per-tensor min/max over all samples, plus optional |x| histograms."""

    minmax: dict[int, tuple[float, float]] = field(default_factory=dict)
    histograms: dict[int, tuple[np.ndarray, float]] = field(default_factory=dict)

    def ranges_by_name(self, graph: Graph) -> dict[str, tuple[float, float]]:
        return {graph.tensors[i].name: r for i, r in self.minmax.items()}


def collect_minmax(graph: Graph, float_model: bytes, calibration: dict[str, np.ndarray],
                   progress: bool = True) -> ActivationStats:
    """Absolute min/max per activation tensor over all samples (TFLite's statistic)."""
    tensors = graph.activation_tensors()
    stats = ActivationStats()
    for values in iterate_activations(graph, float_model, calibration, tensors,
                                      desc="min/max", progress=progress):
        for i, v in values.items():
            lo, hi = float(v.min()), float(v.max())
            old = stats.minmax.get(i)
            stats.minmax[i] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return stats


def collect_histograms(graph: Graph, float_model: bytes, calibration: dict[str, np.ndarray],
                       stats: ActivationStats, bins: int = 2048,
                       progress: bool = True) -> ActivationStats:
    """Adds histograms of the non-zero |x| over [0, absmax] (second pass; needs ``minmax``).

    Exact zeros are left out, as the EasyQuant/ncnn reference calibrator does:
    after a ReLU about half of all values are 0.0, which is exactly
    representable anyway, and that spike would otherwise dominate the
    entropy search.
    """
    tensors = list(stats.minmax)
    edges = {i: max(abs(stats.minmax[i][0]), abs(stats.minmax[i][1])) for i in tensors}
    counts = {i: np.zeros(bins, np.int64) for i in tensors}
    for values in iterate_activations(graph, float_model, calibration, tensors,
                                      desc="histograms", progress=progress):
        for i, v in values.items():
            if edges[i] > 0:
                a = np.abs(v[v != 0])
                counts[i] += np.histogram(a, bins=bins, range=(0.0, edges[i]))[0]
    stats.histograms = {i: (counts[i], edges[i]) for i in tensors}
    return stats
