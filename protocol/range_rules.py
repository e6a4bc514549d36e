"""Range and precision management rules of dynamic fixed point (numpy reference).

The chip keeps one fractional length (``frac_bits``) per tensor class of each layer
(activations, weights, errors, gradients, ...) and moves it from the tensor's overflow ratio,
as dynamic fixed-point training does. Two refinements of the survey (section VI-A/B, ref. [29])
are here as reusable rules for the engine:

* stochastic thresholding (ST): a loosened, randomised overflow judgement, so a few outliers
  saturate instead of costing the whole tensor a bit of resolution;
* layerwise adaptive precision scaling (LAPS): a small state machine that compares a
  high-precision and a low-precision result of the same layer and raises or lowers the layer's
  bit width for the next iteration.

Every rule is written down in docs/numerics.md ("Range and precision rules"); this module is
its executable form. All functions are deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocol.numerics import sr_bits

#: Overflow ratio above which the fractional length shrinks (0.01 % of the elements).
DEFAULT_OVERFLOW_THRESHOLD = 1e-4
FRAC_BITS_MIN = -64
FRAC_BITS_MAX = 64


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 32:
        raise ValueError(f"bits must be an integer in [2, 32], got {bits!r}")


def _check_frac_bits(frac_bits: int) -> None:
    if not isinstance(frac_bits, (int, np.integer)) or not (
        FRAC_BITS_MIN <= int(frac_bits) <= FRAC_BITS_MAX
    ):
        raise ValueError(
            f"frac_bits must be an integer in [{FRAC_BITS_MIN}, {FRAC_BITS_MAX}], got {frac_bits!r}"
        )


def _magnitudes(x: ArrayLike) -> NDArray[np.float64]:
    a = np.abs(np.asarray(x, dtype=np.float32).astype(np.float64)).ravel()
    # NaN never counts as an overflow (it encodes as 0); inf always does.
    return np.where(np.isnan(a), 0.0, a)


def overflow_count(
    x: ArrayLike,
    bits: int,
    frac_bits: int,
    *,
    stochastic: bool = False,
    seed: int = 0,
    stream: int = 0,
) -> float:
    """How many elements of ``x`` overflow a ``bits``-bit code at ``frac_bits``.

    Deterministic judgement: element i overflows iff ``|x_i| * 2**frac_bits > qmax`` with
    ``qmax = 2**(bits-1) - 1`` (it would saturate to the largest positive code).

    Stochastic thresholding (``stochastic=True``): element i overflows iff
    ``|x_i| * 2**frac_bits > qmax * (1 + u_i)``, ``u_i = r_i / 2**32`` with ``r_i`` the
    stochastic-rounding generator's value of element i for (seed, stream). An element at
    ``(1 + t) * qmax`` with ``0 <= t < 1`` counts with probability ``t``; at ``2 * qmax`` or
    beyond it always counts. The expected count is ``sum(clip(|y_i|/qmax - 1, 0, 1))``.
    """
    _check_bits(bits)
    _check_frac_bits(frac_bits)
    y = _magnitudes(x) * np.ldexp(1.0, int(frac_bits))
    qmax = float(2 ** (int(bits) - 1) - 1)
    if not stochastic:
        return float(np.count_nonzero(y > qmax))
    u = sr_bits(y.size, seed=seed, stream=stream).astype(np.float64) * 2.0**-32
    return float(np.count_nonzero(y > qmax * (1.0 + u)))


def overflow_ratio(
    x: ArrayLike,
    bits: int,
    frac_bits: int,
    *,
    stochastic: bool = False,
    seed: int = 0,
    stream: int = 0,
) -> float:
    """``overflow_count / size`` (0.0 for an empty tensor)."""
    n = np.asarray(x).size
    if n == 0:
        return 0.0
    return overflow_count(x, bits, frac_bits, stochastic=stochastic, seed=seed, stream=stream) / n


def update_frac_bits(
    x: ArrayLike,
    bits: int,
    frac_bits: int,
    *,
    threshold: float = DEFAULT_OVERFLOW_THRESHOLD,
    stochastic: bool = False,
    seed: int = 0,
    stream: int = 0,
) -> int:
    """One step of the overflow-ratio rule; returns the fractional length for the next use.

    With ``r(f)`` the overflow ratio of ``x`` at fractional length ``f``:

    * ``r(f) > threshold``            -> ``f - 1`` (one more integer bit);
    * else ``r(f + 1) <= threshold``  -> ``f + 1`` (one more fractional bit fits);
    * else                            -> ``f``.

    One step per update, as the chip's range unit does between iterations, clamped to
    [-64, 64]. Repeated on a fixed tensor it converges to the largest ``f`` whose overflow
    ratio is at most ``threshold``. With ``stochastic=True`` both judgements use stochastic
    thresholding (the same random values for ``f`` and ``f + 1``).
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")

    def ratio(f: int) -> float:
        return overflow_ratio(x, bits, f, stochastic=stochastic, seed=seed, stream=stream)

    if ratio(frac_bits) > threshold:
        return max(FRAC_BITS_MIN, int(frac_bits) - 1)
    if frac_bits < FRAC_BITS_MAX and ratio(frac_bits + 1) <= threshold:
        return int(frac_bits) + 1
    return int(frac_bits)


def laps_large_differences(high: ArrayLike, low: ArrayLike, *, tolerance: float) -> int:
    """Number of elements whose low-precision result differs "largely" from the high one.

    Large means ``|high_i - low_i| > tolerance * max_j |high_j|`` (the survey's LAPS unit
    "calculates the difference and counts only large differences").
    """
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    if h.shape != lo.shape:
        raise ValueError(f"high and low results differ in shape: {h.shape} vs {lo.shape}")
    if h.size == 0:
        return 0
    scale = float(np.max(np.abs(h)))
    return int(np.count_nonzero(np.abs(h - lo) > tolerance * scale))


@dataclass
class LapsController:
    """Layerwise adaptive precision scaling: the bit-width state machine of one layer.

    ``observe(high, low)`` is called with a high-precision and a low-precision result of the
    same layer (the chip computes both on a sample); the share of large differences
    (``laps_large_differences``) decides the bit width used from the next iteration on:

    * share > ``raise_above``: go one step up in ``widths`` at once;
    * share < ``lower_below`` for ``patience`` observations in a row: go one step down;
    * otherwise stay. The width never leaves ``widths``.

    Defaults: widths 4/8/12/16 (the 4-bit slices of a bit-scalable MAC), tolerance 1/64 of
    the result's range, raise above 5 %, lower below 1 % after 8 calm observations. These are
    our assumptions; the survey describes LAPS only qualitatively.
    """

    bits: int = 8
    widths: Sequence[int] = (4, 8, 12, 16)
    tolerance: float = 1.0 / 64
    raise_above: float = 0.05
    lower_below: float = 0.01
    patience: int = 8
    calm: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        ws = list(self.widths)
        if not ws or ws != sorted(set(ws)):
            raise ValueError(f"widths must be strictly increasing, got {self.widths!r}")
        if self.bits not in ws:
            raise ValueError(f"bits {self.bits!r} is not one of the widths {ws}")
        if not 0.0 <= self.lower_below <= self.raise_above <= 1.0:
            raise ValueError("need 0 <= lower_below <= raise_above <= 1")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience!r}")
        self.widths = tuple(ws)

    def observe(self, high: ArrayLike, low: ArrayLike) -> int:
        """Feed one comparison; returns the bit width for the next iteration."""
        n = np.asarray(high).size
        share = laps_large_differences(high, low, tolerance=self.tolerance) / n if n else 0.0
        i = self.widths.index(self.bits)
        if share > self.raise_above:
            self.calm = 0
            self.bits = self.widths[min(i + 1, len(self.widths) - 1)]
        elif share < self.lower_below:
            self.calm += 1
            if self.calm >= self.patience:
                self.calm = 0
                self.bits = self.widths[max(i - 1, 0)]
        else:
            self.calm = 0
        return self.bits
