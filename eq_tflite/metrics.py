"""Cosine similarity, the one objective and agreement measure used everywhere."""
from __future__ import annotations

import numpy as np


def cosine_from_parts(dot: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray) -> np.ndarray:
    """Cosine from dot products and *squared* norms; 1 for two zero vectors, 0 for one."""
    dot, norm_a, norm_b = (np.asarray(v, np.float64) for v in (dot, norm_a, norm_b))
    denom = np.sqrt(norm_a * norm_b)
    return np.where((norm_a == 0) & (norm_b == 0), 1.0, dot / np.where(denom > 0, denom, 1.0))


def sample_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per sample (axis 0) over all other axes."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return cosine_from_parts(np.einsum("nk,nk->n", a, b), np.einsum("nk,nk->n", a, a),
                             np.einsum("nk,nk->n", b, b))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the per-sample cosine."""
    return float(np.mean(sample_cosines(a, b)))
