"""Whole conversions and data-free statistics on the per-op fixtures (tests/fixtures/ops).

* data-free statistics pass every fixture with no fallback, and their ranges
  hold every value the float model produces on inputs in the given range;
* float islands: TFLite's own int8 conversion keeps NEG of LayerNormalization
  in float, and so does eq-tflite without ``--allow_float``; SIN needs
  ``--allow_float``, then converts with EasyQuant, Bit-Split and data-free;
* grouped convolutions, resize, space/batch, swish/SE and Rescaling convert
  with every method.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eq_tflite import api, moments, simulate
from eq_tflite.errors import EqTfliteError, UnsupportedOpsError
from eq_tflite.graph import Graph, Op, Tensor

FIXTURES = Path(__file__).parent / "fixtures" / "ops"
CASES = sorted(p.name.split(".")[0] for p in FIXTURES.glob("*.float.tflite"))


def _float(case: str) -> bytes:
    return (FIXTURES / f"{case}.float.tflite").read_bytes()


def _data(graph: Graph, n: int) -> np.ndarray:
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    return (np.random.default_rng(3).random((n, *shape), dtype=np.float32) - 0.5) * 3


@pytest.mark.parametrize("case", CASES)
def test_data_free_ranges_hold_the_float_values(case):
    graph = Graph.from_tflite(_float(case))
    name = graph.tensors[graph.inputs[0]].name
    notes: list[str] = []
    stats = moments.propagate(graph, {name: (-1.5, 1.5)}, None, 8.0, notes)
    assert notes == []
    x = _data(graph, 32)
    tensors = graph.activation_tensors()
    real = simulate.run(graph, {name: x}, tensors)
    for t in tensors:
        lo, hi = stats[t].range
        assert np.isfinite(lo) and np.isfinite(hi), graph.tensors[t].name
        slack = 1e-3 * max(hi - lo, 1e-6)
        assert lo - slack <= real[t].min() and real[t].max() <= hi + slack, \
            (graph.tensors[t].name, (lo, hi), (real[t].min(), real[t].max()))


def test_data_free_rules_are_exact_where_they_can_be():
    """Affine constants (Normalization, Rescaling): the range maps exactly; swish is bounded below."""
    graph = Graph.from_tflite(_float("mul_add_sub_const"))
    stats = moments.propagate(graph, {graph.tensors[graph.inputs[0]].name: (0.0, 1.0)}, None, 8.0)
    mul = next(op for op in graph.ops if op.type == "MUL")
    x = np.linspace(0, 1, 5, dtype=np.float32)[:, None, None, None] * np.ones((1, 6, 6, 4), np.float32)
    real = simulate.run(graph, {graph.tensors[graph.inputs[0]].name: x}, [mul.outputs[0]])
    out = real[mul.outputs[0]].reshape(-1, 4)
    np.testing.assert_allclose(stats[mul.outputs[0]].lo, out.min(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[mul.outputs[0]].hi, out.max(0), rtol=1e-5, atol=1e-6)
    graph = Graph.from_tflite(_float("swish_se"))
    stats = moments.propagate(graph, {graph.tensors[graph.inputs[0]].name: (-1.5, 1.5)}, None, 8.0)
    swish = next(op for op in graph.ops if op.type == "MUL")
    assert stats[swish.outputs[0]].range[0] >= -20  # x * sigmoid(x) of a wide normal


def test_data_free_fallback_is_a_note_not_an_error():
    t = [Tensor(0, "x", (1, 4), np.float32), Tensor(1, "y", (1, 4), np.float32)]
    graph = Graph(t, [Op(0, "L2_NORMALIZATION", [0], [1])], [0], [1])
    notes: list[str] = []
    stats = moments.propagate(graph, {"x": (-1.0, 2.0)}, None, 8.0, notes)
    assert stats[1].range == (-1.0, 2.0)
    assert len(notes) == 1 and "L2_NORMALIZATION" in notes[0]


def _convert(case: str, method: str | None, data: bool = True, **kw) -> api.Conversion:
    model = _float(case)
    graph = Graph.from_tflite(model)
    calib = _data(graph, 8) if data else None
    ranges = None if data else (-1.5, 1.5)
    return api.convert_model(model, calib, method=method, input_range=ranges, bits=8, **kw)


def test_layer_norm_keeps_neg_in_float_without_allow_float():
    conv = _convert("layer_norm", None)
    assert conv.report.ok and conv.report.float_ops == ["NEG"]
    assert any("NEG" in note and "float" in note for note in conv.plan.notes)
    assert conv.report.cosine > 0.99


@pytest.mark.parametrize("method,data", [("easyquant", True), ("bitsplit", True), (None, False)])
def test_sin_converts_with_allow_float_under_every_method(method, data):
    conv = _convert("sin", method, data, allow_float=True)
    assert conv.report.ok and "SIN" in conv.report.float_ops
    if data:
        assert conv.report.cosine > 0.99


def test_float_island_inner_tensors_stay_float_in_simulation():
    """CONV -> COS -> CUMSUM -> CONV: COS's output never meets QUANTIZE; CUMSUM's does."""
    from eq_tflite import op_table
    graph = Graph.from_tflite(_float("cos_cumsum"))
    cos, cumsum = (next(op for op in graph.ops if op.type == k) for k in ("COS", "CUMSUM"))
    assert op_table.float_tensors(graph) == {cos.outputs[0]}
    quant = simulate.QuantParams(api.resolve_bits(8), {t: (0.25, 0) for t in graph.activation_tensors()})
    x = _data(graph, 2)
    ex = simulate.Executor(graph, {graph.tensors[graph.inputs[0]].name: x}, quant,
                           keep=[cos.outputs[0], cumsum.outputs[0]])
    for op in graph.ops:
        ex.step(op)
    assert not np.allclose(ex.values[cos.outputs[0]] / 0.25, np.round(ex.values[cos.outputs[0]] / 0.25))
    np.testing.assert_allclose(ex.values[cumsum.outputs[0]] / 0.25,
                               np.round(ex.values[cumsum.outputs[0]] / 0.25), atol=1e-4)


def test_sin_without_allow_float_is_refused_by_name():
    with pytest.raises(UnsupportedOpsError, match="SIN"):
        _convert("sin", None)


@pytest.mark.parametrize("case,method,data", [
    ("grouped_conv", "easyquant", True), ("grouped_conv", "bitsplit", True),
    ("grouped_conv", None, False), ("space_batch_nd", "easyquant", True),
    ("resize_bilinear_half_pixel", "bitsplit", True), ("swish_se", None, False),
    ("depth_to_space", "bitsplit", True), ("prelu", "easyquant", True),
    ("split", "easyquant", True), ("split_v", "minmax", True)])
def test_ops_convert(case, method, data):
    conv = _convert(case, method, data)
    assert conv.report.ok and not conv.report.float_ops
    if data:
        assert conv.report.cosine > 0.98, conv.report.cosine


def test_unsimulated_op_refused_before_conversion():
    t = [Tensor(0, "x", (1, 4), np.float32), Tensor(1, "y", (1, 4), np.float32)]
    graph = Graph(t, [Op(0, "L2_NORMALIZATION", [0], [1])], [0], [1])
    with pytest.raises(EqTfliteError, match="easyquant cannot simulate.*L2_NORMALIZATION.*minmax"):
        api._check_ops(graph, "easyquant")
    api._check_ops(graph, "minmax")  # min/max simulates nothing


@pytest.mark.parametrize("case", ["split", "split_v", "unpack_pack"])
def test_renamed_multi_output_tensors_are_mapped(case):
    """TFLite's quantizer renames SPLIT outputs ("a;b", "a;b1"): the rewriter maps them by op."""
    from eq_tflite.io import codec as fb
    from eq_tflite.rewrite.rewriter import map_to_float
    graph = Graph.from_tflite(_float(case))
    model = fb.parse_model((FIXTURES / f"{case}.int8.tflite").read_bytes())
    mapping = map_to_float(model, graph)
    sg = model.subgraphs[0]
    kind = {"split": "SPLIT", "split_v": "SPLIT_V", "unpack_pack": "UNPACK"}[case]
    qop = next(op for op in sg.operators if fb.op_name(model, op) == kind)
    fop = next(op for op in graph.ops if op.type == kind)
    assert [mapping.get(int(t)) for t in qop.outputs] == [graph.tensors[t].name for t in fop.outputs]
