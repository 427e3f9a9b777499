"""Whole 7-bit models: the bundled example SavedModels, quantized with
eq_tflite.quantize(..., bits=7), run bit-exactly with the delegate, which
claims every CONV_2D and takes the 7-bit fast paths."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from eq_tflite.delegate import delegate_stats, load_delegate
from examples_7bit import EXAMPLE_MODELS, calibration, quantized

BUILTIN = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


@pytest.mark.skipif(not EXAMPLE_MODELS, reason="no example SavedModels in examples/")
@pytest.mark.parametrize("method", ["minmax", "easyquant"])
@pytest.mark.parametrize("saved_model,calib", EXAMPLE_MODELS,
                         ids=[os.path.basename(p[0]) for p in EXAMPLE_MODELS])
def test_example_model_7bit_bitexact(delegate_library, saved_model, calib, method):
    try:
        from eq_tflite.methods import available
        if method not in available():
            pytest.skip(f"method {method!r} is not registered")
    except ImportError:
        pass
    data = calibration(calib)
    # The delegate does not care how scales were chosen, only that the
    # model is a 7-bit int8 model.
    model = quantized(saved_model, calib, method)
    if model is None:
        pytest.skip("eq_tflite.quantize is not available")
    ref = Interpreter(model_content=model, experimental_op_resolver_type=BUILTIN)
    d = load_delegate({"policy": "all"})  # claim every node: test the kernels
    got = Interpreter(model_content=model, experimental_delegates=[d],
                      experimental_op_resolver_type=BUILTIN)
    outs = []
    for it in (ref, got):
        it.allocate_tensors()
        det = it.get_input_details()[0]
        res = []
        for i in range(8):
            x = data[i:i + 1]
            if det["dtype"] == np.int8:
                s, z = det["quantization"]
                x = np.clip(np.round(x / s) + z, -128, 127)
            it.set_tensor(det["index"], x.astype(det["dtype"]))
            it.invoke()
            res.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
        outs.append(res)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    st = delegate_stats(d)
    assert st["claimed"] >= 1 and st["claimed"] == st["considered"]
    paths = {p for n in st["nodes"] for p in n["paths"]}
    if st["isa"] == "avx2":
        # 7-bit weights: the full-int8 fallback (split weights) never ran
        assert "direct_avx2_i16x2" not in paths, paths
