"""BatchNorm statistics from before folding, mapped onto the folded TFLite ops.

TFLite folds each BatchNorm into the convolution (or dense layer) that feeds
it, so the float graph no longer shows BN. The data-free steps (bias
absorption, BN-derived ranges, analytic bias correction, SPIQ) need each BN's
(beta, gamma): on the training distribution, the folded op's pre-activation
output channel c is roughly N(beta_c, gamma_c^2).

Only Keras models keep the BN layers (``.keras``, ``.h5``, in memory). Each BN
is mapped to its TFLite op by value, not by name: the BN's producer weights,
folded with the BN's moving statistics, must equal the TFLite op's weights.
A float ``.tflite`` or a SavedModel has no recoverable BN: ``bn_stats_of``
returns None and a one-line reason, and the caller says what it does instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eq_tflite.errors import EqTfliteError, first_line
from eq_tflite.graph import Graph
from eq_tflite.quiet import quiet

#: Relative tolerance when matching folded Keras weights to TFLite weights.
MATCH_RTOL = 1e-4


@dataclass
class BnStats:
    """Per weighted op (keyed by its output tensor name): (beta, gamma) of its pre-activation output."""

    beta: dict[str, np.ndarray] = field(default_factory=dict)
    gamma: dict[str, np.ndarray] = field(default_factory=dict)   # |gamma| (a standard deviation)
    unmatched: list[str] = field(default_factory=list)          # BN layers not found in the graph

    def __contains__(self, name: str) -> bool:
        return name in self.beta

    def __len__(self) -> int:
        return len(self.beta)

    def scale_channels(self, name: str, factor: np.ndarray) -> None:
        """The op's output channels were multiplied by ``factor`` (CLE, SPIQ)."""
        if name in self.beta:
            self.beta[name] = self.beta[name] * factor
            self.gamma[name] = self.gamma[name] * np.abs(factor)

    def shift(self, name: str, delta: np.ndarray) -> None:
        """The op's output channels were shifted by ``delta`` (bias absorption)."""
        if name in self.beta:
            self.beta[name] = self.beta[name] + delta

    def copy(self) -> "BnStats":
        return BnStats(dict(self.beta), dict(self.gamma), list(self.unmatched))


def bn_stats_of(model: Any, graph: Graph) -> tuple[BnStats | None, str]:
    """(BN statistics mapped onto ``graph``'s ops, or None; a one-line note on what was found)."""
    if isinstance(model, (bytes, bytearray)):
        return None, ("the model was given as float .tflite bytes, whose BatchNorm is folded: "
                      "no BN statistics")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_dir():
            return None, (f"{path} is a SavedModel, whose BatchNorm TFLite folds: no BN statistics "
                          "(give the Keras .keras/.h5 file to use them)")
        if path.suffix.lower() == ".tflite":
            return None, f"{path} is a float .tflite, whose BatchNorm is folded: no BN statistics"
        if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
            return None, f"{path}: no BN statistics for this model format"
        import keras
        try:
            with quiet():
                model = keras.models.load_model(str(path), compile=False)
        except Exception as err:
            raise EqTfliteError(f"cannot load Keras model {path}: {first_line(err)}") from None
    stats = keras_bn_stats(model, graph)
    if stats is None:
        return None, "the Keras model has no BatchNorm layer after a conv/dense layer: no BN statistics"
    if not len(stats):
        return None, (f"none of the Keras model's {len(stats.unmatched)} BatchNorm layers matched a "
                      "folded TFLite op: no BN statistics")
    note = f"BatchNorm statistics for {len(stats)} of {len(graph.weighted_ops())} weighted ops"
    if stats.unmatched:
        note += f" ({len(stats.unmatched)} BN layers unmatched: {', '.join(stats.unmatched[:3])})"
    return stats, note


def keras_bn_stats(model: Any, graph: Graph) -> BnStats | None:
    """BN statistics of a Keras model mapped onto ``graph``; None if it has no conv/dense->BN pair."""
    import keras

    pairs = []
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        try:
            producer = layer.input._keras_history.operation
        except AttributeError:
            continue
        if isinstance(producer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                                 keras.layers.Dense)):
            pairs.append((producer, layer))
    if not pairs:
        return None
    stats = BnStats()
    ops = graph.weighted_ops()
    for producer, bn in pairs:
        folded = _folded_weights(producer, bn)
        match = None
        for op in ops:
            w = graph.tensors[op.weight_input].data
            if w.shape == folded.shape and np.allclose(w, folded, rtol=MATCH_RTOL,
                                                       atol=MATCH_RTOL * float(np.abs(folded).max())):
                match = op
                break
        if match is None:
            stats.unmatched.append(bn.name)
            continue
        name = graph.tensors[match.outputs[0]].name
        stats.beta[name] = np.asarray(bn.beta.numpy() if bn.center else
                                      np.zeros(folded.shape[match.channel_axis]), np.float64)
        gamma = bn.gamma.numpy() if bn.scale else np.ones(folded.shape[match.channel_axis])
        stats.gamma[name] = np.abs(np.asarray(gamma, np.float64))
    return stats


def _folded_weights(producer: Any, bn: Any) -> np.ndarray:
    """The producer's kernel with the BN folded in, in TFLite's layout."""
    import keras

    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(var)
    factor = gamma / np.sqrt(var + bn.epsilon)
    if isinstance(producer, keras.layers.DepthwiseConv2D):
        k = np.asarray(producer.kernel.numpy(), np.float64)             # (KH, KW, C, M)
        kh, kw, c, m = k.shape
        return (k.reshape(1, kh, kw, c * m) * factor).astype(np.float32)
    k = np.asarray(producer.kernel.numpy(), np.float64)
    if isinstance(producer, keras.layers.Dense):                        # (I, O) -> (O, I)
        return (k * factor).T.astype(np.float32)
    return np.transpose(k * factor, (3, 0, 1, 2)).astype(np.float32)   # (KH, KW, I, O) -> (O, KH, KW, I)
