"""The three rounding modes of docs/numerics.md applied to a value measured in grid steps.

``y`` is a float64 array holding exact values (a float32 input scaled by a power of two), in
units of the grid step, so its neighbours are ``floor(y)`` and ``floor(y) + 1`` and every
quantity below (floor, the fraction, the fraction times 2^32) is computed without rounding
error. Float formats pass the magnitude (y >= 0); fixed point passes the signed value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Rounding", "round_steps", "sr_threshold"]

Rounding = Literal["nearest", "stochastic", "truncate"]

_TWO32 = float(1 << 32)


def sr_threshold(frac: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """F = floor(frac * 2^32) for a fraction in [0, 1): round up iff the random value r < F."""
    return np.floor(frac * _TWO32)


def round_steps(
    y: npt.NDArray[np.float64], rounding: Rounding, r: npt.NDArray[np.uint32] | None
) -> npt.NDArray[np.float64]:
    """The integer (as float64) that ``y`` rounds to.

    nearest: round half to even (numpy's rint); truncate: toward zero; stochastic:
    ``floor(y) + (r < F)`` with ``F = floor((y - floor(y)) * 2^32)``.
    """
    if rounding == "nearest":
        return np.rint(y)
    if rounding == "truncate":
        return np.trunc(y)
    if r is None:
        raise ValueError("stochastic rounding needs random values")
    return np.floor(y) + (r < sr_threshold_of(y))


def sr_threshold_of(y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """F = floor((y - floor(y)) * 2^32), exactly.

    For y >= 0, y - floor(y) is exact (the bits of y below 1). For y < 0 it is 1 - g with g
    the fraction of |y|, which float64 cannot always hold (|y| tiny: 1 - 2^-70), so F is
    formed as 2^32 - ceil(g * 2^32) (and 0 when g = 0), every step exact.
    """
    m = np.abs(y)
    g = m - np.floor(m)
    neg_f = np.where(g > 0, _TWO32 - np.ceil(g * _TWO32), 0.0)
    return np.where(y >= 0, sr_threshold(g), neg_f)
