"""Tensor round trips: every dtype the device lists reads back as what was sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import host
from protocol import messages as m
from protocol import numerics
from protocol.dtypes import DType
from protocol.messages import HfpStage

TID = 0x40
INTEGER: dict[str, type[np.integer[Any]]] = {
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "uint8": np.uint8,
    "int64": np.int64,
}


def _values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * 3
    x.flat[0] = 0.0
    return x


def _send_format(dev: host.Device, x: np.ndarray, fmt: str, params: dict[str, Any]) -> np.ndarray:
    """Encode ``x`` in ``fmt`` with ``params`` (the host's numerics), upload it with its
    descriptor and return the values the reference says it holds."""
    codes = numerics.encode(x, fmt, **params)
    scale: dict[str, int] = {}
    if "frac_bits" in params:
        scale["frac_bits"] = int(params["frac_bits"])
    if "shared_exp" in params:
        scale["shared_exp"] = int(params["shared_exp"])
    if fmt == "hfp8":
        scale["exp_bias"] = int(params["bias"])
        scale["stage"] = int(HfpStage.BACKWARD if params["stage"] == "backward" else 0)
    desc, data = m.tensor_message(TID, codes, DType.from_name(fmt), scale)
    dev._upload(desc, data)
    return np.asarray(numerics.decode(codes, fmt, **params), np.float32)


def _format_params(dtypes: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for fmt in dtypes:
        if fmt in INTEGER:
            continue
        if fmt == "hfp8":
            out += [
                ("hfp8", {"bias": 7, "stage": "forward"}),
                ("hfp8", {"bias": 11, "stage": "forward"}),
            ]
            out.append(("hfp8", {"bias": 15, "stage": "backward"}))
        else:
            out.append((fmt, {}))
    return out


def test_every_number_format_round_trips_bit_for_bit(dev: host.Device) -> None:
    x = _values((3, 7), seed=1)
    checked = []
    for fmt, given in _format_params(dev.info()["dtypes"]):
        params = {**numerics.scale_params(x, fmt), **given}
        want = _send_format(dev, x, fmt, params)
        got = dev._download(TID)
        assert got.shape == x.shape, fmt
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=fmt)
        checked.append(fmt)
    assert "fp32" in checked


@pytest.mark.parametrize("fmt", sorted(INTEGER))
def test_every_integer_dtype_round_trips_exactly(dev: host.Device, fmt: str) -> None:
    if fmt not in dev.info()["dtypes"]:
        pytest.skip(f"the device does not list {fmt}")
    info = np.iinfo(INTEGER[fmt])
    vals = np.array([info.min, info.max, 0, 1, info.max // 3], dtype=INTEGER[fmt])
    desc, data = m.tensor_message(TID, vals, DType.from_name(fmt))
    dev._upload(desc, data)
    read = dev._call(m.Opcode.TENSOR_READ, {"id": TID, "offset": 0, "length": 1 << 31})
    assert read["tensor"]["nbytes"] == len(data)
    assert read["tensor"]["dtype"] == DType.from_name(fmt)
    assert read["data"] == data[: len(read["data"])]


def test_a_tensor_larger_than_a_frame_is_chunked_both_ways(dev: host.Device) -> None:
    n = 3 * dev.runner.max_payload  # fp32: 12 frames' worth of bytes
    x = _values((n,), seed=2)
    dev._upload_array(TID, x, "fp32")
    np.testing.assert_array_equal(dev._download(TID), x)
