"""The randomized suite under AddressSanitizer + UndefinedBehaviorSanitizer.

A separate copy of the library is compiled with -fsanitize=address,undefined
(-fno-sanitize-recover: any UB report aborts) and loaded in a subprocess
with libasan preloaded (the Python interpreter itself is not instrumented).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _runtime(cc: str, name: str) -> str | None:
    out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


@pytest.fixture(scope="module")
def asan_library(tmp_path_factory) -> tuple[str, str]:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) to build the sanitizer variant")
    libasan = _runtime(cc, "libasan.so")
    if libasan is None:
        pytest.skip(f"{cc} has no AddressSanitizer runtime (libasan.so)")
    out = str(tmp_path_factory.mktemp("asan") / "libeqdelegate_asan.so")
    sources = sorted(glob.glob(os.path.join(REPO, "delegates", "src", "*.c")))
    cmd = [cc, "-std=c11", "-O1", "-g", "-fno-omit-frame-pointer",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
           "-I" + os.path.join(REPO, "delegates", "include"),
           "-I" + os.path.join(REPO, "delegates", "src"), *sources, "-o", out, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out, libasan


@pytest.mark.parametrize("options", [["isa=avx2"], ["isa=scalar"],
                                     ["isa=avx2", "winograd=0"],
                                     ["isa=avx2", "num_threads=2"]])
def test_random_suite_under_asan_ubsan(asan_library, options):
    lib, libasan = asan_library
    env = dict(os.environ)
    env.update({
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "EQ_TFLITE_DELEGATE_LIB": lib,
        "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
    })
    code = ("import sys; sys.argv=['random_suite','--cases','30','--seed','5',"
            "'--options'," + ",".join(repr(o) for o in options) + "];"
            "import eq_tflite.delegate as d; print('LIB', d.library_path());"
            "import random_suite; sys.exit(random_suite.main())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert f"LIB {lib}" in proc.stdout, output[-4000:]
    assert "ERROR: AddressSanitizer" not in output, output[-6000:]
    assert "runtime error" not in output, output[-6000:]
    assert proc.returncode == 0, output[-4000:]
    assert "mismatches=0" in proc.stdout
