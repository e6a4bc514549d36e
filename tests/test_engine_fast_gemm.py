"""The engine's fused GEMM paths against the kernels they replace, bit for bit.

* ``datapath.gemm_int_scaled`` (the integer GEMM writing float32 values itself) must equal
  ``rescale_i64(gemm_int(...))`` and report the same ``slice_ops``: int8 and int16 operands,
  every trans flag, one K block (the results go straight to float) and several (through the
  int64 sums), slow rows of the sequential saturating path, both kernels, 1 and 2 threads.
* ``gemm_float`` with a transposed B larger than A (FF reading the weights W, out x in) runs
  as C^T = B^T.A^T; it must still equal the sequential model.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_model import datapath as dp
from device_model import gemm_reference as ref

from .test_gemm_float_fast import _operand, assert_same_bits


def _codes(rng: np.random.Generator, shape: tuple[int, int], dt: type) -> np.ndarray:
    lim = 127 if dt is np.int8 else 32767
    x: np.ndarray = rng.integers(-lim - 1, lim + 1, shape).astype(dt)
    x[rng.random(shape) < 0.3] = 0
    return x


def _check_scaled(
    a: np.ndarray, b: np.ndarray, frac: int, ta: bool, tb: bool, threads: int
) -> dp.GemmStats:
    c, st = dp.gemm_int(a, b, trans_a=ta, trans_b=tb, threads=threads)
    want = dp.rescale_i64(c, frac)
    got, so = dp.gemm_int_scaled(a, b, frac, trans_a=ta, trans_b=tb, threads=threads)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert so == st.slice_ops
    return st


@pytest.mark.parametrize("kernel", ["auto", "portable"])
@pytest.mark.parametrize("dts", [(np.int8, np.int8), (np.int8, np.int16), (np.int16, np.int16)])
def test_gemm_int_scaled_equals_gemm_then_rescale(
    kernel: str, dts: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICROTRAIN_KERNEL", kernel)
    rng = np.random.default_rng(7)
    for i in range(24):
        m, n = (int(v) for v in rng.integers(1, 70, 2))
        k = int(rng.integers(1, 90)) if i % 3 else int(rng.integers(500, 1300))
        ta, tb = bool(i & 1), bool(i & 2)
        a = _codes(rng, (k, m) if ta else (m, k), dts[0])
        b = _codes(rng, (n, k) if tb else (k, n), dts[1])
        frac = int(rng.integers(-64, 127)) if i % 4 == 0 else int(rng.integers(0, 24))
        _check_scaled(a, b, frac, ta, tb, threads=1 + i % 2)


def test_gemm_int_scaled_training_shapes() -> None:
    """The MDNet WG shape (K = 128, one block straight to float) and FF (K = 4608)."""
    rng = np.random.default_rng(3)
    e, x, w = (_codes(rng, s, np.int8) for s in ((128, 96), (128, 640), (96, 640)))
    _check_scaled(e, x, 11, True, False, threads=2)
    _check_scaled(x, w, 9, False, True, threads=2)


def test_gemm_int_scaled_slow_rows() -> None:
    """int16 codes at their extremes over K = 140000 exceed the 48-bit accumulator bound:
    those rows run the sequential saturating path and are converted after it."""
    k = 140000
    a = np.full((2, k), -32768, np.int16)
    a[1, ::2] = 5
    b = np.full((k, 3), -32768, np.int16)
    st = _check_scaled(a, b, 40, False, False, threads=2)
    assert st.slow_rows >= 1


def test_gemm_int_scaled_empty_and_bad_arguments() -> None:
    z, _ = dp.gemm_int_scaled(np.zeros((3, 0), np.int8), np.zeros((0, 4), np.int8), 5)
    np.testing.assert_array_equal(z, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="frac"):
        dp.gemm_int_scaled(np.zeros((2, 2), np.int8), np.zeros((2, 2), np.int8), 127)
    with pytest.raises(ValueError, match="inner dimensions"):
        dp.gemm_int_scaled(np.zeros((2, 3), np.int8), np.zeros((2, 2), np.int8), 0)
    with pytest.raises(ValueError, match="int8 or int16"):
        dp.gemm_int_scaled(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int8), 0)


@pytest.mark.parametrize("kernel", ["avx512", "avx2", "portable"])
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_float_wide_transposed_b(
    kernel: str, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICROTRAIN_FLOAT_KERNEL", kernel)
    rng = np.random.default_rng(11)
    for m, k, n, ta in ((64, 300, 200, False), (70, 65, 141, True), (128, 600, 512, False)):
        a = _operand(rng, (k, m) if ta else (m, k), specials=True)
        b = _operand(rng, (n, k), specials=True)
        got = dp.gemm_float(a, b, trans_a=ta, trans_b=True, threads=threads)
        assert_same_bits(got, ref.gemm_f32_ref(a, b, trans_a=ta, trans_b=True))


def test_gemm_int_scaled_reads_the_kernel_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The C side reads MICROTRAIN_KERNEL as datapath._kernel_code does (blanks around the
    name, empty = auto); an unknown name is the same ValueError."""
    a, b = np.ones((3, 4), np.int8), np.ones((4, 2), np.int8)
    for name in ("auto", " portable ", "avx512-vnni" if dp.kernel_available("avx512-vnni") else ""):
        monkeypatch.setenv("MICROTRAIN_KERNEL", name)
        got, _ = dp.gemm_int_scaled(a, b, 1)
        np.testing.assert_array_equal(got, np.full((3, 2), 2.0, np.float32))
    monkeypatch.setenv("MICROTRAIN_KERNEL", "bogus")
    with pytest.raises(ValueError, match="unknown kernel 'bogus'"):
        dp.gemm_int_scaled(a, b, 1)
