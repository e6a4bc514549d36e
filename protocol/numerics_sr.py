"""The stochastic-rounding generator of docs/numerics.md, vectorised on uint64 numpy arrays.

Counter-based: the random value of element ``i`` depends only on (seed, stream, i), so any
slice of a tensor can be rounded on its own and the C datapath computes the same values.
All arithmetic is modulo 2^64 (numpy's uint64 wrap-around multiplication is the intent).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["GOLDEN", "MASK64", "mix64", "mix64_int", "sr_key", "sr_values"]

GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB


def mix64_int(z: int) -> int:
    """mix64 of one Python int (taken modulo 2^64): used for the key, and as the spec's text."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _C1) & MASK64
    z = ((z ^ (z >> 27)) * _C2) & MASK64
    return z ^ (z >> 31)


def mix64(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """mix64 of every element of a uint64 array, in place (the array is returned)."""
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(_C1)
        z ^= z >> np.uint64(27)
        z *= np.uint64(_C2)
        z ^= z >> np.uint64(31)
    return z


def sr_key(seed: int, stream: int) -> int:
    """The generator's key for (seed, stream), both taken modulo 2^64."""
    return mix64_int((seed & MASK64) ^ mix64_int((stream & MASK64) + GOLDEN))


def sr_values(n: int, key: int, offset: int) -> npt.NDArray[np.uint32]:
    """r[offset : offset + n] for a key: mix64(key + i * GOLDEN) >> 32, i modulo 2^64."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        i += np.uint64(offset & MASK64)
        i *= np.uint64(GOLDEN)
        i += np.uint64(key & MASK64)
    return (mix64(i) >> np.uint64(32)).astype(np.uint32)
