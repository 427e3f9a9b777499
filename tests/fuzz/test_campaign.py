"""A bounded, seeded mutation campaign against the CLIs (the long one: tools/fuzz.py).

Mutants of the bundled ResNet example (float .tflite into ``eq-tflite``, its
7-bit int8 model into ``eq_tflite.verify``), plus hostile calibration data and
output paths. Asserts no traceback, crash, hang, partial file or clobbered
input; each bad input must end in exactly one ``error: ...`` line, exit 2.
"""
from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VERIFY_MUTANTS = 220
CONVERT_MUTANTS = 120
SEED = 0
#: Upper bound on the campaign's wall time (it takes ~20-40 s on the 2-core CI box).
TIME_LIMIT = 110


def load_fuzz():
    spec = importlib.util.spec_from_file_location("eq_tflite_fuzz", REPO / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fuzz():
    return load_fuzz()


@pytest.fixture(scope="session")
def campaign_inputs(resnet_float, fmnist_calib):
    from eq_tflite import api
    calib = fmnist_calib[:8]
    int8_model = api.quantize(resnet_float, calib, bits=7, method="minmax")
    f = io.BytesIO()
    np.save(f, calib)
    return resnet_float, int8_model, f.getvalue()


def test_mutants_are_deterministic(fuzz, campaign_inputs):
    float_model = campaign_inputs[0]
    first = list(fuzz.mutants(float_model, 12, SEED, "convert"))
    again = list(fuzz.mutants(float_model, 12, SEED, "convert"))
    assert first == again
    assert len({blob for _, blob in first}) == 12  # every mutant differs
    assert {name.split("/")[1].split(":")[0] for name, _ in first} >= {"field"}


def test_campaign(fuzz, campaign_inputs):
    float_model, int8_model, calib = campaign_inputs
    cases = (fuzz.data_cases(float_model) + fuzz.path_cases(float_model, calib)
             + fuzz.verify_cases(int8_model, VERIFY_MUTANTS, SEED)
             + fuzz.convert_cases(float_model, calib, CONVERT_MUTANTS, SEED))
    summary = fuzz.run_campaign(cases, TIME_LIMIT)
    print(summary.text())
    assert summary.skipped == 0, summary.text()
    assert summary.failed == 0, summary.text()
    by_group = summary.by_group
    assert sum(by_group["verify"].values()) + sum(by_group["convert"].values()) >= 300
    # Every hostile data and path case is refused (except the long-but-legal name).
    assert by_group["data"] == {"error": len(fuzz.data_cases(float_model))}
    assert by_group["path"]["ok"] == 1
    # The mutants exercise both sides: refused ones and ones that still convert/verify.
    assert by_group["convert"]["error"] > 0 and by_group["convert"]["ok"] > 0
    assert by_group["verify"]["error"] > 0 and by_group["verify"]["report"] > 0
