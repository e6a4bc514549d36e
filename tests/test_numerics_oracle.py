"""The reference's ``nearest`` rounding against numpy / ml_dtypes, bit for bit, on float32.

docs/numerics.md, "Oracles": for bf16, fp16, e4m3 (float8_e4m3fn) and e5m2, encoding with
``saturate=False`` equals the oracle's cast, except that NaN payloads are canonical here (NaN
results are compared as NaN with the same sign). With ``saturate=True`` every result the
oracle overflows (to inf, or to NaN for e4m3fn) is +-max instead, and the rest is unchanged.

The inputs are chosen where rounding goes wrong: exact ties between neighbours, one float32
ulp either side of them, subnormals of the target and of float32, the largest finite values
and just above, zeros, infinities, NaNs, plus random values and random float32 bit patterns.
tf32, which no library has, is checked against integer rounding of the float32 word.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt
import pytest

from protocol import numerics as nx

# format name -> (oracle dtype, code dtype, largest finite value)
ORACLES: dict[str, tuple[Any, Any, float]] = {
    "bf16": (ml_dtypes.bfloat16, np.uint16, float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)),
    "fp16": (np.float16, np.uint16, 65504.0),
    "e4m3": (ml_dtypes.float8_e4m3fn, np.uint8, 448.0),
    "e5m2": (ml_dtypes.float8_e5m2, np.uint8, 57344.0),
}
F32 = np.float32


def _f32(values: Any) -> npt.NDArray[np.float32]:
    """float32 of float64 values (beyond float32's range: +-inf, on purpose)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(F32)


def _oracle(x: npt.NDArray[np.float32], dtype: Any) -> npt.NDArray[Any]:
    """The oracle's cast (its overflow and signalling-NaN warnings are expected)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dtype)


def _target_values(fmt: str) -> npt.NDArray[np.float64]:
    """Every finite non-negative value of the target format, sorted (from the oracle)."""
    dtype, code_dt, _ = ORACLES[fmt]
    codes = np.arange(np.iinfo(code_dt).max + 1, dtype=np.int64).astype(code_dt)
    vals = _oracle(codes.view(dtype), np.float64)
    vals = vals[np.isfinite(vals) & (vals >= 0) & ~np.signbit(vals)]
    return np.unique(vals)


def _hard_inputs(fmt: str) -> npt.NDArray[np.float32]:
    """Ties, tie +-1 ulp, target subnormals, largest finite and beyond, specials."""
    vals = _target_values(fmt)
    step_top = vals[-1] - vals[-2]
    grid = np.append(vals, vals[-1] + step_top)  # the overflow point closes the grid
    mids = (grid[:-1] + grid[1:]) / 2  # exact ties (at most M + 2 significant bits)
    ties = _f32(mids)
    assert np.array_equal(ties.astype(np.float64), mids), "a tie is not a float32"
    parts = [
        _f32(grid),
        ties,
        np.nextafter(ties, F32(np.inf)),
        np.nextafter(ties, F32(-np.inf)),
        np.nextafter(_f32(grid), F32(np.inf)),
        np.nextafter(_f32(grid), F32(0)),
        _f32([0.0, np.inf, np.nan, np.finfo(F32).max, np.finfo(F32).smallest_subnormal]),
        # float32 subnormals (all exponent-0 patterns of a few shapes)
        np.array([1, 2, 3, 0x7FFFFF, 0x400000, 0x400001, 0x3FFFFF], np.uint32).view(F32),
        # float32's smallest normal and its neighbours
        np.nextafter(_f32([np.finfo(F32).tiny] * 2), _f32([0.0, np.inf])),
        _f32([np.finfo(F32).tiny]),
        # just above the largest finite and far beyond it
        _f32([vals[-1] * 1.0001, vals[-1] * 2, vals[-1] * 1e6, grid[-1] * 1.5]),
    ]
    x = np.concatenate(parts)
    return np.concatenate([x, -x])


def _random_inputs(fmt: str, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 32, 40_000, dtype=np.uint64).astype(np.uint32).view(F32)
    vals = _target_values(fmt)
    lo, hi = np.log2(vals[1]) - 4, np.log2(vals[-1]) + 1
    mags = np.exp2(rng.uniform(lo, hi, 40_000))
    signs = rng.choice([-1.0, 1.0], 40_000)
    return np.concatenate([bits, _f32(mags * signs)])


def _compare(fmt: str, x: npt.NDArray[np.float32]) -> None:
    dtype, code_dt, _ = ORACLES[fmt]
    want = _oracle(x, dtype)
    got = nx.encode(x, fmt, saturate=False)
    assert got.dtype == code_dt
    want_codes = want.view(code_dt)
    w_nan = np.isnan(want.astype(np.float64))
    g_val = nx.decode(got, fmt)
    # NaN where the oracle gives NaN, with the same sign
    assert np.array_equal(np.isnan(g_val), w_nan), x[np.isnan(g_val) != w_nan][:8]
    sign_bit = code_dt(1 << (8 * np.dtype(code_dt).itemsize - 1))
    assert np.array_equal((got & sign_bit)[w_nan], (want_codes & sign_bit)[w_nan])
    bad = (got != want_codes) & ~w_nan
    assert not bad.any(), (x[bad][:8], got[bad][:8], want_codes[bad][:8])
    # the value path agrees too
    q = nx.quantize(x, fmt, saturate=False)
    w32 = want.astype(F32)
    same = (q.view(np.uint32) == w32.view(np.uint32)) | (np.isnan(q) & np.isnan(w32))
    assert same.all()


@pytest.mark.parametrize("fmt", sorted(ORACLES))
def test_nearest_matches_oracle_on_hard_cases(fmt: str) -> None:
    _compare(fmt, _hard_inputs(fmt))


@pytest.mark.parametrize("fmt", sorted(ORACLES))
@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_matches_oracle_on_random_values_and_bit_patterns(fmt: str, seed: int) -> None:
    _compare(fmt, _random_inputs(fmt, seed))


@pytest.mark.parametrize("fmt", sorted(ORACLES))
def test_saturate_true_clamps_exactly_where_the_oracle_overflows(fmt: str) -> None:
    dtype, _, vmax = ORACLES[fmt]
    x = np.concatenate([_hard_inputs(fmt), _random_inputs(fmt, 2)])
    want = _oracle(x, dtype).astype(np.float64)
    got = nx.decode(nx.encode(x, fmt, saturate=True), fmt).astype(np.float64)
    finite_in = ~np.isnan(x)
    overflowed = finite_in & (np.isinf(want) | np.isnan(want))
    assert overflowed.sum() > 10  # the inputs do reach the overflow cases
    assert np.array_equal(got[overflowed], np.copysign(vmax, x[overflowed]))
    rest = finite_in & ~overflowed
    assert np.array_equal(got[rest], want[rest])
    assert np.array_equal(np.signbit(got[rest]), np.signbit(want[rest]))
    assert np.isnan(got[~finite_in]).all()


def test_fp16_is_ieee_binary16_by_default() -> None:
    """fp16's default is IEEE overflow: round-to-nearest-even binary16, as numpy's float16."""
    x = _random_inputs("fp16", 3)
    assert np.array_equal(nx.encode(x, "fp16"), nx.encode(x, "fp16", saturate=False))
    assert np.array_equal(nx.encode(_f32([65520.0, -1e9]), "fp16"), [0x7C00, 0xFC00])


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_tf32_is_float32_rounded_to_10_mantissa_bits(rounding: str) -> None:
    """No library has tf32; its nearest/truncate are the textbook integer rounding of the
    float32 word to its top 19 bits (carries run into the exponent, up to inf)."""
    rng = np.random.default_rng(4)
    u = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64)
    ties = (rng.integers(0, 1 << 19, 2_000, dtype=np.uint64) << np.uint64(13)) | np.uint64(0x1000)
    u = np.concatenate([u, ties, ties + np.uint64(1), ties - np.uint64(1)]) & np.uint64(0xFFFFFFFF)
    x = u.astype(np.uint32).view(F32)
    finite = np.isfinite(x)
    if rounding == "nearest":
        want = (u + np.uint64(0xFFF) + ((u >> np.uint64(13)) & np.uint64(1))) >> np.uint64(13)
    else:
        want = u >> np.uint64(13)
    got = nx.encode(x, "tf32", rounding=rounding, saturate=False)
    assert np.array_equal(got[finite], want[finite].astype(np.uint32))
