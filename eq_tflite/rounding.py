"""Error-compensating weight rounding (GPTQ / Optimal Brain Quantization) on fixed steps.

Rounding each weight to its nearest level treats the errors as independent.
With the layer's inputs X known, the error that matters is ``X·(W - Q)``:
GPTQ (Frantar et al., 2023; OBQ, Frantar & Alistarh, 2022) rounds the input
rows of W one at a time and spreads each row's rounding error over the rows
not yet rounded, weighted by the inverse of H = XᵀX, which minimizes that
output error greedily. The steps (per output channel) stay those the method
chose, so the integers are a drop-in replacement for nearest rounding; only
which level each weight takes changes.

A plain layer has one H (K x K, K = KH·KW·C_in) for all output channels; a
depthwise layer has one per channel (KH·KW x KH·KW), solved batched. The
damping (``DAMP`` of H's mean diagonal) keeps H invertible when inputs are
collinear or dead (a dead input's weights are rounded and carry no error).

GPTQ matches the layer's own float weights on the inputs the quantized model
feeds it. ``corrected_target`` moves that target to the float model's layer
output, so the rounding also makes up for error from the layers before.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from eq_tflite import simulate

#: Damping added to H's diagonal, as a share of its mean diagonal. GPTQ's paper uses 1%;
#: with 64 calibration crops of a few photos that overfits: EfficientNet-Lite1 W4A8 on 500
#: held-out crops, 1%: 61.2% / 0.87169, 10%: 68.2% / 0.88296, 30%: 66.0% / 0.88287
#: (nearest rounding: 59.4% / 0.87769). Larger damping moves GPTQ towards nearest rounding.
DAMP = 0.1


def _damped(h: np.ndarray) -> np.ndarray:
    """H (..., K, K) made positive definite: dead inputs get a unit diagonal, all get DAMP."""
    k = h.shape[-1]
    diag = np.diagonal(h, axis1=-2, axis2=-1)
    h = np.array(h, np.float64)
    idx = np.arange(k)
    h[..., idx, idx] = np.where(diag <= 0, 1.0, diag)
    mean = np.diagonal(h, axis1=-2, axis2=-1).mean(-1)
    h[..., idx, idx] += DAMP * mean[..., None]
    return h


def _upper_inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """U with H⁻¹ = Uᵀ·U (upper triangular), for H (..., K, K) made positive definite."""
    inv = np.linalg.inv(_damped(h))
    inv = 0.5 * (inv + np.swapaxes(inv, -1, -2))
    return np.swapaxes(np.linalg.cholesky(inv), -1, -2)


def gptq_plain(matrix: np.ndarray, scales: np.ndarray, qmax: int, h: np.ndarray) -> np.ndarray:
    """Integer weights (K, C) for ``matrix`` (K, C) on per-column ``scales``, inputs' H (K, K)."""
    return _gptq(matrix, scales, qmax, _upper_inverse_cholesky(np.asarray(h, np.float64))[None])


def gptq_depthwise(matrix: np.ndarray, scales: np.ndarray, qmax: int, h: np.ndarray) -> np.ndarray:
    """Integer weights (K, C) of a depthwise layer; ``h`` (C, K, K): each channel's own H."""
    return _gptq(matrix, scales, qmax, _upper_inverse_cholesky(np.asarray(h, np.float64)))


def solver(lin: "simulate.Linear") -> Callable[..., np.ndarray] | None:
    """``gptq_plain`` or ``gptq_depthwise`` for a layer, or None where GPTQ does not apply:
    a depthwise layer with a channel multiplier, a grouped convolution."""
    from eq_tflite import simulate
    if lin.op.type == "DEPTHWISE_CONV_2D":
        return gptq_depthwise if lin.multiplier == 1 else None
    grouped = simulate.conv_groups(lin.op.type, lin.weight_shape, lin.in_channels) > 1
    return None if grouped else gptq_plain


def _gptq(matrix: np.ndarray, scales: np.ndarray, qmax: int, u: np.ndarray) -> np.ndarray:
    """The rounding loop; ``u`` (G, K, K): one factor shared by every column (G = 1) or one
    per column (G = C)."""
    w = np.asarray(matrix, np.float64).copy()
    s = np.where(scales > 0, scales, 1.0).astype(np.float64)
    q = np.zeros(w.shape, np.int64)
    for k in range(w.shape[0]):
        qk = np.clip(np.round(w[k] / s), -qmax, qmax)
        q[k] = qk
        err = (w[k] - qk * s) / u[:, k, k]
        if k + 1 < w.shape[0]:
            w[k + 1:] -= u[:, k, k + 1:].T * err
    q[:, scales <= 0] = 0
    return q


def corrected_target(matrix: np.ndarray, h: np.ndarray, cross: np.ndarray,
                     depthwise: bool) -> np.ndarray:
    """W + ΔW: the weights whose output on the shipped inputs X_q best matches the float
    layer's output X_f·W (ridge on ΔW with GPTQ's damping).

    ``cross`` = X_qᵀ·(X_f·W − X_q·W) (K, C). Since the least-squares residual is
    orthogonal to X_q's columns, ‖X_f·W − X_q·Q‖² = ‖X_q·(W + ΔW) − X_q·Q‖² + const,
    so GPTQ on W + ΔW with the same H minimizes the error against the float
    model's output, upstream quantization error included, instead of against
    the layer's own float weights on already-quantized inputs (the GPTAQ /
    "asymmetric calibration" target, Li et al., 2025).
    """
    hd = _damped(h)
    if depthwise:                                  # (C, K, K) with (K, C) -> per column
        delta = np.linalg.solve(hd, np.asarray(cross, np.float64).T[..., None])[..., 0].T
    else:
        delta = np.linalg.solve(hd, np.asarray(cross, np.float64))
    return np.asarray(matrix, np.float64) + delta


def input_hessian(rows: np.ndarray, depthwise: bool) -> np.ndarray:
    """H = XᵀX of im2col rows: (K, K) for plain rows (R, K), (C, K, K) for depthwise (R, K, C)."""
    x = np.asarray(rows, np.float64)
    if depthwise:
        return np.einsum("rkc,rlc->ckl", x, x)
    return x.T @ x
