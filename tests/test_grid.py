"""b-bit grids: exact zero, ranges, weights."""
import numpy as np
import pytest

from eq_tflite import grid


@pytest.mark.parametrize("bits", [2, 4, 6, 7, 8])
@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (-1.3, 0.8), (-2.0, 0.0), (0.25, 3.0), (-5.0, -1.0)])
def test_activation_params_zero_exact_and_in_range(bits, lo, hi):
    scale, zp = grid.activation_params(lo, hi, bits)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert qmin <= zp <= qmax
    assert scale == pytest.approx((max(hi, 0) - min(lo, 0)) / (2 ** bits - 1), rel=1e-6)
    # 0.0 is exactly representable, and the grid covers the range to within half a step.
    assert grid.fake_quant_activation(np.array([0.0]), scale, zp)[0] == 0.0
    a, b = grid.activation_range(scale, zp, bits)
    assert a <= min(lo, 0) + scale / 2 + 1e-9 and b >= max(hi, 0) - scale / 2 - 1e-9


def test_seven_bit_relu_range_maps_to_128_levels():
    scale, zp = grid.activation_params(0.0, 6.35, 7)
    assert zp == -64 and scale == pytest.approx(0.05)


def test_constant_activation_gets_finite_scale():
    scale, zp = grid.activation_params(0.0, 0.0, 7)
    assert np.isfinite(scale) and scale > 0 and -64 <= zp <= 63


def test_int8_container_keeps_outliers_beyond_calibrated_range():
    scale, zp = grid.activation_params(0.0, 1.0, 7)  # 7-bit levels [-64, 63]
    y = grid.fake_quant_activation(np.array([1.5, 10.0]), scale, zp)
    assert y[0] == pytest.approx(1.5, abs=scale / 2)  # q = 126 < 127: kept
    assert y[1] == pytest.approx((127 - zp) * scale)  # clipped at the int8 limit


@pytest.mark.parametrize("bits,qmax", [(8, 127), (7, 63), (4, 7), (2, 1)])
def test_weights_symmetric_range_and_dead_channel(bits, qmax):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 3, 4))
    w[2] = 0.0  # dead channel
    s = grid.weight_scales(w, 0, bits)
    q = grid.quantize_weights(w, s, 0, bits)
    assert s[2] == 0 and np.all(q[2] == 0)
    assert np.abs(q).max() == qmax
    assert np.all(np.abs(q).reshape(5, -1).max(1)[[0, 1, 3, 4]] == qmax)


def test_bitwidths_validation():
    with pytest.raises(ValueError, match="2..8"):
        grid.BitWidths(9, 8)
    with pytest.raises(ValueError, match="2..8"):
        grid.BitWidths(8, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fake_quant_in_place_matches_the_formula(dtype):
    # fake_quant_activation runs its steps in one buffer; the values are the formula's, bit for bit
    x = (np.random.default_rng(3).standard_normal((64, 33)) * 5).astype(dtype)
    x[0, :4] = [0.5, -0.5, 1e30, -1e30]
    for scale, zp, clip in [(0.037, 3, (-64, 63)), (0.5, -128, (-128, 127)), (1 / 3, 0, (-8, 7))]:
        want = ((np.clip(np.round(x / scale) + zp, *clip) - zp) * scale).astype(np.float32)
        got = grid.fake_quant_activation(x, scale, zp, clip)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert grid.fake_quant_activation(np.float32(0.26), 0.5, 0) == np.float32(0.5)
