"""Stage workers (isolation.separate_stages): several stages in one child, run_isolated's semantics."""
from __future__ import annotations

import os
import sys

import pytest

from eq_tflite import isolation
from eq_tflite.errors import EqTfliteError, UnsupportedOpsError
from eq_tflite.isolation import run_isolated, separate_stages


def _pid_and_modules(name: str) -> tuple[int, bool]:
    __import__(name)
    return os.getpid(), name in sys.modules


def _unsupported():
    raise UnsupportedOpsError(["SIN"])


def _segfault() -> None:
    import ctypes
    ctypes.string_at(0)


def test_calls_share_one_child_and_its_imports():
    assert "json.tool" not in sys.modules
    with separate_stages() as worker:
        assert isolation.worker_active()
        first = run_isolated(_pid_and_modules, "json.tool", what="a")
        second = run_isolated(_pid_and_modules, "json", what="b")
        assert first[0] == second[0] != os.getpid()  # one worker, not this process
        assert first[1] and second[1]
        assert worker.close() == 0          # ended now, cleanly
        third = run_isolated(_pid_and_modules, "json", what="c")  # a new worker after close
        assert third[0] not in (os.getpid(), first[0])
    assert not isolation.worker_active()
    assert "json.tool" not in sys.modules   # the import happened in the worker only


def test_errors_keep_their_class_and_the_worker_serves_on():
    with separate_stages():
        with pytest.raises(UnsupportedOpsError):
            run_isolated(_unsupported, what="x")
        assert run_isolated(sum, [1, 2, 3], what="x") == 6


def test_a_crash_in_the_worker_is_one_error_and_a_new_worker_follows():
    with separate_stages():
        with pytest.raises(EqTfliteError, match=r"the stage crashed in native code \(SIGSEGV\)"):
            run_isolated(_segfault, what="the stage")
        assert run_isolated(sum, [4, 5], what="x") == 9


def test_disabled_is_plain_run_isolated():
    with separate_stages(enabled=False) as worker:
        assert worker is None and not isolation.worker_active()
        assert run_isolated(sum, [1], what="x") == 1


_CONVERT_IN_CHILD = """
import sys
from eq_tflite import api
from eq_tflite.isolation import run_isolated

def convert():
    out = api.convert_model(sys.argv[1], sys.argv[2], bits=8, method="minmax",
                            num_calibration_samples=16)
    return len(out.model) > 0, "tensorflow" in sys.modules

print(run_isolated(convert, what="the conversion"), "tensorflow" in sys.modules)
"""


def test_a_cli_conversion_never_loads_tensorflow_in_its_child():
    # The CLI converts in a run_isolated child; TensorFlow's stages (SavedModel load,
    # TFLite's int8 conversion) then run in a worker that ends before the method stage,
    # so the child's peak memory has no TensorFlow in it (issue 18).
    import subprocess
    from pathlib import Path
    examples = Path(__file__).resolve().parents[1] / "examples"
    proc = subprocess.run([sys.executable, "-c", _CONVERT_IN_CHILD, str(examples / "resnet_fmnist"),
                           str(examples / "fmnist_calib.npy")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-3:] == ["(True,", "False)", "False"], proc.stdout
