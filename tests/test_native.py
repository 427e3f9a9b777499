"""The search's C loops (eq_tflite/native.py) against the numpy code they replace."""
from __future__ import annotations

import os

import numpy as np
import pytest

from eq_tflite import grid, methods, native, simulate
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.methods import easyquant
from eq_tflite.plan import MethodContext


@pytest.fixture(autouse=True)
def _library_built():
    """Skips without the library (a pure-Python install), except under CI=true: a broken
    build must not pass as skips."""
    if not native.available():
        msg = "eq_tflite/_eqscore*.so is not built (pip install .)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("CI=true but " + msg)
        pytest.skip(msg)


CLIP = (-64, 63)  # 7-bit levels


def _rows(rng, r=600, k=9, c=37, spread=3.0) -> np.ndarray:
    x = (rng.standard_normal((r, k, c)) * spread).astype(np.float32)
    # values on the rounding ties and the clip edges of the candidates below
    x.reshape(-1)[:200] = (np.arange(200, dtype=np.float32) - 100) * np.float32(0.5 * 0.0371)
    return x


CANDS = [(0.0371, 3), (0.0137, -5), (0.25, 0), (0.0371 * 1.5, 64)]


@pytest.mark.parametrize("scale_back", [True, False])
def test_fake_quant_is_numpys_bit_for_bit(scale_back):
    x = _rows(np.random.default_rng(0))
    for scale, zp in CANDS:
        want = (easyquant.fake_quant_into if scale_back else easyquant.quantize_into)(
            x, scale, zp, np.empty_like(x), CLIP)
        got = native.fake_quant_into(x, scale, zp, np.empty_like(x), CLIP, scale_back)
        np.testing.assert_array_equal(got, want)
        if scale_back:
            np.testing.assert_array_equal(got, grid.fake_quant_activation(x, scale, zp, CLIP))


@pytest.mark.parametrize("activation", ["RELU6", "NONE", "RELU"])
def test_depthwise_sample_scores(activation):
    """Fused quantize-product-bias-activation sums: the products are einsum's bit for bit
    (the fused sums equal the sums of einsum's products), the float64 sums agree to 1e-12."""
    rng = np.random.default_rng(1)
    s, p, c = 6, 100, 37
    x = _rows(rng, s * p, 9, c)
    w = rng.standard_normal((9, c)).astype(np.float32)
    t = rng.standard_normal((s, p, c)).astype(np.float32)
    bias = rng.standard_normal((len(CANDS), c)).astype(np.float32)
    dot, norm = native.sample_scores(t, activation, bias, rows=x, matrix=w, cands=CANDS, clip=CLIP)
    assert dot.shape == norm.shape == (len(CANDS), s)
    for i, a in enumerate(CANDS):
        xq = easyquant.fake_quant_into(x, *a, np.empty_like(x), CLIP)
        product = np.einsum("rkc,kc->rc", xq, w)
        d2, n2 = native.sample_scores(t, activation, bias[i], products=product)
        np.testing.assert_array_equal(d2[0], dot[i])
        np.testing.assert_array_equal(n2[0], norm[i])
        out = simulate.apply_activation(activation, product + bias[i]).reshape(s, -1)
        want_dot = np.einsum("sk,sk->s", out, t.reshape(s, -1), dtype=np.float64)
        want_norm = np.einsum("sk,sk->s", out, out, dtype=np.float64)
        np.testing.assert_allclose(dot[i], want_dot, rtol=1e-12)
        np.testing.assert_allclose(norm[i], want_norm, rtol=1e-12)
        assert np.all(norm[i] > 0)


def test_channel_scores():
    """Per-channel sums over rows of J candidate weight matrices: fused depthwise and
    products give the same numbers; both equal numpy's float64 sums."""
    rng = np.random.default_rng(2)
    r, k, j, c = 700, 25, 5, 19
    xq = easyquant.fake_quant_into(_rows(rng, r, k, c), *CANDS[0], np.empty((r, k, c), np.float32),
                                   CLIP)
    wq = rng.standard_normal((k, j, c)).astype(np.float32)
    t = rng.standard_normal((r, c)).astype(np.float32)
    bias = rng.standard_normal((j, c)).astype(np.float32)
    dot, norm = native.channel_scores(t, "RELU6", bias, rows=xq, weights=wq)
    product = np.einsum("rkc,kjc->rjc", xq, wq)
    d2, n2 = native.channel_scores(t, "RELU6", bias, products=np.ascontiguousarray(product))
    np.testing.assert_array_equal(dot, d2)
    np.testing.assert_array_equal(norm, n2)
    out = np.clip(product + bias, 0, 6)
    np.testing.assert_allclose(dot, np.einsum("rjc,rc->jc", out, t, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(norm, np.einsum("rjc,rjc->jc", out, out, dtype=np.float64),
                               rtol=1e-12)


@pytest.mark.parametrize("c", [1, 64, 130])
def test_depthwise_gram_is_exact(c):
    q = np.random.default_rng(3).integers(-255, 256, (1000, 9, c)).astype(np.float32)
    want = np.einsum("rkc,rlc->ckl", q.astype(np.float64), q.astype(np.float64))
    np.testing.assert_array_equal(native.depthwise_gram(q), want)


def test_rejects_arrays_it_cannot_read():
    x = np.zeros((4, 9, 3), np.float64)
    with pytest.raises(ValueError, match="float32"):
        native.sample_scores(np.zeros((1, 4, 3), np.float32), "NONE", None, rows=x,
                             matrix=np.zeros((9, 3), np.float32), cands=CANDS[:1])


def _plan(model: bytes, calib: np.ndarray, bits: int):
    graph = Graph.from_tflite(model)
    ctx = MethodContext(graph, model, {graph.tensors[graph.inputs[0]].name: calib},
                        BitWidths(bits, bits), options={"eq_steps": 40}, progress=False)
    return methods.get("easyquant")(ctx)


@pytest.mark.parametrize("bits", [7, 4])
def test_easyquant_makes_the_numpy_choices(keras_floats, fmnist_calib, monkeypatch, bits):
    """The whole search (depthwise, 1x1 and dense layers; W4 with GPTQ) picks the same scales
    with the C loops as with numpy."""
    model = keras_floats["mobilenetv2"]
    fast = _plan(model, fmnist_calib[:16], bits)
    monkeypatch.setattr(native, "_library", lambda: None)
    assert not native.available()
    slow = _plan(model, fmnist_calib[:16], bits)
    assert fast.activation_ranges == slow.activation_ranges
    assert fast.weight_scales.keys() == slow.weight_scales.keys()
    for name, scales in fast.weight_scales.items():
        np.testing.assert_array_equal(scales, slow.weight_scales[name])
    assert [r["cos_eq"] for r in fast.layers] == pytest.approx([r["cos_eq"] for r in slow.layers],
                                                               abs=1e-9)


def test_weight_candidates_are_the_grids():
    rng = np.random.default_rng(4)
    m = (rng.standard_normal((50, 13)) * 0.2).astype(np.float32)
    base = grid.weight_scales(m, 1, 4)
    steps = np.concatenate([base[None] / np.linspace(0.5, 2.0, 7)[:, None], np.zeros((1, 13))])
    steps[:, 3] = 0.0  # a dead channel
    got = native.fake_quant_weights(m, steps, 4)
    want = np.stack([grid.fake_quant_weights(m, s, 1, 4) for s in steps], axis=1)
    np.testing.assert_array_equal(got, want)


def test_tails_are_numpys():
    x = np.random.default_rng(5).standard_normal(300_001).astype(np.float32)
    x[:3] = [np.float32(0.1), np.float32(-0.2), np.nan]
    for lo, hi in [(-0.2, float(np.float32(0.1)) + 1e-12), (-3.0, 2.5), (-10.0, 10.0)]:
        want = x[(x < lo) | (x > hi)]
        np.testing.assert_array_equal(native.tails(x, lo, hi), want)
    assert native.tails(x[:0], -1.0, 1.0).size == 0


def _depthwise_layer(padding: str, stride: int, dilation: int, kernel: int, channels: int,
                     multiplier: int) -> simulate.Linear:
    """A DEPTHWISE_CONV_2D ``Linear`` with these window options."""
    from types import SimpleNamespace

    from eq_tflite.graph import Op
    from eq_tflite.io.codec import schema
    o = SimpleNamespace(padding=getattr(schema.Padding, padding), strideH=stride, strideW=stride,
                        dilationHFactor=dilation, dilationWFactor=dilation)
    return simulate.Linear(Op(0, "DEPTHWISE_CONV_2D", [0, 1, 2], [3], options=o),
                           (1, kernel, kernel, channels * multiplier), channels)


@pytest.mark.parametrize("padding,stride,dilation,kernel", [
    ("SAME", 1, 1, 3), ("SAME", 2, 1, 5), ("VALID", 2, 1, 3), ("SAME", 1, 2, 3), ("VALID", 1, 1, 1)])
def test_sampled_im2col_rows_are_the_window_views(padding, stride, dilation, kernel):
    """Linear.rows at sampled positions (C gather) equals indexing kernels.windows."""
    from eq_tflite import kernels
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 11, 9, 7)).astype(np.float32)
    lin = _depthwise_layer(padding, stride, dilation, kernel, 7, 1)
    v = kernels.windows(x, kernel, kernel, (stride, stride), (dilation, dilation),
                        padding == "SAME")
    pos = (rng.integers(0, 5, 300), rng.integers(0, v.shape[1], 300),
           rng.integers(0, v.shape[2], 300))
    want = v[pos].reshape(300, -1, 7)
    np.testing.assert_array_equal(lin.rows(x, pos), want)
    with pytest.raises(ValueError, match="sample index"):
        native.gather_windows(x, (pos[0] + 5, *pos[1:]), (kernel, kernel), (stride, stride),
                              (dilation, dilation), (0, 0))


@pytest.mark.parametrize("op_type", ["FULLY_CONNECTED", "DEPTHWISE_CONV_2D"])
def test_gram_scores_are_numpys_bit_for_bit(op_type, monkeypatch):
    """GramScorer.cosines with the C sums equals its numpy einsums exactly."""
    from eq_tflite.methods.easyquant import GramScorer
    rng = np.random.default_rng(7)
    r, k, c, j = 500, 9 if op_type == "DEPTHWISE_CONV_2D" else 40, 11, 6
    x = rng.integers(-60, 60, (r, k, c) if op_type == "DEPTHWISE_CONV_2D" else (r, k)
                     ).astype(np.float32)
    y = rng.standard_normal((r, c)).astype(np.float32)
    w = (rng.standard_normal((k, j, c)) * 0.1).astype(np.float32)
    bias = rng.standard_normal((j, c))
    scorer = GramScorer(x, y, step=0.02)
    fast = scorer.cosines(w, bias)
    monkeypatch.setattr(native, "_library", lambda: None)
    np.testing.assert_array_equal(fast, scorer.cosines(w, bias))


@pytest.mark.parametrize("value_range", [(-1.5, 2.25), (np.float32(-0.3), np.float32(0.7)),
                                         (np.float64(-2.0), np.float64(1e-3)), (0.0, 6.0)])
def test_histogram_is_numpys(value_range):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(200_003) * 1.5).astype(np.float32)
    edges = np.histogram_bin_edges(x, 64, value_range)
    x[:65] = edges.astype(np.float32)  # values on every edge
    x[65:70] = [np.nan, np.inf, -np.inf, np.float32(value_range[0]), np.float32(value_range[1])]
    counts = np.full(64, 3, np.int64)
    assert native.histogram_into(counts, x, value_range)
    np.testing.assert_array_equal(counts - 3, np.histogram(x, 64, value_range)[0])
    assert not native.histogram_into(counts, x.astype(np.float64), value_range)


@pytest.mark.parametrize("padding,stride,dilation,kernel,multiplier", [
    ("SAME", 1, 1, 3, 1), ("SAME", 2, 1, 5, 1), ("VALID", 2, 1, 3, 2), ("SAME", 1, 2, 3, 3),
    ("VALID", 1, 1, 1, 1)])
def test_whole_depthwise_layer_is_numpys(padding, stride, dilation, kernel, multiplier,
                                         monkeypatch):
    """Linear.run on a depthwise layer: the C convolution equals the numpy tap loop bit for bit."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 12, 10, 6)).astype(np.float32)
    lin = _depthwise_layer(padding, stride, dilation, kernel, 6, multiplier)
    m = rng.standard_normal((kernel * kernel, 6 * multiplier)).astype(np.float32)
    fast = lin._depthwise(x, m)
    monkeypatch.setattr(native, "_library", lambda: None)
    np.testing.assert_array_equal(fast, lin._depthwise(x, m))


@pytest.mark.parametrize("per_channel,free", [(False, False), (True, False), (False, True)])
def test_bitsplit_plane_steps_are_numpys(per_channel, free, monkeypatch):
    """Bit-Split's descent (every plane step) with the C loop equals numpy's exactly."""
    from eq_tflite.methods.bitsplit import ResponseProblem, bit_split
    rng = np.random.default_rng(10)
    r, k, c = 300, 12, 9
    x = rng.standard_normal((r, k, c) if per_channel else (r, k))
    x[:, 1] += 0.8 * x[:, 0]  # correlated inputs: the descent beats plain rounding
    w = rng.standard_normal((k, c)) * 0.3
    y = (np.einsum("rkc,kc->rc", x, w) if per_channel else x @ w) + 0.1 * rng.standard_normal((r, c))
    mask = rng.random((k, c)) > 0.2 if free else None
    problem = ResponseProblem(x, y, with_bias=True).ridged(0.1, w)
    fast = bit_split(problem, w, 4, free=mask)
    monkeypatch.setattr(native, "_library", lambda: None)
    slow = bit_split(problem, w, 4, free=mask)
    np.testing.assert_array_equal(fast.q, slow.q)
    np.testing.assert_array_equal(fast.alpha, slow.alpha)
    assert fast.history == slow.history and fast.steps == slow.steps
    assert fast.history[-1] < fast.history[0]  # the descent did something


def test_bitsplit_makes_the_numpy_choices(keras_floats, fmnist_calib, monkeypatch):
    """The whole Bit-Split W4A8 method (plane steps, depthwise simulation, sampled rows,
    histograms) picks the same numbers with the C loops as with numpy."""
    model = keras_floats["mobilenetv2"]
    graph = Graph.from_tflite(model)

    def plan():
        ctx = MethodContext(graph, model, {graph.tensors[graph.inputs[0]].name: fmnist_calib[:16]},
                            BitWidths(4, 8), progress=False)
        return methods.get("bitsplit")(ctx)
    fast = plan()
    monkeypatch.setattr(native, "_library", lambda: None)
    slow = plan()
    assert fast.activation_ranges == slow.activation_ranges
    for name in fast.weight_scales:
        np.testing.assert_array_equal(fast.weight_scales[name], slow.weight_scales[name])
    assert fast.int_weights.keys() == slow.int_weights.keys() and fast.int_weights
    for name in fast.int_weights:
        np.testing.assert_array_equal(fast.int_weights[name], slow.int_weights[name])


def test_switch_off_and_unloadable_library(monkeypatch, tmp_path):
    """EQ_TFLITE_NO_NATIVE=1 switches the loops off; a library that does not load is skipped
    (numpy runs), not an error."""
    monkeypatch.setenv("EQ_TFLITE_NO_NATIVE", "1")
    native._library.cache_clear()
    try:
        assert not native.available()
        monkeypatch.delenv("EQ_TFLITE_NO_NATIVE")
        bad = tmp_path / "eq_tflite"
        bad.mkdir()
        (bad / "_eqscore.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a library")
        import eq_tflite.delegate as delegate
        real = delegate.package_dirs
        monkeypatch.setattr(delegate, "package_dirs", lambda: [str(bad)])
        native._library.cache_clear()
        assert not native.available()
        monkeypatch.setattr(delegate, "package_dirs", lambda: [str(bad), *real()])
        native._library.cache_clear()
        assert native.available()
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
