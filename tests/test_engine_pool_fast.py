"""The C max pool of tiling windows (datapath.maxpool_tiled): that the engine takes it and the
wrappers' argument checks (its results against the window-view path, ties, NaN and
infinities: tests/test_engine_kernels_fast.py); and im2col's cached-position gather against
the window view it replaced."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_model import datapath, engine_layers
from device_model.engine_layers import LayerSpec, build_layers, pool_forward


def test_c_path_is_taken_and_checks_its_arguments() -> None:
    """A float32 input takes datapath.maxpool_tiled (else the pool test of
    tests/test_engine_kernels_fast.py would compare the window path with itself); the C
    wrappers refuse what they cannot pool."""
    layer = build_layers((2, 4, 4), [LayerSpec("max_pool2d", kernel_size=2)])[0]
    x = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    calls = []
    real = datapath.maxpool_tiled

    def spy(a: np.ndarray, kernel: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        calls.append((a.shape, kernel))
        return real(a, kernel)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datapath, "maxpool_tiled", spy)
        _, arg = pool_forward(x, layer)
    assert calls == [((2, 2, 4, 4), (2, 2))]
    np.testing.assert_array_equal(arg, np.full((2, 2, 2, 2), 3))
    with pytest.raises(ValueError, match="float32"):
        datapath.maxpool_tiled(x.astype(np.float64), (2, 2))
    with pytest.raises(ValueError, match="4-D"):
        datapath.maxpool_tiled(x[0], (2, 2))
    with pytest.raises(ValueError, match=r"offsets must be in 0\.\.3"):
        datapath.maxpool_tiled_backward(
            np.ones((2, 2, 2, 2), np.float32), np.full((2, 2, 2, 2), 4), (2, 2, 4, 4), (2, 2)
        )
    with pytest.raises(ValueError, match="shape"):
        datapath.maxpool_tiled_backward(
            np.ones((2, 2, 2, 3), np.float32), arg, (2, 2, 4, 4), (2, 2)
        )


def _im2col_window_view(x: np.ndarray, layer: engine_layers.Layer) -> np.ndarray:
    """im2col as the window view builds it (the form the gather replaced)."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    ho, wo = layer.out_shape[1:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    win = win[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(x.shape[0] * ho * wo, -1)


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    k=st.sampled_from([1, 2, 3, (2, 3)]),
    stride=st.sampled_from([1, 2, (1, 3)]),
    pad=st.sampled_from([0, 1, (2, 0)]),
    dtype=st.sampled_from([np.float32, np.int8, np.int16, np.bool_]),
)
def test_im2col_gather_equals_window_view(
    seed: int, n: int, c: int, h: int, w: int, k: Any, stride: Any, pad: Any, dtype: Any
) -> None:
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    if kh > h + 2 * ph or kw > w + 2 * pw:
        return
    spec = LayerSpec(
        "conv2d", in_channels=c, out_channels=2, kernel_size=k, stride=stride, padding=pad
    )
    layer = build_layers((c, h, w), [spec])[0]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) * 50).astype(dtype)
    got = engine_layers.im2col(x, layer)
    want = _im2col_window_view(x, layer)
    assert got.dtype == want.dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
