"""Per-kernel harness (kernel_test.c): every kernel variant against its
family's scalar reference, bit for bit, over a shape/parameter sweep.

Natively (with ASan/UBSan) on this machine's CPU, and for aarch64 under
qemu-user with two CPU models, so that both sides of the run-time dispatch
run: cortex-a72 (NEON, no dot product) and neoverse-n1 (NEON + SDOT).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

import aarch64
from aarch64 import CPU_DOTPROD, CPU_NO_DOTPROD, HERE

HARNESS = os.path.join(HERE, "kernel_test.c")
LINE = re.compile(r"variant (\S+) isa (\S+) cases (\d+) outputs (\d+) mismatches (\d+) "
                  r"skipped (\d+) paths (\S+)")


def parse(stdout: str) -> dict[str, dict]:
    out = {}
    for m in LINE.finditer(stdout):
        paths = dict((p.split("=")[0], int(p.split("=")[1])) for p in m.group(7).split(","))
        out[m.group(1)] = dict(isa=m.group(2), cases=int(m.group(3)), outputs=int(m.group(4)),
                               mismatches=int(m.group(5)), skipped=int(m.group(6)), paths=paths)
    return out


def check(results: dict[str, dict], expected: set[str], cases: int) -> None:
    assert set(results) == expected, f"variants run: {sorted(results)}"
    for name, r in results.items():
        assert r["mismatches"] == 0, f"{name}: {r}"
        assert r["cases"] + r["skipped"] == cases and r["cases"] >= cases * 0.9, (name, r)
        never = [p for p, n in r["paths"].items() if n == 0]
        assert not never, f"{name}: paths never taken in the sweep: {never}"


@pytest.fixture(scope="module")
def native_harness(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("kt") / "kernel_test")
    cmd = ["gcc", *aarch64.cflags(), "-Werror", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=undefined", "-I" + os.path.join(aarch64.DELEGATES, "include"),
           "-I" + os.path.join(aarch64.DELEGATES, "src"), *aarch64.delegate_sources(),
           HARNESS, "-lm", "-o", exe]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exe


def test_every_native_variant_matches_its_reference(native_harness):
    proc = subprocess.run([native_harness, "600", "1"], capture_output=True, text=True,
                          check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    res = parse(proc.stdout)
    expected = {"winograd_scalar"}
    if "cpu avx2" in proc.stdout:
        expected |= {"winograd_avx2", "direct_avx2", "dwconv_avx2"}
    check(res, expected, 600)


def test_harness_sees_one_lsb(native_harness):
    """Negative control: with another rounding rule in the variant, every
    variant must show mismatches (ties are frequent in the sweep)."""
    proc = subprocess.run([native_harness, "200", "1", "perturb"], capture_output=True,
                          text=True, check=False, timeout=600)
    res = parse(proc.stdout)
    assert res and proc.returncode == 1
    assert all(r["mismatches"] > 0 for r in res.values()), res


@pytest.fixture(scope="module")
def arm_harness(tmp_path_factory):
    aarch64.require()
    exe = str(tmp_path_factory.mktemp("kt_arm") / "kernel_test")
    aarch64.cross_compile(exe, [*aarch64.delegate_sources(), HARNESS], ["-static", "-lm"])
    return exe


NEON = {"winograd_neon", "direct_neon", "dwconv_neon", "winograd_scalar"}
ARM_VARIANTS = {CPU_NO_DOTPROD: NEON, CPU_DOTPROD: NEON | {"direct_neon_dot"}}


@pytest.mark.parametrize("cpu", [CPU_NO_DOTPROD, CPU_DOTPROD])
def test_every_arm_variant_matches_its_reference(arm_harness, cpu):
    tc = aarch64.require()
    proc = tc.run_binary([arm_harness, "300", "2"], cpu)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    check(parse(proc.stdout), ARM_VARIANTS[cpu], 300)
    if cpu == CPU_NO_DOTPROD:  # the dispatch really depends on the CPU
        assert "variant direct_neon_dot isa neon-dotprod unavailable" in proc.stdout


def test_arm_harness_sees_one_lsb(arm_harness):
    tc = aarch64.require()
    proc = tc.run_binary([arm_harness, "100", "2", "perturb"], CPU_DOTPROD)
    res = parse(proc.stdout)
    assert set(res) == ARM_VARIANTS[CPU_DOTPROD] and proc.returncode == 1
    assert all(r["mismatches"] > 0 for r in res.values()), res
