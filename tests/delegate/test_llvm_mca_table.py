"""tools/llvm_mca_table.py: the static cycle estimates of the NEON loops.

Cross-compiles the delegate's NEON kernels and asks llvm-mca (no XNNPACK
checkout: the delegate's rows only).  Skipped where the aarch64 cross
compiler or llvm-mca is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

pytestmark = pytest.mark.skipif(
    not shutil.which("aarch64-linux-gnu-gcc") or not shutil.which("aarch64-linux-gnu-objdump")
    or not any(shutil.which(f"llvm-mca{v}") for v in ["", "-14", "-15", "-16", "-17", "-18",
                                                       "-19"]),
    reason="needs aarch64-linux-gnu-gcc/objdump (bash .ci/setup_aarch64.sh) and llvm-mca")


def test_every_neon_kernel_gets_a_row_and_7bit_runs_cost_less_on_a53():
    from absl import flags

    import llvm_mca_table as t

    flags.FLAGS(["llvm_mca_table", "--iterations=100"])
    mca = t.find_mca()
    with tempfile.TemporaryDirectory() as tmp:
        rows = t.delegate_rows(tmp)
    kernels = [r["kernel"].split(" ")[0] for r in rows]
    for name in ("direct_neon_r8", "direct_neon_r4", "direct_neon_r2", "direct_neon_r1",
                 "direct_neon_dot", "winograd_neon", "dwconv_neon"):
        assert name in kernels, kernels
    cpm = {r["kernel"].split(" ")[0]: t.mca_cycles(r["asm"], "cortex-a53", mca) / r["macs"]
           for r in rows if not r.get("dot")}
    assert all(0.05 < v < 10 for v in cpm.values()), cpm
    # The widening SADALP is amortized over longer runs: 7-bit data (runs of
    # 8) costs fewer cycles per MAC on the in-order A53 than int8 (runs of 2).
    assert cpm["direct_neon_r8"] < cpm["direct_neon_r4"] < cpm["direct_neon_r2"], cpm
