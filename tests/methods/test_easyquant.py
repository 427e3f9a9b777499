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
    _, plan = _run(small_float_tflite, small_calibration, eq_inputs="float", eq_rounds=2,
                   eq_objective="linear", eq_max_rows=512)
    assert all(r["cos_eq"] >= r["cos_init"] for r in plan.layers)


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
