"""The delegate on aarch64 (Android's CPUs), under qemu-user.

The library is cross-compiled with the flags of setup.py (plus -Werror) and
loaded by LiteRT 2.3's aarch64 wheel in an aarch64 CPython.  Each emulated
CPU model selects its own kernels at run time: cortex-a72 has no dot product
instructions, neoverse-n1 has them.  The randomized single-conv suite
(random_suite.py) then compares the delegate with LiteRT's aarch64 builtin
kernels and with its reference kernels, bit for bit.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import aarch64
from aarch64 import CPU_DOTPROD, CPU_NO_DOTPROD, CPUS, HERE, REPO
from conv_models import build_model, random_layer
from examples_7bit import EXAMPLE_MODELS, calibration, quantized

# Kernel paths each CPU model must run in the suite (none may be missing:
# otherwise a variant would pass untested).
EXPECTED_PATHS = {
    CPU_NO_DOTPROD: {"winograd_neon", "direct_neon_r8", "direct_neon_r4", "direct_neon_r2",
                     "dwconv_neon"},
    CPU_DOTPROD: {"winograd_neon", "direct_neon_dot", "dwconv_neon"},
}


@pytest.fixture(scope="module")
def toolchain():
    return aarch64.require()


@pytest.fixture(scope="module")
def arm_library(toolchain, tmp_path_factory):
    return aarch64.build_delegate(str(tmp_path_factory.mktemp("aarch64")))


def run_suite(toolchain, library, cpu, against, seed, cases=50, options=()):
    proc = toolchain.run_python(
        [os.path.join(HERE, "random_suite.py"), "--cases", str(cases), "--seed", str(seed),
         "--against", against, "--json", "--options", *options],
        cpu, env={"EQ_TFLITE_DELEGATE_LIB": library, "PYTHONPATH": REPO})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"suite did not report (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("against", ["builtin", "reference"])
def test_bitexact_under_qemu(toolchain, arm_library, cpu, against):
    res = run_suite(toolchain, arm_library, cpu, against, seed=21 if against == "builtin" else 22)
    assert res["cases"] == 50 and res["unclaimed"] == []
    assert res["mismatches"] == [], f"{len(res['mismatches'])} mismatches: {res['mismatches'][:3]}"
    assert res["isa"] == {CPU_NO_DOTPROD: "neon", CPU_DOTPROD: "neon-dotprod"}[cpu]
    missing = EXPECTED_PATHS[cpu] - set(res["paths"])
    assert not missing, f"paths never run on {cpu}: {missing} (ran {res['paths']})"


@pytest.mark.parametrize("isa,paths", [
    ("scalar", {"winograd_scalar", "direct_scalar", "dwconv_scalar"}),
    ("neon", {"winograd_neon", "direct_neon_r8", "dwconv_neon"}),
])
def test_forced_isa_under_qemu(toolchain, arm_library, isa, paths):
    """The references and the SMLAL variant on a dot-product CPU, too."""
    res = run_suite(toolchain, arm_library, CPU_DOTPROD, "builtin", seed=23, cases=30,
                    options=[f"isa={isa}"])
    assert res["mismatches"] == [] and res["unclaimed"] == [] and res["isa"] == isa
    assert paths <= set(res["paths"]), res["paths"]


@pytest.mark.parametrize("cpu", CPUS)
def test_policy_fastest_under_qemu(toolchain, arm_library, cpu):
    """policy=fastest (the default) on each CPU class: no cost-table rows
    exist for aarch64 (qemu cannot time code), so on neon (cortex-a72) the
    delegate claims convolutions on the seed's A53/A72 result and declines
    depthwise nodes (llvm-mca estimates its NEON loop slower than XNNPACK's),
    and on neon-dotprod (neoverse-n1) it declines everything.  Bit-exact
    either way (the suite compares with the builtin kernels)."""
    res = run_suite(toolchain, arm_library, cpu, "builtin", seed=24, cases=20,
                    options=["policy=fastest"])
    assert res["cases"] == 20 and res["mismatches"] == []
    if cpu == CPU_NO_DOTPROD:
        declined = [c for _, c in res["unclaimed"]]
        assert declined and all(c["depthwise"] for c in declined), declined
        assert len(declined) < 20 and res["paths"]
        assert all("neon" in p and not p.startswith("dwconv") for p in res["paths"]), res["paths"]
    else:
        assert len(res["unclaimed"]) == 20 and res["paths"] == {}


def test_x86_rounding_is_wrong_on_arm(toolchain, arm_library):
    """Negative control: the x86 rule must lose against aarch64's builtin
    kernels, so the suite really tells the two rules apart."""
    res = run_suite(toolchain, arm_library, CPU_DOTPROD, "builtin", seed=21,
                    options=["rounding=builtin-x86"])
    assert res["mismatches"], "the x86 and aarch64 rules agreed on every case"


@pytest.mark.skipif(not EXAMPLE_MODELS, reason="no example SavedModels in examples/")
@pytest.mark.parametrize("policy", ["all", "fastest"])
@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("saved_model,calib", EXAMPLE_MODELS,
                         ids=[os.path.basename(p[0]) for p in EXAMPLE_MODELS])
def test_example_7bit_models_under_qemu(toolchain, arm_library, tmp_path, cpu, saved_model,
                                        calib, policy):
    """The example models, quantized to 7 bits with EasyQuant (natively), run
    under qemu with the claim policy off (policy=all) and on (fastest):
    every output equals LiteRT's aarch64 builtin kernels.  policy=all claims
    every CONV_2D and DEPTHWISE_CONV_2D and NEON kernels run them; fastest
    claims the convolutions and no depthwise node on neon (cortex-a72) and
    nothing on neon-dotprod (neoverse-n1)."""
    try:
        from eq_tflite.methods import available
        if "easyquant" not in available():
            pytest.skip("method 'easyquant' is not registered")
    except ImportError:
        pass
    model = quantized(saved_model, calib, "easyquant")
    if model is None:
        pytest.skip("eq_tflite.quantize is not available")
    (tmp_path / "m.tflite").write_bytes(model)
    np.save(tmp_path / "x.npy", calibration(calib)[:16])
    proc = toolchain.run_python(
        [os.path.join(HERE, "arm_model_check.py"), str(tmp_path / "m.tflite"),
         str(tmp_path / "x.npy"), "debug=1", f"policy={policy}"],
        cpu, env={"EQ_TFLITE_DELEGATE_LIB": arm_library, "PYTHONPATH": REPO})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    res = json.loads(lines[-1])
    st = res["stats"]
    kernels = {n["node"]: n["kernel"] for n in st["nodes"]}
    print(f"{os.path.basename(saved_model)} on {cpu}: {res['differ']} of {res['total']} "
          f"outputs differ; kernel per node: {kernels}")
    assert res["total"] > 0 and res["differ"] == 0
    assert all(k.endswith(("_neon", "_neon_dot")) for k in kernels.values()), kernels
    if policy == "all":
        assert st["claimed"] >= 1 and st["claimed"] == st["considered"]
    elif cpu == CPU_NO_DOTPROD:
        ops = {n["node"]: n["op"] for n in st["nodes"]}
        assert st["claimed"] >= 1 and "DEPTHWISE_CONV_2D" not in ops.values(), ops
        assert all(n["op"] == "DEPTHWISE_CONV_2D" and "llvm-mca" in n["why"]
                   for n in st["declined"]), st["declined"]
    else:
        assert st["claimed"] == 0 and len(st["declined"]) == st["considered"]


def _conv_stack(seed: int) -> tuple[bytes, np.ndarray]:
    """A 3x3 conv stack (with a depthwise and a 1x1 layer) whose tensors
    between layers live in the delegate's buffers; float inputs on the
    input grid."""
    rng = np.random.default_rng(seed)
    scale, zp, ch = 0.05, int(rng.integers(-20, 20)), 16
    layers = []
    for kind in ("conv3", "conv3", "dw3", "conv1", "conv3"):
        layer = random_layer(rng, ch, ch, 1 if kind == "conv1" else 3,
                             1 if kind == "conv1" else 3, scale, wbits=7,
                             activation="RELU", depthwise=kind == "dw3")
        layers.append(layer)
        scale = layer.out_scale
    model = build_model([1, 12, 12, 16], 0.05, zp, layers)
    q = rng.integers(-128, 128, size=(8, 12, 12, 16))
    return model, ((q - zp) * 0.05).astype(np.float32)


@pytest.mark.parametrize("rounding,exact", [("builtin", True), ("builtin-x86", False)])
def test_conv_stack_under_qemu(toolchain, arm_library, tmp_path, rounding, exact):
    """Five chained layers (delegate-internal tensors, errors would
    compound): bit-exact with the aarch64 rule, and visibly not with the
    x86 rule (negative control)."""
    differ = total = runs = 0
    for seed in range(2):
        model, x = _conv_stack(seed)
        (tmp_path / "m.tflite").write_bytes(model)
        np.save(tmp_path / "x.npy", x)
        proc = toolchain.run_python(
            [os.path.join(HERE, "arm_model_check.py"), str(tmp_path / "m.tflite"),
             str(tmp_path / "x.npy"), f"rounding={rounding}"],
            CPU_DOTPROD, env={"EQ_TFLITE_DELEGATE_LIB": arm_library, "PYTHONPATH": REPO})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert lines, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
        res = json.loads(lines[-1])
        assert res["stats"]["claimed"] == 5
        differ += res["differ"]
        total += res["total"]
        runs += 1
        if not exact and differ:
            break  # the negative control has made its point
    print(f"conv stack, rounding={rounding}: {differ} of {total} outputs differ")
    assert total == runs * 8 * 12 * 12 * 16
    assert (differ == 0) if exact else (differ > 0)
