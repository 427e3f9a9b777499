"""The CLI on bad input: one clear line, exit code 2, and no output file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from absl import flags

from eq_tflite import convert


def run_cli(args: list[str]) -> int:
    """Runs ``eq-tflite`` in-process with fresh flags; returns its exit code."""
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(["eq-tflite", *args])
    return convert.main(argv)


def assert_fails(capsys, out: Path, args: list[str], message: str) -> None:
    code = run_cli([*args, "--output", str(out), "--noprogress", "--method", "minmax"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temp files either


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out" / "model.tflite"


def test_missing_model(capsys, out, small_calibration_path):
    assert_fails(capsys, out, ["/no/such/model", "--calibration_data", str(small_calibration_path)],
                 "no such model")


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64])
def test_corrupt_tflite(capsys, out, tmp_path, content, small_calibration_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    assert_fails(capsys, out, [str(bad), "--calibration_data", str(small_calibration_path)], ".tflite")


def test_truncated_tflite(capsys, out, tmp_path, small_float_tflite, small_calibration_path):
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(small_float_tflite[: len(small_float_tflite) // 2])
    assert_fails(capsys, out, [str(bad), "--calibration_data", str(small_calibration_path)], "")


def test_corrupt_saved_model(capsys, out, tmp_path, small_calibration_path):
    bad = tmp_path / "saved"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"\x08garbage")
    assert_fails(capsys, out, [str(bad), "--calibration_data", str(small_calibration_path)],
                 "cannot convert")


def test_not_a_saved_model_dir(capsys, out, tmp_path, small_calibration_path):
    assert_fails(capsys, out, [str(tmp_path), "--calibration_data", str(small_calibration_path)],
                 "not a SavedModel")


@pytest.mark.parametrize("data,message", [
    (np.zeros((4, 10, 12, 3), np.float32), "expected (N, 12, 12, 3)"),
    (np.zeros((4, 12, 12), np.float32), "expected (N, 12, 12, 3)"),
    (np.zeros((4, 12, 12, 3), np.uint8), "dtype uint8"),
    (np.zeros((0, 12, 12, 3), np.float32), "empty"),
    (np.full((4, 12, 12, 3), np.nan, np.float32), "NaN/Inf"),
    (np.array([[[[np.inf, 0, 0]] * 12] * 12] * 2, np.float32), "NaN/Inf"),
])
def test_bad_calibration_data(capsys, out, tmp_path, small_float_path, data, message):
    path = tmp_path / "calib.npy"
    np.save(path, data)
    assert_fails(capsys, out, [str(small_float_path), "--calibration_data", str(path)], message)


def test_bad_npz_names(capsys, out, tmp_path, small_float_path):
    path = tmp_path / "calib.npz"
    np.savez(path, a=np.zeros((2, 12, 12, 3), np.float32), b=np.zeros((2, 12, 12, 3), np.float32))
    assert_fails(capsys, out, [str(small_float_path), "--calibration_data", str(path)],
                 "no array for input 'image'")


@pytest.mark.parametrize("args", [["--bits", "9"], ["--bits", "1"], ["--weight_bits", "0"],
                                  ["--activation_bits", "12"]])
def test_bits_out_of_range(capsys, out, small_float_path, small_calibration_path, args):
    assert_fails(capsys, out, [str(small_float_path), "--calibration_data", str(small_calibration_path),
                               *args], "2..8")


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory) -> Path:
    import keras
    import tensorflow as tf
    inp = keras.Input((8,))
    x = keras.layers.Dense(8)(inp)
    x = keras.layers.Lambda(lambda t: tf.math.cumsum(tf.math.sin(t), axis=1))(x)
    model = keras.Model(inp, keras.layers.Dense(4)(x))
    path = tmp_path_factory.mktemp("unsupported") / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def test_unsupported_ops_named(capsys, out, tmp_path, unsupported_model):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((16, 8), dtype=np.float32))
    assert_fails(capsys, out, [str(unsupported_model), "--calibration_data", str(data)],
                 "cannot quantize these ops: CUMSUM, SIN")


@pytest.mark.parametrize("method", ["minmax", "easyquant"])
def test_unsupported_ops_float_fallback(capsys, out, tmp_path, unsupported_model, method):
    """--allow_float means the same for every method (issue 20 item 5): the float ops are
    simulated in float by EasyQuant too."""
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((16, 8), dtype=np.float32))
    code = run_cli([str(unsupported_model), "--calibration_data", str(data), "--method", method,
                    "--allow_float", "--output", str(out), "--noprogress"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "float ops kept: CUMSUM, SIN" in text


def test_data_methods_without_data_fail(capsys, out, small_float_path):
    """No random fallback any more: a data method without data is an error naming the flag."""
    assert_fails(capsys, out, [str(small_float_path)], "method minmax needs --calibration_data")


def test_data_free_without_input_range_fails(capsys, out, small_float_path):
    code = run_cli([str(small_float_path), "--output", str(out), "--noprogress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "--input_range LO,HI" in err[-1]
    assert not out.exists()


@pytest.mark.parametrize("value", ["1", "0,x", "1,0"])
def test_bad_input_range_fails(capsys, out, small_float_path, value):
    code = run_cli([str(small_float_path), "--input_range", value, "--output", str(out),
                    "--noprogress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --input_range") and not out.exists()


def test_data_free_cli(capsys, out, small_float_path):
    code = run_cli([str(small_float_path), "--input_range", "0,1", "--bits", "8",
                    "--per_tensor_weights", "--output", str(out), "--noprogress"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "chain cross_layer_equalization -> dfq -> bias_correction:data_free" in text  # no BN: no absorption
    assert "per-tensor weights, no data (data-free)" in text
    assert "no BN statistics" in text and "agreement with float not measured" in text


def test_success_summary(capsys, out, small_float_path, small_calibration_path):
    code = run_cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                    "--method", "minmax", "--num_calibration_samples", "32", "--output", str(out),
                    "--noprogress"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "W7A7, 32 calibration samples" in text
    assert "16 held-back samples" in text and "top-1 agreement" in text


def test_split_calibration_holds_back_by_default():
    from eq_tflite.api import split_calibration
    # Bit-Split's default (256) on 64 samples: 8 (1/8) held back, not the fitted ones scored.
    assert split_calibration(64, None, 256) == (56, False)
    assert split_calibration(64, None, 50) == (50, False)  # 14 left over already
    assert split_calibration(52, None, 50) == (46, False)  # at least 52 // 8 = 6 held back
    assert split_calibration(1000, None, None) == (968, False)  # minmax/kl: all but 32
    assert split_calibration(20, None, None) == (16, False)  # at least 4
    assert split_calibration(5, None, None) == (5, True)  # too few to hold back
    assert split_calibration(64, 64, 256) == (64, True)  # explicit: the user's choice
    assert split_calibration(64, 100, 256) == (64, True)
    assert split_calibration(64, 32, 256) == (32, False)


def test_summary_says_when_check_is_on_calibration_samples(capsys, out, small_float_path,
                                                           small_calibration_path):
    n = int(np.load(small_calibration_path, mmap_mode="r").shape[0])
    code = run_cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                    "--method", "minmax", "--num_calibration_samples", str(n), "--output",
                    str(out), "--noprogress"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert f"the {n} calibration samples (optimistic" in text
    assert "held-back" not in text


def test_ctrl_c_during_the_cli_imports_is_one_line(monkeypatch, capsys):
    """eq-tflite installs its signal handlers before importing the CLI (about half a second of
    imports): a Ctrl-C or SIGTERM in that window also ends in one error line and exit code 2."""
    import builtins
    import signal

    from eq_tflite import cli
    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "eq_tflite" and len(args) > 2 and args[2] and "convert" in args[2]:
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.eq_tflite_main()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: interrupted\n"


def test_a_finished_cli_ignores_late_signals():
    """After its work, a CLI ignores SIGTERM/SIGHUP/SIGINT through Python's finalization
    (which would otherwise restore their default action while TensorFlow is torn down, so a
    late SIGTERM killed a conversion that had already written its model: exit -15)."""
    import subprocess
    import sys
    program = ("import atexit, os, signal, sys\n"
               "from eq_tflite import cli\n"
               "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM),"
               " print(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)))\n"
               "sys.argv = ['prog']\n"
               "cli.run_absl(lambda argv: 0)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "True", (done.returncode, done.stderr)


def test_signals_are_ignored_once_the_body_returned():
    """A signal after the work ended must not become an uncaught KeyboardInterrupt (death by
    SIGINT, exit -2, seen once in the fault campaign): _guarded_main ignores signals inside
    its try, before it returns."""
    import signal as sig

    from eq_tflite import cli
    saved = {s: sig.getsignal(s) for s in (sig.SIGINT, sig.SIGTERM, sig.SIGHUP)}
    try:
        assert cli._guarded_main(lambda argv: 0, []) == 0
        assert all(sig.getsignal(s) == sig.SIG_IGN for s in saved)
        for s, h in saved.items():
            sig.signal(s, h)

        def interrupted_body(argv):
            raise KeyboardInterrupt
        assert cli._guarded_main(interrupted_body, []) == 2
        assert all(sig.getsignal(s) == sig.SIG_IGN for s in saved)
    finally:
        for s, h in saved.items():
            sig.signal(s, h)


def test_interrupt_in_absl_setup_is_one_line(monkeypatch, capsys):
    import signal as sig

    from absl import app

    from eq_tflite import cli

    def run(main, flags_parser=None):
        raise KeyboardInterrupt  # e.g. while absl parses flags, before main
    monkeypatch.setattr(app, "run", run)
    saved = {s: sig.getsignal(s) for s in (sig.SIGINT, sig.SIGTERM, sig.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as exc:
            cli.run_absl(lambda argv: 0)
    finally:
        for s, h in saved.items():
            sig.signal(s, h)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: interrupted"
