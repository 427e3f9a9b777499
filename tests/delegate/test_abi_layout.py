"""The C library's own declarations of TFLite's C ABI match the runtime.

With record_layout=1 the delegate snapshots, at Prepare, every tensor and
node as read through delegates/include/eq_tflite_c_abi.h (TfLiteContext,
TfLiteTensor, TfLiteIntArray, TfLiteQuantization/Affine, TfLiteNode,
TfLiteRegistration, TfLiteConvParams).  Any offset mismatch shows up as a
wrong name, shape, type, scale, zero point, constant-data checksum, op code
or conv parameter compared with what the Python interpreter and the
flatbuffer say.
"""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from conv_models import build_model, random_layer
from eq_tflite.delegate import delegate_layout, delegate_stats, load_delegate

TYPE_CODES = {np.int8: 9, np.int32: 2, np.float32: 1}


@pytest.fixture(scope="module")
def model_and_layout(delegate_library):
    rng = np.random.default_rng(21)
    s = 0.031
    layers = [
        random_layer(rng, 6, 10, 3, 3, s, padding="VALID", stride=2, activation="RELU6"),
        random_layer(rng, 10, 7, 1, 1, s, activation="RELU_N1_TO_1"),
        random_layer(rng, 7, 7, 3, 3, s, depthwise=True, activation="RELU"),
        random_layer(rng, 7, 5, 2, 2, s, dilation=2),
    ]
    model = build_model([2, 13, 11, 6], s, -17, layers)
    d = load_delegate({"record_layout": 1, "policy": "all"})
    it = Interpreter(model_content=model, experimental_delegates=[d],
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    layout = delegate_layout(d)
    assert layout is not None
    return model, it, layout, d


def test_tensors_match_interpreter(model_and_layout):
    model, it, layout, _ = model_and_layout
    n_model = len(schema.ModelT.InitFromPackedBuf(model, 0).subgraphs[0].tensors)
    details = {t["index"]: t for t in it.get_tensor_details()}
    recorded = {t["index"]: t for t in layout["tensors"]}
    # Every tensor of the model was seen (kernels may add temporaries later).
    assert set(range(n_model)) <= set(recorded) <= set(details)
    checked_consts = 0
    for idx, rec in recorded.items():
        det = details[idx]
        assert rec["name"] == det["name"]
        assert rec["dims"] == list(det["shape"])
        assert rec["type"] == TYPE_CODES[det["dtype"]]
        scale, zp = det["quantization"]
        assert rec["scale"] == pytest.approx(scale, rel=1e-7, abs=0)
        assert rec["zero_point"] == zp
        qp = det["quantization_parameters"]
        if len(qp["scales"]):
            assert rec["qtype"] == 1
            np.testing.assert_allclose(rec["scales"], qp["scales"], rtol=1e-7)
            assert rec["zero_points"] == list(qp["zero_points"])
            assert rec["qdim"] == qp["quantized_dimension"]
        if "data_sum" in rec:
            assert rec["alloc"] == 1  # kTfLiteMmapRo
            data = it.get_tensor(idx)
            assert rec["bytes"] == data.nbytes
            assert rec["data_sum"] == int(data.astype(np.int64).sum())
            checked_consts += 1
    assert checked_consts >= 7  # 4 filters + biases


def test_nodes_match_flatbuffer(model_and_layout):
    model, _, layout, _ = model_and_layout
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    sg = m.subgraphs[0]
    assert [n["index"] for n in layout["nodes"]] == list(range(len(sg.operators)))
    for node, op in zip(layout["nodes"], sg.operators):
        code = m.operatorCodes[op.opcodeIndex].builtinCode
        assert node["builtin_code"] == code
        assert node["inputs"] == list(op.inputs)
        assert node["outputs"] == list(op.outputs)
        if code == 3:  # CONV_2D: TfLiteConvParams
            o = op.builtinOptions
            conv = node["conv"]
            # TfLitePadding is schema padding + 1 (Unknown = 0)
            assert conv["padding"] == o.padding + 1
            assert (conv["stride_w"], conv["stride_h"]) == (o.strideW, o.strideH)
            assert conv["activation"] == o.fusedActivationFunction
            assert (conv["dilation_w"], conv["dilation_h"]) == (o.dilationWFactor,
                                                                o.dilationHFactor)
        if code == 4:  # DEPTHWISE_CONV_2D: TfLiteDepthwiseConvParams
            o = op.builtinOptions
            dw = node["dwconv"]
            assert dw["padding"] == o.padding + 1
            assert (dw["stride_w"], dw["stride_h"]) == (o.strideW, o.strideH)
            assert dw["depth_multiplier"] == o.depthMultiplier
            assert dw["activation"] == o.fusedActivationFunction
            assert (dw["dilation_w"], dw["dilation_h"]) == (o.dilationWFactor,
                                                            o.dilationHFactor)


def test_claims_follow_the_recorded_view(model_and_layout):
    """Nodes 0, 1 and 2 (depthwise) are claimable, 3 (dilated) is not; the
    interpreter's thread count reaches the context."""
    _, it, layout, d = model_and_layout
    st = delegate_stats(d)
    assert st["claimed"] == 3 and st["considered"] == 4
    assert sorted(n["node"] for n in st["nodes"]) == [0, 1, 2]
    assert layout["recommended_num_threads"] in (-1, 1, 2)
    assert [(n["cin"], n["cout"], n["kh"], n["stride"], n["op"]) for n in st["nodes"]] == \
        [(6, 10, 3, 2, "CONV_2D"), (10, 7, 1, 1, "CONV_2D"), (7, 7, 3, 1, "DEPTHWISE_CONV_2D")]
