"""Every row of the op table against LiteRT: one tiny model per op (tests/fixtures/ops).

The fixtures are TFLite's own float and int8 conversions of small Keras
models (``tools/make_op_fixtures.py``). For each one:

* float: the executor matches LiteRT's float kernels on every tensor;
* int8: given LiteRT's own int8 inputs and TFLite's parameters, each op's
  simulated output is within its row's ``lsb`` of LiteRT's int8 kernel
  (1 for "requant" rows; the measured bound for "approx" rows); ops TFLite
  keeps in float ("float" rows) match its float island.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eq_tflite import op_table, simulate
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.io import codec as fb
from litert_probe import litert_tensors

FIXTURES = Path(__file__).parent / "fixtures" / "ops"
CASES = sorted(p.name.split(".")[0] for p in FIXTURES.glob("*.float.tflite"))
#: Rows checked elsewhere: shape arithmetic of a free batch (test_simulate's
#: dynamic model) and the weighted ops' own tests (test_simulate's cnn and zoo).
ELSEWHERE = {"SHAPE", "REDUCE_PROD", "QUANTIZE", "DEQUANTIZE"}
#: Rows the converter never emits from Keras (it folds EXPAND_DIMS/SQUEEZE into RESHAPE and
#: fuses RELU6 / clips into the producer): the same kernels as RESHAPE and the fused activations.
FOLDED = {"EXPAND_DIMS", "SQUEEZE", "RELU6", "RELU_0_TO_1"}


def _load(case: str) -> tuple[bytes, bytes]:
    return ((FIXTURES / f"{case}.float.tflite").read_bytes(),
            (FIXTURES / f"{case}.int8.tflite").read_bytes())


def _samples(graph: Graph, n: int = 3) -> np.ndarray:
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    return (np.random.default_rng(7).random((n, *shape), dtype=np.float32) - 0.5) * 3


def test_fixtures_cover_every_row():
    """Each simulated op type (and fused activation) occurs in some fixture's float model."""
    seen, acts = set(), set()
    for case in CASES:
        graph = Graph.from_tflite(_load(case)[0])
        seen |= {op.type for op in graph.ops}
        acts |= {op.activation for op in graph.ops}
    comparisons = {"ARG_MAX", "ARG_MIN", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL",
                   "EQUAL", "NOT_EQUAL"}
    missing = set(op_table.OPS) - seen - ELSEWHERE - FOLDED - comparisons
    assert not missing, f"op table rows without a fixture: {sorted(missing)}"
    assert {"RELU", "RELU6"} <= acts


def test_int8_converter_ops_handled_or_refused_by_name():
    """Every op the int8 converter can emit is simulated, or refused by name up front."""
    from eq_tflite.graph import Op, Tensor
    for kind in sorted(op_table.INT8_CONVERTER_OPS):
        if kind in op_table.OPS:
            continue
        t = [Tensor(0, "x", (1, 4), np.float32), Tensor(1, "y", (1, 4), np.float32)]
        graph = Graph(t, [Op(0, kind, [0], [1])], [0], [1])
        with pytest.raises(EqTfliteError, match=f"cannot simulate these ops.*{kind}"):
            simulate.check_supported(graph)
    assert op_table.INT8_CONVERTER_OPS - set(op_table.OPS) == {"L2_NORMALIZATION"}


def test_float_rows_are_what_tflite_keeps_in_float():
    """Rows marked "float" are exactly the ops TFLite's int8 converter left in float."""
    from eq_tflite.tflite_quantizer import float_ops_left
    kept = set()
    for case in CASES:
        kept |= set(float_ops_left(_load(case)[1]))
    assert kept == {name for name, rule in op_table.OPS.items() if rule.int8 == "float"}
    assert op_table.ISLANDS == {"NEG", "ELU", "SQUARE", "POW"}


@pytest.mark.parametrize("case", CASES)
def test_float_matches_litert(case):
    float_model, _ = _load(case)
    graph = Graph.from_tflite(float_model)
    x = _samples(graph)
    tensors = graph.activation_tensors()
    ours = simulate.run(graph, {graph.tensors[graph.inputs[0]].name: x}, tensors, batch_size=1)
    ref = litert_tensors(float_model, x, tensors)
    for t in tensors:
        name = graph.tensors[t].name
        assert ours[t].shape == ref[t].shape, name
        err = np.abs(ours[t] - ref[t]).max() / max(np.abs(ref[t]).max(), 1e-6)
        assert err < 2e-5, (name, err)


def _int8_ops(model, graph: Graph) -> list:
    """The int8 model's ops matching the float graph's, in order (QUANTIZE/DEQUANTIZE skipped)."""
    sg = model.subgraphs[0]
    qops = [op for op in sg.operators if fb.op_name(model, op) not in ("QUANTIZE", "DEQUANTIZE")]
    assert [fb.op_name(model, op) for op in qops] == [op.type for op in graph.ops]
    return qops


def _params(tensor) -> tuple[np.ndarray, np.ndarray] | None:
    if fb.type_name(tensor.type) != "INT8":
        return None
    q = tensor.quantization
    return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint)


@pytest.mark.parametrize("case", CASES)
def test_int8_matches_litert(case):
    """Each op on LiteRT's own int8 inputs (dequantized), its output quantized as deployed."""
    float_model, int8_model = _load(case)
    graph = Graph.from_tflite(float_model)
    model = fb.parse_model(int8_model)
    sg = model.subgraphs[0]
    qops = _int8_ops(model, graph)
    quant, weights = simulate.QuantParams(BitWidths(8, 8)), {}
    for fop, qop in zip(graph.ops, qops):
        for ft, qt in zip(fop.inputs + fop.outputs, list(qop.inputs) + list(qop.outputs)):
            params = _params(sg.tensors[qt]) if ft >= 0 else None
            if params is None:
                continue
            data = fb.buffer_array(model, sg.tensors[qt])
            if data is None and ft in fop.outputs:
                quant.activations[ft] = (float(params[0][0]), int(params[1][0]))
            elif data is not None and graph.tensors[ft].dtype == np.float32:  # as deployed
                scale, zp = params
                shape = [1] * data.ndim
                if scale.size > 1:
                    shape[sg.tensors[qt].quantization.quantizedDimension] = -1
                weights[ft] = ((data - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
    x = _samples(graph, 4)
    computed = {qt for qop in qops for qt in list(qop.inputs) + list(qop.outputs)
                if qt >= 0 and fb.buffer_array(model, sg.tensors[qt]) is None}
    real = litert_tensors(int8_model, x, sorted(computed), per_sample=True)

    def value(qt: int, n: int) -> np.ndarray:
        params = _params(sg.tensors[qt])
        if params is None:
            return real[qt][n]
        return ((real[qt][n].astype(np.float64) - params[1][0]) * params[0][0]).astype(np.float32)

    for n in range(len(x)):  # one sample at a time: SPACE_TO_BATCH_ND uses axis 0
        ex = simulate.Executor(graph, {graph.tensors[graph.inputs[0]].name: x[n:n + 1]},
                               quant, weights)
        for fop, qop in zip(graph.ops, qops):
            ex.values.update({ft: value(qt, n) for ft, qt in zip(fop.inputs, qop.inputs)
                              if ft in ex.values})
            ex.step(fop)
            _check_outputs(graph, fop, qop, ex, quant, lambda qt: value(qt, n))


def _check_outputs(graph, fop, qop, ex, quant, value) -> None:
    rule = op_table.OPS[fop.type]
    for ft, qt in zip(fop.outputs, qop.outputs):
        ref = value(qt)
        if ft in quant.activations:
            assert rule.int8 != "float", f"{fop.type} is int8 in TFLite's model"
            lsb = float(np.abs(ex.values[ft] - ref).max()) / quant.activations[ft][0]
            assert lsb <= rule.lsb + 1e-3, (fop.type, graph.tensors[ft].name, lsb)
        elif ref.dtype == np.float32:  # a float island
            assert rule.int8 == "float", fop.type
            err = np.abs(ex.values[ft] - ref).max() / max(np.abs(ref).max(), 1e-6)
            assert err < 1e-5, (fop.type, err)
        else:
            np.testing.assert_array_equal(ex.values[ft], ref)


