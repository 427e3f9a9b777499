"""A bounded, seeded fault campaign (the long one: ``tools/fuzz.py --faults 200``).

Real ``eq-tflite`` processes get signals at random times (SIGKILL, SIGTERM,
SIGHUP, SIGINT), write onto a full or a read-only disk (small tmpfs mounts,
root only: skipped elsewhere), write their report onto a full disk, or race a
second writer of the same output. Every case must end cleanly: no process and
no temp file left, inputs unchanged, the output absent or a complete model
that verifies, and the documented exit code and error line.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_campaign import load_fuzz

FAULT_CASES = 8  # one of each kind (FAULT_KINDS); ~50 s on the 2-core CI box
SEED = 0
TIME_LIMIT = 150


@pytest.fixture(scope="module")
def fuzz():
    return load_fuzz()


def test_fault_cases_are_deterministic(fuzz):
    assert fuzz.fault_cases(16, 3) == fuzz.fault_cases(16, 3)
    assert {c.kind for c in fuzz.fault_cases(8, 3)} == set(fuzz.FAULT_KINDS)
    assert fuzz.fault_cases(8, 3) != fuzz.fault_cases(8, 4)


def test_fault_campaign(fuzz, resnet_float, fmnist_calib, tmp_path):
    import io
    f = io.BytesIO()
    np.save(f, fmnist_calib[:8])
    cases = fuzz.fault_cases(FAULT_CASES, SEED, keras_share=0.0)
    summary = fuzz.run_fault_campaign(cases, {"tflite": resnet_float}, f.getvalue(), TIME_LIMIT)
    print(summary.text())
    assert summary.skipped == 0, summary.text()
    assert summary.failed == 0, summary.text()
    assert summary.outcomes["clean"] + summary.outcomes["skipped"] == FAULT_CASES
    assert summary.outcomes["clean"] >= 5  # the signal and concurrent cases need no mount
