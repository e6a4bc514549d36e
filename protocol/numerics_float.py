"""Float formats (sign, exponent, mantissa) of docs/numerics.md: grid, rounding, codes.

The model works on values, not on bits: a float32 magnitude ``a`` (exact in float64) lies in
the binade ``2^e <= a < 2^(e+1)``; the grid step there is ``2^(max(e, emin) - M)``. ``a``
divided by the step (an exact power-of-two scaling) is rounded to an integer number of steps,
the rounded magnitude ``v`` is formed again, and only then is ``v`` turned into a code by
reading its exponent and mantissa with ``frexp``. Three families differ in their specials:

* ``ieee`` (fp16, bf16, tf32, e5m2): exponent field all ones is inf (m = 0) or NaN;
* ``fn`` (OCP e4m3fn, hfp8 forward): no inf, the top binade is normal, only S.1..1.1..1 is NaN;
* ``dl`` (DLFloat): no subnormals, exponent field 0 is a normal binade except the zero code,
  and the single code S.1..1.1..1 is NaN/inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from protocol.numerics_round import Rounding, round_steps

__all__ = ["FloatFormat", "decode_float", "encode_float"]

Family = Literal["ieee", "fn", "dl"]
_F32_QNAN = 0x7FC00000


@dataclass(frozen=True)
class FloatFormat:
    """One float format: E exponent bits, M mantissa bits, bias, family, and ``scale``: the
    element value is the code's value times ``2^scale`` (fp8-seb's shared exponent)."""

    ebits: int
    mbits: int
    bias: int
    family: Family
    scale: int = 0

    @property
    def emin(self) -> int:
        """Exponent of the lowest binade (subnormals share its step)."""
        return -self.bias if self.family == "dl" else 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the highest finite binade."""
        top = (1 << self.ebits) - 1
        return top - 1 - self.bias if self.family == "ieee" else top - self.bias

    @property
    def max_value(self) -> float:
        """Largest finite magnitude (before the ``scale`` factor)."""
        lost = 1 if self.family == "ieee" else 2  # mantissa all ones is the NaN code otherwise
        return float(np.ldexp(float((2 << self.mbits) - lost), self.emax - self.mbits))

    @property
    def overflow_point(self) -> float:
        """One grid step past the largest finite magnitude."""
        return self.max_value + float(np.ldexp(1.0, self.emax - self.mbits))

    @property
    def min_positive(self) -> float:
        """Smallest positive magnitude (a subnormal, or DLFloat's 2^emin * (1 + 2^-M))."""
        if self.family == "dl":
            return float(np.ldexp(float((1 << self.mbits) + 1), self.emin - self.mbits))
        return float(np.ldexp(1.0, self.emin - self.mbits))

    @property
    def sign_bit(self) -> int:
        return 1 << (self.ebits + self.mbits)

    @property
    def max_code(self) -> int:
        """Magnitude code of the largest finite value."""
        return self.overflow_code - 1

    @property
    def overflow_code(self) -> int:
        """Magnitude code of the overflow value: inf (ieee) or the NaN code."""
        if self.family == "ieee":
            return ((1 << self.ebits) - 1) << self.mbits
        return self.sign_bit - 1

    @property
    def nan_code(self) -> int:
        """Magnitude code of the canonical quiet NaN."""
        if self.family == "ieee":
            return self.overflow_code | (1 << (self.mbits - 1))
        return self.sign_bit - 1


def _codes_of(fmt: FloatFormat, v: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Magnitude codes of grid values 0 <= v <= max_value (read from v's exponent/mantissa)."""
    m_bits = fmt.mbits
    _, ex = np.frexp(v)
    e = ex.astype(np.int64) - 1  # v in [2^e, 2^(e+1)) for v > 0
    zero = v == 0
    if fmt.family == "dl":
        e = np.where(zero, fmt.emin, e)
        field = e - fmt.emin
        mant = np.ldexp(v, m_bits - e) - float(1 << m_bits)
        code = (field << m_bits) + mant.astype(np.int64)
        return np.where(zero, 0, code)
    sub = zero | (e < fmt.emin)
    e = np.where(sub, fmt.emin, e)
    field = np.where(sub, 0, e - fmt.emin + 1)
    mant = np.ldexp(v, m_bits - e) - np.where(sub, 0.0, float(1 << m_bits))
    return (field << m_bits) + mant.astype(np.int64)


def encode_float(
    x: npt.NDArray[np.float32],
    fmt: FloatFormat,
    rounding: Rounding,
    saturate: bool,
    r: npt.NDArray[np.uint32] | None,
) -> npt.NDArray[np.uint32]:
    """Codes (sign included, as uint32) of a 1-D float32 array ``x``; ``r`` are the random
    values of stochastic rounding (one per element)."""
    neg = np.signbit(x)
    with np.errstate(invalid="ignore"):  # signalling NaNs raise the invalid flag when widened
        a = np.abs(x.astype(np.float64))
    if fmt.scale:
        a = np.ldexp(a, -fmt.scale)  # exact: a power-of-two scaling in float64
    nan = np.isnan(a)
    big = ~nan & (a >= fmt.overflow_point)  # inf included: beyond the grid
    aw = np.where(nan | big, 0.0, a)
    _, ex = np.frexp(aw)
    eb = np.maximum(ex.astype(np.int64) - 1, fmt.emin)
    k = round_steps(np.ldexp(aw, fmt.mbits - eb), rounding, r)
    v = np.ldexp(k, eb - fmt.mbits)
    if fmt.family == "dl":
        v = _dl_underflow(fmt, aw, v, rounding, r)
    over = v > fmt.max_value  # only the overflow point itself
    v = np.where(over, 0.0, v)
    code = _codes_of(fmt, v)
    beyond = fmt.max_code if saturate else fmt.overflow_code
    # a finite input never truncates to the overflow value
    code = np.where(over, beyond, code)
    inf = np.isinf(a)
    finite_big = big & ~inf
    code = np.where(finite_big, fmt.max_code if rounding == "truncate" else beyond, code)
    code = np.where(inf, beyond, code)
    code = np.where(nan, fmt.nan_code, code)
    code = np.where(neg, code | fmt.sign_bit, code)
    return code.astype(np.uint32)


def _dl_underflow(
    fmt: FloatFormat,
    a: npt.NDArray[np.float64],
    v: npt.NDArray[np.float64],
    rounding: Rounding,
    r: npt.NDArray[np.uint32] | None,
) -> npt.NDArray[np.float64]:
    """DLFloat between 0 and its smallest positive value p: the neighbours are 0 and p, and
    frac = a / p is not dyadic (p = (2^M + 1) * 2^(emin - M)), so it is handled exactly:
    nearest goes up iff 2a > p (a tie goes to the even code, 0); stochastic goes up iff
    r < F = floor(a * 2^32 / p), computed as floor(floor(a * 2^(32 - emin + M)) / (2^M + 1))."""
    p = fmt.min_positive
    under = a < p
    if rounding == "nearest":
        up = 2.0 * a > p
    elif rounding == "truncate":
        up = np.zeros(a.shape, dtype=bool)
    else:
        assert r is not None
        scaled = np.floor(np.ldexp(np.where(under, a, 0.0), 32 - fmt.emin + fmt.mbits))
        f_int = scaled.astype(np.int64) // ((1 << fmt.mbits) + 1)
        up = r < f_int
    return np.where(under, np.where(up, p, 0.0), v)


def decode_float(codes: npt.NDArray[Any], fmt: FloatFormat) -> npt.NDArray[np.float32]:
    """float32 values of codes (bits above the format's width are ignored). NaN codes give
    float32's quiet NaN 0x7FC00000 with the code's sign."""
    m_bits = fmt.mbits
    c = codes.astype(np.int64) & ((fmt.sign_bit << 1) - 1)
    neg = (c & fmt.sign_bit) != 0
    mag = c & (fmt.sign_bit - 1)
    field = mag >> m_bits
    mant = (mag & ((1 << m_bits) - 1)).astype(np.float64)
    if fmt.family == "dl":
        v = np.where(mag == 0, 0.0, np.ldexp(mant + (1 << m_bits), field + fmt.emin - m_bits))
        nan = mag == fmt.nan_code
        inf = np.zeros(c.shape, dtype=bool)
    else:
        sub = field == 0
        e = np.where(sub, fmt.emin, field - 1 + fmt.emin)
        v = np.ldexp(mant + np.where(sub, 0.0, float(1 << m_bits)), e - m_bits)
        if fmt.family == "ieee":
            nan = mag > fmt.overflow_code
            inf = mag == fmt.overflow_code
        else:
            nan = mag == fmt.nan_code
            inf = np.zeros(c.shape, dtype=bool)
    if fmt.scale:
        v = np.ldexp(v, fmt.scale)
    v = np.where(inf, np.inf, v)
    v = np.where(nan, 0.0, v)
    out = np.where(neg, -v, v).astype(np.float32)
    bits = out.view(np.uint32)
    bits[nan] = np.where(neg[nan], 0x80000000 | _F32_QNAN, _F32_QNAN).astype(np.uint32)
    return out
