"""The blocked float GEMM kernels (AVX-512, AVX2, portable) against the sequential model.

``datapath.gemm_float`` with fp32 accumulation must equal ``gemm_reference.gemm_f32_ref``
bit for bit whatever kernel, thread count, split and K blocking runs: the register-blocked
kernels only change which outputs are computed together, never the order of the k terms of
one output. Operands here are full 24-bit float32 values (products round), with signed
zeros, subnormals, infinities and NaN mixed in, so a fused multiply-add, a reassociated sum
or flush-to-zero would show.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_model import datapath as dp
from device_model import gemm_reference as ref

KERNELS = ("avx512", "avx2", "portable")


def _operand(rng: np.random.Generator, shape: tuple[int, int], specials: bool) -> np.ndarray:
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)
    if specials and x.size:
        pool = np.array([0.0, -0.0, 1e-40, -3e-42, np.inf, -np.inf, np.nan, 3e38], np.float32)
        hit = rng.random(shape) < 0.05
        x[hit] = rng.choice(pool, int(hit.sum()))
    return x


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal float32 words, except that any NaN equals any NaN (payload and sign of a NaN
    depend on which operand an instruction takes first, which the model does not fix)."""
    assert got.shape == want.shape
    gn, wn = np.isnan(got), np.isnan(want)
    np.testing.assert_array_equal(gn, wn)
    np.testing.assert_array_equal(got.view(np.uint32)[~gn], want.view(np.uint32)[~wn])


@st.composite
def cases(draw: st.DrawFn) -> dict:
    m, k, n = draw(st.integers(1, 40)), draw(st.integers(1, 600)), draw(st.integers(1, 80))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    specials = draw(st.booleans())
    a = _operand(rng, (k, m) if ta else (m, k), specials)
    b = _operand(rng, (n, k) if tb else (k, n), specials)
    return {"a": a, "b": b, "trans_a": ta, "trans_b": tb}


@pytest.mark.parametrize("kernel", KERNELS)
@given(case=cases(), threads=st.sampled_from([1, 2, 3]))
def test_fp32_gemm_equals_sequential_model_bit_for_bit(
    kernel: str, case: dict, threads: int
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICROTRAIN_FLOAT_KERNEL", kernel)
        got = dp.gemm_float(**case, threads=threads)
    with np.errstate(all="ignore"):
        want = ref.gemm_f32_ref(**case)
    assert_same_bits(got, want)


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (70, 700, 200),  # many column panels: the threads split columns
        (300, 520, 3),  # one column panel: the threads split rows
        (13, 1, 1),
        (1, 300, 1000),
    ],
)
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_blocked_kernels_equal_portable_on_larger_shapes(
    m: int, k: int, n: int, trans: tuple[bool, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(m * k + n)
    ta, tb = trans
    a = _operand(rng, (k, m) if ta else (m, k), False)
    b = _operand(rng, (n, k) if tb else (k, n), False)
    monkeypatch.setenv("MICROTRAIN_KERNEL", "portable")
    want = dp.gemm_float(a, b, trans_a=ta, trans_b=tb, threads=1)
    monkeypatch.delenv("MICROTRAIN_KERNEL")
    for kernel in KERNELS:
        monkeypatch.setenv("MICROTRAIN_FLOAT_KERNEL", kernel)
        for threads in (1, 2):
            got = dp.gemm_float(a, b, trans_a=ta, trans_b=tb, threads=threads)
            assert_same_bits(got, want)


def test_products_round_before_the_sum() -> None:
    """-1 + a*b with a*b inexact: a fused multiply-add would keep the product's low bits."""
    x, y = np.array([1065355154, 1065355312], np.uint32).view(np.float32)
    a = np.tile(np.array([[1.0, x]], np.float32), (11, 1))  # 11 rows: full and edge tiles
    b = np.tile(np.array([[-1.0], [y]], np.float32), (1, 37))
    got = dp.gemm_float(a, b)
    separate = np.float32(np.float32(-1.0) + np.float32(x * y))
    fused = np.float32(-1.0 + float(x) * float(y))
    assert separate != fused
    assert (got == separate).all()


def test_empty_inner_dimension_gives_zeros() -> None:
    a, b = np.ones((5, 0), np.float32), np.ones((0, 40), np.float32)
    got = dp.gemm_float(a, b)
    assert got.shape == (5, 40)
    assert not np.signbit(got).any() and (got == 0).all()
