"""Accuracy and agreement of .tflite models against a float reference."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from eq_tflite import runtime
from eq_tflite.metrics import mean_cosine

BATCH = 100


@dataclass
class Scores:
    """Metrics of one model on one data set (``accuracy`` is None without labels)."""

    accuracy: float | None
    agreement: float
    cosine: float


def predict(model: bytes, x: np.ndarray, *, builtin_kernels: bool = True,
            delegates: Sequence[Any] | None = None, num_threads: int | None = None) -> np.ndarray:
    """First output of ``model`` on ``x`` (real values), in batches."""
    interp = runtime.make_interpreter(model, builtin_kernels=builtin_kernels, delegates=delegates,
                                      num_threads=num_threads)
    return runtime.run_model(interp, [x], batch_size=BATCH)[0]


def score(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Scores:
    """Top-1 accuracy (if labels), top-1 agreement and mean cosine vs ``reference``."""
    out = outputs.reshape(len(outputs), -1).astype(np.float64)
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    acc = None if labels is None else float(np.mean(out.argmax(1) == labels))
    return Scores(acc, float(np.mean(out.argmax(1) == ref.argmax(1))), mean_cosine(ref, out))


def load_eval_data(spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``fashion_mnist`` (the 10k test split) or an .npz with ``x`` and optional ``y``."""
    if spec == "fashion_mnist":
        from eq_tflite.datasets import load_fashion_mnist
        return load_fashion_mnist("test")
    if not os.path.exists(spec):
        raise FileNotFoundError(f"no such data: {spec}")
    with np.load(spec) as data:
        if "x" not in data:
            raise ValueError(f"{spec} has no array 'x'")
        return data["x"].astype(np.float32), (data["y"] if "y" in data else None)
