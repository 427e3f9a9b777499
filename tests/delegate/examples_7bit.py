"""The bundled example SavedModels quantized to 7 bits, cached per session
(test_models_e2e.py runs them natively, test_aarch64.py under qemu)."""

from __future__ import annotations

import functools
import glob
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")


def _examples() -> list[tuple[str, str]]:
    """(SavedModel dir, calibration .npy) pairs: <prefix>_calib.npy whose
    prefix occurs in the model directory's name."""
    pairs = []
    calibs = glob.glob(os.path.join(EXAMPLES, "*_calib.npy"))
    for pb in sorted(glob.glob(os.path.join(EXAMPLES, "*", "saved_model.pb"))):
        d = os.path.dirname(pb)
        for c in calibs:
            prefix = os.path.basename(c)[: -len("_calib.npy")]
            if prefix in os.path.basename(d):
                pairs.append((d, c))
                break
    return pairs


EXAMPLE_MODELS = _examples()


def calibration(calib: str) -> np.ndarray:
    return np.load(calib).astype(np.float32)


@functools.lru_cache(maxsize=None)
def quantized(saved_model: str, calib: str, method: str) -> bytes | None:
    """The 7-bit model (64 calibration samples), or None without the API."""
    try:
        from eq_tflite import quantize
    except ImportError:
        return None
    return quantize(saved_model, calibration(calib)[:64], bits=7, method=method)
