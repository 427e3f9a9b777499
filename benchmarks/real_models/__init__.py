"""The real-model benchmark suite (issue 15): EfficientNet-Lite1/2 and four MediaPipe models.

Build it once (nothing is downloaded; it reads installed packages and wheels):

    python -m benchmarks.real_models.build

into ``$EQ_TFLITE_REAL_MODELS`` (default ``~/.cache/eq-tflite-real-models``),
then run ``python tools/benchmark_real_models.py``. The test suite never uses it.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EQ_TFLITE_REAL_MODELS"


def default_cache_dir() -> Path:
    """``$EQ_TFLITE_REAL_MODELS`` or ``~/.cache/eq-tflite-real-models``."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "eq-tflite-real-models")
