"""The claim policy (option ``policy``): ``fastest`` claims a node only where
the generated cost table (delegates/src/claim_table.h) says its kernel beats
XNNPACK on this CPU class; ``all`` claims every supported node.

The expected decision of each node is recomputed here from the table's text
with the rule of claim_policy.c (nearest row of the same CPU class, kernel,
kernel size and stride, within a shape distance of 1.0; >= 1.05x at 1
thread; nothing at 2 threads), so a C lookup that drifted from the table
would fail.  Whatever runs, the outputs
stay bit-exact: the builtin resolver with policy=fastest equals the builtin
kernels, and the default resolver with policy=fastest equals XNNPACK alone
where nothing is claimed.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from conv_models import build_model, random_layer
from eq_tflite.delegate import delegate_stats, load_delegate

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TABLE = os.path.join(REPO, "delegates", "src", "claim_table.h")
BUILTIN = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
MIN_SPEEDUP = np.float32(1.05)  # EQD_CLAIM_MIN_SPEEDUP
MAX_DISTANCE = 1.0  # EQD_CLAIM_MAX_DISTANCE
ROW = re.compile(
    r'\{"(?P<cls>[^"]+)", "(?P<kernel>[^"]+)", (?P<k>\d+), (?P<s>\d+), (?P<h>\d+), '
    r'(?P<cin>\d+), (?P<cout>\d+), (?P<wbits>\d+), \{(?P<s1>[\d.]+)f, (?P<s2>[\d.]+)f\}, '
    r'"(?P<layer>[^"]+)"\}')

# (name, H=W, cin, cout (0: depthwise), k, stride, weight bits, dilation)
LAYERS = [
    ("dw5x5_28x28x240", 28, 240, 0, 5, 1, 7, 1),
    ("dw5x5s2_14x14x96", 14, 96, 0, 5, 2, 7, 1),
    ("dw5x5_7x7x1152", 7, 1152, 0, 5, 1, 7, 1),
    ("dw3x3_14x14x64", 14, 64, 0, 3, 1, 7, 1),
    ("conv1x1_14x14x16to64", 14, 16, 64, 1, 1, 7, 1),
    ("conv3x3_14x14x32", 14, 32, 32, 3, 1, 7, 1),
    ("conv3x3s2_28x28x16to32", 28, 16, 32, 3, 2, 7, 1),
    ("conv3x3_8bit_weights", 14, 32, 32, 3, 1, 8, 1),
    ("conv3x3_dilated", 14, 16, 16, 3, 1, 7, 2),
]


def table_rows() -> list[dict]:
    with open(TABLE, encoding="utf-8") as f:
        rows = [m.groupdict() for m in ROW.finditer(f.read())]
    for r in rows:
        for key in ("k", "s", "h", "cin", "cout", "wbits"):
            r[key] = int(r[key])
        r["s1"], r["s2"] = np.float32(r["s1"]), np.float32(r["s2"])
    return rows


def expected_claim(rows, cls, kernels, k, stride, h, cin, cout, wbits, threads):
    """(claim, row or None, kind): claim_policy.c's rule, from the table's text.
    kind: faster, slower, threads (a win at 1 thread, declined at 2+), far
    (nearest row beyond MAX_DISTANCE), none (no row)."""
    best, best_d, far, far_d = None, None, None, None
    for kernel in kernels:
        cands = [r for r in rows if r["cls"] == cls and r["kernel"] == kernel and r["k"] == k
                 and r["s"] == stride and r["wbits"] >= wbits]
        if not cands:
            continue

        def dist(r):
            return (abs(math.log((h * h / stride ** 2) / (r["h"] * r["h"] / r["s"] ** 2)))
                    + abs(math.log(cin / r["cin"])) + abs(math.log(cout / r["cout"])))

        r = min(cands, key=dist)  # the first of equals, as in C
        if dist(r) > MAX_DISTANCE:
            if far is None or dist(r) < far_d:
                far, far_d = r, dist(r)
            continue
        if best is None or r["s1"] > best["s1"]:
            best = r
    if best is None:
        if far is not None:
            return False, far, "far"
        return cls == "neon", None, "none"
    if best["s1"] < MIN_SPEEDUP:
        return False, best, "slower"
    if threads >= 2:
        return False, best, "threads"
    return True, best, "faster"


def _model(rng, h, cin, cout, k, stride, wbits, dilation):
    layer = random_layer(rng, cin, cout or cin, k, k, 0.05, wbits=wbits, stride=stride,
                         activation="RELU", depthwise=cout == 0, dilation=dilation)
    return build_model([1, h, h, cin], 0.05, 3, [layer])


def _run(model, x, threads, delegate=None, resolver=BUILTIN):
    kw = {"experimental_delegates": [delegate]} if delegate is not None else {}
    if resolver is not None:
        kw["experimental_op_resolver_type"] = resolver
    it = Interpreter(model_content=model, num_threads=threads, **kw)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def _kernel_under_all(model, options):
    d = load_delegate({"policy": "all", **options})
    Interpreter(model_content=model, experimental_delegates=[d],
                experimental_op_resolver_type=BUILTIN).allocate_tensors()
    nodes = delegate_stats(d)["nodes"]
    return nodes[0]["kernel"] if nodes else None


@pytest.mark.parametrize("threads", [1, 2])
def test_fastest_claims_per_table_and_stays_exact(delegate_library, threads):
    rows = table_rows()
    rng = np.random.default_rng(31)
    outcomes = []
    for name, h, cin, cout, k, stride, wbits, dilation in LAYERS:
        model = _model(rng, h, cin, cout, k, stride, wbits, dilation)
        x = rng.integers(-61, 67, size=(1, h, h, cin), dtype=np.int8)  # 128 levels
        d = load_delegate({"policy": "fastest"})
        got = _run(model, x, threads, d)
        np.testing.assert_array_equal(got, _run(model, x, threads), err_msg=name)
        st = delegate_stats(d)
        cls = st["cpu_class"]
        assert st["policy"] == "fastest" and st["considered"] == 1
        if dilation != 1:  # unsupported: declined under any policy, with the reason
            assert st["claimed"] == 0
            assert st["declined"][0]["why"] == "unsupported: dilation"
            continue
        kernels = [_kernel_under_all(model, {})]
        if kernels[0].startswith("winograd"):
            kernels.append(_kernel_under_all(model, {"winograd": 0}))
        claim, row, kind = expected_claim(rows, cls, kernels, k, stride, h, cin, cout or cin,
                                          wbits, threads)
        outcomes.append(claim)
        assert st["claimed"] == int(claim), (name, threads, st)
        why = st["nodes"][0]["why"] if claim else st["declined"][0]["why"]
        if kind in ("faster", "slower"):
            assert f"table row {row['kernel']} {row['layer']}," in why, (name, why)
            assert why.startswith(f"{kind} than XNNPACK on {cls}"), (name, why)
        elif kind == "threads":
            assert f"table row {row['kernel']} {row['layer']}," in why, (name, why)
            assert why.startswith(f"not claimed at {threads} threads on {cls}"), (name, why)
        elif kind == "far":
            assert why.startswith(f"no measurement near this shape on {cls}: nearest row "
                                  f"{row['kernel']} {row['layer']} is "), (name, why)
        else:
            assert why.startswith("no measurement for"), why
        if not claim:  # nothing claimed: the default resolver runs XNNPACK alone
            d_default = load_delegate()
            np.testing.assert_array_equal(_run(model, x, threads, d_default, resolver=None),
                                          _run(model, x, threads, resolver=None), err_msg=name)
            assert delegate_stats(d_default)["claimed"] == 0
    mine = [r for r in rows if r["cls"] == cls]
    if threads == 1 and any(r["s1"] >= MIN_SPEEDUP and r["kernel"].startswith("dw")
                            for r in mine) and any(r["s1"] < MIN_SPEEDUP for r in mine):
        # The table has wins and losses for this CPU: the set sees both.
        assert True in outcomes and False in outcomes, outcomes
    if threads >= 2 and mine:  # measured class: nothing claimed at 2+ threads
        assert True not in outcomes, outcomes


def test_policy_all_claims_what_fastest_declines(delegate_library):
    rng = np.random.default_rng(32)
    model = _model(rng, 14, 16, 64, 1, 1, 8, 1)  # 8-bit weights: no table row on x86
    x = rng.integers(-128, 128, size=(1, 14, 14, 16), dtype=np.int8)
    d_all = load_delegate({"policy": "all"})
    np.testing.assert_array_equal(_run(model, x, 1, d_all), _run(model, x, 1))
    st = delegate_stats(d_all)
    assert st["policy"] == "all" and st["claimed"] == 1 and st["declined"] == []
    assert st["nodes"][0]["why"] == "policy=all"


def test_default_policy_is_fastest(delegate_library):
    assert delegate_stats(load_delegate())["policy"] == "fastest"


@pytest.mark.parametrize("value", ["fast", "ALL", "", " all", "all "])
def test_unknown_policy_is_a_clean_error(delegate_library, value):
    with pytest.raises(ValueError, match="bad value .* for option 'policy' \\(fastest or all\\)"):
        load_delegate({"policy": value})


def test_debug_logs_declines_with_reason(delegate_library):
    code = r"""
import sys, numpy as np
sys.path.insert(0, %r)
from conv_models import build_model, random_layer
from ai_edge_litert.interpreter import Interpreter
from eq_tflite.delegate import load_delegate
rng = np.random.default_rng(0)
m = build_model([1, 8, 8, 16], 0.05, 0, [random_layer(rng, 16, 16, 1, 1, 0.05, wbits=8),
                                          random_layer(rng, 16, 16, 3, 3, 0.05, dilation=2)])
it = Interpreter(model_content=m, experimental_delegates=[load_delegate({"debug": 1})])
it.allocate_tensors(); it.invoke()
""" % (HERE,)
    env = dict(os.environ, EQ_TFLITE_DELEGATE_LIB=delegate_library)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "policy=fastest" in proc.stderr
    if "cpu_class=neon " not in proc.stderr:
        assert "node 0 CONV_2D: declined, left to TFLite: no measurement for" in proc.stderr
    assert "node 1 CONV_2D: declined, left to TFLite: unsupported: dilation" in proc.stderr
