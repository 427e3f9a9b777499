"""The aarch64 toolchain of the tests: a cross compiler, qemu-user and an
aarch64 CPython with numpy and LiteRT, all set up by ``.ci/setup_aarch64.sh``
into one cache directory.

Locally the aarch64 tests skip (with the command to run) when the toolchain
is missing; under CI (``CI=true``) they fail instead, so a broken setup can
never turn into a green run.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DELEGATES = os.path.join(REPO, "delegates")
SETUP = ".ci/setup_aarch64.sh"
# The CPU models the tests emulate: no dot product / dot product (ARMv8.2).
CPU_NO_DOTPROD = "cortex-a72"
CPU_DOTPROD = "neoverse-n1"
CPUS = (CPU_NO_DOTPROD, CPU_DOTPROD)


def cache_dir() -> str:
    """Where setup_aarch64.sh keeps everything (same rule as the script)."""
    if os.environ.get("EQ_AARCH64_CACHE"):
        return os.environ["EQ_AARCH64_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "eq-tflite-aarch64")


@dataclasses.dataclass(frozen=True)
class Toolchain:
    cache: str

    @property
    def python(self) -> str:
        return os.path.join(self.cache, "bin", "python-aarch64")

    def run_python(self, args: list[str], cpu: str, env: dict[str, str] | None = None,
                   timeout: float = 600) -> subprocess.CompletedProcess:
        """Runs the aarch64 python under qemu-aarch64 -cpu `cpu`."""
        full_env = dict(os.environ, EQ_QEMU_CPU=cpu, **(env or {}))
        return subprocess.run([self.python, *args], env=full_env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def run_binary(self, args: list[str], cpu: str, timeout: float = 600
                   ) -> subprocess.CompletedProcess:
        """Runs a statically linked aarch64 program under qemu-aarch64."""
        return subprocess.run(["qemu-aarch64", "-cpu", cpu, *args], capture_output=True,
                              text=True, timeout=timeout, check=False)


def find() -> Toolchain | None:
    """The toolchain, or None if setup_aarch64.sh has not completed."""
    cache = cache_dir()
    ok = os.path.isfile(os.path.join(cache, "ready")) and os.access(
        os.path.join(cache, "bin", "python-aarch64"), os.X_OK)
    tools = all(subprocess.run(["sh", "-c", f"command -v {t}"], capture_output=True
                               ).returncode == 0
                for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64"))
    return Toolchain(cache) if ok and tools else None


def require() -> Toolchain:
    """The toolchain; skips the test without it, except under CI=true."""
    tc = find()
    if tc is None:
        msg = (f"aarch64 toolchain not set up in {cache_dir()}: run `bash {SETUP}` "
               "(apt + pip, about 1 minute; cached afterwards)")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("CI=true but " + msg)
        pytest.skip(msg)
    return tc


def cflags() -> list[str]:
    with open(os.path.join(DELEGATES, "cflags.txt"), encoding="utf-8") as f:
        return f.read().split()


def delegate_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(DELEGATES, "src", "*.c")))


def cross_compile(out: str, sources: list[str], extra: list[str]) -> None:
    """aarch64-linux-gnu-gcc with the delegate's own flags and -Werror."""
    cmd = ["aarch64-linux-gnu-gcc", *cflags(), "-Werror",
           "-I" + os.path.join(DELEGATES, "include"), "-I" + os.path.join(DELEGATES, "src"),
           *sources, *extra, "-o", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"aarch64 build failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def build_delegate(out_dir: str) -> str:
    """Cross-compiles the delegate library for aarch64; returns its path."""
    out = os.path.join(out_dir, "libeqdelegate_aarch64.so")
    cross_compile(out, delegate_sources(), ["-fPIC", "-shared", "-lm"])
    return out
