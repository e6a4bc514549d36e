"""The engine's per-call shortcuts equal what they replace (cut Python overhead of the CNN
step): the unchecked StageWork, the fp32 QTensor, counter sums by nested maps, the thread
count pinned once per engine call."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

import device_model.costs as costs
from device_model import datapath
from device_model.costs import StageCounters, StageWork, counters_of, stage_work, sum_counters
from device_model.engine import _sum_counters
from device_model.engine_policy import QTensor, _fp32_tensor


def test_stage_work_equals_checked_record() -> None:
    kw: dict[str, Any] = dict(
        stage="ep",
        macs_total=1000,
        macs_executed=900,
        input_zero=60,
        output_zero=40,
        slice_ops=12345,
        a_bits=8,
        b_bits=8,
        dram_read_bytes=4000,
        dram_write_bytes=300,
        sram_read_bytes=4100,
        sram_write_bytes=300,
        transposed_read=True,
        transposed_bytes=77,
    )
    fast, checked = stage_work(**kw), StageWork(**kw)
    assert fast == checked and hash(fast) == hash(checked)
    assert fast.__dict__ == checked.__dict__
    assert stage_work(stage="ff", macs_total=5, macs_executed=5) == StageWork("ff", 5, 5)
    with pytest.raises(TypeError):
        stage_work(stage="ff", macs_total=5, macs_executed=5, no_such_field=1)
    with pytest.raises(TypeError):
        stage_work(stage="ff", macs_total=5)


def test_fp32_tensor_equals_dataclass() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a, b = _fp32_tensor(x), QTensor(x, "fp32")
    assert a == b and a.__dict__ == b.__dict__
    assert a.values is x and a.zeros_source is x and not a.is_int and a.bits == 32


def _old_engine_sum(items: list[StageCounters]) -> StageCounters:
    if len(items) == 1:
        return items[0]
    return counters_of(map(sum, zip(*map(costs._VALUES, items), strict=True)))


def _old_sum_counters(items: list[StageCounters]) -> StageCounters:
    values = [costs._VALUES(c) for c in items]
    if not values:
        return StageCounters()
    return counters_of(map(sum, zip(costs._ZERO_VALUES, *values, strict=True)))


def test_counter_sums_equal_sum_builtin_order() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        k = rng.randint(0, 5)
        items = []
        for _ in range(k):
            energy = rng.choice([0.0, -0.0, rng.random() * 10 ** rng.randint(-5, 15)])
            ints = [rng.randint(0, 10**12) for _ in range(14)]
            items.append(counters_of([*ints[:10], energy, *ints[10:]]))
        pairs = [(sum_counters(items), _old_sum_counters(items))]
        if k:
            pairs.append((_sum_counters(items), _old_engine_sum(items)))
        for new, old in pairs:
            vn, vo = costs._VALUES(new), costs._VALUES(old)
            assert repr(vn) == repr(vo)
            assert [type(v) for v in vn] == [type(v) for v in vo]


def test_pinned_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROTRAIN_THREADS", "2")
    assert datapath._threads(None) == 2
    token = datapath.pin_threads()
    try:
        monkeypatch.setenv("MICROTRAIN_THREADS", "1")
        assert datapath._threads(None) == 2  # read once, at the pin
        inner = datapath.pin_threads()  # nested: keeps the outer count
        assert datapath._threads(None) == 2
        datapath.unpin_threads(inner)
        assert datapath._threads(None) == 2
        assert datapath._threads(3) == 3  # an explicit count still wins
    finally:
        datapath.unpin_threads(token)
    assert datapath._threads(None) == 1
    monkeypatch.setenv("MICROTRAIN_THREADS", "")
    assert datapath._threads(None) == 0
    monkeypatch.setenv("MICROTRAIN_THREADS", "x")
    with pytest.raises(ValueError, match="MICROTRAIN_THREADS"):
        datapath.pin_threads()
    monkeypatch.setenv("MICROTRAIN_THREADS", "17")
    with pytest.raises(ValueError, match=r"1\.\.16"):
        datapath._threads(None)
    with pytest.raises(ValueError):
        datapath._threads(0)


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.int16])
def test_zero_counts_narrow_and_wide(dtype: type) -> None:
    """Matrices of at most one vector a row (column counts kept in registers) and wider
    ones, C-ordered and row slices, against numpy."""
    rng = np.random.default_rng(3)
    for rows in (1, 2, 3, 17, 2048):
        for cols in (1, 5, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100):
            x: np.ndarray = (rng.standard_normal((rows, cols)) * 2).astype(dtype)
            x[rng.random(x.shape) < 0.3] = 0
            if dtype is np.float32:
                x[rng.random(x.shape) < 0.1] = -0.0
            wide: np.ndarray = np.zeros((rows, cols + 7), dtype)
            wide[:, :cols] = x
            for v in (x, wide[:, :cols], x.T):
                per_row, per_col = datapath.zero_counts(v)
                assert np.array_equal(per_row, (v == 0).sum(axis=1))
                assert np.array_equal(per_col, (v == 0).sum(axis=0))


def _im2col_take(x: np.ndarray, layer: Any) -> np.ndarray:
    """engine_layers.im2col's numpy gather (np.take of the cached positions)."""
    from device_model.engine_layers import _padded

    ph, pw = layer.padding
    ho, wo = layer.out_shape[1:]
    idx = datapath.im2col_positions(
        layer.in_shape, layer.kernel, layer.stride, layer.padding, (ho, wo)
    )
    flat = _padded(x, ph, pw).reshape(x.shape[0], -1)
    return np.take(flat, idx, axis=1).reshape(x.shape[0] * ho * wo, idx.size // (ho * wo))


@pytest.mark.parametrize(
    "geom",
    [
        dict(in_channels=1, out_channels=8, kernel_size=3, padding=1),
        dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(2, 1), padding=(0, 2)),
        dict(in_channels=2, out_channels=2, kernel_size=5, stride=3, padding=2),
        dict(in_channels=2, out_channels=2, kernel_size=1),
    ],
)
def test_im2col_c_equals_numpy_gather(geom: dict[str, Any]) -> None:
    from device_model.engine_layers import LayerSpec, build_layers, im2col

    (layer,) = build_layers((geom["in_channels"], 9, 7), [LayerSpec("conv2d", **geom)])
    rng = np.random.default_rng(5)
    xf = rng.standard_normal((4, geom["in_channels"], 9, 7)).astype(np.float32)
    xf[xf < -1] = -0.0
    xf[0, 0, 0, 0] = np.nan
    xn = np.nan_to_num(xf)
    for x in (
        xf,
        (xn * 30).astype(np.int8),
        (xn * 3000).astype(np.int16),
        xf.astype(np.float64),
        xf > 0,
    ):
        got, want = im2col(x, layer), _im2col_take(x, layer)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    # a non-contiguous input takes the numpy gather
    xt = np.ascontiguousarray(xf.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert im2col(xt, layer).tobytes() == _im2col_take(xt, layer).tobytes()


@pytest.mark.parametrize("nhwc", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_to_nchw_bias_equals_numpy(nhwc: bool, with_bias: bool) -> None:
    rng = np.random.default_rng(11)
    n, o, h, w = 3, 5, 4, 6
    y = (rng.standard_normal((n * h * w, o) if nhwc else (o, n * h * w)) * 1e3).astype(np.float32)
    y.flat[::7] = -0.0
    y.flat[3] = np.inf
    y.flat[5] = np.nan
    bias = (rng.standard_normal(o) * 1e-3).astype(np.float32) if with_bias else None
    moved = y.reshape(n, h, w, o).transpose(0, 3, 1, 2) if nhwc else y.reshape(o, n, h, w)
    want = np.ascontiguousarray(moved if nhwc else moved.transpose(1, 0, 2, 3))
    if bias is not None:
        want = np.add(want, bias.reshape(1, -1, 1, 1), dtype=np.float32)
    got = datapath.to_nchw_bias(y, n, o, (h, w), nhwc, bias)
    assert got.shape == want.shape and got.flags.c_contiguous
    assert got.tobytes() == want.tobytes()
