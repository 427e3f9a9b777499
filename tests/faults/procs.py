"""Process-tree helpers for the fault tests: the fault campaign's own (``tools/fuzz.py``)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "eq_tflite_fuzz"  # the name tests/fuzz/test_campaign.py loads it under


def _fuzz():
    if _NAME not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "tools" / "fuzz.py"
        spec = importlib.util.spec_from_file_location(_NAME, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


descendants = _fuzz().descendants
alive = _fuzz().alive
