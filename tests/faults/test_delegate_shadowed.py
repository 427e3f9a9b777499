"""The delegate's Python functions find the built library when a checkout shadows the package.

The README's quick start leaves the user in the repository root, where the
checkout's ``eq_tflite/`` (no built library) comes first on ``sys.path`` and
shadows the installed package that ``pip install .`` built the library into.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eq_tflite
from eq_tflite.delegate import DelegateNotBuiltError, library_path

REPO = Path(__file__).resolve().parents[2]

SNIPPET = """
import eq_tflite, sys
from eq_tflite.delegate import delegate_stats, library_path, load_delegate
from ai_edge_litert.interpreter import Interpreter
assert eq_tflite.__file__.startswith(sys.argv[1]), eq_tflite.__file__  # the checkout's copy
d = load_delegate()
interp = Interpreter(model_path=sys.argv[2], experimental_delegates=[d])
interp.allocate_tensors()
print(library_path())
print(delegate_stats(d)["considered"])
"""


def test_load_delegate_from_a_shadowing_checkout(tmp_path, small_float_tflite, small_calibration):
    try:
        built = library_path()
    except DelegateNotBuiltError:
        pytest.skip("the delegate library is not built here")
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    # a checkout: the package's sources, no built library
    shutil.copytree(Path(eq_tflite.__file__).parent, checkout / "eq_tflite",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    # the installed package, holding the library `pip install .` built
    (site / "eq_tflite").mkdir(parents=True)
    shutil.copy(built, site / "eq_tflite" / os.path.basename(built))
    model = tmp_path / "m.tflite"
    model.write_bytes(eq_tflite.quantize(small_float_tflite, small_calibration[:8], method="minmax"))
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("EQ_TFLITE_DELEGATE_LIB", None)
    run = subprocess.run([sys.executable, "-c", SNIPPET, str(checkout), str(model)], cwd=checkout,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split()
    assert lines[0].startswith(str(site / "eq_tflite")) or lines[0] == os.path.realpath(built), lines
    assert int(lines[1]) >= 1  # the delegate looked at the model's convolutions
    assert not glob.glob(str(checkout / "eq_tflite" / "_eqdelegate*"))
