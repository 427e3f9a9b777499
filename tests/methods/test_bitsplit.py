"""Bit-Split: monotone coordinate descent, stitched integers in range, whole plans on a real graph."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api, methods, resolve
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.methods.bitsplit import (HeldOutRows, Options, ResponseProblem, bit_split,
                                        fit_layer, mse_range, split_samples, split_weights, stitch,
                                        to_planes)
from eq_tflite.plan import MethodContext


def _layer(seed: int, rows: int = 600, k: int = 27, c: int = 8, depthwise: bool = False):
    """Correlated inputs (as after a ReLU conv), float weights and the float response."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) / np.sqrt(k) + np.eye(k)
    if depthwise:
        x = np.maximum(np.einsum("rjc,jk->rkc", rng.normal(size=(rows, k, c)), mix), 0)
        w = rng.normal(size=(k, c)) * rng.uniform(0.2, 2.0, c)
        y = np.einsum("rkc,kc->rc", x, w)
    else:
        x = np.maximum(rng.normal(size=(rows, k)) @ mix, 0)
        w = rng.normal(size=(k, c)) * rng.uniform(0.2, 2.0, c)
        w[rng.random((k, c)) < 0.1] *= 4.0  # a few outliers, as trained weights have
        y = x @ w
    x_quant = np.round(x * 20) / 20  # the layer reads quantized inputs
    return x_quant, y, w


def _direct(x: np.ndarray, y: np.ndarray, q: np.ndarray, alpha: np.ndarray,
            shift: np.ndarray | float = 0.0) -> float:
    wq = q * alpha
    out = np.einsum("rkc,kc->rc", x, wq) if x.ndim == 3 else x @ wq
    return float(((y - out - shift) ** 2).sum())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_objective_never_increases_and_matches_direct(bits, depthwise, with_bias):
    x, y, w = _layer(bits, depthwise=depthwise)
    y = y + 0.3 * np.abs(y).mean()  # an offset the bias shift can take
    problem = ResponseProblem(x, y, with_bias=with_bias)
    res = bit_split(problem, w, bits, rounds=6)
    hist = np.array(res.history)
    assert len(hist) >= 1 + bits  # start, one scale step, b-1 plane steps
    scale = hist[0]
    assert np.all(np.diff(hist) <= 1e-10 * scale), np.diff(hist)
    # the tracked objective is the real ||Y - X B diag(alpha) - d||^2 of the final numbers
    shift = problem.bias_shift(res.q, res.alpha)
    assert _direct(x, y, res.q, res.alpha, shift) == pytest.approx(hist[-1], rel=1e-8)
    if with_bias:  # the shift is optimal: moving it costs
        assert _direct(x, y, res.q, res.alpha, shift * 1.01 + 1e-3) > hist[-1]
        assert hist[-1] < _direct(x, y, res.q, res.alpha)
    else:
        assert np.all(shift == 0)
    assert hist[-1] <= res.absmax_objective
    if bits <= 4:  # descent moves: strictly better than the best plain rounding
        assert hist[-1] < hist[0]


@pytest.mark.parametrize("bits", range(2, 9))
def test_stitched_integers_in_range(bits):
    qmax = 2 ** (bits - 1) - 1
    every = np.arange(-qmax, qmax + 1)[:, None]
    planes = to_planes(every, bits)
    assert planes.shape == (bits - 1, len(every), 1)
    assert set(np.unique(planes)) <= {-1, 0, 1}
    np.testing.assert_array_equal(stitch(planes), every)
    x, y, w = _layer(10 + bits)
    res = bit_split(ResponseProblem(x, y), w * 50, bits)  # scale does not matter
    assert np.abs(res.q).max() <= qmax and res.q.dtype.kind == "i"
    assert np.abs(res.q).max() == qmax  # the range is used
    assert np.all(res.alpha > 0) and np.all(res.alpha == res.alpha.astype(np.float32))


def test_mse_range_beats_minmax_and_keeps_clip_budget():
    rng = np.random.default_rng(0)
    v = np.maximum(rng.standard_t(3, 200_000), 0).astype(np.float32)  # long-tailed ReLU output
    base = (0.0, float(v.max()))
    bits = BitWidths(4, 4)

    def mse(r):
        from eq_tflite import grid
        s, zp = grid.activation_params(*r, bits.activations)
        return float(np.mean((grid.fake_quant_activation(v, s, zp, bits.act_clip) - v) ** 2))

    free = mse_range(v, base, BitWidths(4, 4, "container"))  # no budget outside strict mode
    assert mse(free) < 0.5 * mse(base)
    share = float(np.mean(v > free[1] * (1 + 1 / 30)))  # beyond the last level + half a step
    assert share > 0
    covered = mse_range(v, base, bits, clip_budget=0.0)
    assert covered[1] * (1 + 1 / 30) >= v.max()
    half = mse_range(v, base, bits, clip_budget=share / 2)
    assert free[1] < half[1] < covered[1] <= base[1]
    assert np.mean(v > half[1] * (1 + 1 / 30)) <= share / 2


def _ctx(model: bytes, calib: np.ndarray, wbits: int, **options) -> MethodContext:
    graph = Graph.from_tflite(model)
    return MethodContext(graph, model, {graph.tensors[graph.inputs[0]].name: calib},
                         BitWidths(wbits, 8), options={"bs_max_rows": 512, **options},
                         progress=False)


@pytest.mark.parametrize("wbits", [2, 3, 4])
def test_plan_int_weights_in_range_for_every_op_type(small_float_tflite, small_calibration, wbits):
    ctx = _ctx(small_float_tflite, small_calibration, wbits)
    plan = methods.get("bitsplit")(ctx)
    graph = ctx.graph
    types = set()
    for op in graph.weighted_ops():
        name = graph.tensors[op.weight_input].name
        q = plan.int_weights[name]
        assert q.shape == graph.tensors[op.weight_input].shape and q.dtype == np.int8
        assert np.abs(q).max() <= ctx.bits.weight_qmax
        assert plan.weight_scales[name].shape == (q.shape[op.channel_axis],)
        types.add(op.type)
    assert types == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    numbers = resolve.resolve(graph, plan)  # the shipped integers are the plan's
    for name, q in plan.int_weights.items():
        np.testing.assert_array_equal(numbers.layers[name].values, q)
    for row in plan.layers:  # per channel, never worse than plain absmax rounding on held-out rows
        assert row["held_out_rows"] > 0
        assert row["held_rel_err_chosen"] <= row["held_rel_err_absmax"] * (1 + 1e-12)
    paper = methods.get("bitsplit")(_ctx(small_float_tflite, small_calibration, wbits, bs_holdout=0,
                                         bs_ridge="0"))
    for row in paper.layers:  # without held-out rows: the paper's monotone descent on all rows
        assert row["held_out_rows"] == 0
        assert row["rel_err_bitsplit"] <= row["rel_err_init"] <= row["rel_err_absmax"] + 1e-12
    # bias correction: every op with a bias ships a corrected float bias
    with_bias = [graph.tensors[op.bias_input].name for op in graph.weighted_ops()
                 if op.bias_input >= 0 and graph.tensors[op.bias_input].data is not None]
    assert with_bias and set(plan.float_weights) == set(with_bias)
    for name in with_bias:  # the shipped int32 bias is the corrected one, within half a step
        layer = next(l for l in numbers.layers.values() if l.bias == name)
        err = np.abs(layer.real_bias() - plan.float_weights[name])
        assert np.all(err <= 0.5001 * layer.bias_scales + 1e-7)
        assert not np.allclose(plan.float_weights[name], graph.tensors[graph.by_name[name]].data)


def test_weight_step_composes_with_given_ranges(small_float_tflite, small_calibration):
    """split_weights alone: another method's ranges are kept exactly."""
    ctx = _ctx(small_float_tflite, small_calibration, 4)
    given = methods.get("minmax")(ctx).activation_ranges
    step = split_weights(ctx, given, Options.parse(ctx.options))
    assert step.activation_ranges == given
    assert set(step.int_weights) == {ctx.graph.tensors[op.weight_input].name
                                     for op in ctx.graph.weighted_ops()}


def test_weight_step_starts_from_edited_float_weights(small_float_tflite, small_calibration):
    ctx = _ctx(small_float_tflite, small_calibration, 4)
    graph = ctx.graph
    given = methods.get("minmax")(ctx).activation_ranges
    op = graph.weighted_ops()[1]
    w = graph.tensors[op.weight_input]
    edited = w.data.copy()
    edited[: edited.shape[0] // 2] = 0.0  # another method removed half the output channels
    step = split_weights(ctx, given, Options.parse(ctx.options), float_weights={w.name: edited})
    q = step.int_weights[w.name]
    assert np.all(q[: q.shape[0] // 2] == 0) and np.any(q[q.shape[0] // 2:] != 0)


def test_bad_options(small_float_tflite, small_calibration):
    with pytest.raises(EqTfliteError, match="bs_activations"):
        Options.parse({"bs_activations": "kl"})
    with pytest.raises(EqTfliteError, match="bs_rounds"):
        Options.parse({"bs_rounds": "x"})
    with pytest.raises(EqTfliteError, match="bs_bias_correction must be true or false"):
        Options.parse({"bs_bias_correction": "maybe"})
    assert Options.parse({"bs_bias_correction": "false"}).bias_correction is False
    with pytest.raises(EqTfliteError, match="4 bits"):
        api.convert_model(small_float_tflite, small_calibration, weight_bits=5, method="bitsplit",
                          pack_int4=True)


@pytest.mark.parametrize("op_type,shape,channels", [
    ("CONV_2D", (5, 3, 3, 4), 4), ("DEPTHWISE_CONV_2D", (1, 3, 3, 8), 8),
    ("FULLY_CONNECTED", (6, 10), 10), ("TRANSPOSE_CONV", (5, 3, 2, 4), 4),
    ("CONV_2D", (6, 3, 2, 4), 12)])  # grouped: 3 groups of 4 input channels
def test_matrix_layout_round_trip(op_type, shape, channels):
    from eq_tflite.simulate import matrix_weights, weight_matrix
    w = np.arange(1, np.prod(shape) + 1).reshape(shape)
    m = weight_matrix(op_type, w, channels)
    np.testing.assert_array_equal(matrix_weights(op_type, m, shape, channels), w)
    assert np.count_nonzero(m) == w.size  # a grouped matrix is block-diagonal


def test_default_activations_are_mse(small_float_tflite, small_calibration):
    """The default run chooses ranges by MSE: the plan of asking for it, not min/max's."""
    def ranges(**options):
        ctx = _ctx(small_float_tflite, small_calibration, 4, bs_rounds=1, bs_holdout=0, **options)
        return methods.get("bitsplit")(ctx).activation_ranges
    default = ranges()
    assert default == ranges(bs_activations="mse")
    assert default != ranges(bs_activations="minmax")


# --------------------------------------------------------------------------
# Held-out rows: ridge, early stopping and the per-channel choice


def test_ridge_adds_the_distance_to_the_float_weights():
    x, y, w = _layer(3)
    problem = ResponseProblem(x, y, with_bias=True)
    ridged = problem.ridged(0.5, w)
    q = np.round(w / (np.abs(w).max(0) / 7))
    alpha = np.abs(w).max(0) / 7
    lam = 0.5 * np.diag(problem.h).mean()
    extra = lam * ((q * alpha - w) ** 2).sum(0)
    np.testing.assert_allclose(ridged.objective(q, alpha), problem.objective(q, alpha) + extra, rtol=1e-9)
    assert problem.ridged(0.0, w) is problem
    # a strong pull gives (almost) plain rounding of the float weights: the fit stays near them
    loose = bit_split(problem, w, 4)
    tight = bit_split(problem.ridged(100.0, w), w, 4)
    dist = lambda r: float(((r.q * r.alpha - w) ** 2).sum())  # noqa: E731
    assert dist(tight) < dist(loose)
    xd, yd, wd = _layer(4, depthwise=True)
    pd = ResponseProblem(xd, yd)
    lam_c = 0.5 * np.einsum("kkc->kc", pd.h).mean(0)
    qd, ad = np.round(wd / (np.abs(wd).max(0) / 7)), np.abs(wd).max(0) / 7
    np.testing.assert_allclose(pd.ridged(0.5, wd).objective(qd, ad),
                               pd.objective(qd, ad) + lam_c * ((qd * ad - wd) ** 2).sum(0), rtol=1e-9)


@pytest.mark.parametrize("depthwise", [False, True])
def test_held_out_errors_match_direct(depthwise):
    x, y, w = _layer(5, depthwise=depthwise)
    held = HeldOutRows(x, y)
    alpha = np.abs(w).max(0) / 7
    q = np.round(w / alpha)
    d = np.linspace(-0.3, 0.3, w.shape[1])
    wq = q * alpha
    out = np.einsum("rkc,kc->rc", x, wq) if depthwise else x @ wq
    np.testing.assert_allclose(held.errors(q, alpha, d), ((y - out - d) ** 2).sum(0), rtol=1e-9)
    np.testing.assert_allclose(held.errors(q, alpha), ((y - out) ** 2).sum(0), rtol=1e-9)


def test_split_samples_is_seeded_and_disjoint():
    fit, held = split_samples(64, 0.25, 0)
    assert len(held) == 16 and len(fit) == 48 and not set(fit) & set(held)
    assert sorted([*fit, *held]) == list(range(64))
    np.testing.assert_array_equal(held, split_samples(64, 0.25, 0)[1])
    assert not np.array_equal(held, split_samples(64, 0.25, 1)[1])
    assert [len(h) for h in (split_samples(3, 0.01, 0)[1], split_samples(1, 0.5, 0)[1],
                             split_samples(10, 0.0, 0)[1], split_samples(2, 0.9, 0)[1])] == [1, 0, 0, 1]


def test_held_out_choice_beats_the_overfitted_fit_on_unseen_rows():
    """As many rows as weights per channel: the paper's fit memorizes its rows.

    The per-channel choice on held-out rows is never worse than plain absmax
    rounding there, and on rows neither saw it beats the unregularized fit.
    """
    k, c = 48, 16
    x, y, w = _layer(7, rows=1600, k=k, c=c)
    y = y + np.random.default_rng(1).normal(size=y.shape) * 0.5 * y.std()  # what the layer cannot fit
    fit, hold, test = slice(0, 60), slice(60, 460), slice(460, None)
    problem = ResponseProblem(x[fit], y[fit], with_bias=True)
    held = HeldOutRows(x[hold], y[hold])
    unseen = HeldOutRows(x[test], y[test])
    paper = bit_split(problem, w, 4)
    paper_d = problem.bias_shift(paper.q, paper.alpha)
    res = fit_layer(problem, held, w, 4, Options(), None, True)
    qmax = 7
    step = (np.abs(w).max(0) / qmax).astype(np.float32).astype(np.float64)
    absmax_held = held.errors(np.round(w / step), step)
    assert np.all(held.errors(res.q, res.alpha, res.shift) <= absmax_held * (1 + 1e-12))
    assert res.info["held_rel_err_chosen"] <= res.info["held_rel_err_absmax"]
    ours = unseen.errors(res.q, res.alpha, res.shift).sum()
    theirs = unseen.errors(paper.q, paper.alpha, paper_d).sum()
    assert ours < 0.9 * theirs, (ours, theirs)
    # on the rows it fitted, the paper's form is of course better
    assert problem.objective(paper.q, paper.alpha).sum() < problem.objective(res.q, res.alpha).sum()


def test_early_stopping_keeps_each_channels_best_held_out_state():
    x, y, w = _layer(8, rows=700, k=40)
    problem = ResponseProblem(x[:80], y[:80])
    held = HeldOutRows(x[80:], y[80:])
    seen = []

    def monitor(q, a):
        e = held.errors(q, a)
        seen.append(e)
        return e

    res = bit_split(problem, w, 4, rounds=4, monitor=monitor)
    best = np.min(np.stack(seen), axis=0)
    np.testing.assert_allclose(held.errors(res.q, res.alpha), best, rtol=1e-12)
    np.testing.assert_array_equal(res.monitor_end, seen[-1])
    assert len(seen) > 2 and np.any(seen[-1] > best)  # the fit did overfit some channel


def test_held_out_options():
    assert Options.parse({}).holdout == 0.25 and Options.parse({}).ridge == (0.0, 0.1, 1.0)
    assert Options.parse({"bs_ridge": ["0.5", "2"]}).ridge == (0.5, 2.0)  # the CLI's list flag
    assert Options.parse({"bs_ridge": "0,3"}).ridge == (0.0, 3.0)
    for bad, match in [({"bs_ridge": "a,b"}, "bs_ridge must be comma-separated numbers"),
                       ({"bs_ridge": "-1"}, "bs_ridge must be one or more finite"),
                       ({"bs_ridge": "inf"}, "bs_ridge must be one or more finite"),
                       ({"bs_ridge": ""}, "bs_ridge must be one or more finite"),
                       ({"bs_holdout": 1.0}, r"bs_holdout must be in \[0, 1\)"),
                       ({"bs_target": "x"}, "bs_target must be one of float, own")]:
        with pytest.raises(EqTfliteError, match=match):
            Options.parse(bad)


def test_given_scales_are_a_candidate():
    """Another method's steps (EasyQuant's): the choice is never worse than rounding on them."""
    x, y, w = _layer(9, rows=900, k=30)
    problem = ResponseProblem(x[:300], y[:300], with_bias=True)
    held = HeldOutRows(x[300:], y[300:])
    steps = [(np.abs(w).max(0) / 7 * m).astype(np.float32).astype(np.float64)
             for m in np.linspace(0.3, 1.2, 91)]
    errs = np.stack([held.errors(np.clip(np.round(w / s), -7, 7), s) for s in steps])
    given = np.stack(steps)[errs.argmin(0), np.arange(w.shape[1])]  # the best steps on those rows
    res = fit_layer(problem, held, w, 4, Options(rounds=0, ridge=(0.0,)), None, False, given)
    rounded = held.errors(np.clip(np.round(w / given), -7, 7), given)
    assert np.all(held.errors(res.q, res.alpha) <= rounded * (1 + 1e-12))
    assert "given" in res.info["chosen"]
