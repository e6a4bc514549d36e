"""Integer and float GEMM of the datapath against the numpy golden models, exactly.

Every integer case runs on each available kernel (portable C and, where the CPU has it,
AVX-512 VNNI) and must equal ``gemm_reference.gemm_int_ref`` bit for bit, including the
saturating and wrapping cases of narrow accumulators; statistics must equal brute-force
counts over every MAC.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_model import datapath as dp
from device_model import gemm_reference as ref

KERNELS = [k for k in ("portable", "avx512-vnni") if dp.kernel_available(k)]
DTYPES = (np.int8, np.int16)


def _codes(
    rng: np.random.Generator, shape: tuple[int, int], dtype: type, zeros: float
) -> np.ndarray:
    info = np.iinfo(dtype)
    x: np.ndarray = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    x[rng.random(shape) < zeros] = 0
    return x


@st.composite
def gemm_cases(draw: st.DrawFn, max_dim: int = 40) -> dict:
    m = draw(st.integers(1, max_dim))
    k = draw(st.integers(1, max_dim))
    n = draw(st.integers(1, max_dim))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    da, db = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    zeros = draw(st.sampled_from([0.0, 0.3, 0.9]))
    a = _codes(rng, (k, m) if ta else (m, k), da, zeros)
    b = _codes(rng, (n, k) if tb else (k, n), db, zeros)
    if draw(st.booleans()):  # extreme codes somewhere
        a.flat[draw(st.integers(0, a.size - 1))] = np.iinfo(a.dtype).min
        b.flat[draw(st.integers(0, b.size - 1))] = np.iinfo(b.dtype).min
    return {"a": a, "b": b, "trans_a": ta, "trans_b": tb}


@pytest.mark.parametrize("kernel", KERNELS)
@given(
    case=gemm_cases(),
    bits=st.sampled_from([16, 20, 24, 32, 48, 64]),
    mode=st.sampled_from(["saturate", "wrap"]),
    threads=st.sampled_from([1, 2, 3]),
)
def test_gemm_equals_sequential_reference(
    kernel: str, case: dict, bits: int, mode: str, threads: int
) -> None:
    c, stats = dp.gemm_int(**case, acc_bits=bits, acc_mode=mode, kernel=kernel, threads=threads)
    expect = ref.gemm_int_ref(**case, acc_bits=bits, acc_mode=mode)
    np.testing.assert_array_equal(c, expect)
    assert c.dtype == np.int64
    assert stats.kernel == kernel
    assert stats.counts() == ref.gemm_stats_ref(
        case["a"], case["b"], trans_a=case["trans_a"], trans_b=case["trans_b"]
    )


@given(case=gemm_cases())
def test_statistics_equal_bruteforce_counts(case: dict) -> None:
    _, stats = dp.gemm_int(**case)
    assert stats.counts() == ref.gemm_stats_ref(**case)


@pytest.mark.parametrize("kernel", KERNELS)
def test_statistics_same_on_every_kernel_and_layout(kernel: str) -> None:
    rng = np.random.default_rng(5)
    a = _codes(rng, (37, 75), np.int16, 0.4)
    b = _codes(rng, (75, 41), np.int8, 0.2)
    _, s1 = dp.gemm_int(a, b, kernel=kernel)
    _, s2 = dp.gemm_int(
        np.ascontiguousarray(a.T),
        np.ascontiguousarray(b.T),
        trans_a=True,
        trans_b=True,
        kernel=kernel,
    )
    assert s1.counts() == s2.counts() == ref.gemm_stats_ref(a, b)


def test_slice_counts_of_extreme_codes() -> None:
    # |-128| = 0x80: one non-zero slice; |-32768| = 0x8000: one; 0x7FFF: four; 0x11: two
    x = np.array([[-128, 127, 0, 17]], np.int8)
    np.testing.assert_array_equal(ref.nzslices(x), [[1, 2, 0, 2]])
    y = np.array([[-32768, 32767, 0x0101]], np.int16)
    np.testing.assert_array_equal(ref.nzslices(y), [[1, 4, 2]])
    _, s = dp.gemm_int(x, np.ones((4, 1), np.int8))
    assert (s.nzslices_a, s.nzslices_b, s.slice_ops) == (5, 4, 5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_path_on_large_shapes(kernel: str, dtype: type) -> None:
    """Shapes past the kernels' K blocks, panels and row blocks, no saturation possible: the
    fast path."""
    rng = np.random.default_rng(11)
    a = _codes(rng, (300, 1100), dtype, 0.1)
    b = _codes(rng, (1100, 67), dtype, 0.1)
    c, stats = dp.gemm_int(a, b, acc_bits=64, kernel=kernel, threads=2)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    assert stats.slow_rows == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_saturation_slow_path_16_bit(kernel: str) -> None:
    """All-extreme int8 codes overflow a 16-bit accumulator at once: every row is slow and
    the result is the clamped running sum, not the clamped total."""
    a = np.full((3, 8), -128, np.int8)
    b = np.full((8, 5), -128, np.int8)
    b[4:] = 127  # the running sum rises to the clamp, then falls
    c, stats = dp.gemm_int(a, b, acc_bits=16, kernel=kernel)
    expect = ref.gemm_int_ref(a, b, acc_bits=16)
    np.testing.assert_array_equal(c, expect)
    assert stats.slow_rows == 3
    assert int(c[0, 0]) == 32767 - 4 * 128 * 127  # clamped at 4 * 16384, then 4 * -16256
    total = int((a.astype(np.int64) @ b.astype(np.int64))[0, 0])
    assert total != int(c[0, 0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_wrap_mode_is_modular(kernel: str) -> None:
    a = np.full((2, 300), 127, np.int8)
    b = np.full((300, 3), 127, np.int8)
    c, _ = dp.gemm_int(a, b, acc_bits=16, acc_mode="wrap", kernel=kernel)
    total = 300 * 127 * 127
    assert int(c[0, 0]) == (total + 2**15) % 2**16 - 2**15


@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_rows_fast_and_slow(kernel: str) -> None:
    """Only the rows that can overflow take the sequential path."""
    rng = np.random.default_rng(3)
    a = rng.integers(-2, 3, (9, 64)).astype(np.int16)
    a[4] = 32767
    b = rng.integers(-32768, 32768, (64, 7)).astype(np.int16)
    c, stats = dp.gemm_int(a, b, acc_bits=32, kernel=kernel)
    np.testing.assert_array_equal(c, ref.gemm_int_ref(a, b, acc_bits=32))
    assert 1 <= stats.slow_rows < 9


@pytest.mark.parametrize("kernel", KERNELS)
def test_init_value_and_64_bit_saturation(kernel: str) -> None:
    a = np.array([[32767, 32767]], np.int16)
    b = np.array([[32767], [32767]], np.int16)
    big = np.iinfo(np.int64).max - 2**30
    c, stats = dp.gemm_int(a, b, acc_bits=64, init=np.array([[big]]), kernel=kernel)
    assert int(c[0, 0]) == np.iinfo(np.int64).max
    assert stats.slow_rows == 1
    c2, _ = dp.gemm_int(a, b, acc_bits=48, init=-5, kernel=kernel)
    assert int(c2[0, 0]) == 2 * 32767 * 32767 - 5


def test_views_need_no_copy_and_match() -> None:
    rng = np.random.default_rng(8)
    base = _codes(rng, (50, 60), np.int8, 0.0)
    b = _codes(rng, (30, 20), np.int8, 0.0)
    a_view = base[5:35:1, 10:40]  # row stride 60, unit column stride
    c1, _ = dp.gemm_int(a_view, b)
    c2, _ = dp.gemm_int(np.ascontiguousarray(a_view), b)
    c3, _ = dp.gemm_int(np.ascontiguousarray(a_view.T).T, b)  # F-ordered
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(c1, c3)


def test_empty_inner_dimension_gives_init() -> None:
    c, stats = dp.gemm_int(np.zeros((2, 0), np.int8), np.zeros((0, 3), np.int8), init=7)
    np.testing.assert_array_equal(c, np.full((2, 3), 7))
    assert stats.macs == 0


def test_kernel_availability() -> None:
    assert dp.kernel_available("portable") and dp.kernel_available("auto")
    with pytest.raises(ValueError, match="unknown kernel"):
        dp.kernel_available("gpu")


def test_environment_selects_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROTRAIN_KERNEL", "portable")
    monkeypatch.setenv("MICROTRAIN_THREADS", "1")
    _, stats = dp.gemm_int(np.ones((2, 2), np.int8), np.ones((2, 2), np.int8))
    assert (stats.kernel, stats.threads) == ("portable", 1)
    monkeypatch.setenv("MICROTRAIN_KERNEL", "fastest")
    with pytest.raises(ValueError, match="unknown kernel"):
        dp.gemm_int(np.ones((2, 2), np.int8), np.ones((2, 2), np.int8))


def test_threads_variable_is_read_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """MICROTRAIN_THREADS is looked up per call (its parsed value is memoised by the raw
    string): a change, a removal or a bad value takes effect on the next call."""
    a = np.ones((2, 2), np.int8)
    for value, want in (("1", 1), (" 2 ", 2), ("1", 1), ("", 0)):
        monkeypatch.setenv("MICROTRAIN_THREADS", value)
        assert dp._threads(None) == want
        if want:
            assert dp.gemm_int(a, a)[1].threads == want
    monkeypatch.delenv("MICROTRAIN_THREADS")
    assert dp._threads(None) == 0
    for bad, match in (("two", "not an integer"), ("17", "1..16"), ("0", "1..16")):
        monkeypatch.setenv("MICROTRAIN_THREADS", bad)
        with pytest.raises(ValueError, match=match):
            dp.gemm_int(a, a)
    assert dp._threads(3) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"a": np.ones((2, 3), np.int8), "b": np.ones((2, 3), np.int8)}, "inner dimensions"),
        ({"a": np.ones((2, 3), np.int32), "b": np.ones((3, 2), np.int8)}, "dtype int8 or int16"),
        ({"a": np.ones((2, 3), np.float32), "b": np.ones((3, 2), np.int8)}, "dtype int8 or int16"),
        ({"a": [[1, 2]], "b": np.ones((2, 2), np.int8)}, "numpy array"),
        ({"a": np.ones((2, 3, 1), np.int8), "b": np.ones((3, 2), np.int8)}, "2-D"),
        ({"a": np.ones((4, 6), np.int8)[::2, ::2], "b": np.ones((3, 2), np.int8)}, "unit stride"),
        ({"a": np.ones((2, 3), np.int8), "b": np.ones((3, 2), np.int8), "acc_bits": 7}, "acc_bits"),
        (
            {"a": np.ones((2, 3), np.int8), "b": np.ones((3, 2), np.int8), "acc_bits": 65},
            "acc_bits",
        ),
        (
            {"a": np.ones((2, 3), np.int8), "b": np.ones((3, 2), np.int8), "acc_mode": "clip"},
            "acc_mode",
        ),
        (
            {
                "a": np.ones((2, 3), np.int8),
                "b": np.ones((3, 2), np.int8),
                "acc_bits": 16,
                "init": 40000,
            },
            "accumulator range",
        ),
        (
            {"a": np.ones((2, 3), np.int8), "b": np.ones((3, 2), np.int8), "init": np.ones(3)},
            "integers",
        ),
        (
            {
                "a": np.ones((2, 3), np.int8),
                "b": np.ones((3, 2), np.int8),
                "init": np.ones(3, np.int64),
            },
            "broadcast",
        ),
        ({"a": np.ones((2, 3), np.int8), "b": np.ones((3, 2), np.int8), "threads": 0}, "threads"),
    ],
)
def test_bad_input_raises_specific_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dp.gemm_int(**kwargs)


# ---------------------------------------------------------------- float GEMM


@st.composite
def float_cases(draw: st.DrawFn) -> dict:
    m, k, n = (draw(st.integers(1, 24)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 300.0]))
    # fp16-representable operands, as the chip's formats give (products exact in float32)
    a = (rng.standard_normal((k, m) if ta else (m, k)) * scale).astype(np.float16)
    b = (rng.standard_normal((n, k) if tb else (k, n)) * scale).astype(np.float16)
    return {"a": a.astype(np.float32), "b": b.astype(np.float32), "trans_a": ta, "trans_b": tb}


@given(case=float_cases())
def test_fp32_accumulation_is_sequential(case: dict) -> None:
    got = dp.gemm_float(**case)
    expect = ref.gemm_f32_ref(**case)
    np.testing.assert_array_equal(got.view(np.uint32), expect.view(np.uint32))


@given(case=float_cases(), chunk=st.integers(1, 30))
def test_chunked_fp16_accumulation_matches_float16_oracle(case: dict, chunk: int) -> None:
    got = dp.gemm_float(**case, chunk=chunk)
    np.testing.assert_array_equal(
        got.view(np.uint32), _fp16_oracle(**case, chunk=chunk).view(np.uint32)
    )


def _fp16_oracle(
    a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool, chunk: int
) -> np.ndarray:
    """The chunked model with numpy's float16 doing every accumulator rounding."""
    am, bm = (a.T if trans_a else a), (b.T if trans_b else b)
    total = np.zeros((am.shape[0], bm.shape[1]), np.float32)
    with np.errstate(all="ignore"):
        for k0 in range(0, am.shape[1], chunk):
            acc = np.zeros(total.shape, np.float16)
            for k in range(k0, min(k0 + chunk, am.shape[1])):
                p = np.outer(am[:, k], bm[k, :]).astype(np.float32)
                acc = (acc.astype(np.float64) + p.astype(np.float64)).astype(np.float16)
            total = total + acc.astype(np.float32)
    return total


@given(
    case=float_cases(),
    chunk=st.integers(1, 30),
    fmt=st.sampled_from([(5, 10), (8, 7), (6, 9), (4, 3), (5, 2), (8, 23)]),
)
def test_chunked_accumulation_matches_model(case: dict, chunk: int, fmt: tuple[int, int]) -> None:
    got = dp.gemm_float(**case, chunk=chunk, acc_format=fmt)
    expect = ref.gemm_chunked_ref(**case, chunk=chunk, ebits=fmt[0], mbits=fmt[1])
    np.testing.assert_array_equal(got.view(np.uint32), expect.view(np.uint32))


def test_chunked_accumulation_loses_small_addends() -> None:
    """Within a chunk fp16 swamps: 2048 + 1 + 1 ... stays 2048; a chunk of 1 keeps them."""
    a = np.ones((1, 9), np.float32)
    b = np.array([[2048.0]] + [[1.0]] * 8, np.float32)
    assert dp.gemm_float(a, b, chunk=9)[0, 0] == 2048.0
    assert dp.gemm_float(a, b, chunk=1)[0, 0] == 2056.0
    assert dp.gemm_float(a, b)[0, 0] == 2056.0


def test_accumulator_rounding_against_float16() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [
            rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 6, 2000),
            [
                0.0,
                -0.0,
                65504.0,
                65519.99,
                65520.0,
                6e-8,
                2.0**-25,
                2.0**-24 * 1.5,
                np.inf,
                -np.inf,
                -1e-30,
                1e300,
                -1e300,
                2.0**-1074,
            ],
        ]
    )
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(dp.round_ieee_like(x, 5, 10), want)
    np.testing.assert_array_equal(ref.round_ieee_like_ref(x, 5, 10), want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"a": np.ones((2, 3), np.float64), "b": np.ones((3, 2), np.float32)}, "float32"),
        ({"a": np.ones((2, 3), np.float32), "b": np.ones((2, 2), np.float32)}, "inner"),
        ({"a": np.ones((2, 3), np.float32), "b": np.ones((3, 2), np.float32), "chunk": 0}, "chunk"),
        (
            {
                "a": np.ones((2, 3), np.float32),
                "b": np.ones((3, 2), np.float32),
                "chunk": 4,
                "acc_format": (9, 10),
            },
            "acc_format",
        ),
    ],
)
def test_float_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dp.gemm_float(**kwargs)


def test_concurrent_callers_get_their_own_results() -> None:
    """Python threads calling at once (the C call releases the GIL) share the worker pool
    or spawn their own threads; every caller must still get its own exact result."""
    rng = np.random.default_rng(21)
    jobs = [
        (_codes(rng, (40, 300), np.int8, 0.1), _codes(rng, (300, 50), np.int16, 0.1))
        for _ in range(6)
    ]
    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(lambda ab: dp.gemm_int(*ab, threads=2)[0], jobs * 3))
    for (a, b), c in zip(jobs * 3, results, strict=True):
        np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("da", "db"), [(np.int8, np.int8), (np.int16, np.int16), (np.int8, np.int16)]
)
def test_extreme_codes_over_long_k(kernel: str, da: type, db: type) -> None:
    """Every operand at its most negative or most positive code over K = 1500: the largest
    partial sums the kernels' int32 blocks must hold (the 64-bit accumulator never clamps)."""
    rng = np.random.default_rng(13)
    a: np.ndarray = np.where(
        rng.random((13, 1500)) < 0.5, np.iinfo(da).min, np.iinfo(da).max
    ).astype(da)
    b: np.ndarray = np.where(
        rng.random((1500, 35)) < 0.5, np.iinfo(db).min, np.iinfo(db).max
    ).astype(db)
    a[:, :700] = np.iinfo(da).min  # long same-sign runs
    b[:700, :] = np.iinfo(db).min
    c, stats = dp.gemm_int(a, b, acc_bits=64, kernel=kernel)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    assert stats.slow_rows == 0


def _gemm_in_child(seed: int) -> bool:
    rng = np.random.default_rng(seed)
    a = _codes(rng, (64, 200), np.int16, 0.1)
    b = _codes(rng, (200, 64), np.int16, 0.1)
    c, _ = dp.gemm_int(a, b, threads=2)
    return bool(np.array_equal(c, a.astype(np.int64) @ b.astype(np.int64)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()")
def test_forked_child_can_use_the_kernels() -> None:
    """The worker pool and the scratch cache are reset in a forked child, which has none of
    the parent's threads."""
    assert _gemm_in_child(1)  # the parent has started its pool
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_gemm_in_child, (2,)).get(timeout=60)


def test_fp32_products_are_rounded_before_the_sum() -> None:
    """With full 24-bit significands a fused multiply-add would round once instead of twice;
    the definition (and numpy) rounds the product, then the sum."""
    rng = np.random.default_rng(17)
    a = rng.standard_normal((9, 300)).astype(np.float32)
    b = rng.standard_normal((300, 11)).astype(np.float32)
    got = dp.gemm_float(a, b, threads=2)
    np.testing.assert_array_equal(got.view(np.uint32), ref.gemm_f32_ref(a, b).view(np.uint32))
    with np.errstate(all="ignore"):
        fused = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)
    assert not np.array_equal(got, fused)  # the inputs do exercise the product rounding
