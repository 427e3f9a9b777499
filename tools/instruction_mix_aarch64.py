"""Instruction mix of the delegate's aarch64 hot loops, from disassembly.

Cross-compiles the NEON kernels with the delegate's flags
(delegates/cflags.txt), disassembles them, and prints every innermost loop
that multiplies (SMULL/SMLAL/SDOT), with its instruction counts and the
multiply-accumulates it performs per iteration.  Needs aarch64-linux-gnu-gcc
and -objdump (bash .ci/setup_aarch64.sh).  Counting instructions is the
only performance statement made for ARM here: qemu timings are not
performance.

    python tools/instruction_mix_aarch64.py
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "delegates", "src")
FILES = ["qs8_conv_direct_neon.c", "qs8_conv_direct_neon_dot.c", "qs8_winograd_f2x3_neon.c",
         "qs8_dwconv_neon.c"]
MULS = ("smull", "smlal", "sdot")


def macs_of(op: str, args: str) -> int:
    """Multiply-accumulates of one instruction: SMULL/SMLAL(2) make one
    product per destination lane (.8h: 8 int8 products, .4s: 4 int16
    products); SDOT makes 4 per 32-bit lane (16)."""
    if op == "sdot":
        return 16
    if op.startswith(("smull", "smlal")):
        lanes = re.match(r"v\d+\.(\d+)[hsd]", args)
        return int(lanes.group(1)) if lanes else 0
    return 0
BRANCH = re.compile(r"^(b\.\w+|b|cbz|cbnz|tbz|tbnz)$")


def innermost_loops(obj: str) -> list[tuple[str, list[tuple[int, str, str]]]]:
    out = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", obj],
                         capture_output=True, text=True, check=True).stdout
    ins, fn = [], None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:", line)
        if m:
            fn = m.group(1)
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2), m.group(3), fn))

    def back_target(x):
        m = re.search(r"\b([0-9a-f]+) <", x[2])
        if BRANCH.match(x[1]) and m and int(m.group(1), 16) < x[0]:
            return int(m.group(1), 16)
        return None

    loops = []
    for x in ins:
        t = back_target(x)
        if t is None:
            continue
        body = [y for y in ins if t <= y[0] <= x[0]]
        if any(back_target(y) is not None for y in body[:-1]):
            continue  # not innermost
        if any(y[1].startswith(MULS) for y in body):
            loops.append((x[3], body))
    return loops


def main() -> int:
    flags = open(os.path.join(REPO, "delegates", "cflags.txt")).read().split()
    print("| file | function | loop instructions | MACs per iteration | MACs / instruction "
          "| MACs / multiply-or-widen instruction | instruction mix |")
    print("|---|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for f in FILES:
            obj = os.path.join(tmp, f + ".o")
            subprocess.run(["aarch64-linux-gnu-gcc", *flags, "-fPIC", "-c",
                            "-I" + os.path.join(REPO, "delegates", "include"), "-I" + SRC,
                            os.path.join(SRC, f), "-o", obj], check=True)
            for fn, body in innermost_loops(obj):
                cnt = collections.Counter(y[1] for y in body)
                macs = sum(macs_of(y[1], y[2]) for y in body)
                arith = sum(n for op, n in cnt.items() if op.startswith(MULS) or op == "sadalp")
                mix = ", ".join(f"{op} {n}" for op, n in cnt.most_common())
                print(f"| {f} | {fn} | {len(body)} | {macs} | {macs / len(body):.2f} | "
                      f"{macs / arith if arith else 0:.2f} | {mix} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
