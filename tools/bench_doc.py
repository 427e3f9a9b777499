"""Writes one tool's section of BENCHMARKS.md, leaving the other sections alone.

Each benchmark tool owns the text between ``<!-- BEGIN name -->`` and
``<!-- END name -->``; a missing section is appended.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

HEADER = ("# Benchmarks\n\nEvery table below was written by the tool named in its section, "
          "with the exact command shown there.\n")


def update_section(path: str | Path, name: str, markdown: str) -> None:
    """Replaces (or appends) section ``name`` of the Markdown file at ``path``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{markdown.strip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def machine() -> str:
    """``lscpu`` model name, core count and Python version, for a benchmark header."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def fresh_output(folder: Path, name: str) -> Path:
    """``folder/runs/<name>.tflite``, with any earlier file there removed (a cell never scores
    the model of an earlier run)."""
    runs = folder / "runs"
    runs.mkdir(exist_ok=True)
    out = runs / f"{name}.tflite"
    if out.exists():
        out.unlink()
    return out


def shown_command(cmd: list[str], cache: Path) -> str:
    """A cell's command as recorded: the interpreter as ``python``, the cache as ``$CACHE``."""
    import sys
    return " ".join("python" if c == sys.executable else c.replace(str(cache), "$CACHE")
                    for c in cmd)


def run_in_repo(cmd: list[str], repo: Path, timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    """Runs one conversion process from ``repo`` (on its ``PYTHONPATH``), capturing its output.

    Returns (the finished process, or None when ``timeout`` seconds passed, and the wall seconds).
    """
    import time
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(repo)})
    except subprocess.TimeoutExpired:
        proc = None
    return proc, time.perf_counter() - t0
