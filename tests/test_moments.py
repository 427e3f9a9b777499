"""Clipped-normal moments (DFQ's E[x] through ReLU) and data-free range propagation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eq_tflite.moments import clipped_normal_moments, normal_stats


@pytest.mark.parametrize("lo,hi", [(0.0, np.inf), (0.0, 6.0), (-np.inf, np.inf), (-1.0, 1.0)])
def test_clipped_normal_moments_match_sampling(lo, hi):
    rng = np.random.default_rng(0)
    m, s = np.array([0.5, -1.0, 3.0]), np.array([2.0, 0.5, 1.0])
    mean, var = clipped_normal_moments(m, s, lo, hi)
    for i in range(3):
        y = np.clip(rng.normal(m[i], s[i], 1_000_000), lo, hi)
        assert mean[i] == pytest.approx(y.mean(), abs=4e-3)
        assert var[i] == pytest.approx(y.var(), abs=1e-2)


def test_relu_mean_is_dfq_formula():
    beta, gamma = 0.3, 1.7
    phi = math.exp(-0.5 * (beta / gamma) ** 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf((-beta / gamma) / math.sqrt(2)))
    want = beta * (1 - cdf) + gamma * phi
    assert clipped_normal_moments(np.array([beta]), np.array([gamma]), 0.0, np.inf)[0][0] == \
        pytest.approx(want, rel=1e-12)


def test_ranges_are_beta_plus_minus_k_gamma_clipped():
    st = normal_stats(np.array([1.0, -2.0]), np.array([4.0, 1.0]), "RELU6", 3.0)
    np.testing.assert_allclose(st.lo, [0.0, 0.0])
    np.testing.assert_allclose(st.hi, [6.0, 1.0])
    assert st.range == (0.0, 6.0)
