"""Two's complement fixed point of docs/numerics.md (``dfxpN``, and ``flex16`` through it).

A code ``c`` of an N-bit format with ``frac_bits = f`` stands for ``c * 2^-f``. Encoding
scales the float32 input by ``2^f`` (exact in float64), rounds the signed value to an integer
and then saturates (clamp to the code range) or wraps modulo 2^N (an adder without
saturation logic). NaN encodes as 0 and +-inf always saturates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.numerics_round import Rounding, round_steps

__all__ = ["decode_fixed", "encode_fixed", "fixed_dtype"]


def fixed_dtype(nbits: int) -> np.dtype[Any]:
    """Code dtype of an N-bit fixed-point format: int8 for N <= 8, else int16."""
    return np.dtype(np.int8) if nbits <= 8 else np.dtype(np.int16)


def encode_fixed(
    x: npt.NDArray[np.float32],
    nbits: int,
    frac_bits: int,
    rounding: Rounding,
    saturate: bool,
    r: npt.NDArray[np.uint32] | None,
) -> npt.NDArray[Any]:
    """Codes of a 1-D float32 array (int8 or int16); ``r``: random values of stochastic
    rounding, one per element."""
    hi = float((1 << (nbits - 1)) - 1)
    lo = -hi - 1.0
    with np.errstate(invalid="ignore"):  # signalling NaNs raise the invalid flag when widened
        x64 = x.astype(np.float64)
    nan = np.isnan(x64)
    inf = np.isinf(x64)
    y = np.ldexp(np.where(nan | inf, 0.0, x64), frac_bits)  # exact
    k = round_steps(y, rounding, r)
    if saturate:
        k = np.clip(k, lo, hi)
    else:
        span = float(1 << nbits)
        k = np.mod(k, span)  # exact on integers (fmod is exact), in [0, 2^N)
        k = np.where(k > hi, k - span, k)
    k = np.where(nan, 0.0, k)
    k = np.where(inf, np.where(x64 > 0, hi, lo), k)
    return k.astype(fixed_dtype(nbits))


def decode_fixed(codes: npt.NDArray[Any], frac_bits: int) -> npt.NDArray[np.float32]:
    """Values ``c * 2^-frac_bits`` of integer codes, as float32 (exact)."""
    return np.ldexp(codes.astype(np.float64), -frac_bits).astype(np.float32)
