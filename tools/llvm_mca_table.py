"""Static cycle estimates (llvm-mca) per multiply-accumulate for the NEON inner
loops of the delegate and of XNNPACK's int8 microkernels of the same operations.

Nothing here is timed: qemu cannot time code and there is no ARM hardware
here, so llvm-mca's scheduling models estimate the cycles of one iteration of
each innermost loop in steady state (all loads hit L1, no front-end stalls).
A row's figure is cycles per iteration / multiply-accumulates per iteration.

* The delegate's loops come from its own sources: each NEON kernel
  (delegates/src/*neon*.c) is cross-compiled with the delegate's flags
  (delegates/cflags.txt, aarch64-linux-gnu-gcc), disassembled, and every
  innermost loop that multiplies is fed to llvm-mca as it was compiled
  (tools/instruction_mix_aarch64.py finds the loops).  The 7-bit direct
  kernel's run of R products per int16 lane ends, every R/2 iterations, in a
  widening step outside the loop (one SADALP and one zeroing per int16
  accumulator); the estimate adds it, amortized, to the loop body.
* XNNPACK's loops are read at run time from an XNNPACK checkout
  (--xnnpack; nothing of XNNPACK is stored in this project): the main loop of
  each hand-written aarch64 kernel that XNNPACK's gemm-config.c picks for
  int8 per-channel (qc8w) convolutions on Android (igemm, label ``2:`` to
  ``B.HS 2b``): on Cortex-A53 and A55 without dot product the 4x16 SMLAL
  by-lane kernel, elsewhere without dot product the 2x8c8 SMULL/SMLAL/SADALP
  kernel, with dot product the 4x16c4 SDOT kernels (ld128; cortex-a55 on
  A55).  XNNPACK's int8 depthwise kernels on aarch64 (dwconv-config.c:
  3p16c/9p16c/25p16c ``neonv8_mla8``) are C intrinsics; the row for them is
  a minimal re-expression of their multiply step, written from reading that
  source: per 16 channels and 2 taps, 8 64-bit loads, 2 SMULL and 2 SMLAL
  into int16, then 4 SADDW(2) into the int32 accumulators.
* CPUs: cortex-a53 and cortex-a55 (in-order; LLVM has their own models),
  cortex-a76 (LLVM maps it to its Cortex-A57 scheduling model, an older
  core: read that column with care) and neoverse-n1 (LLVM's own model of
  Neoverse N1, the server core built on the Cortex-A76 microarchitecture).
  SDOT kernels get no A53 figure (no dot product there).

MACs count products: SMULL/SMLAL on .8h make 8 int8 products, on .4s 4
int16 products, SDOT 16 int8 products.  Winograd F(2x2,3x3) replaces 36
direct products per 4 outputs by 16 transformed ones, so its "direct-
equivalent" figure divides by 2.25 (the transforms are not included).

    git clone https://github.com/google/XNNPACK /tmp/XNNPACK
    python tools/llvm_mca_table.py --xnnpack /tmp/XNNPACK --output BENCHMARKS.md

Needs aarch64-linux-gnu-gcc / -objdump (bash .ci/setup_aarch64.sh) and
llvm-mca (apt-get install llvm-19 gives llvm-mca-19 with the Neoverse N1
model; the tool takes the newest llvm-mca it finds).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from instruction_mix_aarch64 import SRC, innermost_loops, macs_of  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("xnnpack", "", "An XNNPACK checkout (work tree or bare git directory) "
                    "for the XNNPACK rows; empty: the delegate's rows only.")
flags.DEFINE_string("xnnpack_rev", "HEAD", "Revision to read when --xnnpack is a git directory.")
flags.DEFINE_string("llvm_mca", "", "llvm-mca binary (default: the newest llvm-mca[-N] on PATH).")
flags.DEFINE_list("cpus", ["cortex-a53", "cortex-a55", "cortex-a76", "neoverse-n1"],
                  "llvm-mca -mcpu values, one column each.")
flags.DEFINE_integer("iterations", 300, "llvm-mca -iterations.")
flags.DEFINE_list("x86_cpus", ["znver4", "icelake-server"],
                  "llvm-mca -mcpu values of the x86 table (Winograd vs VNNI); empty: none.")
flags.DEFINE_string("output", "", "Write the 'llvm_mca' section of this Markdown file.")

XNN_KERNELS = [  # (row name, path in XNNPACK, which CPUs XNNPACK picks it for)
    ("XNNPACK qc8w igemm 4x16 neon-mlal-lane (cortex-a53)",
     "src/qs8-qc8w-igemm/gen/qs8-qc8w-igemm-4x16-minmax-fp32-asm-aarch64-neon-mlal-lane-"
     "cortex-a53-prfm.S", "A53, A55 without dot product"),
    ("XNNPACK qc8w igemm 2x8c8 neon-mlal",
     "src/qs8-qc8w-igemm/gen/qs8-qc8w-igemm-2x8c8-minmax-fp32-asm-aarch64-neon-mlal.S",
     "other cores without dot product"),
    ("XNNPACK qc8w igemm 4x16c4 neondot (cortex-a55)",
     "src/qs8-qc8w-igemm/gen/qs8-qc8w-igemm-4x16c4-minmax-fp32-asm-aarch64-neondot-"
     "cortex-a55.S", "A55 with dot product"),
    ("XNNPACK qc8w igemm 4x16c4 neondot (ld128)",
     "src/qs8-qc8w-igemm/gen/qs8-qc8w-igemm-4x16c4-minmax-fp32-asm-aarch64-neondot-ld128.S",
     "other cores with dot product (A76, N1)"),
]

# XNNPACK's qc8w depthwise multiply step (neonv8_mla8, 16 channels, 2 taps),
# re-expressed from reading its source (see the module docstring).
XNN_DW_MLA8 = """\
ldr d0, [x0], #8
ldr d1, [x9], #8
ldr d2, [x0], #8
ldr d3, [x9], #8
smull v16.8h, v0.8b, v1.8b
smull v17.8h, v2.8b, v3.8b
ldr d4, [x1], #8
ldr d5, [x9], #8
ldr d6, [x1], #8
ldr d7, [x9], #8
smlal v16.8h, v4.8b, v5.8b
smlal v17.8h, v6.8b, v7.8b
saddw v20.4s, v20.4s, v16.4h
saddw2 v21.4s, v21.4s, v16.8h
saddw v22.4s, v22.4s, v17.4h
saddw2 v23.4s, v23.4s, v17.8h
"""

FILES = {  # delegate source -> operation
    "qs8_conv_direct_neon.c": "convolution (direct)",
    "qs8_conv_direct_neon_dot.c": "convolution (direct)",
    "qs8_winograd_f2x3_neon.c": "3x3 s1 convolution (Winograd F(2x2,3x3))",
    "qs8_dwconv_neon.c": "depthwise",
}


def find_mca() -> str:
    if FLAGS.llvm_mca:
        return FLAGS.llvm_mca
    for v in range(30, 13, -1):
        p = shutil.which(f"llvm-mca-{v}")
        if p:
            return p
    p = shutil.which("llvm-mca")
    if not p:
        raise SystemExit("error: llvm-mca not found (apt-get install llvm-19)")
    return p


def mca_cycles(asm: str, cpu: str, mca: str, triple: str = "aarch64") -> float:
    """llvm-mca's steady-state cycles for one pass over `asm`."""
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write(asm)
        path = f.name
    try:
        attr = ["-mattr=+dotprod"] if triple == "aarch64" else []
        proc = subprocess.run([mca, f"-mtriple={triple}", f"-mcpu={cpu}", *attr,
                               f"-iterations={FLAGS.iterations}", path],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"error: llvm-mca failed on {cpu}: "
                             f"{proc.stderr.strip().splitlines()[:1]}")
        out = proc.stdout
    finally:
        os.unlink(path)
    it = int(re.search(r"^Iterations:\s+(\d+)", out, re.M).group(1))
    cyc = int(re.search(r"^Total Cycles:\s+(\d+)", out, re.M).group(1))
    return cyc / it


def body_asm(body: list[tuple[int, str, str, str]], label: bool = True) -> str:
    """objdump lines of a loop -> assembler text llvm-mca accepts (branch
    targets become local labels; llvm-mca does not follow branches)."""
    lines = [".Lloop:"] if label else []
    for _, op, args, _ in body:
        args = re.sub(r"\s*//.*$", "", args)
        if re.match(r"^(b\.\w+|b|cbz|cbnz|tbz|tbnz)$", op):
            args = re.sub(r"\b[0-9a-f]+ <[^>]*>", ".Lloop", args)
        lines.append(f"{op} {args}".strip())
    return "\n".join(lines) + "\n"


def widen_block(body: list[tuple[int, str, str, str]]) -> str:
    """The direct kernel's end of a run: SADALP each int16 run register into
    an int32 accumulator, then zero the run (tile_2x4 in
    qs8_conv_direct_neon.c)."""
    runs = sorted({re.match(r"(v\d+)\.8h", a).group(1) for _, op, a, _ in body
                   if op.startswith("smlal")}, key=lambda r: int(r[1:]))
    used = {int(r) for _, _, a, _ in body for r in re.findall(r"\bv(\d+)\.", a)}
    free = [f"v{i}" for i in range(32) if i not in used]
    out = []
    for r, acc in zip(runs, free):
        out += [f"sadalp {acc}.4s, {r}.8h", f"movi {r}.2d, #0"]
    return "\n".join(out) + "\n"


def delegate_rows(tmp: str) -> list[dict]:
    cflags = open(os.path.join(REPO, "delegates", "cflags.txt")).read().split()
    rows = []
    for f, op in FILES.items():
        obj = os.path.join(tmp, f + ".o")
        subprocess.run(["aarch64-linux-gnu-gcc", *cflags, "-fPIC", "-c",
                        "-I" + os.path.join(REPO, "delegates", "include"), "-I" + SRC,
                        os.path.join(SRC, f), "-o", obj], check=True)
        seen = set()
        for fn, body in innermost_loops(obj):
            ops = collections.Counter(x[1] for x in body)
            key = tuple(sorted(ops.items()))
            if key in seen:  # R=8 and R=4 compile to the same loop (up to registers)
                continue
            seen.add(key)
            macs = sum(macs_of(x[1], x[2]) for x in body)
            asm = body_asm(body)
            src = f"`{f}` ({fn}), compiled"
            if f == "qs8_conv_direct_neon.c":
                if ops["sadalp"] and not ops["smlal"] and not ops["smlal2"]:
                    rows.append(dict(op=op, kernel="direct_neon_r1 (int8 x int8, w = -128)",
                                     src=src, asm=asm, macs=macs))
                elif ops["sadalp"]:
                    rows.append(dict(op=op, kernel="direct_neon_r2 (int8 data: runs of 2, "
                                     "as ruy/XNNPACK c8)", src=src, asm=asm, macs=macs))
                else:
                    for r, what in ((8, "7-bit data and weights"),
                                    (4, "7-bit data, 8-bit weights")):
                        rows.append(dict(
                            op=op, kernel=f"direct_neon_r{r} ({what}: runs of {r})",
                            src=src + f" + widening every {r // 2} iterations",
                            asm=asm + body_asm(body, label=False) * (r // 2 - 1)
                            + widen_block(body),
                            macs=macs * (r // 2)))
            elif f == "qs8_conv_direct_neon_dot.c":
                rows.append(dict(op=op, kernel="direct_neon_dot (SDOT)", src=src, asm=asm,
                                 macs=macs, dot=True))
            elif f == "qs8_winograd_f2x3_neon.c":
                rows.append(dict(op=op, kernel="winograd_neon (int16 SMLAL, per transformed "
                                 "MAC)", src=src, asm=asm, macs=macs))
                rows.append(dict(op=op, kernel="winograd_neon (per direct-equivalent MAC, "
                                 "x2.25, transforms excluded)", src=src, asm=asm,
                                 macs=macs * 2.25))
            else:
                rows.append(dict(op=op, kernel="dwconv_neon (int16 SMLAL per tap)", src=src,
                                 asm=asm, macs=macs))
    return rows


def read_xnnpack(path: str) -> str:
    root = FLAGS.xnnpack
    if os.path.exists(os.path.join(root, path)):
        return open(os.path.join(root, path), encoding="utf-8").read()
    return subprocess.run(["git", "--git-dir", root, "show", f"{FLAGS.xnnpack_rev}:{path}"],
                          capture_output=True, text=True, check=True).stdout


def xnnpack_commit() -> str:
    root = FLAGS.xnnpack
    gitdir = os.path.join(root, ".git") if os.path.isdir(os.path.join(root, ".git")) else root
    out = subprocess.run(["git", "--git-dir", gitdir, "rev-parse", FLAGS.xnnpack_rev],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out[:12] or "unknown"


def xnn_main_loop(text: str) -> str:
    """XNNPACK's main loop: from label 2: to B.HS 2b, comments dropped."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(r"^\s*2:\s*$", l))
    end = next(i for i in range(start, len(lines)) if re.match(r"^\s*B\.HS\s+2b", lines[i]))
    out = [".Lloop:"]
    for l in lines[start + 1:end + 1]:
        l = re.sub(r"//.*$", "", l).strip()
        if not l or l.startswith("#"):
            continue
        out.append(re.sub(r"\b2b\b", ".Lloop", l))
    return "\n".join(out) + "\n"


def asm_macs(asm: str) -> int:
    total = 0
    for l in asm.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9.]+)\s+(.*)$", l)
        if m:
            total += macs_of(m.group(1).lower(), m.group(2).lower())
    return total


def xnnpack_rows() -> list[dict]:
    rows = []
    for name, path, when in XNN_KERNELS:
        asm = xnn_main_loop(read_xnnpack(path))
        rows.append(dict(op="convolution (direct)", kernel=f"{name}; XNNPACK picks it on {when}",
                         src=f"`{os.path.basename(path)}` main loop, read at run time",
                         asm=asm, macs=asm_macs(asm), dot="sdot" in asm.lower()))
    asm = ".Lloop:\n" + XNN_DW_MLA8
    rows.append(dict(op="depthwise", kernel="XNNPACK qc8w dwconv neonv8 mla8 (all aarch64 "
                     "cores)", src="multiply step re-expressed from `qs8-qc8w-dwconv-25p16c-"
                     "minmax-fp32-neonv8-mla8-ld64.c`", asm=asm, macs=asm_macs(asm)))
    return rows


# x86: XNNPACK's qc8w igemm 7x16c8 AVX512-VNNI main loop (what XNNPACK
# picks on AVX-512 VNNI CPUs, gemm-config.c), re-expressed from reading its
# source: per 16 bytes of K, 7 rows x 2 broadcast 8-byte A loads, each XORed
# with 0x80 (s8 -> u8), 4 64-byte weight loads, 28 VPDPBUSD (64 MACs each).
def _xnn_vnni_loop(dot: str) -> str:
    out = [".Lloop:"]
    for r in range(7):
        for h in range(2):
            out += [f"vpbroadcastq {8 * h}(%rdi,%r{8 + r},1), %zmm{16 + 2 * r + h}",
                    f"vpxorq %zmm31, %zmm{16 + 2 * r + h}, %zmm{16 + 2 * r + h}"]
    out += [f"vmovdqa64 {64 * i}(%rsi), %zmm{30 - i if i < 2 else 2 + i}" for i in range(4)]
    wregs = ["%zmm30", "%zmm29", "%zmm4", "%zmm5"]
    for h in range(2):
        for r in range(7):
            for c in range(2):
                out.append(f"{dot} {wregs[2 * h + c]}, %zmm{16 + 2 * r + h}, %zmm{2 * r + c}")
    out += ["addq $256, %rsi", "subq $16, %rdx", "jae .Lloop"]
    # 14 accumulators zmm0-13 (zmm0-1 are reused as names only for row 0).
    return "\n".join(out) + "\n"


def x86_loops(tmp: str) -> list[dict]:
    """The delegate's AVX2 Winograd and direct inner loops (compiled), XNNPACK's
    VNNI loop, and a VNNI Winograd loop that does not exist (VPDPWSSD on the
    same tile): the ceiling of issue 19's VNNI Winograd."""
    cflags = open(os.path.join(REPO, "delegates", "cflags.txt")).read().split()
    rows = []
    for f, mul, name in (("qs8_winograd_f2x3_avx2.c", "vpmaddwd", "winograd_avx2"),
                         ("qs8_conv_direct_avx2.c", "vpmaddubsw", "direct_avx2")):
        obj = os.path.join(tmp, f + ".x86.o")
        subprocess.run(["gcc", *cflags, "-fPIC", "-c",
                        "-I" + os.path.join(REPO, "delegates", "include"), "-I" + SRC,
                        os.path.join(SRC, f), "-o", obj], check=True)
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True,
                             text=True, check=True).stdout
        ins = []
        for line in dis.splitlines():
            m = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2), m.group(3)))
        best = None
        for x in ins:  # innermost backward jumps around the multiply
            m = re.match(r"^([0-9a-f]+) <", x[2])
            if not (x[1].startswith("j") and m and int(m.group(1), 16) < x[0]):
                continue
            body = [y for y in ins if int(m.group(1), 16) <= y[0] <= x[0]]
            if any(y[1] == mul for y in body) and (best is None or len(body) < len(best)):
                best = body
        lines = [".Lloop:"]
        for _, op, args in best:
            args = re.sub(r"\s*#.*$", "", args)
            if op.startswith("j"):
                args = ".Lloop"
            lines.append(f"{op} {args}".strip())
        n_mul = sum(1 for y in best if y[1] == mul)
        # vpmaddwd ymm: 8 lanes x 2 int16 products; vpmaddubsw ymm: 16 x 2
        macs = n_mul * (16 if mul == "vpmaddwd" else 32)
        if name.startswith("winograd"):
            rows.append(dict(kernel=f"{name} (VPMADDWD ymm, per transformed MAC)",
                             src=f"`{f}`, compiled", asm="\n".join(lines) + "\n", macs=macs))
            rows.append(dict(kernel=f"{name} (per direct-equivalent MAC, x2.25)",
                             src=f"`{f}`, compiled", asm="\n".join(lines) + "\n",
                             macs=macs * 2.25))
        else:
            rows.append(dict(kernel=f"{name} (VPMADDUBSW ymm, innermost loop)",
                             src=f"`{f}`, compiled", asm="\n".join(lines) + "\n", macs=macs))
    rows.append(dict(kernel="XNNPACK qc8w igemm 7x16c8 avx512vnni (VPDPBUSD zmm)",
                     src="main loop re-expressed from `qs8-qc8w-igemm-7x16c8-minmax-"
                     "avx512vnni-prfm.c`", asm=_xnn_vnni_loop("vpdpbusd"), macs=28 * 64))
    rows.append(dict(kernel="hypothetical VNNI Winograd F(2x2,3x3): the same loop with "
                     "VPDPWSSD zmm on int16 (per direct-equivalent MAC, x2.25)",
                     src="not a kernel: the ceiling", asm=_xnn_vnni_loop("vpdpwssd"),
                     macs=28 * 32 * 2.25))
    return rows


def x86_table(mca: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = x86_loops(tmp)
    lines = [
        "",
        "### x86: why a VNNI Winograd cannot reach 1.3x XNNPACK (static estimates)",
        "",
        "Same method on x86-64 models (`-mcpu` " + ", ".join(FLAGS.x86_cpus) + "; znver4 "
        "is this machine's core, AMD EPYC Zen 4). The last row is not a kernel: "
        "XNNPACK's own VNNI loop with VPDPWSSD (int16 pairs) in place of VPDPBUSD, the "
        "best case of a VNNI Winograd F(2x2,3x3): its operands need int16 (|B^T d B| "
        "<= 4*64 = 256 for 7-bit data, |G' g G'^T| <= 9*63 = 567), so VPDPBUSD (u8 x s8) "
        "cannot multiply them, and VPDPWSSD does half of VPDPBUSD's products per "
        "instruction. Transforms, which the Winograd kernel adds, are not counted.",
        "",
        "| kernel | loop source | MACs / iteration | "
        + " | ".join(f"cycles/MAC {c}" for c in FLAGS.x86_cpus) + " |",
        "|---|---|---:|" + "---:|" * len(FLAGS.x86_cpus),
    ]
    for r in rows:
        cells = [mca_cycles(r["asm"], c, mca, triple="x86_64") / r["macs"]
                 for c in FLAGS.x86_cpus]
        print(r["kernel"], cells, flush=True)
        lines.append(f"| {r['kernel']} | {r['src']} | {r['macs']:g} | "
                     + " | ".join(f"{v:.4f}" for v in cells) + " |")
    return lines


def main(argv: list[str]) -> None:
    del argv
    mca = find_mca()
    mca_version = subprocess.run([mca, "--version"], capture_output=True,
                                 text=True).stdout.split("\n")
    mca_version = next((l.strip() for l in mca_version if "version" in l.lower()), "?")
    with tempfile.TemporaryDirectory() as tmp:
        rows = delegate_rows(tmp)
    if FLAGS.xnnpack:
        rows += xnnpack_rows()
    order = list(dict.fromkeys(r["op"] for r in rows))
    rows.sort(key=lambda r: order.index(r["op"]))
    for r in rows:
        r["cpm"] = {cpu: (None if r.get("dot") and cpu == "cortex-a53"
                          else mca_cycles(r["asm"], cpu, mca) / r["macs"]) for cpu in FLAGS.cpus}
        print(r["kernel"], r["macs"], r["cpm"], flush=True)
    gcc = subprocess.run(["aarch64-linux-gnu-gcc", "--version"], capture_output=True,
                         text=True).stdout.splitlines()[0]
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    names = {"cortex-a76": "A76 (LLVM: A57 model)", "neoverse-n1": "N1 (A76-class model)",
             "cortex-a53": "A53", "cortex-a55": "A55"}
    lines = [
        "## ARM on paper: llvm-mca cycles per MAC of the NEON inner loops",
        "",
        "**Static estimates, not measurements**: llvm-mca's scheduling models, one "
        "innermost loop in steady state (L1 hits, no front-end stalls), no ARM hardware "
        "involved. Lower is better. Requantization, padding and Winograd transforms "
        "are outside these loops.",
        "",
        f"Tools: {mca_version} (`{os.path.basename(mca)}`), {gcc}, the delegate's flags "
        f"(`delegates/cflags.txt`); XNNPACK "
        + (f"commit {xnnpack_commit()}" if FLAGS.xnnpack else "not given (--xnnpack)")
        + f"; {FLAGS.iterations} iterations. LLVM models `cortex-a76` with its Cortex-A57 "
        "scheduling model; `neoverse-n1` has its own model of the same (Cortex-A76) "
        "microarchitecture.",
        "",
        f"Command (from the repo root): `{cmd}`",
        "",
        "| operation | kernel | loop source | MACs / iteration | "
        + " | ".join(f"cycles/MAC {names.get(c, c)}" for c in FLAGS.cpus) + " |",
        "|---|---|---|---:|" + "---:|" * len(FLAGS.cpus),
    ]
    for r in rows:
        cells = " | ".join("n/a (no SDOT)" if v is None else f"{v:.4f}"
                           for v in r["cpm"].values())
        macs = f"{r['macs']:g}"
        lines.append(f"| {r['op']} | {r['kernel']} | {r['src']} | {macs} | {cells} |")
    if FLAGS.x86_cpus:
        lines += x86_table(mca)
    report = "\n".join(lines) + "\n"
    print(report)
    if FLAGS.output:
        from bench_doc import update_section
        update_section(FLAGS.output, "llvm_mca", report)


if __name__ == "__main__":
    from absl import app
    app.run(main)
