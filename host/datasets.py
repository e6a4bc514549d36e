"""The demo's data: scikit-learn's bundled 8x8 digits, its seeded splits, and camera faults.

``load_digits_splits(seed)`` returns three disjoint splits of the 1797 bundled digits (no
download): ``pretrain`` (the clean data the deployed model is trained on before deployment),
``stream`` (the frames the camera sees after deployment, in arrival order) and ``heldout``
(frames never trained on, used to measure accuracy). Images are float32 in [0, 1], shape
(N, 1, 8, 8) (channels first, as ``host.nn`` takes them); labels are int64 class indices.

A camera fault (``apply_fault``) is a fixed, deterministic corruption of every frame after it
happens. Its severity constants are chosen so that the deployed model really breaks (see
docs/demo.md for the measured effect of each):

* ``dead-columns``: sensor columns 1 and 6 stuck at full scale (1.0): two broken readout
  lines stuck high.
* ``shift``: the image moved 2 pixels right and 1 down, the uncovered border black (a knocked
  camera mount).
* ``noise``: additive Gaussian noise of standard deviation 0.4, clipped to [0, 1] (a failing
  sensor or low light), drawn per frame from the seed.
* ``contrast``: ``0.3 * x + 0.6``: washed-out, low-contrast frames (exposure control gone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from host.errors import InvalidArgument

__all__ = ["FAULTS", "DigitSplits", "Split", "apply_fault", "load_digits_splits"]

FAULTS = ("dead-columns", "shift", "noise", "contrast")

#: dead-columns: column index -> the value that column is stuck at.
DEAD_COLUMNS = {1: 1.0, 6: 1.0}
#: shift: (down, right) pixels.
SHIFT = (1, 2)
#: noise: standard deviation of the additive Gaussian noise (pixel scale 0..1).
NOISE_STD = 0.4
#: contrast: x -> gain * x + offset.
CONTRAST = (0.3, 0.6)

#: Split sizes: held-out and stream; the rest (1797 - 360 - 360 = 1077) is pretraining data.
HELDOUT_SIZE = 360
STREAM_SIZE = 360


@dataclass(frozen=True)
class Split:
    """Images (N, 1, 8, 8) float32 in [0, 1] and their labels (N,) int64."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DigitSplits:
    """The three disjoint splits of the bundled digits (see the module docstring)."""

    pretrain: Split
    stream: Split
    heldout: Split


def load_digits_splits(seed: int = 0) -> DigitSplits:
    """The bundled digits shuffled by ``seed`` and cut into pretrain / stream / held-out."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    if not isinstance(seed, int) or seed < 0:
        raise InvalidArgument(f"seed must be an int >= 0, got {seed!r}")
    digits = load_digits()
    x = (np.asarray(digits.images, dtype=np.float32) / np.float32(16.0))[:, None]
    y = np.asarray(digits.target, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    held = perm[:HELDOUT_SIZE]
    stream = perm[HELDOUT_SIZE : HELDOUT_SIZE + STREAM_SIZE]
    pre = perm[HELDOUT_SIZE + STREAM_SIZE :]
    return DigitSplits(
        pretrain=Split(x[pre], y[pre]),
        stream=Split(x[stream], y[stream]),
        heldout=Split(x[held], y[held]),
    )


def apply_fault(
    x: NDArray[np.float32], fault: str, seed: int = 0, draw: int = 0
) -> NDArray[np.float32]:
    """A copy of the frames ``x`` (N, 1, 8, 8) as the faulty camera delivers them.

    ``seed`` and ``draw`` key the per-frame noise of ``noise`` (give each split its own
    ``draw`` so two splits never share noise); the other faults are deterministic. Frames stay
    float32 in [0, 1].
    """
    if fault not in FAULTS:
        raise InvalidArgument(f"unknown fault {fault!r}; accepted: {', '.join(FAULTS)}")
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != (1, 8, 8):
        raise InvalidArgument(f"frames must have shape (N, 1, 8, 8), got {arr.shape}")
    out = arr.copy()
    if fault == "dead-columns":
        for col, value in DEAD_COLUMNS.items():
            out[..., col] = value
    elif fault == "shift":
        down, right = SHIFT
        out[:] = 0.0
        out[..., down:, right:] = arr[..., : 8 - down, : 8 - right]
    elif fault == "noise":
        noise = np.random.default_rng([seed, draw, 0x0015E]).normal(0.0, NOISE_STD, arr.shape)
        out = np.clip(arr + noise.astype(np.float32), 0.0, 1.0, dtype=np.float32)
    else:
        gain, offset = CONTRAST
        out = np.clip(np.float32(gain) * arr + np.float32(offset), 0.0, 1.0, dtype=np.float32)
    return out
