"""One regression test per failure class of the hardening issue (#12).

Every hostile input ends in exactly one ``error: ...`` line and exit code 2
(or, for verify, a FAILED report), never a traceback, a crash or a clobbered
or half-written file. The seeded campaign over many mutants is in tests/fuzz/.
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from eq_tflite import api, convert, runtime, verify
from eq_tflite.errors import EqTfliteError
from eq_tflite.io import codec as fb
from eq_tflite.io.atomic import write_atomic
from eq_tflite.isolation import run_isolated

REPO = Path(__file__).resolve().parents[1]


def run_convert(args: list[str]) -> int:
    flags.FLAGS.unparse_flags()
    return convert.main(flags.FLAGS(["eq-tflite", *args, "--method", "minmax", "--noprogress"]))


def one_error_line(capsys, message: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "Traceback" not in err[0] and "internal error" not in err[0]
    assert len(err[0]) <= len("error: ") + 600  # a readable line, whatever the file holds
    return err[0]


@pytest.fixture(scope="module")
def small_int8(small_float_tflite, small_calibration) -> bytes:
    return api.quantize(small_float_tflite, small_calibration[:16], bits=7, method="minmax")


def mutate(model_bytes: bytes, edit) -> bytes:
    model = fb.flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    edit(model, model.subgraphs[0])
    return fb.serialize_model(model)


def first_op(model, sg, kind: str):
    return next(op for op in sg.operators if fb.op_name(model, op) == kind)


def _bias_too_short(model, sg):
    op = first_op(model, sg, "CONV_2D")
    bias = sg.tensors[op.inputs[2]]
    bias.shape = np.asarray([3], np.int32)
    bias.quantization.scale = bias.quantization.scale[:3]
    bias.quantization.zeroPoint = bias.quantization.zeroPoint[:3]
    fb.set_buffer(model, bias, np.zeros(3, np.int32))


# ---------------------------------------------------------------- verify on mutated models

def _set_eq_metadata(payload: bytes):
    def edit(m, sg):
        entry = next(e for e in m.metadata if e.name == b"eq_tflite")
        buf = fb.schema.BufferT()
        buf.data = np.frombuffer(payload, np.uint8).copy()
        m.buffers.append(buf)
        entry.buffer = len(m.buffers) - 1
    return edit


def _int8_activation(m, sg):
    return sg.tensors[first_op(m, sg, "ADD").outputs[0]]


VERIFY_MUTATIONS = {
    # found by tools/fuzz.py --seed 21 once internal errors in the child were counted:
    # an op without an input list (TypeError in verify), scales without zero points and
    # empty quantization vectors (IndexError), corrupt eq_tflite metadata (JSONDecodeError,
    # UnicodeDecodeError, TypeError, bits out of range)
    "op_without_inputs": (lambda m, sg: setattr(sg.operators[2], "inputs", None), "lacks its data or weight input"),
    "scales_without_zero_points": (lambda m, sg: setattr(_int8_activation(m, sg).quantization,
                                                         "zeroPoint", np.zeros(0, np.int64)),
                                   "1 scales but 0 zero points"),
    "empty_quantization": (lambda m, sg: [setattr(_int8_activation(m, sg).quantization, k, np.zeros(0))
                                          for k in ("scale", "zeroPoint")], "empty quantization"),
    # a vector-length mutation gave a shape of 1,028 dims: the message was 4,000+ characters
    "huge_shape_vector": (lambda m, sg: setattr(sg.tensors[first_op(m, sg, "CONV_2D").inputs[1]], "shape",
                                                np.asarray([16, -3] + [7] * 1026, np.int32)),
                          "(1028 entries)"),
    "metadata_not_json": (_set_eq_metadata(b"{not json"), "metadata is corrupt (JSONDecodeError)"),
    "metadata_not_utf8": (_set_eq_metadata(b"\x9a\xff"), "metadata is corrupt (UnicodeDecodeError)"),
    "metadata_bits_out_of_range": (_set_eq_metadata(b'{"weight_bits": 99}'), "metadata is corrupt"),
    # was IndexError in verify's tensor lookup
    "tensor_index": (lambda m, sg: setattr(sg.operators[0], "inputs",
                                           np.asarray([len(sg.tensors) + 5], np.int32)),
                     "tensor index"),
    # was IndexError in verify's opcode lookup
    "opcode_index": (lambda m, sg: setattr(sg.operators[1], "opcodeIndex", 99), "opcode index 99"),
    # was ValueError: cannot reshape, in codec.buffer_array
    "buffer_size": (lambda m, sg: setattr(
        m.buffers[sg.tensors[first_op(m, sg, "CONV_2D").inputs[1]].buffer], "data",
        m.buffers[sg.tensors[first_op(m, sg, "CONV_2D").inputs[1]].buffer].data[:-1]), "bytes of data"),
    # was a numpy broadcast error between bias scales and s_in * s_w
    "bias_scales": (_bias_too_short, "does not match"),
    # was AttributeError: the quantization of the conv's input is None
    "quantization_none": (lambda m, sg: setattr(sg.tensors[first_op(m, sg, "CONV_2D").inputs[0]],
                                                "quantization", None), "no quantization parameters"),
    # was TypeError: the weights' zero points are None
    "zero_points_none": (lambda m, sg: setattr(
        sg.tensors[first_op(m, sg, "CONV_2D").inputs[1]].quantization, "zeroPoint", None),
        "scales but 0 zero points"),
}


@pytest.mark.parametrize("name", sorted(VERIFY_MUTATIONS))
def test_verify_mutated_model(capsys, tmp_path, small_int8, name):
    edit, message = VERIFY_MUTATIONS[name]
    path = tmp_path / "m.tflite"
    path.write_bytes(mutate(small_int8, edit))
    assert verify.main(["verify", str(path)]) == 2
    one_error_line(capsys, message)


def test_verify_unmutated_model_passes(capsys, tmp_path, small_int8):
    path = tmp_path / "m.tflite"
    path.write_bytes(small_int8)
    assert verify.main(["verify", str(path)]) == 0
    assert "verify: OK" in capsys.readouterr().out


@pytest.mark.parametrize("target,message", [("{dir}", "is a directory"), ("", "empty model path"),
                                            ("{dir}/" + "v" * 300, "too long")])
def test_verify_bad_paths(capsys, tmp_path, target, message):
    assert verify.main(["verify", target.replace("{dir}", str(tmp_path))]) == 2
    one_error_line(capsys, message)


# ---------------------------------------------------------------- mutated float sources

def test_invalid_utf8_names_and_custom_codes():
    assert fb.text(b"ok\xff\xfe") == "ok\ufffd\ufffd"  # was UnicodeDecodeError


@pytest.mark.parametrize("edit,message", [
    # was IndexError in op naming
    (lambda m, sg: setattr(sg.operators[0], "opcodeIndex", len(m.operatorCodes)), "opcode index"),
    # was TypeError in io/sources.py (a conv without its weights)
    (lambda m, sg: setattr(first_op(m, sg, "CONV_2D"), "inputs",
                           first_op(m, sg, "CONV_2D").inputs[:1]), "lacks its data or weight"),
    (lambda m, sg: setattr(first_op(m, sg, "CONV_2D"), "inputs", None), "lacks its data or weight input"),
    # a tensor pointing at a buffer that does not exist
    (lambda m, sg: setattr(sg.tensors[0], "buffer", len(m.buffers) + 1), "buffer index"),
    # native code cuts names at control characters; they no longer matched (was KeyError)
    (lambda m, sg: setattr(sg.tensors[0], "name", b"image\t"), "control characters"),
    # tensors are matched by name (was RuntimeError in the rewriter)
    (lambda m, sg: setattr(sg.tensors[1], "name", b""), "has no name"),
    (lambda m, sg: setattr(sg.tensors[1], "name", sg.tensors[2].name), "several tensors are named"),
    # metadata without a name: TF's calibrator dereferenced the missing name (SIGSEGV; found
    # by tools/fuzz.py --seed 7, mutant convert/word/273, a zeroed vtable entry)
    (lambda m, sg: [setattr(entry, "name", None) for entry in m.metadata], "metadata entry has no name"),
    # a shape claiming terabytes
    (lambda m, sg: setattr(sg.tensors[0], "shape", np.asarray([2 ** 30, 2 ** 30], np.int32)),
     "needs more than"),
])
def test_convert_mutated_source(capsys, tmp_path, small_float_tflite, small_calibration_path, edit,
                                message):
    src, out = tmp_path / "f.tflite", tmp_path / "out" / "q.tflite"
    src.write_bytes(mutate(small_float_tflite, edit))
    before = src.read_bytes()
    assert run_convert([str(src), "--calibration_data", str(small_calibration_path),
                        "--output", str(out)]) == 2
    one_error_line(capsys, message)
    assert not out.parent.exists() and src.read_bytes() == before


def test_convert_non_utf8_names_refused(capsys, tmp_path, small_float_tflite, small_calibration_path):
    # LiteRT decodes tensor names as UTF-8 (it raised UnicodeDecodeError deep inside collect)
    def edit(m, sg):
        sg.tensors[0].name = b"\xff\xfeimage"
    src, out = tmp_path / "f.tflite", tmp_path / "q.tflite"
    src.write_bytes(mutate(small_float_tflite, edit))
    assert run_convert([str(src), "--calibration_data", str(small_calibration_path),
                        "--output", str(out)]) == 2
    one_error_line(capsys, "not valid UTF-8")


def test_litert_rejection_is_an_eq_tflite_error():
    # was LiteRT's "not a valid Flatbuffer" ValueError escaping make_interpreter
    with pytest.raises(EqTfliteError, match="LiteRT"):
        runtime.make_interpreter(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)


def test_structure_offsets_are_checked():
    with pytest.raises(EqTfliteError, match="root offset"):
        fb.parse_model(b"\xff\xff\x00\x00TFL3" + b"\x00" * 64)


def test_native_code_sees_rebuilt_bytes(small_float_tflite):
    # The calibrator (SIGSEGV in add_intermediate_tensors) gets builder-written offsets only.
    rebuilt = fb.canonical_bytes(small_float_tflite)
    assert fb.serialize_model(fb.parse_model(rebuilt)) == rebuilt


def _segfault() -> None:
    import ctypes
    ctypes.string_at(0)


@pytest.mark.parametrize("fn,signal_name", [(_segfault, "SIGSEGV"), (os.abort, "SIGABRT")])
def test_native_crash_in_child_is_an_error(fn, signal_name):
    # was: SIGSEGV in TF's calibrator (convert) and SIGABRT in allocate_tensors (verify)
    with pytest.raises(EqTfliteError, match=f"crashed in native code \\({signal_name}\\)"):
        run_isolated(fn, what="the stage")


def test_child_errors_keep_their_class():
    from eq_tflite.errors import UnsupportedOpsError

    def unsupported():
        raise UnsupportedOpsError(["SIN", "CUMSUM"])
    with pytest.raises(UnsupportedOpsError) as info:
        run_isolated(unsupported, what="x")
    assert info.value.ops == ["CUMSUM", "SIN"] and "--allow_float" in str(info.value)
    assert run_isolated(sum, [1, 2, 3], what="x") == 6


# ---------------------------------------------------------------- calibration data

def _png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _corrupt_npz(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.savez(f, image=array)
    data = bytearray(f.getvalue())
    data[60:200] = b"\xff" * 140
    return bytes(data)


def _pickled_npz(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.savez(f, image=np.array([{"x": 1}] * 4, dtype=object))
    return f.getvalue()


@pytest.mark.parametrize("name,make,message", [
    # float64 beyond float32's range used to pass the finite check, become inf, then segfault
    ("calib.npy", lambda x: (x.astype(np.float64) * 0 + 1e39), "beyond float32's range"),
    ("calib.npz", _pickled_npz, "pickled"),
    ("calib.npz", _corrupt_npz, "cannot read"),
    # data at float32's maximum used to blame the ops ("cannot quantize these ops")
    ("calib.npy", lambda x: np.full_like(x, np.finfo(np.float32).max), "drives the float model to Inf"),
])
def test_hostile_calibration_data(capsys, tmp_path, small_float_path, small_calibration, name, make,
                                  message):
    path, out = tmp_path / name, tmp_path / "q.tflite"
    blob = make(small_calibration[:8])
    if isinstance(blob, np.ndarray):
        np.save(path, blob)
    else:
        path.write_bytes(blob)
    assert run_convert([str(small_float_path), "--calibration_data", str(path), "--output", str(out)]) == 2
    one_error_line(capsys, message)
    assert not out.exists()


def test_decompression_bomb_image(capsys, tmp_path, small_float_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "bomb.png").write_bytes(_png(60000, 60000))
    assert run_convert([str(small_float_path), "--calibration_data", str(images),
                        "--output", str(tmp_path / "q.tflite")]) == 2
    one_error_line(capsys, "DecompressionBomb")


# ---------------------------------------------------------------- output paths

@pytest.fixture
def no_conversion(monkeypatch):
    """Fails the test if the conversion starts: output paths are checked first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the conversion ran before the output path was checked")
    monkeypatch.setattr(api, "convert_model", refuse)


@pytest.mark.parametrize("output,message", [
    ("{dir}/f.tflite", "refusing to overwrite"),           # the source itself
    ("{dir}/calib.npy", "refusing to overwrite"),          # the calibration data
    ("{dir}/afile/q.tflite", "is a file, not a directory"),
    ("{dir}/adir", "is a directory"),
    ("/proc/eq_tflite_test.tflite", "cannot write"),       # unwritable, even for root
    ("{dir}/" + "n" * 300 + ".tflite", "limit of"),
    ("", "empty output path"),
])
def test_bad_output_paths_refused_before_converting(capsys, tmp_path, small_float_tflite,
                                                    small_calibration, no_conversion, output, message):
    src = tmp_path / "f.tflite"
    src.write_bytes(small_float_tflite)
    np.save(tmp_path / "calib.npy", small_calibration)
    (tmp_path / "afile").write_bytes(b"keep")
    (tmp_path / "adir").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert run_convert([str(src), "--calibration_data", str(tmp_path / "calib.npy"),
                        "--output", output.replace("{dir}", str(tmp_path))]) == 2
    one_error_line(capsys, message)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "calib.npy", "f.tflite"]


def test_long_output_name_within_limit_works(capsys, tmp_path, small_float_path, small_calibration_path):
    # 250 characters: the name fits NAME_MAX, the naive temp name ".NAME.XXXXXXXX.tmp" would not
    out = tmp_path / ("m" * 243 + ".tflite")
    assert run_convert([str(small_float_path), "--calibration_data", str(small_calibration_path),
                        "--output", str(out)]) == 0
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_written_model_gets_ordinary_permissions(tmp_path):
    """Atomic writes do not leave mkstemp's private 0600 mode on the user's file."""
    import os
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "m.tflite", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "m.tflite").stat().st_mode & 0o777 == 0o644


def test_write_failure_leaves_no_file(tmp_path):
    target = tmp_path / "sub" / "q.tflite"
    (tmp_path / "sub").write_bytes(b"a file")
    with pytest.raises(EqTfliteError, match="cannot write"):
        write_atomic(target, b"data")
    assert (tmp_path / "sub").read_bytes() == b"a file"


# ---------------------------------------------------------------- the real CLI processes

def _cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_cli_processes_bad_flags_and_bad_models(tmp_path):
    """The real entry points (absl flag parsing included): one line on stderr, exit 2."""
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    for args, message in ((["-m", "eq_tflite.verify", str(bad)], "no subgraphs"),
                          (["-m", "eq_tflite.convert", str(bad), "--bits", "seven"], "--bits"),
                          (["-m", "eq_tflite.convert", str(bad), "--output", str(bad)],
                           "refusing to overwrite")):
        proc = _cli(args, tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert bad.read_bytes() == b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64


def test_tools_import_the_installed_package(tmp_path):
    """Tools import eq_tflite as installed (pip install .), the checkout only as a fallback."""
    fake = tmp_path / "site" / "eq_tflite"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("INSTALLED_COPY = True\n")
    for tool in ("evaluate.py", "layer_report.py", "benchmark_latency.py", "benchmark_kernels.py",
                 "benchmark_boundary.py",
                 "benchmark_accuracy.py",
                 "benchmark_calibration.py", "benchmark_eq_layers.py", "delegate_paths.py",
                 "fuzz.py"):
        code = (f"import runpy, sys\nrunpy.run_path({str(REPO / 'tools' / tool)!r}, run_name='probe')\n"
                "import eq_tflite\nprint(eq_tflite.__file__)\n")
        proc = _cli(["-c", code], tmp_path, {"PYTHONPATH": str(tmp_path / "site")})
        assert proc.returncode == 0, (tool, proc.stderr[-2000:])
        assert proc.stdout.strip().endswith(str(fake / "__init__.py")), (tool, proc.stdout)


def test_tool_bad_input_is_one_error_line(tmp_path):
    proc = _cli([str(REPO / "tools" / "evaluate.py"), "--models", str(tmp_path / "missing.tflite"),
                 "--reference", str(tmp_path / "missing_model"), "--data", str(tmp_path / "x.npz")],
                tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_verify_refuses_add_scales_litert_aborts_on(capsys, tmp_path, small_int8):
    # A denormal ADD output scale passes every structural check, but LiteRT's ADD kernel
    # preparation aborted on it (SIGABRT in allocate_tensors; found by tools/fuzz.py --seed 11,
    # mutant verify/field:quant.scale/120): its output multiplier must stay below 1. verify
    # now reports it without handing the file to LiteRT (exit 1, the violated invariant).
    def edit(m, sg):
        add = first_op(m, sg, "ADD")
        sg.tensors[add.outputs[0]].quantization.scale = [1e-45]
    path = tmp_path / "m.tflite"
    path.write_bytes(mutate(small_int8, edit))
    assert verify.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "output scale 1.4e-45 is below 2^-19 of its input scale" in out, out
    assert "LiteRT cannot run" not in out


def test_huge_weights_refused_before_litert(capsys, tmp_path, resnet_float, fmnist_calib):
    # Nine spliced float weights of the ResNet example (tools/fuzz.py --seed 21, mutant
    # convert/splice/661; one is -4.6e28) pass TFLite's own int8 conversion. The conv's range
    # reaches 1e29 while the ReLU after the residual ADD cuts it off again, so the ADD's output
    # scale is 1e-27 of its input's: TFLite's ADD kernel cannot requantize that and LiteRT
    # aborted preparing the rewritten model (SIGABRT). verify now refuses those scales before
    # LiteRT sees the file: one error line naming the op, no output file.
    def edit(m, sg):
        w = next(t for t in sg.tensors if fb.tensor_name(t) == "resnet_fmnist_1/conv2d_8_1/convolution")
        data = fb.buffer_array(m, w)
        data.flat[29306:29315] = [-7.17296285e-13, 2.03117614e-16, -1.87061927e-30, 1.07980139e-22,
                                  -1.94394657e-29, 1.02730934e+02, -4.60869534e+28, 9.67284929e-28,
                                  -3.03558037e-02]
        fb.set_buffer(m, w, data)
    src, out, calib = tmp_path / "f.tflite", tmp_path / "q.tflite", tmp_path / "c.npy"
    src.write_bytes(mutate(resnet_float, edit))
    np.save(calib, fmnist_calib[:8])
    assert run_convert([str(src), "--calibration_data", str(calib), "--output", str(out)]) == 2
    # The scales themselves depend on the method's ranges; the refusal and its reason do not.
    one_error_line(capsys, "int8 ADD kernel cannot requantize (LiteRT would abort)")
    assert not out.exists()
