"""Build script for the native part of eq-tflite.

All project metadata lives in pyproject.toml (setuptools.build_meta); this
file only adds two plain C11 shared libraries: the EasyQuant TFLite delegate,
which TFLite loads with dlopen through its external-delegate API
(``load_delegate(path, options)``), and the calibration search's fused loops
(``native/score.c`` -> ``eq_tflite/_eqscore*.so``, loaded with ctypes by
``eq_tflite/native.py``; numpy runs the same search without it).  It is declared as an Extension so that
setuptools compiles it for the target platform and installs it inside the
package as ``eq_tflite/_eqdelegate*.so``; it is never imported as a Python
module, so it has no ``PyInit_`` function.

    pip install .                          # regular install (no Bazel, no CMake)
    pip install -e .                       # editable install
    python setup.py build_ext --inplace    # developer build next to the sources

Environment:
    EQ_TFLITE_NO_DELEGATE=1   skip both native builds (pure-Python install)
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DELEGATE_DIR = os.path.join("delegates")
SCORE_SOURCES = [os.path.join("native", "score.c")]


class BuildDelegate(build_ext):
    """build_ext for a dlopen()-ed C library (no Python module init)."""

    def get_export_symbols(self, ext: Extension) -> list[str]:
        # Do not ask for PyInit_<name>: the library is not a Python module.
        # The visible symbols are chosen in the sources (EQD_EXPORT) and by
        # -fvisibility=hidden.
        return list(ext.export_symbols or [])

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "msvc":
            raise RuntimeError("the eq-tflite delegate needs gcc or clang")
        super().build_extension(ext)


def _delegate_extension() -> list[Extension]:
    if os.environ.get("EQ_TFLITE_NO_DELEGATE") == "1":
        return []
    sources = sorted(glob.glob(os.path.join(DELEGATE_DIR, "src", "*.c")))
    # One list of flags for every build of the delegate (this one, the
    # aarch64 cross build of tests/delegate/aarch64.py, the NDK recipe).
    with open(os.path.join(DELEGATE_DIR, "cflags.txt"), encoding="utf-8") as f:
        extra_compile_args = f.read().split()
    extra_link_args: list[str] = ["-pthread"]
    if sys.platform.startswith("linux"):
        extra_link_args.append("-Wl,--as-needed")
    return [
        Extension(
            "eq_tflite._eqdelegate",
            sources=sources,
            include_dirs=[os.path.join(DELEGATE_DIR, "include"),
                          os.path.join(DELEGATE_DIR, "src")],
            depends=sorted(glob.glob(os.path.join(DELEGATE_DIR, "src", "*.h")))
            + sorted(glob.glob(os.path.join(DELEGATE_DIR, "include", "*.h"))),
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
            libraries=["m"],
        ),
        # Its own flags: -ffp-contract=off keeps every float operation the one numpy
        # performs (no fused multiply-add), so the search's numbers match numpy's.
        Extension(
            "eq_tflite._eqscore",
            sources=SCORE_SOURCES,
            extra_compile_args=["-std=c11", "-O3", "-fvisibility=hidden", "-ffp-contract=off",
                                "-Wall", "-pthread"],
            extra_link_args=extra_link_args,
            libraries=["m"],
        ),
    ]


setup(
    ext_modules=_delegate_extension(),
    cmdclass={"build_ext": BuildDelegate},
)
