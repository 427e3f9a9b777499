"""The delegate's outputs equal TFLite's own kernels bit for bit.

Random single-conv models: odd spatial sizes, channel counts that are not
multiples of 8, SAME/VALID, strides 1/2, kernel sizes 1/2/3/5, random zero
points and scales, every fused activation, full-int8 and 7-bit weights,
full-range and 7-bit-ranged int8 inputs, batch 1 and 2.  Every case asserts
that the node was claimed and counts which kernel path ran, so a pass cannot
be vacuous.
"""

from __future__ import annotations

import pytest

from random_suite import run_suite

# (options, compared against, expected paths that must have run)
CONFIGS = [
    pytest.param({"isa": "avx2"}, "builtin",
                 {"winograd_avx2", "direct_avx2_i16x8", "direct_avx2_i16x4",
                  "direct_avx2_i16x2", "dwconv_avx2"}, id="avx2-vs-builtin"),
    pytest.param({"isa": "scalar"}, "builtin",
                 {"winograd_scalar", "direct_scalar", "dwconv_scalar"},
                 id="scalar-vs-builtin"),
    pytest.param({"isa": "avx2", "winograd": 0}, "builtin",
                 {"direct_avx2_i16x8", "direct_avx2_i16x4", "direct_avx2_i16x2"},
                 id="avx2-direct-only"),
    pytest.param({"isa": "avx2", "bits": 8}, "builtin",
                 {"winograd_avx2", "direct_avx2_i16x4", "direct_avx2_i16x2"},
                 id="avx2-bits8"),
    pytest.param({"isa": "avx2", "num_threads": 2}, "builtin",
                 {"winograd_avx2", "direct_avx2_i16x8", "direct_avx2_i16x4",
                  "direct_avx2_i16x2", "dwconv_avx2"}, id="avx2-2threads"),
    pytest.param({"isa": "avx2", "rounding": "reference"}, "reference",
                 {"winograd_avx2", "direct_avx2_i16x8", "dwconv_avx2"},
                 id="avx2-vs-reference"),
    pytest.param({"isa": "scalar", "rounding": "reference"}, "reference",
                 {"winograd_scalar", "direct_scalar", "dwconv_scalar"},
                 id="scalar-vs-reference"),
]


@pytest.mark.parametrize("options,against,expected_paths", CONFIGS)
@pytest.mark.parametrize("seed", [11, 12])
def test_random_single_conv_bitexact(delegate_library, options, against,
                                     expected_paths, seed):
    if options.get("isa") == "avx2":
        from eq_tflite.delegate import delegate_stats, load_delegate
        if delegate_stats(load_delegate())["isa"] != "avx2":
            pytest.skip("this CPU has no AVX2")
    res = run_suite(60, seed, options, against)
    assert not res.unclaimed, f"nodes not claimed: {res.unclaimed[:3]}"
    assert not res.mismatches, f"{len(res.mismatches)} mismatches, e.g. {res.mismatches[:3]}"
    assert res.invokes == 2 * res.cases
    missing = expected_paths - set(res.paths)
    assert not missing, f"paths never exercised: {missing} (ran: {res.paths})"


def test_rounding_mode_is_observable(delegate_library):
    """Negative control: with the other tie rule the suite must notice, so
    the bit-exact tests really do exercise ties of the final rounding."""
    res = run_suite(60, 3, {"rounding": "reference"}, "builtin")
    assert res.mismatches, "tie-heavy cases did not produce any tie"
