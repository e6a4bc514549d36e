"""Laws of the DFXP range rule, stochastic thresholding and the LAPS state machine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import numerics as ref
from protocol.range_rules import (
    LapsController,
    laps_large_differences,
    overflow_count,
    overflow_ratio,
    update_frac_bits,
)

tensors = st.builds(
    lambda seed, n, scale, heavy: (
        np.random.default_rng(seed).standard_t(df=3 if heavy else 30, size=n) * scale
    ).astype(np.float32),
    st.integers(0, 2**32 - 1),
    st.integers(1, 2000),
    st.sampled_from([1e-6, 1e-3, 0.1, 1.0, 37.0, 1e4]),
    st.booleans(),
)


def best_frac_bits(x: np.ndarray, bits: int, threshold: float) -> int:
    """Brute force: the largest f in [-64, 64] whose overflow ratio is within threshold."""
    ok = [f for f in range(-64, 65) if overflow_ratio(x, bits, f) <= threshold]
    return max(ok)


@given(tensors, st.integers(4, 16), st.integers(-20, 40), st.sampled_from([0.0, 1e-4, 0.01]))
def test_overflow_rule_converges_to_the_largest_admissible_frac_bits(x, bits, start, thr):
    f = start
    for _ in range(200):
        nxt = update_frac_bits(x, bits, f, threshold=thr)
        assert abs(nxt - f) <= 1, "the rule moves one step per update"
        if nxt == f:
            break
        f = nxt
    assert f == best_frac_bits(x, bits, thr)


@given(tensors, st.integers(4, 16))
def test_converged_frac_bits_saturate_no_more_than_the_threshold(x, bits):
    f = best_frac_bits(x, bits, 1e-3)
    codes = ref.encode(x, f"dfxp{bits}", frac_bits=f)
    qmax = 2 ** (bits - 1) - 1
    # |y| > qmax judged as overflow, so saturated codes come only from judged elements
    # (or from values rounding up to exactly qmax, which are not losses).
    lost = np.abs(ref.decode(codes, f"dfxp{bits}", frac_bits=f) - x) > 2.0 ** (-f - 1) * 1.0001
    assert np.count_nonzero(lost) <= overflow_count(x, bits, f)
    assert np.count_nonzero(np.abs(codes.astype(np.int64)) >= qmax) >= np.count_nonzero(lost)


@given(tensors, st.integers(4, 16), st.integers(-10, 30), st.integers(0, 2**64 - 1))
def test_stochastic_thresholding_is_a_loosened_judgement(x, bits, f, seed):
    y = np.abs(x.astype(np.float64)) * 2.0**f
    qmax = 2 ** (bits - 1) - 1
    det = overflow_count(x, bits, f)
    sto = overflow_count(x, bits, f, stochastic=True, seed=seed)
    # never more than the deterministic judgement, never less than the sure overflows
    assert np.count_nonzero(y > 2 * qmax) <= sto <= det


def test_stochastic_thresholding_counts_in_proportion_to_the_excess():
    bits, f = 8, 0
    qmax = 127
    x = np.full(20000, 1.25 * qmax, dtype=np.float32)  # 25 % beyond the range
    counts = [overflow_count(x, bits, f, stochastic=True, seed=s) for s in range(5)]
    for c in counts:
        # binomial(20000, 0.25): sd = 61; 6 sd margin, deterministic seeds
        assert abs(c - 5000) < 370
    assert len(set(counts)) > 1, "different seeds draw different thresholds"
    assert overflow_count(x, bits, f, stochastic=True, seed=3) == overflow_count(
        x, bits, f, stochastic=True, seed=3
    )


def test_nan_never_overflows_and_inf_always_does():
    x = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=np.float32)
    assert overflow_count(x, 8, 0) == 2
    assert overflow_count(x, 8, 0, stochastic=True, seed=1) == 2
    assert overflow_ratio(np.zeros(0, np.float32), 8, 0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 1, "frac_bits": 0}, "bits"),
        ({"bits": 8, "frac_bits": 65}, "frac_bits"),
        ({"bits": 8, "frac_bits": 1.5}, "frac_bits"),
    ],
)
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        overflow_ratio(np.ones(4, np.float32), **kwargs)


def test_update_refuses_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        update_frac_bits(np.ones(4, np.float32), 8, 0, threshold=1.5)


def test_laps_counts_only_large_differences():
    high = np.array([10.0, -10.0, 5.0, 1.0])
    low = high + np.array([0.0, 0.5, 0.15, -0.2])
    assert laps_large_differences(high, low, tolerance=0.01) == 3  # > 0.1
    assert laps_large_differences(high, low, tolerance=0.04) == 1  # > 0.4
    with pytest.raises(ValueError, match="shape"):
        laps_large_differences(high, low[:3], tolerance=0.1)


def test_laps_raises_at_once_and_lowers_after_patience():
    rng = np.random.default_rng(0)
    high = rng.standard_normal(1000)
    laps = LapsController(bits=8, patience=3)
    noisy = high + rng.standard_normal(1000)  # almost every element differs largely
    assert laps.observe(high, noisy) == 12
    assert laps.observe(high, noisy) == 16
    assert laps.observe(high, noisy) == 16, "never above the widest width"
    for expected in (16, 16, 12, 12, 12, 8):
        assert laps.observe(high, high) == expected
    # a medium share resets the calm streak
    medium = high.copy()
    medium[:30] += 10.0  # 3 % large differences: between 1 % and 5 %
    laps.observe(high, high)
    laps.observe(high, medium)
    laps.observe(high, high)
    assert laps.observe(high, high) == 8
    assert laps.observe(high, high) == 4
    for _ in range(10):
        assert laps.observe(high, high) == 4, "never below the narrowest width"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 6},
        {"widths": (8, 4)},
        {"lower_below": 0.2, "raise_above": 0.1},
        {"patience": 0},
    ],
)
def test_laps_refuses_inconsistent_settings(kwargs):
    with pytest.raises(ValueError):
        LapsController(**kwargs)
