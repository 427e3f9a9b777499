"""Misuse: nothing the user owns is overwritten, the model survives a failed report,
API arguments are checked before any loading, and the CLIs' help and closed stdout."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from eq_tflite import api, convert
from eq_tflite.errors import EqTfliteError

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str]) -> int:
    flags.FLAGS.unparse_flags()
    return convert.main(flags.FLAGS(["eq-tflite", *args]))


def digests(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def saved_model(tmp_path) -> Path:
    """A copy of the example SavedModel (a broken check must not destroy the repo's)."""
    return Path(shutil.copytree(REPO / "examples" / "resnet_fmnist", tmp_path / "model"))


# ------------------------------------------------------------------ item 3: nothing overwritten

@pytest.mark.parametrize("target", ["saved_model.pb", "variables/variables.index",
                                    "variables/new.tflite", "deep/er/q.tflite", "link/q.tflite"])
def test_output_inside_source_model_is_refused(capsys, tmp_path, saved_model, target):
    (tmp_path / "link").symlink_to(saved_model)  # a symlink into the model directory
    output = (saved_model / target) if not target.startswith("link") else tmp_path / target
    before = digests(saved_model)
    code = run_cli([str(saved_model), "--calibration_data", str(REPO / "examples" / "fmnist_calib.npy"),
                    "--output", str(output), "--noprogress", "--method", "minmax"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "inside the input directory" in err[0], err
    assert digests(saved_model) == before


def test_output_symlink_to_calibration_data_is_refused(capsys, tmp_path, small_float_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((8, 12, 12, 3), dtype=np.float32))
    before = calib.read_bytes()
    (tmp_path / "out.tflite").symlink_to(calib)
    code = run_cli([str(small_float_path), "--calibration_data", str(calib), "--output",
                    str(tmp_path / "out.tflite"), "--noprogress", "--method", "minmax"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "refusing to overwrite" in err[-1], err
    assert calib.read_bytes() == before


def test_report_dir_inside_source_model_is_refused(capsys, tmp_path, saved_model):
    before = digests(saved_model)
    code = run_cli([str(saved_model), "--calibration_data", str(REPO / "examples" / "fmnist_calib.npy"),
                    "--output", str(tmp_path / "q.tflite"), "--report_dir", str(saved_model / "variables"),
                    "--noprogress", "--method", "minmax"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "inside the input directory" in err[-1], err
    assert digests(saved_model) == before and not (tmp_path / "q.tflite").exists()


# ------------------------------------------------------------------ item 4: the model is the product

def _convert_with_report(capsys, small_float_path, small_calibration_path, out: Path, report: Path):
    code = run_cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                    "--output", str(out), "--report_dir", str(report), "--noprogress",
                    "--method", "minmax"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_report_that_cannot_be_written_keeps_the_model(capsys, monkeypatch, tmp_path, small_float_path,
                                                       small_calibration_path):
    """The disk fills up at the report's last file: the model is written, the old report intact."""
    from eq_tflite.io import atomic
    report = tmp_path / "report"
    report.mkdir()
    (report / "layers.md").write_text("an earlier report")
    stage = atomic._stage

    def full_at_png(path, data, temps):
        if path.name == "layers.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return stage(path, data, temps)

    monkeypatch.setattr(atomic, "_stage", full_at_png)
    out = tmp_path / "q.tflite"
    code, text, err = _convert_with_report(capsys, small_float_path, small_calibration_path, out, report)
    assert code == 0 and out.is_file() and f"wrote {out}" in text
    assert len(err) == 1 and err[0].startswith("warning: no report written") \
        and "No space left on device" in err[0] and "the model" in err[0], err
    assert sorted(p.name for p in report.iterdir()) == ["layers.md"]  # no partial file, no temp file
    assert (report / "layers.md").read_text() == "an earlier report"
    assert api.verify(out.read_bytes()).ok


def _mount_tmpfs(folder: Path, size: str, options: str = "") -> None:
    folder.mkdir()
    opts = f"size={size}" + (f",{options}" if options else "")
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the monkeypatched test covers it")


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def make(name: str, size: str, options: str = "") -> Path:
        _mount_tmpfs(tmp_path / name, size, options)
        mounted.append(tmp_path / name)
        return tmp_path / name
    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_report_on_full_disk_keeps_the_model(capsys, tmpfs, tmp_path, small_float_path,
                                             small_calibration_path):
    report = tmpfs("report", "16k")  # Markdown and CSV fit, the PNG does not
    out = tmp_path / "q.tflite"
    code, _, err = _convert_with_report(capsys, small_float_path, small_calibration_path, out, report)
    assert code == 0 and out.is_file() and api.verify(out.read_bytes()).ok
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert list(report.iterdir()) == []


def test_model_on_full_disk_leaves_nothing(capsys, tmpfs, small_float_path, small_calibration_path):
    disk = tmpfs("disk", "8k")
    out = disk / "q.tflite"
    code = run_cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                    "--output", str(out), "--noprogress", "--method", "minmax"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: cannot write {out}: No space left on device"], err
    assert list(disk.iterdir()) == []


def test_read_only_output_directory(capsys, tmpfs, small_float_path, small_calibration_path):
    disk = tmpfs("ro", "1m", "ro")
    code = run_cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                    "--output", str(disk / "q.tflite"), "--noprogress", "--method", "minmax"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Read-only file system" in err[0], err


# ------------------------------------------------------------------ item 8: API arguments

@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model fails the test: the checks must come first."""
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(api, "float_model_of", loaded)


def _gen():
    yield np.zeros((1, 12, 12, 3), np.float32)


@pytest.mark.parametrize("kwargs,message", [
    ({"calibration_data": [np.zeros((12, 12, 3), np.float32)] * 4}, "calibration_data must be a path"),
    ({"calibration_data": _gen()}, "got generator; stack the samples"),
    ({"calibration_data": 3.5}, "calibration_data must be a path"),
    ({"calibration_data": {"image": [1, 2]}}, "calibration_data['image'] must be a numpy array"),
    ({"num_calibration_samples": "5"}, "num_calibration_samples must be a positive integer, got '5'"),
    ({"num_calibration_samples": 0}, "num_calibration_samples must be a positive integer, got 0"),
    ({"num_calibration_samples": -3}, "got -3"),
    ({"num_calibration_samples": 2.0}, "got 2.0"),
    ({"num_calibration_samples": True}, "got True"),
])
def test_api_arguments_checked_before_loading(no_loading, small_float_path, kwargs, message):
    kwargs.setdefault("calibration_data", np.zeros((4, 12, 12, 3), np.float32))
    with pytest.raises(EqTfliteError) as err:
        api.quantize(str(small_float_path), **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("model", [None, 3, [b"x"], np.zeros(3)])
def test_api_model_type_checked(no_loading, model):
    with pytest.raises(EqTfliteError, match="model must be a path"):
        api.quantize(model, np.zeros((4, 12, 12, 3), np.float32))


def test_num_calibration_samples_zero_on_the_cli(capsys, tmp_path, small_float_path, small_calibration_path):
    out = tmp_path / "q.tflite"
    code = run_cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                    "--num_calibration_samples", "0", "--output", str(out), "--noprogress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "num_calibration_samples must be a positive integer, got 0" in err[-1]
    assert not out.exists()


# ------------------------------------------------------------------ item 9: help, closed stdout

def _programs() -> list[list[str]]:
    script = Path(sys.executable).parent / "eq-tflite"
    return [[sys.executable, "-m", "eq_tflite.convert"], *([[str(script)]] if script.exists() else [])]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("program", _programs(), ids=lambda p: Path(p[-1]).name)
def test_help_exits_0_with_src_usage(program, flag):
    run = subprocess.run([*program, flag], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert first.startswith("usage: ") and " SRC " in first, first
    assert "--calibration_data" in run.stdout and run.stderr == ""


def test_verify_help():
    run = subprocess.run([sys.executable, "-m", "eq_tflite.verify", "-h"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: python -m eq_tflite.verify MODEL")
    assert "--float_model" in run.stdout


def _closed_stdout(args: list[str]) -> subprocess.CompletedProcess:
    """Runs with stdout a pipe whose reader is already gone (``| head`` that finished)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(args, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("module", ["eq_tflite.convert", "eq_tflite.verify"])
def test_help_into_closed_pipe(module):
    run = _closed_stdout([sys.executable, "-m", module, "--help"])
    assert run.returncode == 0 and run.stderr == ""


def test_conversion_summary_into_closed_pipe(tmp_path, small_float_path, small_calibration_path):
    out = tmp_path / "q.tflite"
    run = _closed_stdout([sys.executable, "-m", "eq_tflite.convert", str(small_float_path),
                          "--calibration_data", str(small_calibration_path), "--output", str(out),
                          "--method", "minmax", "--noprogress"])
    assert run.returncode == 0 and "Traceback" not in run.stderr and "Error" not in run.stderr, run.stderr
    assert out.is_file()
