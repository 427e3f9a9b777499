"""Shared fixtures for the delegate tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)


@pytest.fixture(scope="session")
def delegate_library() -> str:
    """Path of the built delegate; builds it in place once if it is missing."""
    from eq_tflite.delegate import DelegateNotBuiltError, library_path
    try:
        return library_path()
    except DelegateNotBuiltError:
        pass
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=REPO,
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail("could not build the delegate (python setup.py build_ext "
                    f"--inplace):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return library_path()
