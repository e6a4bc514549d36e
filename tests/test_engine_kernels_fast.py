"""The engine's element-wise C kernels against their numpy definitions, bit for bit.

* ``datapath.sgd_update`` (the update stage in one pass) against
  ``ReferenceKernels.sgd_update`` (the numpy SGD rule the reference engine runs), with
  momentum or not, weight decay, update and keep masks, signed zeros, subnormals, infinities
  and NaN among the values, and on one or two threads;
* ``datapath.zero_counts`` against ``(x == 0).sum(axis)`` on C-ordered, transposed and
  strided views;
* the reshape path of max pools whose windows tile the input against the window-view path.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from device_model import datapath as dp
from device_model import engine_layers
from device_model.engine_layers import LayerSpec, build_layers, pool_backward, pool_forward
from device_model.engine_reference import ReferenceKernels

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf and NaN inputs

_SPECIALS = np.array([0.0, -0.0, 1e-40, -3e-42, np.inf, -np.inf, np.nan, 3e38], np.float32)


def _values(rng: np.random.Generator, n: int, specials: bool) -> np.ndarray:
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(np.float32)
    if specials and n:
        hit = rng.random(n) < 0.1
        x[hit] = rng.choice(_SPECIALS, int(hit.sum()))
    return x


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal float32 words; any NaN equals any NaN (payloads depend on operand order)."""
    gn, wn = np.isnan(got), np.isnan(want)
    np.testing.assert_array_equal(gn, wn)
    np.testing.assert_array_equal(got.view(np.uint32)[~gn], want.view(np.uint32)[~wn])


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    momentum=st.booleans(),
    masks=st.sampled_from(["none", "update", "keep", "both"]),
    specials=st.booleans(),
    lr=st.sampled_from([0.01, 0.1, 1.0, 3.7e-5]),
    mu=st.sampled_from([0.0, 0.9, 0.5]),
    wd=st.sampled_from([0.0, 1e-4, 0.25]),
    threads=st.sampled_from([1, 2]),
)
def test_sgd_update_equals_numpy_rule_bit_for_bit(
    seed: int,
    n: int,
    momentum: bool,
    masks: str,
    specials: bool,
    lr: float,
    mu: float,
    wd: float,
    threads: int,
) -> None:
    rng = np.random.default_rng(seed)
    w, g = _values(rng, n, specials), _values(rng, n, specials)
    m = _values(rng, n, specials) if momentum else None
    keep = rng.random(n) < 0.7 if masks in ("keep", "both") else None
    upd = rng.random(n) < 0.6 if masks in ("update", "both") else None
    if upd is not None and keep is not None:
        upd &= keep
    kw = {"lr": lr, "mu": mu, "weight_decay": wd, "update": upd, "keep": keep}
    w_ref, m_ref = w.copy(), None if m is None else m.copy()
    ReferenceKernels().sgd_update(w_ref, g, momentum=m_ref, **kw)
    dp.sgd_update(w, g, momentum=m, threads=threads, **kw)
    _same_bits(w, w_ref)
    if m is not None:
        assert m_ref is not None
        _same_bits(m, m_ref)


def test_sgd_update_large_array_splits_across_threads_identically() -> None:
    rng = np.random.default_rng(5)
    n = (1 << 18) + 77  # above the two-thread threshold, not a multiple of the split
    w, g, m = (_values(rng, n, True) for _ in range(3))
    keep = rng.random(n) < 0.9
    outs = []
    for threads in (1, 2):
        ww, mm = w.copy(), m.copy()
        dp.sgd_update(
            ww,
            g,
            lr=0.05,
            momentum=mm,
            mu=0.9,
            weight_decay=1e-3,
            update=keep,
            keep=keep,
            threads=threads,
        )
        outs.append((ww, mm))
    w_ref, m_ref = w.copy(), m.copy()
    ReferenceKernels().sgd_update(
        w_ref, g, lr=0.05, momentum=m_ref, mu=0.9, weight_decay=1e-3, update=keep, keep=keep
    )
    for ww, mm in outs:
        _same_bits(ww, w_ref)
        _same_bits(mm, m_ref)


def test_sgd_update_rejects_bad_arguments() -> None:
    w = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="g must be a float32 array of shape"):
        dp.sgd_update(w, np.zeros(3, np.float32), lr=0.1)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        dp.sgd_update(np.zeros(8, np.float32)[::2], np.zeros(4, np.float32), lr=0.1)
    with pytest.raises(ValueError, match="w must be a numpy float32 array"):
        dp.sgd_update(np.zeros(4), np.zeros(4, np.float32), lr=0.1)
    with pytest.raises(ValueError, match="keep must be C-contiguous with 4 elements"):
        dp.sgd_update(w, np.zeros(4, np.float32), lr=0.1, keep=np.ones(5, bool))
    with pytest.raises(ValueError, match="momentum must have shape"):
        dp.sgd_update(w, np.zeros(4, np.float32), lr=0.1, momentum=np.zeros(5, np.float32))


@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(0, 40),
    cols=st.integers(0, 40),
    layout=st.sampled_from(["c", "t", "rows", "cols", "both"]),
    dtype=st.sampled_from([np.float32, np.int8, np.int16]),
)
def test_zero_counts_equal_numpy(seed: int, rows: int, cols: int, layout: str, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    base = _values(rng, 4 * rows * cols, True).reshape(2 * rows, 2 * cols)
    base[rng.random(base.shape) < 0.4] = rng.choice(np.float32([0.0, -0.0]))
    if dtype is not np.float32:  # DFXP codes: zeros and small integers
        base = np.nan_to_num(np.clip(base, -100, 100)).astype(dtype)
    x = {
        "c": base[:rows, :cols],
        "t": base[:cols, :rows].T,
        "rows": base[::2, :cols],
        "cols": base[:rows, ::2],
        "both": base[::2, ::2],
    }[layout]
    per_row, per_col = dp.zero_counts(x)
    np.testing.assert_array_equal(per_row, (x == 0).sum(axis=1))
    np.testing.assert_array_equal(per_col, (x == 0).sum(axis=0))


@given(
    seed=st.integers(0, 2**32 - 1),
    c=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.sampled_from([1, 2, 3, (2, 3), (3, 1)]),
    ties=st.booleans(),
)
def test_tiled_max_pool_equals_window_view_path(
    seed: int, c: int, h: int, w: int, k: int | tuple[int, int], ties: bool
) -> None:
    """Max pools whose windows tile the input take a faster path (C for float32); it must
    give the window view's outputs, argmax indices (first maximum, NaN first) and input
    errors bit for bit: NaN inputs and signed zeros, or (``ties``) few distinct values with
    infinities and NaN errors."""
    kh, kw = (k, k) if isinstance(k, int) else k
    assume(kh <= h and kw <= w)
    layer = build_layers((c, h, w), [LayerSpec("max_pool2d", kernel_size=k)])[0]
    rng = np.random.default_rng(seed)
    if ties:
        x = rng.choice(np.float32([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf]), (3, c, h, w))
        dy_values = np.float32([0.0, -0.0, 1.5, -2.0, np.nan])
    else:
        x = rng.choice(np.float32([0.0, -0.0, 1.0, -1.0, np.nan, 2.5]), (3, c, h, w))
        x = np.where(rng.random(x.shape) < 0.5, rng.standard_normal(x.shape), x)
        dy_values = np.float32([0.0, -0.0, 1.5, -2.0])
    x = x.astype(np.float32)
    y, arg = pool_forward(x, layer)
    dy = rng.choice(dy_values, y.shape).astype(np.float32)
    dx = pool_backward(dy, layer, arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_layers, "_tiled", lambda _layer: False)
        y2, arg2 = pool_forward(x, layer)
        dx2 = pool_backward(dy, layer, arg2)
    assert arg.dtype == arg2.dtype and y.dtype == y2.dtype == np.float32
    np.testing.assert_array_equal(arg, arg2)
    np.testing.assert_array_equal(y.view(np.uint32), y2.view(np.uint32))
    np.testing.assert_array_equal(dx.view(np.uint32), dx2.view(np.uint32))


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    frac=st.integers(-64, 126),
    scale=st.sampled_from([1, 2**20, 2**40, 2**62]),
    threads=st.sampled_from([1, 2]),
)
def test_rescale_i64_equals_numpy(seed: int, n: int, frac: int, scale: int, threads: int) -> None:
    """datapath.rescale_i64 (the int64 accumulators of the integer GEMM to float32 values)
    against astype(float32) * 2^-frac: rounding of large integers, overflow to inf and the
    smallest normal results included."""
    rng = np.random.default_rng(seed)
    acc = rng.integers(-scale, scale, n, dtype=np.int64, endpoint=True)
    if n:
        acc[0] = np.iinfo(np.int64).max if seed % 2 else np.iinfo(np.int64).min
    with np.errstate(over="ignore"):
        want = acc.astype(np.float32) * np.float32(2.0**-frac)
    got = dp.rescale_i64(acc, frac, threads=threads)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_rescale_i64_large_array_and_bad_arguments() -> None:
    acc = np.random.default_rng(2).integers(-(2**50), 2**50, 300_001, dtype=np.int64)
    want = acc.astype(np.float32) * np.float32(2.0**-17)
    np.testing.assert_array_equal(dp.rescale_i64(acc, 17).view(np.uint32), want.view(np.uint32))
    with pytest.raises(ValueError, match="frac must be an integer in"):
        dp.rescale_i64(acc, 127)
    with pytest.raises(ValueError, match="acc must be a numpy int64 array"):
        dp.rescale_i64(acc.astype(np.int32), 0)


@pytest.mark.parametrize("shape", [(513, 300), (300, 513), (1, 200_000), (200_000, 1)])
def test_zero_counts_of_large_matrices_split_across_threads(shape: tuple[int, int]) -> None:
    """Large matrices are counted in two row halves on two threads (each with its own column
    counts, added after): the counts equal numpy's, for C- and F-ordered layouts, float32
    values and int8/int16 codes."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.3] = np.float32(-0.0)
    x[rng.random(shape) < 0.2] = np.float32(0.0)
    codes = np.clip(np.nan_to_num(x * 10), -100, 100).astype(np.int8)
    for m in (x, np.asfortranarray(x), codes, np.asfortranarray(codes.astype(np.int16))):
        for threads in (1, 2):
            per_row, per_col = dp.zero_counts(m, threads=threads)
            np.testing.assert_array_equal(per_row, (m == 0).sum(axis=1))
            np.testing.assert_array_equal(per_col, (m == 0).sum(axis=0))
