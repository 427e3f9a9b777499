"""EasyQuant: never worse than its initial scales, deterministic, robust to degenerate layers."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import grid, methods, resolve, simulate
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.methods.easyquant import fake_quant_into
from eq_tflite.plan import MethodContext, Plan


def _run(model: bytes, calib: np.ndarray, bits: int = 7, **options) -> tuple[Graph, Plan]:
    graph = Graph.from_tflite(model)
    ctx = MethodContext(graph, model, {graph.tensors[graph.inputs[0]].name: calib},
                        BitWidths(bits, bits), options={"eq_steps": 40, **options}, progress=False)
    return graph, methods.get("easyquant")(ctx)


@pytest.fixture(scope="module")
def eq_plan(small_float_tflite, small_calibration) -> tuple[Graph, Plan]:
    return _run(small_float_tflite, small_calibration, eq_max_rows=1024)


def test_every_layer_at_least_as_good_as_initial_scales(eq_plan):
    graph, plan = eq_plan
    assert [r["op_index"] for r in plan.layers] == [op.index for op in graph.weighted_ops()]
    for row in plan.layers:
        assert row["cos_eq"] >= row["cos_init"], row
    assert np.mean([r["cos_eq"] - r["cos_init"] for r in plan.layers]) > 0


def test_plan_covers_every_tensor_and_ties(eq_plan):
    graph, plan = eq_plan
    names = {graph.tensors[t].name for t in graph.activation_tensors()}
    assert set(plan.activation_ranges) == names
    for op in graph.weighted_ops():
        scales = plan.weight_scales[graph.tensors[op.weight_input].name]
        assert scales.shape == (graph.tensors[op.weight_input].shape[op.channel_axis],)
        assert np.all(np.isfinite(scales)) and np.all(scales > 0)
    pool = next(op for op in graph.ops if op.type == "MAX_POOL_2D")
    group = resolve.tied_groups(graph)[pool.outputs[0]]
    ranges = {plan.activation_ranges[graph.tensors[t].name] for t in group}
    assert len(ranges) == 1  # searched once, written on every tied tensor


def test_deterministic_for_a_seed(small_float_tflite, small_calibration, eq_plan):
    _, plan = eq_plan
    _, again = _run(small_float_tflite, small_calibration, eq_max_rows=1024)
    assert again.activation_ranges == plan.activation_ranges
    for name, scales in plan.weight_scales.items():
        np.testing.assert_array_equal(again.weight_scales[name], scales)


def test_float_inputs_variant(small_float_tflite, small_calibration):
    options = dict(eq_rounds=2, eq_objective="linear", eq_max_rows=512)
    _, plan = _run(small_float_tflite, small_calibration, eq_inputs="float", **options)
    _, quantized = _run(small_float_tflite, small_calibration, eq_inputs="quantized", **options)
    assert all(r["cos_eq"] >= r["cos_init"] for r in plan.layers)
    # The first layer reads the model input either way; later ones read float inputs
    # (no upstream quantization error) instead of the quantized model's.
    assert plan.layers[0]["cos_init"] == quantized.layers[0]["cos_init"]
    assert all(f["cos_init"] > q["cos_init"] for f, q in zip(plan.layers[1:], quantized.layers[1:]))


def _degenerate_model() -> bytes:
    """conv1 has a dead output channel; conv2 reads a ReLU that is always 0."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((8, 8, 2))
    c1 = L.Conv2D(4, 3, padding="same", activation="relu")
    c2 = L.Conv2D(3, 1)
    zero = L.Conv2D(2, 1, activation="relu")
    x = c1(inp)
    out = L.Add()([c2(x), L.Conv2D(3, 1)(zero(x))])
    model = keras.Model(inp, out)
    w, b = c1.get_weights()
    w[..., 1] = 0.0
    c1.set_weights([w, b])
    w, b = zero.get_weights()
    zero.set_weights([w * 0, b * 0 - 1.0])
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def test_dead_channel_and_constant_activation_give_finite_scales():
    calib = np.random.default_rng(0).random((8, 8, 8, 2), dtype=np.float32)
    graph, plan = _run(_degenerate_model(), calib)
    for r in plan.layers:
        assert np.isfinite(r["cos_eq"]) and r["cos_eq"] >= r["cos_init"]
        assert np.isfinite(r["act_scale_ratio"]) and np.isfinite(r["w_ratio_mean"])
    for scales in plan.weight_scales.values():
        assert np.all(np.isfinite(scales))
    assert any(np.any(s == 0) for s in plan.weight_scales.values())  # the dead channel
    for lo, hi in plan.activation_ranges.values():
        assert np.isfinite(lo) and np.isfinite(hi)
        scale, _ = grid.activation_params(lo, hi, 7)
        assert np.isfinite(scale) and scale > 0


def test_fast_fake_quant_is_the_grids_bit_for_bit():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((257, 33)) * 5).astype(np.float32)
    for scale, zp in [(0.0123, -3), (1 / 127, 64), (0.5, -128), (3.1e-5, 0)]:
        np.testing.assert_array_equal(fake_quant_into(x, scale, zp, np.empty_like(x)),
                                      grid.fake_quant_activation(x, scale, zp))


def test_bad_option_is_a_clear_error(small_float_tflite, small_calibration):
    with pytest.raises(EqTfliteError, match="eq_init"):
        _run(small_float_tflite, small_calibration, eq_init="entropy")


def _problem(op_type: str, rng: np.random.Generator, k: int = 12, c: int = 6, r: int = 400,
             bits: int = 6) -> "LayerProblem":
    """A random linear-objective layer: rows (R, K) or depthwise (R, K, C), target, bias."""
    from eq_tflite.graph import Op
    from eq_tflite.methods.easyquant import LayerProblem
    lin = simulate.Linear(Op(0, op_type, [0, 1, 2], [3]), (c, k) if op_type == "FULLY_CONNECTED"
                          else (1, 3, 3, c), c if op_type == "DEPTHWISE_CONV_2D" else k)
    shape = (r, 9, c) if op_type == "DEPTHWISE_CONV_2D" else (r, k)
    rows = rng.normal(size=shape).astype(np.float32)
    matrix = rng.normal(size=(shape[1], c)).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)
    exact = lin.apply(rows, matrix) + bias
    target = (exact + 0.05 * rng.normal(size=exact.shape)).astype(np.float32).reshape(r, 1, c)
    return LayerProblem(lin, rows, target, matrix, bias, "NONE", BitWidths(bits, bits))


@pytest.mark.parametrize("op_type", ["FULLY_CONNECTED", "DEPTHWISE_CONV_2D"])
def test_gram_scores_equal_the_direct_computation(op_type):
    """The fast weight search (XᵀX, XᵀY) gives the direct cosines to 1e-6 and the same choice."""
    from eq_tflite.methods.easyquant import GramScorer, _float32
    rng = np.random.default_rng(3)
    p = _problem(op_type, rng)
    assert p.uses_gram()
    act = grid.activation_params(-3.0, 3.0, 6)
    xq = grid.fake_quant_activation(p.rows, *act, clip=p.bits.act_clip)
    initial = _float32(grid.weight_scales(p.matrix, 1, 6))
    mults = np.linspace(0.5, 2.0, 25)
    cands = _float32(initial[None] / mults[:, None])
    wq = p.weight_candidates(cands)
    bias = np.stack([p._bias(act[0], sc) for sc in cands])
    fast = GramScorer(xq, p.target.reshape(len(xq), -1)).cosines(wq, bias)
    direct = np.empty_like(fast)
    for j in range(len(cands)):
        out = p.lin.apply(xq.astype(np.float64), wq[:, j].astype(np.float64)) + bias[j]
        t = p.target.reshape(len(xq), -1).astype(np.float64)
        direct[j] = (out * t).sum(0) / np.sqrt((out * out).sum(0) * (t * t).sum(0))
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-6)
    chosen = p.search_weights(act, initial, initial, mults)
    all_scales = np.concatenate([initial[None], cands])
    all_cos = np.concatenate([_direct_cosines(p, act, initial)[None], direct])
    picked = np.array([np.flatnonzero(all_scales[:, c] == chosen[c])[0] for c in range(6)])
    assert np.all(all_cos[picked, np.arange(6)] >= all_cos.max(axis=0) - 1e-6)


def _direct_cosines(p, act, scales) -> np.ndarray:
    """Per-channel cosine of the current scales (the first candidate), computed directly."""
    xq = grid.fake_quant_activation(p.rows, *act, clip=p.bits.act_clip).astype(np.float64)
    w = grid.fake_quant_weights(p.matrix, scales, 1, p.bits.weights).astype(np.float64)
    out = p.lin.apply(xq, w) + p._bias(act[0], scales)
    t = p.target.reshape(len(xq), -1).astype(np.float64)
    return (out * t).sum(0) / np.sqrt((out * out).sum(0) * (t * t).sum(0))


def test_small_k_layer_scores_equal_the_direct_computation():
    """Input search with K < C (norms from W Wᵀ) gives the directly computed layer cosines."""
    rng = np.random.default_rng(4)
    p = _problem("FULLY_CONNECTED", rng, k=4, c=12, r=300)
    cands = [grid.activation_params(-m, m, 6) for m in (1.0, 1.5, 2.0, 3.0)]
    scales = grid.weight_scales(p.matrix, 1, 6)
    fast = p.layer_scores(cands, scales)
    direct = []
    t = p.target.reshape(len(p.rows), -1).astype(np.float64)
    w = grid.fake_quant_weights(p.matrix, scales, 1, 6).astype(np.float64)
    for a in cands:
        xq = grid.fake_quant_activation(p.rows, *a, clip=p.bits.act_clip).astype(np.float64)
        out = xq @ w + p._bias(a[0], scales)
        direct.append(np.mean((out * t).sum(1) / np.sqrt((out * out).sum(1) * (t * t).sum(1))))
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-6)
    assert np.ptp(direct) > 1e-3  # the candidates really differ


def test_coarse_to_fine_input_search_scores_like_the_exhaustive_one():
    """Coarse-to-fine evaluates ~30 of 101 candidates, with the exhaustive scores, at full resolution."""
    from eq_tflite.methods.easyquant import _input_scores
    rng = np.random.default_rng(5)
    p = _problem("FULLY_CONNECTED", rng, k=16, c=8, r=500)
    cands = [grid.activation_params(-m, m, 5) for m in np.linspace(0.5, 6.0, 101)]
    scales = grid.weight_scales(p.matrix, 1, 5)
    full = _input_scores(p, cands, scales, "exhaustive")
    fast = _input_scores(p, cands, scales, "coarse_to_fine")
    seen = ~np.isnan(fast)
    assert 20 <= seen.sum() <= 35 and seen[0]
    np.testing.assert_allclose(fast[seen], full[seen], rtol=0, atol=1e-9)
    best = int(np.nanargmax(fast))
    assert fast[best] >= full.max() - 1e-4  # this smooth layer: the exhaustive optimum's cosine


def _squeeze_excite_tflite() -> bytes:
    """conv -> x; AVERAGE_POOL_2D(x) (tied to x) -> 1x1 conv -> sigmoid -> MUL(x, gate) -> conv."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same")(inp)
    gate = L.AveragePooling2D(pool_size=8)(x)                  # AVERAGE_POOL_2D: same scale as x
    gate = L.Conv2D(16, 1, activation="sigmoid")(gate)
    y = L.Conv2D(4, 1)(L.Multiply()([x, gate]))
    return bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, y)).convert())


def test_a_pooled_decider_does_not_clip_the_map_it_was_pooled_from():
    """The SE conv reads only the pooled tensor but decides the range of x as well (tied)."""
    model = _squeeze_excite_tflite()
    calib = np.random.default_rng(2).normal(size=(24, 8, 8, 3)).astype(np.float32)
    graph, plan = _run(model, calib, eq_max_rows=0)
    pool = next(op for op in graph.ops if op.type == "AVERAGE_POOL_2D")
    x = pool.inputs[0]
    assert resolve.tied_groups(graph)[x] == tuple(sorted((x, pool.outputs[0])))
    values = simulate.run(graph, {graph.tensors[graph.inputs[0]].name: calib}, [x])[x]
    lo, hi = plan.activation_ranges[graph.tensors[x].name]
    scale, zp = grid.activation_params(lo, hi, 7)
    q = np.round(values / scale) + zp
    # the pooled values span a fraction of x's range: a search scored on them alone shrinks the
    # range to half (the most its candidates allow) and clips far more than the 0.1% budget of x
    assert np.abs(simulate.run(graph, {graph.tensors[graph.inputs[0]].name: calib},
                               [pool.outputs[0]])[pool.outputs[0]]).max() < 0.5 * np.abs(values).max()
    bits = BitWidths(7, 7)
    assert np.mean((q < bits.act_qmin) | (q > bits.act_qmax)) <= 0.001


@pytest.mark.parametrize("op_type", ["FULLY_CONNECTED", "DEPTHWISE_CONV_2D"])
def test_integer_gram_and_float32_product_match_float64(op_type):
    """XᵀX summed exactly on the quantized integers, with the float32 XᵀX·W product, gives the
    float64 Gram's cosines (measured: 7e-10 depthwise, 5e-8 plain) at a real layer's size."""
    from eq_tflite.methods.easyquant import GramScorer, _float32, quantize_into
    rng = np.random.default_rng(6)
    p = _problem(op_type, rng, k=384, c=96, r=4096, bits=7)
    act = grid.activation_params(-2.5, 3.0, 7)
    q = quantize_into(p.rows, *act, np.empty_like(p.rows), p.bits.act_clip)
    xq = fake_quant_into(p.rows, *act, np.empty_like(p.rows), p.bits.act_clip)
    y = p.target.reshape(len(xq), -1)
    cands = _float32(grid.weight_scales(p.matrix, 1, 7)[None] / np.linspace(0.5, 2.0, 9)[:, None])
    wq = p.weight_candidates(cands)
    bias = np.stack([p._bias(act[0], sc) for sc in cands])
    ref = _float64_gram_cosines(xq, y, wq, bias)
    fast = GramScorer(q, y, step=act[0]).cosines(wq, bias)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=3e-9 if op_type == "DEPTHWISE_CONV_2D" else 3e-7)
    assert np.ptp(ref, axis=0).min() > 1e-5  # the candidates really differ


def _float64_gram_cosines(x: np.ndarray, y: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """GramScorer's cosines with every sum and product in float64 (the reference)."""
    x, y, w, b = (a.astype(np.float64) for a in (x, y, w, bias))
    if x.ndim == 3:  # depthwise: channel c reads x[:, :, c]
        gram, xy, xs = np.einsum("rkc,rlc->ckl", x, x), np.einsum("rkc,rc->kc", x, y), x.sum(0)
        gw = np.einsum("ckl,ljc->kjc", gram, w)
        xw = np.einsum("kc,kjc->jc", xs, w)
    else:
        gram, xy, xs = x.T @ x, x.T @ y, x.sum(0)
        gw = np.einsum("kl,ljc->kjc", gram, w)
        xw = np.einsum("k,kjc->jc", xs, w)
    dot = np.einsum("kjc,kc->jc", w, xy) + b * y.sum(0)
    norm = np.einsum("kjc,kjc->jc", w, gw) + 2 * b * xw + len(x) * b * b
    return dot / np.sqrt(norm * (y * y).sum(0))


def test_init_from_the_mse_method(small_float_tflite, small_calibration):
    """eq_init=mse (the default) starts from the mse method's ranges: tensors no layer
    searches keep them."""
    graph, plan = _run(small_float_tflite, small_calibration, 6, eq_max_rows=512)
    ctx = MethodContext(graph, small_float_tflite,
                        {graph.tensors[graph.inputs[0]].name: small_calibration},
                        BitWidths(6, 6), progress=False)
    start = methods.get("mse")(ctx).activation_ranges
    minmax = methods.get("minmax")(ctx).activation_ranges
    searched = {t for op in graph.weighted_ops()
                for t in resolve.tied_groups(graph).get(op.data_input, (op.data_input,))}
    kept = [graph.tensors[t].name for t in graph.activation_tensors() if t not in searched]
    assert kept and all(plan.activation_ranges[n] == start[n] for n in kept)
    assert any(start[n] != minmax[n] for n in kept)  # the test tells the two starts apart


def test_gptq_rounding_keeps_the_steps_and_only_wins(small_float_tflite, small_calibration):
    """eq_rounding=gptq: integers on the searched steps, kept only where the layer cosine rises;
    nearest rounding writes none; layers above eq_rounding_bits keep nearest rounding."""
    from eq_tflite import api
    graph, near = _run(small_float_tflite, small_calibration, 4, eq_max_rows=1024, eq_rounding="nearest")
    _, plan = _run(small_float_tflite, small_calibration, 4, eq_max_rows=1024)  # gptq: the default
    rows = {r["weight"]: r for r in plan.layers}
    assert plan.int_weights and all("cos_gptq" in r for r in plan.layers)
    assert not near.int_weights and not any("cos_gptq" in r for r in near.layers)
    for name, q in plan.int_weights.items():
        assert rows[name]["cos_gptq"] > rows[name]["cos_eq"]
        assert np.abs(q.astype(int)).max() <= 7 and q.shape == graph.tensors[graph.by_name[name]].shape
    # the first layer sees the same inputs either way: same search, only the rounding differs
    first = plan.layers[0]["weight"]
    np.testing.assert_array_equal(plan.weight_scales[first], near.weight_scales[first])
    conv = api.convert_model(small_float_tflite, small_calibration, weight_bits=4, activation_bits=8,
                             method_options={"eq_rounding": "gptq", "eq_steps": 40})
    assert conv.report.ok
    _, wide = _run(small_float_tflite, small_calibration, 7, eq_max_rows=1024)
    assert not wide.int_weights  # 7-bit layers are above eq_rounding_bits (4): nearest rounding


def test_gptq_target_choices(small_float_tflite, small_calibration):
    """eq_gptq_target: "layer" and "float" round differently (the correction acts); "auto"
    records its per-layer pick and its integers are those of the target it picked."""
    runs = {t: _run(small_float_tflite, small_calibration, 4, eq_max_rows=1024, eq_gptq_target=t)[1]
            for t in ("layer", "float", "auto")}
    assert {r["gptq_target"] for r in runs["layer"].layers if "gptq_target" in r} == {"layer"}
    assert {r["gptq_target"] for r in runs["float"].layers if "gptq_target" in r} == {"float"}
    first = runs["layer"].layers[0]["weight"]  # same inputs and steps in every run
    assert not np.array_equal(runs["layer"].int_weights.get(first), runs["float"].int_weights.get(first))
    picks = {r["weight"]: r["gptq_target"] for r in runs["auto"].layers if "gptq_target" in r}
    assert picks and set(picks.values()) <= {"layer", "float"}
    pick = picks[first]
    assert runs["auto"].layers[0]["cos_gptq"] == runs[pick].layers[0]["cos_gptq"]
