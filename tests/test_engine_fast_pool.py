"""The vectorised max pool (16 windows at a time, for windows tiling the input with wo
dividing 16) against the engine's window-view path, bit for bit: NaN (first, later, only),
ties, signed zeros, infinities; window counts that are and are not multiples of 16."""

from __future__ import annotations

import numpy as np
import pytest

from device_model import engine_layers
from device_model.engine_layers import LayerSpec, build_layers, pool_forward


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k"),
    [
        (32, 8, 8, 8, 2),
        (3, 5, 4, 4, 2),
        (1, 1, 2, 32, 2),
        (2, 3, 6, 6, 3),
        (5, 2, 6, 16, (3, 2)),
        (4, 7, 9, 1, (3, 1)),
        (2, 2, 4, 16, 1),
    ],
)
def test_vectorised_pool_equals_window_view_path(
    n: int, c: int, h: int, w: int, k: int | tuple[int, int]
) -> None:
    layer = build_layers((c, h, w), [LayerSpec("max_pool2d", kernel_size=k)])[0]
    rng = np.random.default_rng(n * c * h * w)
    pool = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 2.5], np.float32)
    for case in range(3):
        if case == 0:
            x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        else:  # few distinct values: ties, zeros of both signs, NaN in any position
            x = rng.choice(pool, (n, c, h, w)).astype(np.float32)
        y, arg = pool_forward(x, layer)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine_layers, "_tiled", lambda _layer: False)
            y2, arg2 = pool_forward(x, layer)
        np.testing.assert_array_equal(arg, arg2)
        np.testing.assert_array_equal(y.view(np.uint32), y2.view(np.uint32))
