"""Partitions, resizing, unsupported nodes, missing bias, options, logging."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from conv_models import build_model, random_layer
from eq_tflite.delegate import (DelegateNotBuiltError, delegate_stats,
                                library_path, load_delegate)

BUILTIN = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _interp(model: bytes, delegate=None) -> Interpreter:
    kw = {"experimental_op_resolver_type": BUILTIN}
    if delegate is not None:
        kw["experimental_delegates"] = [delegate]
    it = Interpreter(model_content=model, **kw)
    it.allocate_tensors()
    return it


def _run(it: Interpreter, x: np.ndarray) -> np.ndarray:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def _chain_model(rng, *, unsupported_middle: bool) -> bytes:
    """conv3x3 -> dwconv3x3 -> conv1x1 [-> dilated conv (unclaimed)] -> conv3x3 s2."""
    s = 0.05
    layers = [random_layer(rng, 12, 16, 3, 3, s, wbits=7, activation="RELU")]
    layers.append(random_layer(rng, 16, 16, 3, 3, layers[-1].out_scale, depthwise=True,
                               activation="RELU6"))
    layers.append(random_layer(rng, 16, 9, 1, 1, layers[-1].out_scale, wbits=8))
    if unsupported_middle:
        layers.append(random_layer(rng, 9, 9, 3, 3, layers[-1].out_scale, dilation=2))
    layers.append(random_layer(rng, 9, 10, 3, 3, layers[-1].out_scale, stride=2,
                               activation="RELU6"))
    return build_model([1, 11, 13, 12], s, 3, layers)


@pytest.mark.parametrize("unsupported_middle", [False, True])
def test_chains_and_partitions(delegate_library, unsupported_middle):
    rng = np.random.default_rng(7)
    model = _chain_model(rng, unsupported_middle=unsupported_middle)
    d = load_delegate({"policy": "all", **({"isa": "avx2"} if delegate_stats(load_delegate())["isa"] == "avx2" else {})})
    ref, got = _interp(model), _interp(model, d)
    for _ in range(3):
        x = rng.integers(-128, 128, size=(1, 11, 13, 12), dtype=np.int8)
        np.testing.assert_array_equal(_run(ref, x), _run(got, x))
    st = delegate_stats(d)
    assert st["considered"] == (5 if unsupported_middle else 4)
    assert st["claimed"] == 4
    assert all(sum(n["paths"].values()) == 3 for n in st["nodes"])


def test_resize_and_reallocate(delegate_library):
    rng = np.random.default_rng(8)
    model = _chain_model(rng, unsupported_middle=False)
    d = load_delegate({"policy": "all"})
    ref, got = _interp(model), _interp(model, d)
    for shape in [(1, 11, 13, 12), (2, 17, 9, 12), (1, 5, 6, 12), (3, 30, 31, 12)]:
        for it in (ref, got):
            it.resize_tensor_input(it.get_input_details()[0]["index"], list(shape))
            it.allocate_tensors()
        x = rng.integers(-128, 128, size=shape, dtype=np.int8)
        a, b = _run(ref, x), _run(got, x)
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert delegate_stats(d)["claimed"] == 4


def test_unsupported_nodes_are_not_claimed(delegate_library):
    rng = np.random.default_rng(9)
    s = 0.05
    layers = [
        random_layer(rng, 8, 8, 3, 3, s, dilation=2),               # dilation
        random_layer(rng, 8, 8, 3, 3, s, stride=3),                 # stride 3
        random_layer(rng, 8, 8, 3, 3, s, depthwise=True, depth_multiplier=2),  # dm 2
        random_layer(rng, 16, 16, 3, 3, s, depthwise=True, dilation=2),  # dilation
    ]
    model = build_model([1, 15, 15, 8], s, 0, layers)
    d = load_delegate({"policy": "all"})
    ref, got = _interp(model), _interp(model, d)
    x = rng.integers(-128, 128, size=(1, 15, 15, 8), dtype=np.int8)
    np.testing.assert_array_equal(_run(ref, x), _run(got, x))
    st = delegate_stats(d)
    assert st["considered"] == 4 and st["claimed"] == 0 and st["nodes"] == []


def test_depthwise_option_off(delegate_library):
    rng = np.random.default_rng(14)
    model = build_model([1, 9, 9, 8], 0.05, 3,
                        [random_layer(rng, 8, 8, 3, 3, 0.05, depthwise=True)])
    d = load_delegate({"depthwise": 0, "policy": "all"})
    ref, got = _interp(model), _interp(model, d)
    x = rng.integers(-128, 128, size=(1, 9, 9, 8), dtype=np.int8)
    np.testing.assert_array_equal(_run(ref, x), _run(got, x))
    assert delegate_stats(d)["claimed"] == 0


def test_missing_bias_equals_zero_bias(delegate_library):
    """TFLite's int8 CONV_2D requires a bias; the delegate also runs convs
    without one, which must equal the same conv with a zero bias."""
    rng = np.random.default_rng(10)
    for k, stride, dw in [(3, 1, False), (1, 1, False), (3, 2, False), (3, 1, True)]:
        layer = random_layer(rng, 9, 11, k, k, 0.04, stride=stride, depthwise=dw)
        cout = layer.weights.shape[3 if dw else 0]
        layer.bias = None
        no_bias = build_model([1, 9, 8, 9], 0.04, -7, [layer])
        layer.bias = np.zeros(cout, np.int32)
        zero_bias = build_model([1, 9, 8, 9], 0.04, -7, [layer])
        d = load_delegate({"policy": "all"})
        got = _interp(no_bias, d)
        ref = _interp(zero_bias)
        x = rng.integers(-128, 128, size=(1, 9, 8, 9), dtype=np.int8)
        np.testing.assert_array_equal(_run(ref, x), _run(got, x))
        assert delegate_stats(d)["claimed"] == 1


@pytest.mark.parametrize("options,match", [
    ({"bogus": 1}, "unknown option 'bogus'"),
    ({"bits": 6}, "bad value '6' for option 'bits'"),
    ({"winograd": 2}, "option 'winograd'"),
    ({"debug": "yes"}, "option 'debug'"),
    ({"num_threads": 0}, "option 'num_threads'"),
    ({"isa": "avx512"}, "option 'isa'"),
    ({"rounding": "up"}, "option 'rounding'"),
    ({"depthwise": -1}, "option 'depthwise'"),
    ({"bits": ""}, "option 'bits'"),
    ({"policy": "fast"}, "option 'policy'"),
])
def test_bad_options_raise_value_error(delegate_library, options, match):
    with pytest.raises(ValueError, match=match):
        load_delegate(options)


@pytest.mark.parametrize("key", ["num_threads", "bits", "debug", "winograd"])
@pytest.mark.parametrize("pad", [" {}", "{} ", "\t{}", "+{}", "{}\n", "0{}x"])
def test_numbers_with_whitespace_or_sign_are_rejected(delegate_library, key, pad):
    """Every numeric option reads exactly -?[0-9]+: leading and trailing
    whitespace (once accepted on one side only, by strtol) and '+' are
    errors, alike for every option."""
    good = {"num_threads": "2", "bits": "8", "debug": "1", "winograd": "0"}[key]
    load_delegate({key: good})  # the bare value is fine
    with pytest.raises(ValueError, match=f"option '{key}'"):
        load_delegate({key: pad.format(good)})


@pytest.mark.parametrize("value", ["-1", "1", "64"])
def test_num_threads_accepts_its_range(delegate_library, value):
    assert delegate_stats(load_delegate({"num_threads": value}))["num_threads"] == int(value)


@pytest.mark.parametrize("value", ["65", "-2", "99999999999999999999"])
def test_num_threads_rejects_out_of_range(delegate_library, value):
    with pytest.raises(ValueError, match="option 'num_threads'"):
        load_delegate({"num_threads": value})


@pytest.mark.parametrize("rounding", ["builtin", "reference", "builtin-x86", "builtin-arm64",
                                      "tflite-runtime-2.14"])
def test_rounding_values(delegate_library, rounding):
    st = delegate_stats(load_delegate({"rounding": rounding}))
    native = "builtin-arm64" if platform.machine() in ("aarch64", "arm64") else "builtin-x86"
    assert st["rounding"] == (native if rounding == "builtin" else rounding)


def test_isa_of_another_architecture_is_an_error(delegate_library):
    other = "neon" if platform.machine() == "x86_64" else "avx2"
    with pytest.raises(ValueError, match=f"isa={other}: this CPU lacks it"):
        load_delegate({"isa": other})


def test_good_options_are_accepted(delegate_library):
    st = delegate_stats(load_delegate(
        {"debug": 0, "winograd": 1, "bits": 8, "num_threads": 1, "isa": "scalar",
         "rounding": "reference", "record_layout": 0}))
    assert st["isa"] == "scalar" and st["bits"] == 8 and st["rounding"] == "reference"


def test_library_path_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("EQ_TFLITE_DELEGATE_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(DelegateNotBuiltError):
        library_path()


def test_debug_logging_reports_claims_and_paths(delegate_library):
    code = r"""
import sys, numpy as np
sys.path.insert(0, %r)
from conv_models import build_model, random_layer
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from eq_tflite.delegate import load_delegate
rng = np.random.default_rng(0)
m = build_model([1, 8, 8, 16], 0.05, 0, [random_layer(rng, 16, 16, 3, 3, 0.05)])
it = Interpreter(model_content=m, experimental_delegates=[load_delegate({"debug": 1, "policy": "all"})],
                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
it.allocate_tensors(); it.invoke(); it.invoke()
del it
""" % (os.path.dirname(os.path.abspath(__file__)),)
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    env["EQ_TFLITE_DELEGATE_LIB"] = delegate_library
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "node 0 CONV_2D: claimed" in proc.stderr
    assert "winograd" in proc.stderr and "=2" in proc.stderr, proc.stderr


def test_tf_lite_interpreter_works_too(delegate_library):
    """The same library through tf.lite's load_delegate / Interpreter."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(12)
    model = build_model([1, 10, 10, 16], 0.05, 5,
                        [random_layer(rng, 16, 16, 3, 3, 0.05)])
    d = load_delegate({"policy": "all"}, runtime="tensorflow")
    it = tf.lite.Interpreter(
        model_content=model, experimental_delegates=[d],
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType
        .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    x = rng.integers(-128, 128, size=(1, 10, 10, 16), dtype=np.int8)
    np.testing.assert_array_equal(_run(_interp(model), x), _run(it, x))
    assert delegate_stats(d)["claimed"] == 1
    del it
    gc.collect()


def test_threads_follow_interpreter_and_option(delegate_library):
    rng = np.random.default_rng(13)
    model = _chain_model(rng, unsupported_middle=False)
    x = rng.integers(-128, 128, size=(2, 23, 19, 12), dtype=np.int8)
    ref = _interp(model)
    ref.resize_tensor_input(ref.get_input_details()[0]["index"], list(x.shape))
    ref.allocate_tensors()
    expect = _run(ref, x)
    for interp_threads, opt, want in [(2, {}, 2), (1, {}, 1), (None, {}, 1),
                                      (1, {"num_threads": 3}, 3)]:
        d = load_delegate({"policy": "all", **opt})
        kw = {} if interp_threads is None else {"num_threads": interp_threads}
        it = Interpreter(model_content=model, experimental_delegates=[d],
                         experimental_op_resolver_type=BUILTIN, **kw)
        it.resize_tensor_input(it.get_input_details()[0]["index"], list(x.shape))
        it.allocate_tensors()
        np.testing.assert_array_equal(_run(it, x), expect)
        assert {n["threads"] for n in delegate_stats(d)["nodes"]} == {want}


def test_too_many_threads_is_an_error(delegate_library):
    with pytest.raises(ValueError, match="num_threads"):
        load_delegate({"num_threads": 65})


@pytest.mark.parametrize("variant", ["per_tensor_scale", "asym_stride", "nonsquare_kernel",
                                     "extreme_zero_points", "dw_per_tensor"])
def test_unusual_but_supported_convs(delegate_library, variant):
    rng = np.random.default_rng(15)
    in_zp, shape = 5, (2, 13, 10, 12)
    dw = variant == "dw_per_tensor"
    k = (1, 3) if variant == "nonsquare_kernel" else (3, 3)
    layer = random_layer(rng, 12, 12 if dw else 17, k[0], k[1], 0.05, depthwise=dw)
    if variant in ("per_tensor_scale", "dw_per_tensor"):
        layer.w_scales = layer.w_scales[:1]
    if variant == "asym_stride":
        layer.stride = (1, 2)
    if variant == "extreme_zero_points":
        in_zp, layer.out_zp = -128, 127
    model = build_model(list(shape), 0.05, in_zp, [layer])
    d = load_delegate({"policy": "all"})
    ref, got = _interp(model), _interp(model, d)
    for _ in range(2):
        x = rng.integers(-128, 128, size=shape, dtype=np.int8)
        np.testing.assert_array_equal(_run(ref, x), _run(got, x))
    assert delegate_stats(d)["claimed"] == 1
