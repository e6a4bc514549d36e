"""Convolution forward and both backward passes on DFXP codes against direct int64 numpy
definitions (gemm_reference), and the accumulator model through im2col."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_model import datapath as dp
from device_model import gemm_reference as ref

KERNELS = [k for k in ("portable", "avx512-vnni") if dp.kernel_available(k)]


def _codes(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    x: np.ndarray = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    x[rng.random(shape) < 0.25] = 0
    return x


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    nb, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    dx, dw = draw(st.sampled_from([np.int8, np.int16])), draw(st.sampled_from([np.int8, np.int16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return {
        "x": _codes(rng, (nb, c, h, w), dx),
        "w": _codes(rng, (o, c, kh, kw), dw),
        "dy": _codes(rng, (nb, o, ho, wo), dx),
        "stride": (sh, sw),
        "padding": (ph, pw),
    }


@pytest.mark.parametrize("kernel", KERNELS)
@given(case=conv_cases())
def test_forward_equals_direct_definition(kernel: str, case: dict) -> None:
    y, _ = dp.conv2d(
        case["x"],
        case["w"],
        stride=case["stride"],
        padding=case["padding"],
        acc_bits=64,
        kernel=kernel,
    )
    expect = ref.conv2d_ref(case["x"], case["w"], stride=case["stride"], padding=case["padding"])
    np.testing.assert_array_equal(y, expect)


@pytest.mark.parametrize("kernel", KERNELS)
@given(case=conv_cases())
def test_input_grad_equals_direct_definition(kernel: str, case: dict) -> None:
    hw = case["x"].shape[2:]
    dx, _ = dp.conv2d_input_grad(
        case["dy"],
        case["w"],
        hw,
        stride=case["stride"],
        padding=case["padding"],
        acc_bits=64,
        kernel=kernel,
    )
    expect = ref.conv2d_input_grad_ref(
        case["dy"], case["w"], hw, stride=case["stride"], padding=case["padding"]
    )
    np.testing.assert_array_equal(dx, expect)


@pytest.mark.parametrize("kernel", KERNELS)
@given(case=conv_cases())
def test_weight_grad_equals_direct_definition(kernel: str, case: dict) -> None:
    khw = case["w"].shape[2:]
    dw, _ = dp.conv2d_weight_grad(
        case["x"],
        case["dy"],
        khw,
        stride=case["stride"],
        padding=case["padding"],
        acc_bits=64,
        kernel=kernel,
    )
    expect = ref.conv2d_weight_grad_ref(
        case["x"], case["dy"], khw, stride=case["stride"], padding=case["padding"]
    )
    np.testing.assert_array_equal(dw, expect)


@given(case=conv_cases())
def test_input_grad_is_adjoint_of_forward(case: dict) -> None:
    """<conv(x, w), dy> = <x, conv_input_grad(dy, w)>: the law backprop relies on."""
    y, _ = dp.conv2d(
        case["x"], case["w"], stride=case["stride"], padding=case["padding"], acc_bits=64
    )
    dx, _ = dp.conv2d_input_grad(
        case["dy"],
        case["w"],
        case["x"].shape[2:],
        stride=case["stride"],
        padding=case["padding"],
        acc_bits=64,
    )
    lhs = int((y * case["dy"].astype(np.int64)).sum())
    rhs = int((case["x"].astype(np.int64) * dx).sum())
    assert lhs == rhs


@pytest.mark.parametrize("kernel", KERNELS)
@given(case=conv_cases(), mode=st.sampled_from(["saturate", "wrap"]))
def test_narrow_accumulator_follows_channel_then_window_order(
    kernel: str, case: dict, mode: str
) -> None:
    x, w = case["x"], case["w"]
    y, _ = dp.conv2d(
        x,
        w,
        stride=case["stride"],
        padding=case["padding"],
        acc_bits=16,
        acc_mode=mode,
        kernel=kernel,
    )
    cols = ref.im2col_ref(x, w.shape[2:], case["stride"], case["padding"])
    flat = ref.gemm_int_ref(
        cols, w.reshape(w.shape[0], -1).astype(np.int64).T, acc_bits=16, acc_mode=mode
    )
    nb, ho, wo = x.shape[0], y.shape[2], y.shape[3]
    np.testing.assert_array_equal(y, flat.reshape(nb, ho, wo, -1).transpose(0, 3, 1, 2))


def test_statistics_count_im2col_operands() -> None:
    rng = np.random.default_rng(4)
    x = _codes(rng, (2, 3, 6, 5), np.int8)
    w = _codes(rng, (4, 3, 3, 3), np.int8)
    _, stats = dp.conv2d(x, w, stride=2, padding=1)
    cols = ref.im2col_ref(x, (3, 3), 2, 1)
    expect = ref.gemm_stats_ref(cols, w.reshape(4, -1).T)
    assert stats.counts() == expect


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: dp.conv2d(np.ones((1, 2, 4, 4), np.int8), np.ones((3, 1, 3, 3), np.int8)),
            "channels",
        ),
        (lambda: dp.conv2d(np.ones((2, 4, 4), np.int8), np.ones((3, 2, 3, 3), np.int8)), "4-D"),
        (
            lambda: dp.conv2d(np.ones((1, 2, 4, 4), np.float32), np.ones((3, 2, 3, 3), np.int8)),
            "int8 or int16",
        ),
        (
            lambda: dp.conv2d(np.ones((1, 2, 2, 2), np.int8), np.ones((3, 2, 3, 3), np.int8)),
            "larger than",
        ),
        (
            lambda: dp.conv2d(
                np.ones((1, 2, 4, 4), np.int8), np.ones((3, 2, 3, 3), np.int8), stride=0
            ),
            "stride",
        ),
        (
            lambda: dp.conv2d(
                np.ones((1, 2, 4, 4), np.int8), np.ones((3, 2, 3, 3), np.int8), padding=-1
            ),
            "padding",
        ),
        (
            lambda: dp.conv2d_input_grad(
                np.ones((1, 3, 3, 3), np.int8), np.ones((3, 2, 3, 3), np.int8), (4, 4)
            ),
            "does not match",
        ),
        (
            lambda: dp.conv2d_weight_grad(
                np.ones((2, 2, 4, 4), np.int8), np.ones((1, 3, 2, 2), np.int8), (3, 3)
            ),
            "batch",
        ),
    ],
)
def test_bad_input(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
