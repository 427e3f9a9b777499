"""tools/llvm_mca_table.py: the static cycle estimates of the NEON loops.

Runs the tool (no XNNPACK checkout: the delegate's rows only, no x86 table),
which cross-compiles the delegate's NEON kernels and asks llvm-mca.  Skipped
where the aarch64 cross compiler or llvm-mca is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(
    not shutil.which("aarch64-linux-gnu-gcc") or not shutil.which("aarch64-linux-gnu-objdump")
    or not any(shutil.which(f"llvm-mca{v}") for v in ["", "-14", "-15", "-16", "-17", "-18",
                                                       "-19"]),
    reason="needs aarch64-linux-gnu-gcc/objdump (bash .ci/setup_aarch64.sh) and llvm-mca")


def test_every_neon_kernel_gets_a_row_and_7bit_runs_cost_less_on_a53():
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "llvm_mca_table.py"), "--x86_cpus=",
         "--iterations=100", "--cpus=cortex-a53"],
        capture_output=True, text=True, check=False, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpm = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].split(" ")[0].endswith(("_r8", "_r4", "_r2", "_r1",
                                                                 "_dot", "_neon")):
            name = cells[1].split(" ")[0]
            cpm.setdefault(name, cells[4])
    for name in ("direct_neon_r8", "direct_neon_r4", "direct_neon_r2", "direct_neon_r1",
                 "direct_neon_dot", "winograd_neon", "dwconv_neon_r8", "dwconv_neon"):
        assert name in cpm, (name, sorted(cpm))
    assert cpm["direct_neon_dot"].startswith("n/a"), cpm  # no SDOT on the A53
    a53 = {k: float(v) for k, v in cpm.items() if not v.startswith("n/a")}
    assert all(0.05 < v < 10 for v in a53.values()), a53
    # The widening SADALP is amortized over longer runs: 7-bit data (runs of
    # 8) costs fewer cycles per MAC on the in-order A53 than int8 (runs of 2),
    # and the 7-bit depthwise path fewer than its int16 path.
    assert a53["direct_neon_r8"] < a53["direct_neon_r4"] < a53["direct_neon_r2"], a53
    assert a53["dwconv_neon_r8"] < a53["dwconv_neon"], a53
