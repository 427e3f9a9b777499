"""Seeded mutation campaigns against the command-line programs.

    python tools/fuzz.py --verify 1000 --convert 500 --seed 1 --time_limit 1800

Mutates the bundled ResNet example (as a float .tflite, and as a 7-bit int8
model made from it) with byte and bit flips, truncations, splices, inserted or
deleted chunks, overwritten offsets/lengths, and structured edits of
FlatBuffer fields through the schema object API (tensor, buffer and opcode
indices, shapes, vector lengths, quantization parameters, op options). Each
mutant is fed to ``eq_tflite.verify`` (int8) or ``eq-tflite`` (float source);
fixed cases cover hostile calibration data and output paths.

``--faults N`` runs a fault campaign instead of bad bytes: the real ``eq-tflite``
process (a float .tflite or a Keras source) is sent SIGKILL, SIGTERM, SIGHUP or
SIGINT at a random time, writes onto a full disk (a small tmpfs; root only) or
a read-only one, writes its report onto a full disk, or races a second
``eq-tflite`` writing the same output. A fault case is ``clean`` when no
process of the run is left 5 s after it ended, no temp file is left (output
and report directories, the run's TMPDIR), no input changed, the output is
either absent or a complete model that verifies (present whenever the exit
code is 0), and the exit code and error line are the documented ones.

Every case runs in a worker process with a time limit, and is classified:
``error`` (exit 2, exactly one ``error: ...`` line), ``report`` (verify exit 1),
``ok`` (exit 0) are fine; ``traceback``, ``crash`` (the worker died), ``hang``
(time limit), ``bad_exit``, ``partial_file`` and ``clobbered`` (an input
changed) are failures. Prints a summary; exit code 1 if any case failed.
The same engine runs a bounded campaign in the test suite (tests/fuzz/).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install . or pip install -e .)
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout: use it
    sys.path.insert(0, str(REPO))

FAILURES = ("traceback", "crash", "hang", "bad_exit", "partial_file", "clobbered",
            "leftover_process", "temp_file", "lost_model", "partial_model", "partial_report")
INTERESTING_U32 = (0, 1, 2, 3, 7, 255, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
INTERESTING_I32 = (-2 ** 31, -129, -2, -1, 0, 1, 2, 127, 128, 1000, 65535, 2 ** 31 - 1)


@dataclass
class Case:
    """One CLI run: files to create in a fresh directory, then ``cli`` with ``argv``.

    ``{dir}`` in argv is the case directory. ``protected`` files must be left
    unchanged; ``output`` (convert) must exist only on success.
    """

    name: str
    cli: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    protected: tuple[str, ...] = ()
    output: str | None = None
    expect: tuple[int, ...] = (0, 1, 2)
    message: str = ""
    timeout: float = 120.0


# ----------------------------------------------------------------------------- mutations

def payload_mask(data: bytes) -> Any:
    """Bool array: True on bytes inside buffer data vectors (weights), False on structure."""
    import numpy as np
    from eq_tflite.io.codec import schema
    mask = np.zeros(len(data), bool)
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.BuffersLength()):
        tab = model.Buffers(i)._tab
        o = tab.Offset(4)
        if o:
            start = tab.Vector(o)
            mask[start:start + tab.VectorLen(o)] = True
    return mask


def raw_mutant(data: bytes, rng: random.Random, structure: list[int]) -> tuple[str, bytes]:
    """A byte-level mutant; positions mostly in the structure (not weight payload)."""
    def pos() -> int:
        return rng.choice(structure) if structure and rng.random() < 0.8 else rng.randrange(len(data))

    buf = bytearray(data)
    kind = rng.choice(("byte", "byte", "bit", "truncate", "splice", "insert", "delete", "word", "word"))
    if kind == "byte":
        for _ in range(rng.randint(1, 8)):
            buf[pos()] = rng.randrange(256)
    elif kind == "bit":
        for _ in range(rng.randint(1, 8)):
            buf[pos()] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        buf = buf[:pos()]
    elif kind == "splice":
        n = rng.randint(4, 64)
        src, dst = pos(), pos()
        buf[dst:dst + n] = data[src:src + n]
    elif kind == "insert":
        at = pos()
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 8, 16))))
    elif kind == "delete":
        at = pos()
        del buf[at:at + rng.choice((1, 4, 8, 16))]
    else:  # overwrite an aligned word: offsets and vector lengths
        at = pos() & ~3
        old = int.from_bytes(buf[at:at + 4].ljust(4, b"\0"), "little")
        value = rng.choice(INTERESTING_U32 + (len(data), len(data) + 4, old + 1, old - 1, old * 2,
                                              old + 4, rng.getrandbits(32)))
        buf[at:at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    return kind, bytes(buf)


def structured_mutant(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Edits one FlatBuffer field through the object API; the builder writes valid offsets."""
    from eq_tflite.io import codec as fb
    for _ in range(20):
        model = fb.flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
        try:
            kind = _edit_field(model, rng)
            return f"field:{kind}", fb.serialize_model(model)
        except Exception:  # noqa: BLE001
            continue  # the builder refused the value (e.g. out of the field's range)
    return "field:none", data


def _edit_field(model: Any, rng: random.Random) -> str:
    import numpy as np
    sg = model.subgraphs[0]
    t = rng.choice(sg.tensors)
    op = rng.choice(sg.operators)
    n_t, n_b = len(sg.tensors), len(model.buffers)

    def i32(near: int) -> int:
        return rng.choice(INTERESTING_I32 + (near, near + 1, near - 1))

    def edit_list(values: Any, near: int) -> Any:
        values = [] if values is None else list(values)
        action = rng.choice(("set", "drop", "add", "empty"))
        if action == "set" and values:
            values[rng.randrange(len(values))] = i32(near)
        elif action == "drop" and values:
            values.pop(rng.randrange(len(values)))
        elif action == "add":
            values.insert(rng.randrange(len(values) + 1), i32(near))
        else:
            values = []
        return values

    kind = rng.choice(("tensor.buffer", "tensor.shape", "tensor.type", "tensor.name", "quant.scale",
                       "quant.zero", "quant.axis", "quant.none", "buffer.data", "op.opcode",
                       "op.inputs", "op.outputs", "op.options", "graph.io", "opcode.code",
                       "signature", "metadata"))
    if kind == "tensor.buffer":
        t.buffer = rng.choice(INTERESTING_U32 + (n_b, n_b - 1))
    elif kind == "tensor.shape":
        t.shape = np.asarray(edit_list(t.shape, 1), np.int32)
    elif kind == "tensor.type":
        t.type = rng.randrange(-128, 128)
    elif kind == "tensor.name":
        t.name = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
    elif kind.startswith("quant.") and t.quantization is None and kind != "quant.none":
        t.quantization = None
        kind = "quant.none"
    elif kind == "quant.scale":
        scale = [float(v) for v in (t.quantization.scale if t.quantization.scale is not None else [])]
        special = rng.choice((0.0, -1.0, float("inf"), float("nan"), 1e-45, 1e38))
        t.quantization.scale = edit_list(scale, 1) if rng.random() < 0.5 else \
            [special] * max(1, len(scale))
        t.quantization.scale = [float(v) for v in t.quantization.scale]
    elif kind == "quant.zero":
        t.quantization.zeroPoint = edit_list(t.quantization.zeroPoint, 0)
    elif kind == "quant.axis":
        t.quantization.quantizedDimension = i32(0)
    elif kind == "quant.none":
        t.quantization = None
    elif kind == "buffer.data":
        buf = rng.choice([b for b in model.buffers if b.data is not None] or model.buffers)
        data = np.asarray(buf.data if buf.data is not None else [], np.uint8)
        cut = rng.randrange(len(data) + 1)
        buf.data = rng.choice((data[:cut], np.concatenate([data, data[:cut]]), None))
    elif kind == "op.opcode":
        op.opcodeIndex = rng.choice(INTERESTING_U32 + (len(model.operatorCodes),))
    elif kind == "op.inputs":
        op.inputs = edit_list(op.inputs, n_t)
    elif kind == "op.outputs":
        op.outputs = edit_list(op.outputs, n_t)
    elif kind == "op.options":
        opts = op.builtinOptions
        names = [k for k, v in vars(opts).items() if isinstance(v, (int, float))] if opts is not None else []
        if not names:
            op.builtinOptions, op.builtinOptionsType = None, 0
            return "op.options_removed"
        setattr(opts, rng.choice(names), rng.choice((-1, 0, 2, 5, 99, 127, -128)))
    elif kind == "graph.io":
        if rng.random() < 0.5:
            sg.inputs = edit_list(sg.inputs, n_t)
        else:
            sg.outputs = edit_list(sg.outputs, n_t)
    elif kind == "opcode.code":
        code = rng.choice(model.operatorCodes)
        code.builtinCode = rng.randrange(0, 256)
        code.deprecatedBuiltinCode = rng.randrange(-128, 128)
    elif kind == "signature" and model.signatureDefs:
        sig = model.signatureDefs[0]
        target = rng.choice(list(sig.inputs) + list(sig.outputs))
        target.tensorIndex = rng.choice(INTERESTING_U32 + (n_t,))
    elif kind == "metadata" and model.metadata:
        rng.choice(model.metadata).buffer = rng.choice(INTERESTING_U32 + (n_b,))
    else:
        t.buffer = n_b + 1
        kind = "tensor.buffer"
    return kind


def mutants(data: bytes, count: int, seed: int, label: str) -> Iterator[tuple[str, bytes]]:
    """``count`` deterministic mutants of ``data``: (name, bytes)."""
    import numpy as np
    structure = np.flatnonzero(~payload_mask(data)).tolist()
    for i in range(count):
        rng = random.Random(f"{label}:{seed}:{i}")
        kind, mutant = structured_mutant(data, rng) if rng.random() < 0.4 else \
            raw_mutant(data, rng, structure)
        yield f"{label}/{kind}/{i}", mutant


# ----------------------------------------------------------------------------- cases

def verify_cases(int8_model: bytes, count: int, seed: int) -> list[Case]:
    return [Case(name, "verify", ["{dir}/m.tflite"], {"m.tflite": blob}, ("m.tflite",), timeout=60)
            for name, blob in mutants(int8_model, count, seed, "verify")]


def convert_cases(float_model: bytes, calib: bytes, count: int, seed: int) -> list[Case]:
    return [Case(name, "convert", ["{dir}/f.tflite", "--calibration_data", "{dir}/c.npy",
                                   "--output", "{dir}/out/q.tflite", "--method", "minmax",
                                   "--noprogress"],
                 {"f.tflite": blob, "c.npy": calib}, ("f.tflite", "c.npy"), "out/q.tflite",
                 expect=(0, 2), timeout=180)
            for name, blob in mutants(float_model, count, seed, "convert")]


def data_cases(float_model: bytes) -> list[Case]:
    """Hostile calibration data (each a class from the hardening issue)."""
    import numpy as np

    def npy(array: Any) -> bytes:
        f = io.BytesIO()
        np.save(f, array, allow_pickle=True)
        return f.getvalue()

    def npz(**arrays: Any) -> bytes:
        f = io.BytesIO()
        np.savez(f, **arrays)
        return f.getvalue()

    good = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    big64 = good.astype(np.float64)
    big64[0, 0, 0, 0] = 1e39
    fmax = np.full_like(good, np.finfo(np.float32).max)
    pickled = npz(x=np.array([{"a": 1}] * 8, dtype=object))
    corrupt = bytearray(npz(x=good))
    corrupt[60:200] = b"\xff" * 140  # inside the member's data / header
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10 ** 12, 28, 28, 1)})
    huge_header = header.getvalue() + b"\0" * 64
    claims = npy(good).replace(b"(8, 28, 28, 1)", b"(9, 28, 28, 1)")
    specs = [
        ("float64_beyond_float32", {"c.npy": npy(big64)}, "c.npy", "beyond float32"),
        ("float32_max", {"c.npy": npy(fmax)}, "c.npy", "drives the float model to Inf/NaN"),
        ("pickled_npz_member", {"c.npz": pickled}, "c.npz", "pickled"),
        ("pickled_npy", {"c.npy": npy(np.array([None] * 8, dtype=object))}, "c.npy", "pickled"),
        ("corrupt_npz_member", {"c.npz": bytes(corrupt)}, "c.npz", "cannot read"),
        ("npy_header_claims_more", {"c.npy": claims}, "c.npy", "claims shape"),
        ("npy_huge_header", {"c.npy": bytes(huge_header)}, "c.npy", "c.npy"),
        ("truncated_npy", {"c.npy": npy(good)[:300]}, "c.npy", "c.npy"),
        ("nan_data", {"c.npy": npy(np.full_like(good, np.nan))}, "c.npy", "NaN/Inf"),
        ("image_bomb", {"imgs/bomb.png": _bomb_png(60000, 60000)}, "imgs", "DecompressionBomb"),
        ("image_garbage", {"imgs/x.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}, "imgs", "cannot decode"),
    ]
    cases = []
    for name, files, data_name, message in specs:
        cases.append(Case(f"data/{name}", "convert",
                          ["{dir}/f.tflite", "--calibration_data", "{dir}/" + data_name,
                           "--output", "{dir}/out/q.tflite", "--method", "minmax", "--noprogress"],
                          {"f.tflite": float_model, **files}, ("f.tflite", *files), "out/q.tflite",
                          expect=(2,), message=message, timeout=180))
    return cases


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (no pixel data needed)."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def path_cases(float_model: bytes, calib: bytes) -> list[Case]:
    """Hostile output paths for eq-tflite and hostile model paths for verify."""
    base = ["--calibration_data", "{dir}/c.npy", "--method", "minmax", "--noprogress"]
    files = {"f.tflite": float_model, "c.npy": calib, "afile": b"x", "adir/keep": b"k"}
    protected = ("f.tflite", "c.npy", "afile", "adir/keep")
    long_ok = "m" * 240 + ".tflite"  # fits NAME_MAX, but ".NAME.XXXXXXXX.tmp" would not
    specs = [
        ("output_is_source", ["--output", "{dir}/f.tflite"], None, (2,), "refusing to overwrite"),
        ("output_is_calibration", ["--output", "{dir}/c.npy"], None, (2,), "refusing to overwrite"),
        ("parent_is_file", ["--output", "{dir}/afile/q.tflite"], None, (2,), "not a directory"),
        ("output_is_directory", ["--output", "{dir}/adir"], None, (2,), "is a directory"),
        ("unwritable", ["--output", "/proc/eq_tflite_fuzz.tflite"], None, (2,), "cannot write"),
        ("name_too_long", ["--output", "{dir}/" + "n" * 300 + ".tflite"], None, (2,), "limit"),
        ("empty_output", ["--output", ""], None, (2,), "empty output"),
        ("long_name_ok", ["--output", "{dir}/" + long_ok], long_ok, (0,), ""),
        ("report_dir_is_file", ["--output", "{dir}/out/q.tflite", "--report_dir", "{dir}/afile"],
         "out/q.tflite", (2,), "report_dir"),
    ]
    cases = [Case(f"path/{name}", "convert", ["{dir}/f.tflite", *base, *args], dict(files), protected,
                  out, expect, message, timeout=180)
             for name, args, out, expect, message in specs]
    for name, target, message in (("verify_directory", "{dir}/adir", "is a directory"),
                                  ("verify_empty", "", "empty model path"),
                                  ("verify_long_name", "{dir}/" + "v" * 300, "too long"),
                                  ("verify_missing", "{dir}/nope.tflite", "no such file")):
        cases.append(Case(f"path/{name}", "verify", [target], dict(files), protected, expect=(2,),
                          message=message, timeout=60))
    return cases


# ----------------------------------------------------------------------------- worker

def worker() -> None:
    """Runs jobs (JSON lines on stdin) in this process; one JSON result line per job."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # native log lines must not corrupt the protocol
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import flags

    from eq_tflite import convert, verify
    from eq_tflite.quiet import set_verbose
    set_verbose(False)
    import tensorflow  # noqa: F401 - once, inherited by the forked stages
    protocol.write("ready\n")
    for line in sys.stdin:
        job = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        result: dict[str, Any] = {"code": None, "exception": None}
        with redirect_stdout(out), redirect_stderr(err):
            try:
                if job["cli"] == "convert":
                    flags.FLAGS.unparse_flags()
                    try:
                        argv = flags.FLAGS(["eq-tflite", *job["argv"]])
                    except flags.Error as e:
                        print(f"error: {e}", file=sys.stderr)
                        result["code"] = 2
                    else:
                        result["code"] = convert.main(argv)
                else:
                    result["code"] = verify.main(["verify", *job["argv"]])
            except SystemExit as e:
                result["code"] = e.code
            except BaseException:  # noqa: BLE001 - this is what the campaign looks for
                result["exception"] = traceback.format_exc(limit=-3)
        result["stdout"], result["stderr"] = out.getvalue()[-2000:], _ends(err.getvalue())
        protocol.write(json.dumps(result) + "\n")


def _ends(text: str, keep: int = 4000) -> str:
    """Both ends of a long text (every line start stays checkable)."""
    return text if len(text) <= 2 * keep else text[:keep] + "\n[...]\n" + text[-keep:]


class Worker:
    """A worker subprocess; restarted after a crash or a hang."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        if self._readline(300) != "ready":
            raise RuntimeError("fuzz worker did not start")

    def run(self, job: dict, timeout: float) -> tuple[str, dict | None]:
        """('done', result) | ('crash', None) | ('hang', None)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc and self.proc.stdin
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc = None
            return "crash", None
        line = self._readline(timeout)
        if line is None:  # EOF (the worker died) or the time limit
            try:
                self.proc.wait(timeout=10)
                hung = False
            except subprocess.TimeoutExpired:
                hung = True
            self.stop()
            return ("hang" if hung else "crash"), None
        return "done", json.loads(line)

    def _readline(self, timeout: float) -> str | None:
        """One line, or None on EOF or after ``timeout`` seconds (the worker writes whole lines)."""
        assert self.proc and self.proc.stdout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def run_case(case: Case, worker_: Worker, root: Path) -> tuple[str, str]:
    """Runs one case; returns (outcome, detail)."""
    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        for name, content in case.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        before = {name: _digest(folder / name) for name in case.protected}
        argv = [a.replace("{dir}", str(folder)) for a in case.argv]
        status, result = worker_.run({"cli": case.cli, "argv": argv}, case.timeout)
        if status != "done":
            return status, ""
        assert result is not None
        lines = [ln for ln in result["stderr"].splitlines() if ln.strip()]
        if result["exception"] or "Traceback" in result["stderr"] or "internal error" in result["stderr"]:
            return "traceback", (result["exception"] or result["stderr"]).strip().splitlines()[-1]
        if {name: _digest(folder / name) for name in case.protected} != before:
            return "clobbered", ""
        code = result["code"]
        if code not in case.expect:
            return "bad_exit", f"exit {code}: {' | '.join(lines)[-300:]}"
        if code == 2 and (len(lines) != 1 or not lines[0].startswith("error: ")
                          or case.message not in lines[0]):
            return "bad_exit", f"stderr: {' | '.join(lines)[-300:]}"
        if case.output is not None:
            output = folder / case.output
            if (code == 0) != output.is_file():
                return "partial_file", f"exit {code}, output exists: {output.exists()}"
            leftovers = [p.name for p in output.parent.glob(".*.tmp")] if output.parent.exists() else []
            if leftovers:
                return "partial_file", f"temp files left: {leftovers}"
        return {0: "ok", 1: "report", 2: "error"}[code], lines[0] if lines else ""
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@dataclass
class Summary:
    outcomes: Counter = field(default_factory=Counter)
    by_group: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0
    contained: Counter = field(default_factory=Counter)  # stage -> native crashes reported as errors

    @property
    def failed(self) -> int:
        return sum(self.outcomes[k] for k in FAILURES)

    def text(self) -> str:
        lines = [f"{sum(self.outcomes.values())} cases in {self.seconds:.0f}s"
                 + (f" ({self.skipped} skipped: time limit)" if self.skipped else "")]
        for group, counts in sorted(self.by_group.items()):
            lines.append(f"  {group}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        lines.append(f"  native crashes contained in a child process: {sum(self.contained.values())}"
                     + "".join(f"; {k}: {v}" for k, v in sorted(self.contained.items())))
        lines.append("  failures: " + ", ".join(f"{k} {self.outcomes[k]}" for k in FAILURES))
        lines += [f"  FAIL {name}: {outcome} {detail}" for name, outcome, detail in self.failures[:30]]
        return "\n".join(lines)


def run_campaign(cases: list[Case], time_limit: float | None = None,
                 progress: Callable[[int, Case, str], None] | None = None) -> Summary:
    """Runs ``cases`` in one worker (restarted as needed) within ``time_limit`` seconds."""
    summary = Summary()
    start = time.monotonic()
    worker_ = Worker()
    root = Path(tempfile.mkdtemp(prefix="eq_tflite_fuzz_"))
    try:
        for i, case in enumerate(cases):
            if time_limit is not None and time.monotonic() - start > time_limit:
                summary.skipped = len(cases) - i
                break
            outcome, detail = run_case(case, worker_, root)
            summary.outcomes[outcome] += 1
            if "crashed in native code" in detail:
                summary.contained[detail.split(" crashed in native code")[0][len("error: "):]] += 1
            group = case.name.split("/")[0]
            summary.by_group.setdefault(group, Counter())[outcome] += 1
            if outcome in FAILURES:
                summary.failures.append((case.name, outcome, detail))
            if progress:
                progress(i, case, outcome)
    finally:
        worker_.stop()
        shutil.rmtree(root, ignore_errors=True)
    summary.seconds = time.monotonic() - start
    return summary


# ----------------------------------------------------------------------------- faults

FAULT_KINDS = ("signal", "signal", "full_disk", "signal", "read_only", "full_report", "signal",
               "concurrent")
FAULT_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: Seconds within which every process of a run must be gone after it ended.
GONE_WITHIN = 5.0


@dataclass
class FaultCase:
    """One fault: ``kind`` (see FAULT_KINDS), the source format, the signal and its delay."""

    name: str
    kind: str
    source: str = "tflite"
    signum: int = 0
    delay: float = 0.0


def fault_cases(count: int, seed: int, keras_share: float = 0.3) -> list[FaultCase]:
    """``count`` deterministic fault cases; the first eight cover every kind.

    ``keras_share`` of the cases convert the Keras file (TensorFlow writes temp
    files then), the others the float .tflite (faster).
    """
    cases = []
    for i in range(count):
        rng = random.Random(f"fault:{seed}:{i}")
        kind = FAULT_KINDS[i % len(FAULT_KINDS)]
        source = "keras" if rng.random() < keras_share else "tflite"
        signum = int(rng.choice(FAULT_SIGNALS)) if kind in ("signal", "concurrent") else 0
        delay = rng.uniform(0.0, 12.0 if source == "keras" else 8.0)
        signum = signum if kind == "signal" else 0  # (drawn anyway: seeds keep their cases)
        label = signal.Signals(signum).name if signum else ""
        cases.append(FaultCase(f"fault/{kind}/{source}/{label or '-'}/{i}", kind, source, signum, delay))
    return cases


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def descendants(pid: int) -> set[int]:
    """Live descendants of ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    """Mounts a tmpfs of ``size`` at ``folder`` (root only); False if the platform refuses."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    opts = f"size={size}" + (",ro" if read_only else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


class _Run:
    """One ``eq-tflite`` process of a fault case (own session; output in files)."""

    def __init__(self, folder: Path, tag: str, source: Path, calib: Path, output: Path,
                 extra: list[str]) -> None:
        env = dict(os.environ, TMPDIR=str(folder / "tmp"), TF_CPP_MIN_LOG_LEVEL="3")
        self.stdout, self.stderr = folder / f"{tag}.stdout", folder / f"{tag}.stderr"
        with open(self.stdout, "w") as so, open(self.stderr, "w") as se:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eq_tflite.convert", str(source), "--calibration_data",
                 str(calib), "--output", str(output), "--method", "minmax", "--noprogress", *extra],
                env=env, stdout=so, stderr=se, start_new_session=True, cwd=folder)
        self.seen: set[int] = set()

    def watch(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.proc.poll() is None:
            self.seen |= descendants(self.proc.pid)
            time.sleep(0.05)

    def finish(self, timeout: float) -> int | None:
        while self.proc.poll() is None and timeout > 0:
            self.watch(0.5)
            timeout -= 0.5
        return self.proc.poll()

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.read_text().splitlines() if ln.strip()]


def run_fault_case(case: FaultCase, sources: dict[str, bytes], calib: bytes,
                   root: Path) -> tuple[str, str]:
    """Runs one fault case; returns ("clean" | "skipped" | a failure kind, detail)."""
    from eq_tflite.io import codec as fb
    folder = Path(tempfile.mkdtemp(dir=root))
    mounts: list[Path] = []
    runs: list[_Run] = []
    try:
        (folder / "tmp").mkdir()
        source = folder / ("f.keras" if case.source == "keras" else "f.tflite")
        source.write_bytes(sources[case.source])
        data = folder / "c.npy"
        data.write_bytes(calib)
        inputs = {p: _digest(p) for p in (source, data)}
        out_dir, report = folder / "out", folder / "report"
        extra: list[str] = []
        expect_error = ""
        if case.kind in ("full_disk", "read_only"):
            if not mount_tmpfs(out_dir, "32k", read_only=case.kind == "read_only"):
                return "skipped", "cannot mount a tmpfs here"
            mounts.append(out_dir)
            expect_error = "No space left on device" if case.kind == "full_disk" else "Read-only file system"
        elif case.kind == "full_report":
            if not mount_tmpfs(report, "16k"):
                return "skipped", "cannot mount a tmpfs here"
            mounts.append(report)
        if case.kind in ("full_report", "signal"):
            extra = ["--report_dir", str(report)]
        output = out_dir / "q.tflite"
        runs.append(_Run(folder, "a", source, data, output, extra))
        if case.kind == "concurrent":  # a second writer of the same output, other widths
            runs[0].watch(case.delay / 4)
            runs.append(_Run(folder, "b", source, data, output, ["--bits", "8"]))
        killed = False
        if case.kind == "signal":
            runs[0].watch(case.delay)
            if runs[0].proc.poll() is None:
                os.kill(runs[0].proc.pid, case.signum)
                killed = True
        codes = [r.finish(180) for r in runs]
        if None in codes:
            for r in runs:
                r.proc.kill()
            return "hang", f"exit codes {codes}"
        # Every process of the runs must be gone within GONE_WITHIN seconds.
        seen = set().union(*(r.seen for r in runs))
        end = time.monotonic() + GONE_WITHIN
        while any(alive(p) for p in seen) and time.monotonic() < end:
            time.sleep(0.05)
        left = [p for p in seen if alive(p)]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if left:
            return "leftover_process", f"{len(left)} processes {GONE_WITHIN:.0f} s after the end"
        time.sleep(0.2)  # the janitor's rmtree
        temps = [str(p.relative_to(folder)) for p in folder.rglob("*")
                 if p.is_file() and (p.name.endswith(".tmp") or folder / "tmp" in p.parents)]
        if temps:
            return "temp_file", ", ".join(temps[:5])
        if {p: _digest(p) for p in inputs} != inputs:
            return "clobbered", ""
        if output.exists():
            try:
                model = output.read_bytes()
                fb.parse_model(model)
                from eq_tflite.verify import verify
                if not verify(model).ok:
                    return "partial_model", "the output does not verify"
            except Exception as err:  # noqa: BLE001
                return "partial_model", f"{type(err).__name__}: {str(err)[:120]}"
        errs = [r.error_lines() for r in runs]
        if 0 in codes and not output.exists():
            return "lost_model", f"exit codes {codes}, no output"
        if case.kind == "signal" and killed:
            want = {signal.SIGKILL: -9}.get(case.signum, 2)
            if codes[0] not in (want, 0):  # 0: the signal came after the run ended its work
                return "bad_exit", f"exit {codes[0]} after {signal.Signals(case.signum).name}"
            name = signal.Signals(case.signum).name
            if codes[0] == 2 and errs[0] != [f"error: interrupted ({name})"] \
                    and errs[0] != ["error: interrupted"]:
                return "bad_exit", " | ".join(errs[0])[-200:]
        elif case.kind in ("full_disk", "read_only"):
            if codes[0] != 2 or len(errs[0]) != 1 or expect_error not in errs[0][0]:
                return "bad_exit", f"exit {codes[0]}: {' | '.join(errs[0])[-200:]}"
            if any(out_dir.iterdir()):
                return "temp_file", "files on the full/read-only disk"
        elif case.kind == "full_report":
            if codes[0] != 0:
                return "lost_model", f"exit {codes[0]}: {' | '.join(errs[0])[-200:]}"
            written = sorted(p.name for p in report.iterdir())
            if written not in ([], ["layers.csv", "layers.md", "layers.png"]):
                return "partial_report", ", ".join(written)
        elif case.kind == "concurrent":
            if codes != [0, 0]:
                return "bad_exit", f"exit codes {codes}: {errs}"
        else:
            if codes[0] != 0:
                return "bad_exit", f"exit {codes[0]}: {' | '.join(errs[0])[-200:]}"
        return "clean", f"exit codes {codes}"
    finally:
        for r in runs:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def run_fault_campaign(cases: list[FaultCase], sources: dict[str, bytes], calib: bytes,
                       time_limit: float | None = None,
                       progress: Callable[[int, FaultCase, str], None] | None = None) -> Summary:
    """Runs fault cases one after the other (each its own ``eq-tflite`` processes)."""
    summary = Summary()
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="eq_tflite_faults_"))
    try:
        for i, case in enumerate(cases):
            if time_limit is not None and time.monotonic() - start > time_limit:
                summary.skipped = len(cases) - i
                break
            outcome, detail = run_fault_case(case, sources, calib, root)
            summary.outcomes[outcome] += 1
            group = "/".join(case.name.split("/")[:2])
            summary.by_group.setdefault(group, Counter())[outcome] += 1
            if outcome not in ("clean", "skipped"):
                summary.failures.append((case.name, outcome, detail))
            if progress:
                progress(i, case, outcome)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary.seconds = time.monotonic() - start
    return summary


def fault_sources() -> dict[str, bytes]:
    """The bundled ResNet as a float .tflite and as its Keras file."""
    from eq_tflite import api
    return {"tflite": api.float_model_of(REPO / "examples" / "resnet_fmnist"),
            "keras": (REPO / "examples" / "resnet_fmnist.keras").read_bytes()}


# ----------------------------------------------------------------------------- inputs

def example_models(samples: int = 8) -> tuple[bytes, bytes, bytes]:
    """(float .tflite, int8 W7A7 .tflite, calibration .npy bytes) of the bundled ResNet."""
    import numpy as np

    from eq_tflite import api
    x = np.load(REPO / "examples" / "fmnist_calib.npy")[:samples]
    float_model = api.float_model_of(REPO / "examples" / "resnet_fmnist")
    int8_model = api.quantize(float_model, x, bits=7, method="minmax")
    f = io.BytesIO()
    np.save(f, x)
    return float_model, int8_model, f.getvalue()


def main() -> int:
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line, exit code 2 (like every CLI here)
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify", type=int, default=300, help="verify mutants")
    parser.add_argument("--convert", type=int, default=150, help="convert mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time_limit", type=float, default=600, help="seconds for the whole campaign")
    parser.add_argument("--no_fixed", action="store_true", help="skip the data and path cases")
    parser.add_argument("--faults", type=int, default=0,
                        help="run this many fault cases instead (signals, full/read-only disks, "
                             "concurrent writers)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    try:
        args = parser.parse_args()
    except SystemExit as err:
        return 2 if err.code else 0
    if args.worker:
        worker()
        return 0
    if min(args.verify, args.convert) < 0 or args.time_limit <= 0:
        print("error: counts must be >= 0 and --time_limit > 0", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from eq_tflite.quiet import quiet, set_verbose
    set_verbose(False)
    with quiet():
        float_model, int8_model, calib = example_models()
    if args.faults > 0:
        cases_f = fault_cases(args.faults, args.seed)
        summary = run_fault_campaign(cases_f, fault_sources(), calib, args.time_limit,
                                     lambda i, c, o: print(f"\r{i + 1}/{len(cases_f)} {o:<16}", end="",
                                                           file=sys.stderr))
        print(file=sys.stderr)
        print(f"seed {args.seed}; {summary.outcomes['clean']} of {sum(summary.outcomes.values())} "
              "fault cases ended cleanly; " + summary.text())
        return 1 if summary.failed else 0
    cases = [] if args.no_fixed else data_cases(float_model) + path_cases(float_model, calib)
    cases += verify_cases(int8_model, args.verify, args.seed)
    cases += convert_cases(float_model, calib, args.convert, args.seed)
    summary = run_campaign(cases, args.time_limit,
                           lambda i, c, o: print(f"\r{i + 1}/{len(cases)} {o:<12}", end="",
                                                 file=sys.stderr))
    print(file=sys.stderr)
    print(f"seed {args.seed}; " + summary.text())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
