"""The engine's ReLU kernels (datapath.relu, relu_backward) against their numpy forms, bit
for bit: NaN, both zeros, infinities, subnormals, non-contiguous views, empty arrays."""

from __future__ import annotations

import numpy as np
import pytest

from device_model import datapath as dp


def _values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    pool = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-42, -1e-42], np.float32)
    hit = rng.random(shape) < 0.2
    x[hit] = rng.choice(pool, int(hit.sum()))
    return x


@pytest.mark.parametrize("shape", [(0,), (1,), (7, 3), (32, 8, 8, 8), (128, 513)])
def test_relu_and_backward_equal_numpy_bit_for_bit(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    x = _values(rng, shape)
    y, pos = dp.relu(x)
    want_pos = x > 0
    want = np.where(want_pos, x, np.float32(0)).astype(np.float32)
    assert pos.dtype == np.bool_ and np.array_equal(pos, want_pos)
    assert y.dtype == np.float32 and np.array_equal(y.view(np.uint32), want.view(np.uint32))
    e = _values(rng, shape)
    got = dp.relu_backward(e, pos)
    want_e = np.where(pos, e, np.float32(0)).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want_e.view(np.uint32))


def test_relu_of_views_and_bad_arguments() -> None:
    rng = np.random.default_rng(1)
    base = _values(rng, (20, 30))
    other = _values(rng, (30, 20))
    for v in (base.T, base[::2, 1::3]):
        y, pos = dp.relu(v)
        assert np.array_equal(y.view(np.uint32), np.where(v > 0, v, np.float32(0)).view(np.uint32))
        e = other.T.T[: v.shape[0], : v.shape[1]][::-1]
        w = np.where(pos, e, np.float32(0)).astype(np.float32)
        assert np.array_equal(dp.relu_backward(e, pos).view(np.uint32), w.view(np.uint32))
    with pytest.raises(ValueError, match="float32"):
        dp.relu(np.zeros(3))
    with pytest.raises(ValueError, match="bool"):
        dp.relu_backward(np.zeros(3, np.float32), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="bool"):
        dp.relu_backward(np.zeros(3, np.float32), np.zeros(4, np.bool_))
