"""Killing ``eq-tflite`` mid-conversion leaves no process and no temp file.

The real CLI runs as its own process (own session, stdout/stderr in files, so a
stuck orphan cannot block the test). SIGKILL: the forked conversion child dies
with its parent and the janitor removes the child's temp files (TensorFlow
writes autograph files there while converting a Keras model). SIGTERM and
SIGHUP: one ``error:`` line, exit code 2, and the same clean state.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import alive, descendants

REPO = Path(__file__).resolve().parents[2]
#: Seconds within which every process of the run must be gone after the kill.
GONE_WITHIN = 5.0


def start(tmp_path: Path, src: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "out" / "q.tflite"
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eq_tflite.convert", str(REPO / "examples" / src),
             "--calibration_data", str(REPO / "examples" / "fmnist_calib.npy"), "--output", str(out),
             "--report_dir", str(tmp_path / "report"), "--noprogress",
             # A deliberately slow search (its method stage alone took 58 s on an idle 2-core
             # EPYC; the default run ends in ~7 s there), so that a kill a few seconds in
             # always lands mid-conversion, on an idle machine as on a loaded one.
             "--eq_search", "exhaustive", "--eq_max_rows", "0", "--eq_rounds", "4",
             "--num_calibration_samples", "200"],
            cwd=tmp_path, env=env, stdout=so, stderr=se, start_new_session=True)
    return proc, out


def watch_until(proc: subprocess.Popen, seconds: float) -> set[int]:
    """Polls the run's process tree for ``seconds`` (or until it ends); returns every pid seen."""
    seen: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        seen |= descendants(proc.pid)
        time.sleep(0.05)
    return seen


def assert_nothing_left(tmp_path: Path, seen: set[int]) -> None:
    end = time.monotonic() + GONE_WITHIN
    while any(alive(p) for p in seen) and time.monotonic() < end:
        time.sleep(0.05)
    left = [p for p in seen if alive(p)]
    for p in left:  # never leave the broken state behind for the next test
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes left {GONE_WITHIN:.0f} s after the kill: {left}"
    def files() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                      if p.name not in ("stdout", "stderr") and p.is_file())
    while files() and time.monotonic() < end:  # the janitor's rmtree ends before it does
        time.sleep(0.05)
    assert files() == [], f"files left behind: {files()}"


@pytest.fixture
def reaper():
    """Pids to SIGKILL after the test whatever its outcome (a failing run must not leave
    a stuck orphan behind for the rest of the suite)."""
    pids: set[int] = set()
    yield pids
    for p in pids:
        if alive(p):
            os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("src,after", [("resnet_fmnist", 7.0), ("resnet_fmnist.keras", 5.0)])
def test_sigkill_parent_leaves_no_process_and_no_temp_file(tmp_path, reaper, src, after):
    proc, out = start(tmp_path, src)
    seen = watch_until(proc, after)
    reaper |= seen | {proc.pid}
    assert proc.poll() is None, "the conversion ended before the kill; kill earlier"
    assert seen, "no conversion child seen"
    proc.kill()
    proc.wait(timeout=10)
    assert_nothing_left(tmp_path, seen)
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_like_ctrl_c(tmp_path, reaper, sig):
    proc, out = start(tmp_path, "resnet_fmnist")
    seen = watch_until(proc, 6.0)
    reaper |= seen | {proc.pid}
    assert proc.poll() is None and seen
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=GONE_WITHIN)
    finally:
        seen |= {proc.pid}
    err = (tmp_path / "stderr").read_text().strip().splitlines()
    assert code == 2, (code, err)
    assert err == [f"error: interrupted ({signal.Signals(sig).name})"], err
    assert_nothing_left(tmp_path, seen)
    assert not out.exists()
