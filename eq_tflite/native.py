"""The calibration search's fused C loops (``native/score.c``), with numpy's result when absent.

``pip install .`` builds ``eq_tflite/_eqscore*.so`` next to the delegate
(``EQ_TFLITE_NO_DELEGATE=1`` skips both: a pure-Python install). Each function
here returns what the numpy code in ``methods/easyquant.py`` computes: the
quantized rows and layer outputs bit for bit, the float64 cosine sums in
another summation order (last bits). Callers ask ``available`` and otherwise
run numpy (``histogram_into`` and ``plane_step`` ask themselves and say when
numpy must run). ``EQ_TFLITE_NO_NATIVE=1`` forces numpy (for comparisons).

Why C: a candidate's score is fake quantization, a product, bias, activation
and two sums, each a pass over the layer's sampled rows in numpy. Fused, each
value is read once; EfficientNet-Lite1's depthwise searches took 15.5 s instead
of 38.7 s (BENCHMARKS.md, "The search in C").
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

from eq_tflite import grid

#: Fused activations the C loops apply, as clip bounds (others: numpy).
ACTIVATION_BOUNDS = {
    "NONE": (-np.inf, np.inf), "RELU": (0.0, np.inf), "RELU6": (0.0, 6.0),
    "RELU_N1_TO_1": (-1.0, 1.0), "RELU_0_TO_1": (0.0, 1.0),
}

_F = ctypes.POINTER(ctypes.c_float)
_D = ctypes.POINTER(ctypes.c_double)
_L = ctypes.POINTER(ctypes.c_int64)
_I64, _FL, _INT, _DBL, _VP = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_double, \
    ctypes.c_void_p

#: The library's functions: (return type, argument types), as ``native/score.c`` declares them.
_SIGNATURES = {
    "eqs_fake_quant": (None, [_F, _F, _I64, _FL, _FL, _FL, _INT, _INT]),
    "eqs_sample_scores": (None, [_F, _F, _F, _F, _F, *[_I64] * 5, _F, _F, _F, _FL, _FL, _D, _D,
                                 _INT]),
    "eqs_channel_scores": (None, [_F, _F, _F, _F, _F, *[_I64] * 4, _FL, _FL, _D, _D, _INT]),
    "eqs_depthwise_gram": (None, [_F, _I64, _I64, _I64, _D, _INT]),
    "eqs_fake_quant_weights": (None, [_F, _I64, _I64, _D, _I64, _INT, _F, _INT]),
    "eqs_tails": (_I64, [_F, _I64, _FL, _FL, _F, _INT]),
    "eqs_gather_windows": (None, [_F, _I64, _I64, _I64, _L, _L, _L, *[_I64] * 9, _FL, _F, _INT]),
    "eqs_gram_parts": (None, [_F, _D, _F, _D, _D, _INT, _I64, _I64, _I64, _D, _D, _D, _INT]),
    "eqs_histogram": (_INT, [_F, _I64, _D, _I64, _DBL, _DBL, _L, _INT]),
    "eqs_depthwise_conv": (None, [_F, *[_I64] * 5, _F, *[_I64] * 10, _F, _INT]),
    "eqs_plane_step": (_I64, [_D, _INT, _D, _D, _D, _D, _VP, _VP, _VP, _DBL, _I64, _I64, _INT]),
}


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("EQ_TFLITE_NO_NATIVE") == "1":
        return None
    from eq_tflite.delegate import package_dirs  # the same search as the delegate's library
    for d in package_dirs():
        for path in sorted(glob.glob(os.path.join(d, "_eqscore*.so"))):
            try:
                lib = ctypes.CDLL(path)
                for name, (restype, argtypes) in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
            except (OSError, AttributeError):  # not loadable, or an older build
                continue
            return lib
    return None


def available() -> bool:
    """True when the C loops are built and not switched off."""
    return _library() is not None


@functools.lru_cache(maxsize=1)
def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _ptr(a: np.ndarray | None, kind=_F):
    return None if a is None else a.ctypes.data_as(kind)


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, np.float32)


def fake_quant_into(x: np.ndarray, scale: float, zp: int, out: np.ndarray,
                    clip: tuple[int, int] = (grid.INT8_MIN, grid.INT8_MAX),
                    scale_back: bool = True) -> np.ndarray:
    """``clip(round(x / scale), clip - zp) (* scale)`` of float32 ``x`` into ``out``."""
    _check(x, out)
    _library().eqs_fake_quant(_ptr(x), _ptr(out), x.size, np.float32(scale),
                              float(clip[0] - zp), float(clip[1] - zp), int(scale_back),
                              _threads())
    return out


def _biases(bias: np.ndarray | None, j: int, c: int) -> np.ndarray | None:
    return None if bias is None else np.ascontiguousarray(
        np.broadcast_to(np.asarray(bias, np.float32), (j, c)))


def _check(*arrays: np.ndarray | None) -> None:
    for a in arrays:
        if a is not None and (a.dtype != np.float32 or not a.flags.c_contiguous):
            raise ValueError("the C loops take C-contiguous float32 arrays")


def sample_scores(target: np.ndarray, activation: str, bias: np.ndarray | None, *,
                  rows: np.ndarray | None = None, matrix: np.ndarray | None = None,
                  cands: list[tuple[float, int]] | None = None,
                  clip: tuple[int, int] = (grid.INT8_MIN, grid.INT8_MAX),
                  products: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (dot, norm), each (J, S), of layer outputs with ``target`` (S, P, C).

    Depthwise (multiplier 1): ``rows`` (S*P, K, C) quantized with each input
    candidate (scale, zp) of ``cands`` onto ``clip``, times ``matrix`` (K, C),
    plus ``bias`` (C,) or (J, C), then ``activation``. Else ``products``
    (S*P, C): one candidate's product.
    """
    s, p, c = target.shape
    if products is not None:
        cands, k = [(1.0, 0)], 0
    else:
        k = rows.shape[1]
    j = len(cands)
    b, w = _biases(bias, j, c), None if matrix is None else _f32(matrix)
    _check(target, rows, products)
    scales = np.array([a[0] for a in cands], np.float32)
    lo = np.array([clip[0] - a[1] for a in cands], np.float32)
    hi = np.array([clip[1] - a[1] for a in cands], np.float32)
    dot, norm = np.empty((j, s)), np.empty((j, s))
    _library().eqs_sample_scores(_ptr(rows), _ptr(w), _ptr(products), _ptr(b), _ptr(target),
                                 s * p, p, k, c, j, _ptr(scales), _ptr(lo), _ptr(hi),
                                 *ACTIVATION_BOUNDS[activation], _ptr(dot, _D), _ptr(norm, _D),
                                 _threads())
    return dot, norm


def channel_scores(target: np.ndarray, activation: str, bias: np.ndarray | None, *,
                   rows: np.ndarray | None = None, weights: np.ndarray | None = None,
                   products: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (dot, norm), each (J, C), of J candidate outputs with ``target`` (R, C).

    Depthwise (multiplier 1): fake-quantized ``rows`` (R, K, C) times candidate
    ``weights`` (K, J, C); else ``products`` (R, J, C). Plus ``bias`` (J, C),
    then ``activation``.
    """
    r, c = target.shape
    if products is not None:
        j, k = products.shape[1], 0
    else:
        k, j = weights.shape[:2]
        weights = _f32(weights)
    b = _biases(bias, j, c)
    _check(target, rows, products, weights)
    dot, norm = np.empty((j, c)), np.empty((j, c))
    _library().eqs_channel_scores(_ptr(rows), _ptr(weights), _ptr(products), _ptr(b),
                                  _ptr(target), r, k, c, j, *ACTIVATION_BOUNDS[activation],
                                  _ptr(dot, _D), _ptr(norm, _D), _threads())
    return dot, norm


def depthwise_gram(q: np.ndarray) -> np.ndarray:
    """Per-channel Gram matrices (C, K, K) in float64 of integer-valued rows ``q`` (R, K, C).

    Exact (integers of magnitude <= 255 over fewer than 2**37 rows), so equal to
    any other exact summation.
    """
    _check(q)
    r, k, c = q.shape
    out = np.empty((k, k, c))
    _library().eqs_depthwise_gram(_ptr(q), r, k, c, _ptr(out, _D), _threads())
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def fake_quant_weights(matrix: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """``grid.fake_quant_weights`` of ``matrix`` (K, C) for J candidate steps (J, C): (K, J, C)."""
    _check(matrix)
    steps = np.ascontiguousarray(scales, np.float64)
    j, c = steps.shape
    out = np.empty((matrix.shape[0], j, c), np.float32)
    _library().eqs_fake_quant_weights(_ptr(matrix), matrix.shape[0], c, _ptr(steps, _D), j, bits,
                                      _ptr(out), _threads())
    return out


def tails(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The values of float32 ``x`` below ``lo`` or above ``hi`` (compared as float32, as
    numpy compares a float32 array with a Python float), in order."""
    flat = x.reshape(-1)
    _check(flat)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    n = _library().eqs_tails(_ptr(flat), flat.size, lo32, hi32, None, _threads())
    out = np.empty(n, np.float32)
    _library().eqs_tails(_ptr(flat), flat.size, lo32, hi32, _ptr(out), _threads())
    return out


def gather_windows(x: np.ndarray, positions: tuple[np.ndarray, np.ndarray, np.ndarray],
                   kernel: tuple[int, int], stride: tuple[int, int],
                   dilation: tuple[int, int], pads: tuple[int, int]) -> np.ndarray:
    """Receptive fields (R, KH, KW, C) of NHWC float32 ``x`` at output ``positions``
    (sample, row, column index arrays): ``kernels.windows(...)[positions]``, zeros
    where the window leaves the tensor (``pads``: SAME padding before, rows and columns)."""
    _check(x)
    n, h, w, c = x.shape
    idx = [np.ascontiguousarray(p, np.int64) for p in positions]
    if idx[0].size and (idx[0].min() < 0 or idx[0].max() >= n):
        raise ValueError("sample index out of range")
    out = np.empty((idx[0].size, *kernel, c), np.float32)
    _library().eqs_gather_windows(_ptr(x), h, w, c, *(_ptr(i, _L) for i in idx), idx[0].size,
                                  *kernel, *stride, *dilation, *pads, 0.0, _ptr(out), _threads())
    return out


def gram_parts(w: np.ndarray, xy: np.ndarray, gw: np.ndarray, x_sum: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``GramScorer``'s sums for candidate weights ``w`` (K, J, C) float32: (J, C) each of
    ``einsum("kjc,kc->jc", w, xy)``, ``einsum("kjc,kjc->jc", w, gw)`` and ``x_sum``
    (K,) or (K, C) against ``w``, in float64 summing k in order (as einsum does)."""
    _check(w)
    k, j, c = w.shape
    xy, x_sum = np.ascontiguousarray(xy, np.float64), np.ascontiguousarray(x_sum, np.float64)
    gw = np.ascontiguousarray(gw)
    if gw.dtype not in (np.float32, np.float64) or gw.shape != w.shape:
        raise ValueError("gw must be float32 or float64 of w's shape")
    out = [np.empty((j, c)) for _ in range(3)]
    _library().eqs_gram_parts(_ptr(w), _ptr(xy, _D), _ptr(gw) if gw.dtype == np.float32 else None,
                              _ptr(gw, _D) if gw.dtype == np.float64 else None, _ptr(x_sum, _D),
                              int(x_sum.ndim == 2), k, j, c, *(_ptr(o, _D) for o in out),
                              _threads())
    return out[0], out[1], out[2]


def histogram_into(counts: np.ndarray, values: np.ndarray, value_range: tuple[float, float]
                   ) -> bool:
    """``counts += np.histogram(values, len(counts), value_range)[0]`` for float32
    ``values``, the same counts (the same edges and comparisons); False (nothing
    added) where this does not apply: numpy then counts."""
    flat = values.reshape(-1)
    first, last = value_range
    if (not available() or flat.dtype != np.float32 or not flat.flags.c_contiguous
            or counts.dtype != np.int64 or not first < last):
        return False
    bins = len(counts)
    edges = np.histogram_bin_edges(flat[:0], bins, value_range).astype(np.float64)
    compare = np.result_type(flat, first, last)  # the dtype numpy's range test compares in
    lo, hi = (float(np.asarray(v).astype(compare)) for v in value_range)
    ok = _library().eqs_histogram(_ptr(flat), flat.size, _ptr(edges, _D), bins, lo, hi,
                                  _ptr(counts, _L),
                                  _threads())
    if ok != 0:
        raise MemoryError("eqs_histogram: out of memory")
    return True


def depthwise_conv(x: np.ndarray, matrix: np.ndarray, multiplier: int,
                   kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                   pads: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """A whole depthwise layer (N, Ho, Wo, C·M) of NHWC float32 ``x``, zero padding, before
    the bias: each output sums its taps in order in float32 (as ``Linear`` does in numpy)."""
    _check(x)
    n, h, w, c = x.shape
    wt = np.ascontiguousarray(matrix.reshape(kernel[0] * kernel[1], c * multiplier), np.float32)
    out = np.empty((n, *out_hw, c * multiplier), np.float32)
    _library().eqs_depthwise_conv(_ptr(x), n, h, w, c, multiplier, _ptr(wt), *kernel, *stride,
                                  *dilation, *pads, *out_hw, _ptr(out), _threads())
    return out


def plane_step(h: np.ndarray, diag: np.ndarray, g: np.ndarray, hq: np.ndarray,
               alpha: np.ndarray, plane: np.ndarray, q: np.ndarray, free: np.ndarray | None,
               p: float) -> int | None:
    """Bit-Split's plane step (``bitsplit._plane_step``) in place on ``plane``, ``q`` and
    ``hq``; the entries changed. None (nothing changed) when an array is not in the
    layout the loop reads: numpy then runs the step."""
    k, c = q.shape
    per_channel = h.ndim == 3
    arrays = [(h, np.float64), (diag, np.float64), (g, np.float64), (hq, np.float64),
              (alpha, np.float64), (plane, np.int8), (q, np.int64)]
    if not available() or any(a.dtype != t or not a.flags.c_contiguous for a, t in arrays):
        return None
    if free is not None:
        free = np.ascontiguousarray(free, np.bool_)
    if (hq.shape != (k, c) or plane.shape != (k, c) or alpha.shape != (c,)
            or diag.size != (k * c if per_channel else k)):
        return None
    n = _library().eqs_plane_step(_ptr(h, _D), int(per_channel), _ptr(diag, _D), _ptr(g, _D),
                                  _ptr(hq, _D), _ptr(alpha, _D), plane.ctypes.data,
                                  q.ctypes.data, None if free is None else free.ctypes.data,
                                  float(p), k, c, _threads())
    if n < 0:
        raise MemoryError("eqs_plane_step: out of memory")
    return int(n)
