"""The ``mse`` method: per-tensor ranges by histogram MSE, per-channel weight clips."""
import numpy as np
import pytest

from eq_tflite import api, grid, methods
from eq_tflite.errors import EqTfliteError
from eq_tflite.grid import BitWidths
from eq_tflite.methods.mse import Options, best_range


def _raw_error(x: np.ndarray, lo_hi: tuple[float, float], bits: BitWidths) -> float:
    scale, zp = grid.activation_params(*lo_hi, bits.activations)
    return float(((grid.fake_quant_activation(x, scale, zp, clip=bits.act_clip) - x) ** 2).mean())


@pytest.mark.parametrize("bits", [4, 6])
def test_histogram_choice_matches_the_raw_values(bits):
    """On heavy-tailed values the chosen range clips, and its error on the raw values is
    within 2% of the best candidate's (scored on the values themselves)."""
    x = np.random.default_rng(0).laplace(size=200_000).astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    w = BitWidths(8, bits, "container")  # no clip budget: the pure MSE choice
    opts = Options()
    counts = np.histogram(x, bins=opts.bins, range=(lo, hi))[0]
    chosen = best_range(counts, lo, hi, w, opts)
    raw = [_raw_error(x, (lo * m, hi * m), w) for m in np.linspace(1.0, opts.lowest, opts.steps)]
    assert chosen[1] < 0.8 * hi  # the tails are clipped
    assert _raw_error(x, chosen, w) <= 1.02 * min(raw)
    assert _raw_error(x, chosen, w) < 0.7 * raw[0]  # well below min/max's error


def test_strict_budget_bounds_the_clipped_share():
    x = np.random.default_rng(1).laplace(size=200_000).astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    w = BitWidths(8, 4)  # strict
    opts = Options()
    chosen = best_range(np.histogram(x, bins=opts.bins, range=(lo, hi))[0], lo, hi, w, opts)
    scale, zp = grid.activation_params(*chosen, 4)
    low, high = grid.level_bounds(scale, zp, w)
    assert np.mean((x < low) | (x >= high)) <= 1.5 * opts.clip_budget  # histogram resolution
    assert chosen[1] < hi  # still tighter than min/max


def test_conversion_is_registered_and_verified(small_float_tflite, small_calibration):
    spec = methods.spec("mse")
    assert spec.needs_data and spec.prefix == "mse" and not spec.simulates
    conv = api.convert_model(small_float_tflite, small_calibration, bits=6, method="mse",
                             method_options={"mse_steps": 20})
    minmax = api.convert_model(small_float_tflite, small_calibration, bits=6, method="minmax")
    assert conv.report.ok and conv.plan.steps == ["mse"]
    assert conv.report.cosine > 0.99 and conv.report.cosine >= minmax.report.cosine - 0.002
    with pytest.raises(EqTfliteError, match="mse_lowest must be in"):
        api.convert_model(small_float_tflite, small_calibration, method="mse",
                          method_options={"mse_lowest": 0})
