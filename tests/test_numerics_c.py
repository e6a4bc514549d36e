"""The C datapath's number formats against the numpy reference: bit for bit, everywhere.

``device_model.numerics`` (C) and ``protocol.numerics`` (numpy) implement docs/numerics.md
independently; every test here runs both on the same input and requires identical codes,
identical decoded float32 words, identical per-tensor parameters, identical random values and
identical errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_model import _chip
from device_model import numerics as cnum
from protocol import numerics as ref

ROUNDINGS = ("nearest", "stochastic", "truncate")
DFXP = tuple(f"dfxp{n}" for n in range(4, 17))
SCALED = ("fp8-seb", "flex16", *DFXP)  # formats with a per-tensor parameter

# (format, params): every format, with per-tensor parameters both given and computed.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {}),
    ("fp16", {}),
    ("bf16", {}),
    ("tf32", {}),
    ("dlfloat16", {}),
    ("e4m3", {}),
    ("e5m2", {}),
    ("hfp8", {}),
    ("hfp8", {"bias": 0}),
    ("hfp8", {"bias": 11}),
    ("hfp8", {"bias": 15}),
    ("hfp8", {"stage": "backward"}),
    ("fp8-seb", {}),
    ("fp8-seb", {"shared_exp": -64}),
    ("fp8-seb", {"shared_exp": 5}),
    ("fp8-seb", {"shared_exp": 64}),
    ("flex16", {}),
    ("flex16", {"shared_exp": -20}),
    ("flex16", {"shared_exp": 64}),
    *[(f, {}) for f in DFXP],
    *[(f, {"frac_bits": fb}) for f in DFXP for fb in (-3, 5)],
    ("dfxp8", {"frac_bits": -64}),
    ("dfxp16", {"frac_bits": 64}),
    ("fgmp", {}),
    ("fgmp", {"threshold": 2.0}),
]
CASE_IDS = [f"{f}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for f, p in CASES]

SPECIALS = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, 448.0, 464.0,
     480.0, 57344.0, 61440.0, 65504.0, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 2.0**-126,
     2.0**-149, 2.0**-31, 2.0**-32 * (1 + 2.0**-9), 2.0**32 * (1 + 511 / 512), 127.5, -128.5,
     32767.5, 3.4028235e38, -3.4028235e38, 1e-45, 7.0e-39],
    dtype=np.float32,
)  # fmt: skip


def u32(a: np.ndarray) -> np.ndarray:
    """The float32 words of a float32 array (bit-exact comparison, NaN and -0 included)."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32)).view(np.uint32)


def assert_same_codes(c: np.ndarray, r: np.ndarray) -> None:
    c, r = np.asarray(c), np.asarray(r)
    assert c.dtype == r.dtype and c.shape == r.shape
    np.testing.assert_array_equal(c, r)


def assert_same_values(c: np.ndarray, r: np.ndarray) -> None:
    c, r = np.asarray(c), np.asarray(r)
    assert c.dtype == r.dtype == np.float32 and c.shape == r.shape
    np.testing.assert_array_equal(u32(c), u32(r))


def grid_values(fmt: str, params: dict[str, Any], codes: np.ndarray) -> np.ndarray:
    """Representable values near the given codes, their midpoints (ties) and +-1 ulp of those."""
    dt = ref.code_dtype(fmt)
    info = np.iinfo(dt)
    c0 = (codes % (int(info.max) - int(info.min))) + int(info.min)
    c0 = np.minimum(c0, int(info.max) - 1)
    p = dict(params)
    if fmt in ("fp8-seb", "flex16"):
        p.setdefault("shared_exp", 0)
    if fmt.startswith("dfxp"):
        p.setdefault("frac_bits", 0)
    with np.errstate(all="ignore"):
        v0 = ref.decode(c0.astype(dt), fmt, **p).astype(np.float64)
        v1 = ref.decode((c0 + 1).astype(dt), fmt, **p).astype(np.float64)
        mid = ((v0 + v1) / 2).astype(np.float32)
        return np.concatenate(
            [
                v0.astype(np.float32),
                mid,
                np.nextafter(mid, np.float32(np.inf)),
                np.nextafter(mid, np.float32(-np.inf)),
            ]
        )


@st.composite
def tensors(draw: st.DrawFn, fmt: str, params: dict[str, Any]) -> np.ndarray:
    """float32 arrays mixing random bit patterns, specials, ties and grid values of fmt."""
    words = draw(st.lists(st.integers(0, 2**32 - 1), max_size=40))
    specials = draw(st.lists(st.sampled_from(list(SPECIALS)), max_size=8))
    codes = draw(st.lists(st.integers(0, 2**16), max_size=12))
    scale = draw(st.integers(-40, 40))
    parts = [
        np.array(words, dtype=np.uint32).view(np.float32),
        np.array(specials, dtype=np.float32),
        grid_values(fmt, params, np.array(codes, dtype=np.int64)),
        (np.array(codes, dtype=np.float64) * 2.0**scale / 7).astype(np.float32),
    ]
    x = np.concatenate(parts)
    order = draw(st.permutations(range(x.size)))
    return x[np.array(order, dtype=np.int64)] if x.size else x


# Each example runs every rounding x saturate combination, so fewer examples are needed.
FEW = settings(max_examples=max(8, settings().max_examples // 6))


@pytest.mark.parametrize(("fmt", "params"), CASES, ids=CASE_IDS)
@FEW
@given(data=st.data())
def test_encode_decode_quantize_match_reference(
    fmt: str, params: dict[str, Any], data: st.DataObject
) -> None:
    x = data.draw(tensors(fmt, params))
    seed = data.draw(st.integers(-(2**63), 2**64 - 1))
    stream = data.draw(st.integers(0, 2**64 - 1))
    used = dict(params)
    if fmt in SCALED:
        used = {**ref.scale_params(x, fmt), **params}
    for rounding in ROUNDINGS:
        for saturate in (None, True, False):
            kw = dict(rounding=rounding, seed=seed, stream=stream, saturate=saturate, **params)
            codes = cnum.encode(x, fmt, **kw)
            assert_same_codes(codes, ref.encode(x, fmt, **kw))
            assert_same_values(cnum.decode(codes, fmt, **used), ref.decode(codes, fmt, **used))
            assert_same_values(cnum.quantize(x, fmt, **kw), ref.quantize(x, fmt, **kw))


@pytest.mark.parametrize(("fmt", "params"), CASES, ids=CASE_IDS)
@FEW
@given(data=st.data())
def test_rbits_honoured_like_reference(
    fmt: str, params: dict[str, Any], data: st.DataObject
) -> None:
    """Injected random values, extremes included, instead of the generator's."""
    x = data.draw(tensors(fmt, params))
    words = st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
    r = np.array(data.draw(st.lists(words, min_size=x.size, max_size=x.size)), dtype=np.uint32)
    for saturate in (None, True, False):
        kw = dict(rounding="stochastic", rbits=r, saturate=saturate, **params)
        assert_same_codes(cnum.encode(x, fmt, **kw), ref.encode(x, fmt, **kw))
        assert_same_values(cnum.quantize(x, fmt, **kw), ref.quantize(x, fmt, **kw))


@pytest.mark.parametrize("frac_bits", [-64, 0, 30])
def test_fixed_sr_of_tiny_negative_values_follows_the_spec(frac_bits: int) -> None:
    """y = x * 2^f in (-2^-29, 0): floor(y) = -1, F = floor((y + 1) * 2^32) = 2^32 - ceil(-y *
    2^32); the result is -1 + (r < F). Computed here with Python integers (exact), because
    y + 1 is not a float64 for such y (the numpy reference once got F wrong here)."""
    ys = [-(2.0**-60), -(2.0**-33) * 3, -(2.0**-30) * 1.75, -(2.0**-100), -(2.0**-31) * 3.5]
    xs = np.array([y * 2.0**-frac_bits for y in ys], dtype=np.float32)
    for x in xs:
        num, den = (float(x) * 2.0**frac_bits).as_integer_ratio()  # y = num/den, den = 2^k
        g = -((num * 2**32) // den)  # ceil(-y * 2^32)
        F = 2**32 - g
        for rv in sorted(v for v in {F - 1, F, F + 1, 2**32 - 1} if 0 <= v < 2**32):
            got = cnum.encode(
                np.array([x]), "dfxp8", rounding="stochastic", frac_bits=frac_bits,
                rbits=np.array([rv], dtype=np.uint32),
            )  # fmt: skip
            assert int(got[0]) == -1 + (rv < F), (x, rv, F)


# A strided sample of 2^20 float32 words: the stride is below 2^23, so every exponent field
# (and both signs) is hit many times, with varied mantissas.
STRIDE = 4093
SAMPLE = (np.arange(1 << 20, dtype=np.uint64) * STRIDE % (1 << 32)).astype(np.uint32)


@pytest.mark.parametrize(("fmt", "params"), CASES, ids=CASE_IDS)
def test_strided_sample_nearest_matches_reference(fmt: str, params: dict[str, Any]) -> None:
    x = SAMPLE.view(np.float32)
    assert_same_codes(cnum.encode(x, fmt, **params), ref.encode(x, fmt, **params))


def _all_codes(fmt: str, params: dict[str, Any]) -> np.ndarray | None:
    dt = ref.code_dtype(fmt)
    if fmt == "tf32":
        return np.arange(1 << 19, dtype=np.uint32)
    if fmt == "fgmp":
        low = np.arange(256, dtype=np.uint32)
        return np.concatenate([low, 0x10000 | np.arange(1 << 16, dtype=np.uint32)])
    if dt.itemsize > 2:
        return None
    info = np.iinfo(dt)  # dfxpN below 8 bits: out-of-range int8 codes decode unchecked
    return np.arange(int(info.min), int(info.max) + 1).astype(dt)


@pytest.mark.parametrize(("fmt", "params"), CASES, ids=CASE_IDS)
def test_every_code_decodes_like_reference(fmt: str, params: dict[str, Any]) -> None:
    codes = _all_codes(fmt, params)
    if codes is None:  # fp32: every code is its own float32 word
        codes = SAMPLE
    p = dict(params)
    if fmt in ("fp8-seb", "flex16"):
        p.setdefault("shared_exp", -7)
    if fmt.startswith("dfxp"):
        p.setdefault("frac_bits", 9)
    assert_same_values(cnum.decode(codes, fmt, **p), ref.decode(codes, fmt, **p))


@given(
    n=st.integers(0, 300),
    seed=st.integers(-(2**63), 2**64 - 1),
    stream=st.integers(-(2**63), 2**64 - 1),
    offset=st.one_of(st.integers(0, 10**6), st.integers(2**40, 2**40 + 10**6),
                     st.integers(2**64 - 1000, 2**64 - 1)),
)  # fmt: skip
def test_sr_bits_match_reference(n: int, seed: int, stream: int, offset: int) -> None:
    got = cnum.sr_bits(n, seed=seed, stream=stream, offset=offset)
    assert got.dtype == np.uint32 and got.shape == (n,)
    np.testing.assert_array_equal(got, ref.sr_bits(n, seed=seed, stream=stream, offset=offset))


def _mix64(z: int) -> int:
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_sr_bits_follow_the_formula_with_python_ints() -> None:
    """The generator of docs/numerics.md evaluated with Python ints, at large indices too."""
    m, g = (1 << 64) - 1, 0x9E3779B97F4A7C15
    for seed, stream, offset in [(0, 0, 0), (-1, 3, 2**40 + 5), (2**63 + 1, 2**64 - 1, 2**62)]:
        key = _mix64((seed & m) ^ _mix64((stream + g) & m))
        want = [_mix64((key + (offset + i) * g) & m) >> 32 for i in range(5)]
        assert cnum.sr_bits(5, seed=seed, stream=stream, offset=offset).tolist() == want


def test_element_index_is_the_flat_index_of_the_tensor() -> None:
    """SR on a 2-D tensor uses r[i] of its flat C-order index: same as rbits = sr_bits(n)."""
    x = np.linspace(-3, 3, 60, dtype=np.float32).reshape(6, 10) / 7
    r = cnum.sr_bits(60, seed=9, stream=4).reshape(6, 10)
    for fmt in ("dfxp8", "e4m3", "bf16", "fgmp"):
        a = cnum.encode(x, fmt, rounding="stochastic", seed=9, stream=4)
        b = cnum.encode(x, fmt, rounding="stochastic", rbits=r)
        assert_same_codes(a, b)


@pytest.mark.parametrize("fmt", SCALED)
@given(words=st.lists(st.integers(0, 2**32 - 1), max_size=20), scale=st.integers(-140, 127))
def test_scale_params_match_reference(fmt: str, words: list[int], scale: int) -> None:
    x = np.array(words, dtype=np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):  # signalling NaNs
        wide = x.astype(np.float64) * 2.0**scale  # float64: cast to float32 first (overflows)
    for arr in (x, wide):
        got = cnum.scale_params(arr, fmt)
        assert got == ref.scale_params(arr, fmt)
        assert all(type(v) is int for v in got.values())


@pytest.mark.parametrize("fmt", SCALED)
def test_scale_params_edge_tensors(fmt: str) -> None:
    for x in ([], [0.0, -0.0], [np.inf, np.nan], [127.0], [127.5], [448.0], [448.5], [32767.0],
              [32767.5], [2.0**-149], [3.4028235e38], [-5.0, 4.0]):  # fmt: skip
        assert cnum.scale_params(x, fmt) == ref.scale_params(x, fmt), x


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "e4m3", "hfp8", "fgmp", "dlfloat16"])
def test_scale_params_of_unscaled_formats(fmt: str) -> None:
    assert cnum.scale_params([1.0, 2.0], fmt) == ref.scale_params([1.0, 2.0], fmt)


def test_formats_and_code_dtypes_match_reference() -> None:
    assert tuple(cnum.FORMATS) == tuple(ref.FORMATS)
    for fmt in ref.FORMATS:
        assert cnum.code_dtype(fmt) == ref.code_dtype(fmt)


@given(data=st.data())
def test_outlier_ratio_matches_reference(data: st.DataObject) -> None:
    x = data.draw(tensors("fgmp", {}))
    threshold = data.draw(st.sampled_from([448.0, 1.0, 1e-3, 65504.0]))
    codes = ref.encode(x, "fgmp", threshold=threshold)
    assert cnum.outlier_ratio(codes) == ref.outlier_ratio(codes)


# -------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize(("fmt", "params"), CASES, ids=CASE_IDS)
def test_shapes_layouts_and_input_dtypes(fmt: str, params: dict[str, Any]) -> None:
    base = (np.arange(-60, 60, dtype=np.float64) * 0.37 - 1.1) ** 3
    inputs: list[Any] = [
        np.zeros(0, dtype=np.float32),  # zero-size
        np.zeros((3, 0), dtype=np.float32),
        np.float32(2.7),  # numpy scalar
        np.array(-1.3, dtype=np.float32),  # 0-d
        base,  # float64: numpy's nearest cast to float32 comes first
        base.reshape(8, 15)[:, ::2],  # non-contiguous
        base.reshape(8, 15).T,  # Fortran order
        np.asarray(base, dtype=np.float16),
        [1.0, -2.5, 3],  # a list
        7,  # a Python int
        np.broadcast_to(np.float32(1.37), (3, 4)),  # zero strides, read-only
        base.astype(">f4"),  # big-endian
    ]
    for x in inputs:
        for rounding in ROUNDINGS:
            kw = dict(rounding=rounding, seed=5, **params)
            c, r = cnum.encode(x, fmt, **kw), ref.encode(x, fmt, **kw)
            assert_same_codes(c, r)
            assert np.shape(c) == np.shape(x)
            assert_same_values(cnum.quantize(x, fmt, **kw), ref.quantize(x, fmt, **kw))


def test_two_threads_give_the_single_thread_result() -> None:
    """Large arrays are split across two threads; the split must not change any bit."""
    x = (np.random.default_rng(3).standard_normal(600_001) * 5).astype(np.float32)
    cases = [("dfxp8", "stochastic"), ("e4m3", "stochastic"), ("dlfloat16", "nearest"),
             ("fgmp", "stochastic"), ("flex16", "truncate")]  # fmt: skip
    try:
        _chip.lib.mt_numerics_set_threads(2)
        two = [cnum.encode(x, f, rounding=r, seed=1) for f, r in cases]
        q2 = cnum.quantize(x, "dfxp8", rounding="stochastic", seed=1)
        _chip.lib.mt_numerics_set_threads(1)
        one = [cnum.encode(x, f, rounding=r, seed=1) for f, r in cases]
        q1 = cnum.quantize(x, "dfxp8", rounding="stochastic", seed=1)
    finally:
        _chip.lib.mt_numerics_set_threads(2)
    for a, b in zip(one, two, strict=True):
        assert_same_codes(a, b)
    assert_same_values(q1, q2)
    assert_same_codes(two[0], ref.encode(x, "dfxp8", rounding="stochastic", seed=1))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_portable_loops_give_the_vectorised_result(rounding: str) -> None:
    """The baseline-ISA loops (MICROTRAIN_KERNEL=portable) and the AVX2/AVX-512 clones
    picked at load time must agree on every bit (the clones are what the other tests run)."""
    x = SAMPLE[::4].view(np.float32)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("dfxp8", {"frac_bits": 3}), ("dfxp13", {"frac_bits": -2}), ("flex16", {}),
        ("e4m3", {}), ("bf16", {}), ("tf32", {}), ("dlfloat16", {}), ("fp8-seb", {}),
    ]  # fmt: skip
    for sat in (True, False):
        try:
            _chip.lib.mt_numerics_set_portable(1)
            slow = [cnum.encode(x, f, rounding=rounding, saturate=sat, **p) for f, p in cases]
            slow_q = cnum.quantize(x, "dfxp8", rounding=rounding, saturate=sat, frac_bits=3)
        finally:
            _chip.lib.mt_numerics_set_portable(0)
        fast = [cnum.encode(x, f, rounding=rounding, saturate=sat, **p) for f, p in cases]
        fast_q = cnum.quantize(x, "dfxp8", rounding=rounding, saturate=sat, frac_bits=3)
        for a, b in zip(slow, fast, strict=True):
            assert_same_codes(a, b)
        assert_same_values(slow_q, fast_q)


# -------------------------------------------------------------------------- bad input

BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("encode", ([1.0], "fp12"), {}),
    ("encode", ([1.0], 8), {}),
    ("encode", ([1.0], "dfxp3"), {}),
    ("encode", ([1.0], "dfxp17"), {}),
    ("encode", ([1.0], "e4m3"), {"rounding": "up"}),
    ("encode", ([1.0], "e4m3"), {"frac_bits": 3}),
    ("encode", ([1.0], "dfxp8"), {"frac_bits": 65}),
    ("encode", ([1.0], "dfxp8"), {"frac_bits": -65}),
    ("encode", ([1.0], "dfxp8"), {"frac_bits": 1.5}),
    ("encode", ([1.0], "dfxp8"), {"shared_exp": 1}),
    ("encode", ([1.0], "fp8-seb"), {"shared_exp": 99}),
    ("encode", ([1.0], "flex16"), {"shared_exp": -65}),
    ("encode", ([1.0], "hfp8"), {"bias": 16}),
    ("encode", ([1.0], "hfp8"), {"bias": -1}),
    ("encode", ([1.0], "hfp8"), {"stage": "sideways"}),
    ("encode", ([1.0], "fgmp"), {"threshold": 0.0}),
    ("encode", ([1.0], "fgmp"), {"threshold": -1.0}),
    ("encode", ([1.0, 2.0], "e4m3"), {"rounding": "stochastic", "rbits": np.zeros(3, np.uint32)}),
    ("encode", ([1.0, 2.0], "e4m3"), {"rounding": "stochastic", "rbits": np.zeros(2, np.int64)}),
    ("quantize", ([1.0], "dfxp8"), {"rounding": "nearest-even"}),
    ("quantize", ([1.0], "bf16"), {"bias": 3}),
    ("decode", (np.zeros(2, np.int8), "dfxp8"), {}),
    ("decode", (np.zeros(2, np.uint8), "fp8-seb"), {}),
    ("decode", (np.zeros(2, np.int16), "flex16"), {}),
    ("decode", (np.zeros(2, np.uint8), "e4m3"), {"shared_exp": 2}),
    ("decode", (np.zeros(2, np.uint8), "nope"), {}),
    ("scale_params", ([1.0], "fp7"), {}),
    ("code_dtype", ("fp7",), {}),
    ("sr_bits", (-1,), {}),
    ("sr_bits", (4,), {"seed": 1.5}),
    ("encode", ([1.0], "e4m3"), {"stream": "a"}),
    ("encode", ([1.0], "e4m3"), {"saturate": 1}),
    ("encode", ([1.0], "hfp8"), {"stage": 1}),
    ("decode", (np.zeros(2, np.float32), "e4m3"), {}),
    ("decode", (np.zeros(2, np.int8), "dfxp8"), {"frac_bits": 70}),
    ("outlier_ratio", (np.zeros(2, np.float64),), {}),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), BAD_CALLS)
def test_bad_input_raises_like_reference(
    fn: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(Exception) as want:
        getattr(ref, fn)(*args, **kwargs)
    with pytest.raises(type(want.value)) as got:
        getattr(cnum, fn)(*args, **kwargs)
    assert str(got.value) == str(want.value)


# ------------------------------------------------- AVX-512 fixed point and generator


def _raw_encode_fixed(
    words: np.ndarray, nbits: int, frac: int, rnd: int, sat: int, offset: int, rb: Any
) -> tuple[np.ndarray, np.ndarray]:
    """mt_encode_fixed and mt_quantize_fixed called directly (with an element offset, which
    the Python API always passes as 0)."""
    x = words.view(np.float32)
    codes = np.empty(x.size, np.int8 if nbits <= 8 else np.int16)
    vals = np.empty(x.size, np.float32)
    ffi, lib = _chip.ffi, _chip.lib
    rptr = ffi.NULL if rb is None else ffi.from_buffer("uint32_t[]", rb)
    xp = ffi.from_buffer("float[]", x)
    lib.mt_encode_fixed(
        xp, ffi.from_buffer(codes), x.size, nbits, frac, rnd, sat, 7, 9, offset, rptr
    )
    lib.mt_quantize_fixed(
        xp, ffi.from_buffer("float[]", vals), x.size, nbits, frac, rnd, sat, 7, 9, offset, rptr
    )
    return codes, vals


@given(
    words=st.lists(
        st.one_of(
            st.integers(0, 2**32 - 1),
            st.sampled_from(SPECIALS.view(np.uint32).tolist()),
            # values near the code range and the rounding boundaries of small frac_bits
            st.integers(0x3F000000, 0x47800000),
            st.integers(0xBF000000, 0xC7800000),
        ),
        max_size=70,
    ),
    nbits=st.integers(4, 16),
    frac=st.integers(-64, 64),
    rounding=st.sampled_from([0, 1, 2]),
    sat=st.sampled_from([0, 1]),
    offset=st.integers(0, 2**64 - 1),
    injected=st.booleans(),
)
def test_fixed_point_avx512_loops_equal_portable_loops(
    words: list[int], nbits: int, frac: int, rounding: int, sat: int, offset: int, injected: bool
) -> None:
    """The 32-bit-lane AVX-512 fixed-point encoder (and its generator, from any element
    offset) against the portable loops, codes and values, every width, scale and mode."""
    w = np.array(words, np.uint32)
    rb = None
    if injected:
        rb = np.random.default_rng(len(words)).integers(0, 2**32, w.size, dtype=np.uint32)
    fast = _raw_encode_fixed(w, nbits, frac, rounding, sat, offset, rb)
    try:
        _chip.lib.mt_numerics_set_portable(1)
        slow = _raw_encode_fixed(w, nbits, frac, rounding, sat, offset, rb)
    finally:
        _chip.lib.mt_numerics_set_portable(0)
    assert_same_codes(fast[0], slow[0])
    assert_same_values(fast[1], slow[1])


@given(n=st.integers(0, 100), offset=st.integers(0, 2**64 - 1), seed=st.integers(0, 2**64 - 1))
def test_sr_bits_avx512_equal_portable_from_any_offset(n: int, offset: int, seed: int) -> None:
    fast = cnum.sr_bits(n, seed=seed, stream=3, offset=offset)
    try:
        _chip.lib.mt_numerics_set_portable(1)
        slow = cnum.sr_bits(n, seed=seed, stream=3, offset=offset)
    finally:
        _chip.lib.mt_numerics_set_portable(0)
    np.testing.assert_array_equal(fast, slow)


def test_amax_of_large_arrays_split_across_threads() -> None:
    """The amax pass runs on two threads above 2^18 elements; the split cannot change it,
    wherever the largest magnitude lies (first half, second half, next to inf and NaN)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1 << 18) + 1000).astype(np.float32)
    x[rng.integers(0, x.size, 50)] = np.float32(np.nan)
    x[7] = np.float32(np.inf)
    for pos in (3, x.size // 2 - 1, x.size // 2 + 5, x.size - 1):
        y = x.copy()
        y[pos] = np.float32(-1e6)
        for fmt in ("dfxp8", "flex16", "fp8-seb"):
            assert cnum.scale_params(y, fmt) == ref.scale_params(y, fmt)


@pytest.mark.parametrize("fmt", [*DFXP, "flex16"])
@FEW
@given(data=st.data())
def test_encode_values_is_encode_then_decode(fmt: str, data: st.DataObject) -> None:
    """encode_values (one C pass) = the reference's codes and their decoded values, with
    the scale given or computed, in every rounding mode."""
    x = data.draw(tensors(fmt, {}))
    name = "frac_bits" if fmt.startswith("dfxp") else "shared_exp"
    params = data.draw(st.sampled_from([{}, {name: -7}, {name: 3}, {name: 64}]))
    for rounding in ROUNDINGS:
        kw = dict(rounding=rounding, seed=5, stream=2, **params)
        codes, values = cnum.encode_values(x, fmt, **kw)
        used = params or ref.scale_params(x, fmt)
        r = ref.encode(x, fmt, **kw)
        assert_same_codes(codes, r)
        assert_same_values(values, ref.decode(r, fmt, **used))


def test_encode_values_refuses_other_formats() -> None:
    with pytest.raises(ValueError, match="fixed-point format"):
        cnum.encode_values(np.ones(3, np.float32), "e4m3")


@pytest.mark.parametrize("fmt", ["dfxp4", "dfxp8", "dfxp11", "dfxp16", "flex16"])
@FEW
@given(data=st.data())
def test_engine_entry_points_equal_the_checked_ones(fmt: str, data: st.DataObject) -> None:
    """encode_fixed_values and scale_of (the training engine's unchecked entry points) give
    encode_values' and scale_params' results."""
    x = np.ascontiguousarray(data.draw(tensors(fmt, {})), np.float32)
    name = "frac_bits" if fmt.startswith("dfxp") else "shared_exp"
    assert {name: cnum.scale_of(x, fmt)} == cnum.scale_params(x, fmt)
    frac = data.draw(st.one_of(st.none(), st.integers(-64, 64)))
    sat = data.draw(st.sampled_from([None, True, False]))
    for rounding in ROUNDINGS:
        kw = dict(rounding=rounding, saturate=sat, seed=3, stream=77)
        codes, values, used = cnum.encode_fixed_values(x, fmt, frac, **kw)
        given_scale = {} if frac is None else {name: frac if name == "frac_bits" else -frac}
        c2, v2 = cnum.encode_values(x, fmt, **kw, **given_scale)
        assert_same_codes(codes, c2)
        assert_same_values(values, v2)
        scale = cnum.scale_params(x, fmt)[name] if frac is None else given_scale[name]
        assert used == (scale if name == "frac_bits" else -scale)
