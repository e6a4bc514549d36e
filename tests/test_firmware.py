"""The firmware (device end of the protocol) driven by a host over the emu:// port.

``Host`` below is the test driver: protocol.link in the HOST role plus protocol.messages over a
pyserial ``emu://`` port, the same path a real host takes (host/ does not use it yet). Every
flow runs against a small numpy ``FakeEngine`` (linear/relu/flatten MLPs, exact float32 math)
and, once ``device_model.engine`` can be imported, against the real engine too.

Laws: every request gets exactly one response with its request id; bad input gets its specific
status and leaves the device usable (the model still answers FORWARD with the same output);
duplicate request ids are answered from the cache without executing again; random bytes and
random well-formed-but-wrong requests never crash the firmware and it answers HELLO after.
"""

from __future__ import annotations

import importlib
import random
import time
import zlib
from collections import deque
from typing import Any

import numpy as np
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

import device_model.emu_port  # noqa: F401  (registers emu://)
from device_model import firmware as fw_mod
from device_model.firmware import Firmware
from device_model.firmware_link import DeviceLink
from protocol import messages as m
from protocol.dtypes import CODE_DTYPE, DType
from protocol.link import Link, LinkConfig, Role, link_keys
from protocol.messages import (
    ALL_LAYERS,
    DEVICE_TENSOR_ID_BASE,
    NO_REQUEST_ID,
    Feature,
    ForwardFlags,
    LayerKind,
    Opcode,
    ParamKind,
    ResponseOpcode,
)
from protocol.status import Status

# ----------------------------------------------------------------------------- fake engine


class FakeEngineError(ValueError):
    """Stands in for EngineError: a ValueError carrying a protocol Status."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class FakeResult:
    def __init__(self, loss: float, counters: dict[str, Any], outputs: np.ndarray) -> None:
        self.loss, self.counters, self.outputs = loss, counters, outputs


class FakeEngine:
    """A float32 numpy MLP (linear, relu, flatten) with the Engine interface: enough to test the
    firmware's plumbing exactly. SGD with lr 0.1; counters: forward MACs only."""

    LR = 0.1

    def __init__(
        self,
        input_shape: tuple[int, ...],
        layers: list[tuple[str, dict[str, Any]]],
        preset: Any,
        *,
        init_seed: int = 0,
        weights: dict[str, np.ndarray] | None = None,
    ) -> None:
        rng = np.random.default_rng(init_seed)
        self.layers = layers
        self.params: dict[str, np.ndarray] = {}
        for i, (kind, kw) in enumerate(layers):
            if kind == "linear":
                shape = (kw["out_features"], kw["in_features"])
                self.params[f"{i}.weight"] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
                if kw["bias"]:
                    self.params[f"{i}.bias"] = np.zeros(shape[0], np.float32)
            elif kind not in ("relu", "flatten"):
                raise FakeEngineError(Status.UNSUPPORTED, f"fake engine has no {kind}")
        for k, v in (weights or {}).items():
            self.params[k] = np.array(v, np.float32)
        self.loss = "softmax_cross_entropy"
        self._acts: list[np.ndarray] | None = None
        self._macs = 0

    def memory_bytes(self) -> int:
        return 3 * 4 * sum(p.size for p in self.params.values())

    def configure(self, config: dict[str, Any]) -> None:
        self.loss = "mse" if config["loss"] == m.Loss.MSE else "softmax_cross_entropy"

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        acts = [x.reshape(x.shape[0], -1).astype(np.float32)]
        for i, (kind, kw) in enumerate(self.layers):
            a = acts[-1]
            if kind == "linear":
                self._macs += a.shape[0] * kw["in_features"] * kw["out_features"]
                a = a @ self.params[f"{i}.weight"].T
                if kw["bias"]:
                    a = a + self.params[f"{i}.bias"]
            elif kind == "relu":
                a = np.maximum(a, 0)
            acts.append(a.astype(np.float32))
        return acts

    def forward(self, x: np.ndarray, *, keep_activations: bool = False) -> np.ndarray:
        acts = self._run(x)
        self._acts = acts if keep_activations else None
        return acts[-1]

    def _update(self, acts: list[np.ndarray], err: np.ndarray) -> None:
        for i in reversed(range(len(self.layers))):
            kind, kw = self.layers[i]
            if kind == "relu":
                err = err * (acts[i] > 0)
            elif kind == "linear":
                w = self.params[f"{i}.weight"]
                gw = err.T @ acts[i]
                if kw["bias"]:
                    self.params[f"{i}.bias"] -= self.LR * err.sum(0)
                err = err @ w
                self.params[f"{i}.weight"] = w - self.LR * gw

    def _counters(self, before: int) -> dict[str, Any]:
        n = self._macs - before
        return {"ff": {"macs_total": n}, "total": {"macs_total": n}}

    def train_step(self, x: np.ndarray, target: np.ndarray) -> FakeResult:
        before = self._macs
        acts = self._run(x)
        y = acts[-1]
        if self.loss == "mse":
            loss = float(np.mean((y - target) ** 2))
            err = 2 * (y - target) / y.size
        else:
            p = np.exp(y - y.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            idx = np.arange(len(y))
            loss = float(-np.log(p[idx, target]).mean())
            err = p
            err[idx, target] -= 1
            err /= len(y)
        self._update(acts, err.astype(np.float32))
        self._acts = None
        return FakeResult(loss, self._counters(before), y)

    def backward(self, output_error: np.ndarray) -> FakeResult:
        assert self._acts is not None
        self._update(self._acts, output_error)
        self._acts = None
        return FakeResult(0.0, {}, output_error)

    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def counters(self) -> dict[str, Any]:
        return {"ff": {"macs_total": self._macs}, "total": {"macs_total": self._macs}}

    def reset_counters(self) -> None:
        self._macs = 0


def counting_executions(fw: Firmware) -> list[bytes]:
    """Wrap ``fw._execute`` so that every request it executes (not answered from the
    duplicate cache) is appended to the returned list."""
    runs: list[bytes] = []
    execute = fw._execute

    def counting(data: bytes, request_id: int) -> tuple[Status, bytes]:
        runs.append(data)
        return execute(data, request_id)

    fw._execute = counting  # type: ignore[method-assign]
    return runs


def fake_config(body: dict[str, Any], masks: dict[int, np.ndarray]) -> dict[str, Any]:
    return body


def _real_engine_available() -> bool:
    try:
        importlib.import_module("device_model.engine")
    except Exception:
        return False
    return True


ENGINES = [
    "fake",
    pytest.param(
        "real",
        marks=pytest.mark.skipif(
            not _real_engine_available(), reason="device_model.engine not available yet"
        ),
    ),
]


@pytest.fixture(params=ENGINES)
def engine_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once with the fake engine and once with the real one (when it exists)."""
    if request.param == "fake":
        monkeypatch.setattr(fw_mod, "default_engine_factory", FakeEngine)
        monkeypatch.setattr(fw_mod, "default_config_factory", fake_config)
    return str(request.param)


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fw_mod, "default_engine_factory", FakeEngine)
    monkeypatch.setattr(fw_mod, "default_config_factory", fake_config)


# ----------------------------------------------------------------------------- host driver


class DeviceError(Exception):
    def __init__(self, resp: m.ResponseMsg) -> None:
        super().__init__(f"{Status(resp.body['status']).name}: {resp.body['detail']}")
        self.status = Status(resp.body["status"])
        self.detail = resp.body["detail"]
        self.response = resp


class Host:
    """Test driver: a HOST link and the message codec over a pyserial port."""

    def __init__(self, url: str = "emu://hnpu-v2?seed=1", max_payload: int = 4096) -> None:
        self.port: Any = serial.serial_for_url(url, timeout=0)
        self.link = Link(Role.HOST, LinkConfig(max_payload=max_payload), rng=random.Random(3))
        self.next_id = 1
        self.pending: deque[int] = deque()

    def close(self) -> None:
        self.port.close()

    def _exchange(self) -> None:
        now = time.monotonic()
        self.link.poll(now)
        out = self.link.bytes_to_send(now)
        if out:
            self.port.write(out)
        data = self.port.read(self.port.in_waiting)
        if data:
            self.link.receive_bytes(data, time.monotonic())

    def send(self, message: bytes) -> None:
        self.pending.append(self.link.send_message(0, message))

    def receive(self, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        got: list[bytes] = []
        end = time.monotonic() + timeout
        while len(got) < count:
            self._exchange()
            for msg in self.link.take_messages():
                got.append(msg.payload)
                self.link.mark_answered(self.pending.popleft())
            if len(got) < count:
                assert time.monotonic() < end, "device did not answer"
                time.sleep(0.0005)
        return got

    def raw(self, message: bytes) -> m.ResponseMsg:
        self.send(message)
        (resp,) = self.receive()
        return m.decode_response(resp)

    def request(
        self, opcode: Opcode, body: dict[str, Any] | None = None, request_id: int | None = None
    ) -> m.ResponseMsg:
        if request_id is None:
            request_id, self.next_id = self.next_id, self.next_id + 1
        resp = self.raw(m.encode_request(opcode, request_id, body))
        assert resp.request_id == request_id
        return resp

    def call(self, opcode: Opcode, body: dict[str, Any] | None = None, **kw: Any) -> dict:
        resp = self.request(opcode, body, **kw)
        if resp.is_error:
            raise DeviceError(resp)
        assert resp.answers == opcode
        return resp.body

    def status(self, opcode: Opcode, body: dict[str, Any] | None = None) -> Status:
        """The ERROR status a request gets (fails if it succeeds)."""
        resp = self.request(opcode, body)
        assert resp.is_error, f"{opcode.name} unexpectedly succeeded: {resp.body}"
        assert resp.body["request_opcode"] == opcode
        assert resp.body["detail"]
        return Status(resp.body["status"])

    # -------------------------------------------------------------- operations

    def hello(self, **over: Any) -> dict:
        body = {
            "protocol_major": m.PROTOCOL_MAJOR,
            "protocol_minor": m.PROTOCOL_MINOR,
            "schema_hash": m.schema_hash(),
            "client": "test-host",
            **over,
        }
        return self.call(Opcode.HELLO, body)

    def upload(
        self,
        tid: int,
        codes: np.ndarray,
        dtype: DType,
        scale: dict[str, Any] | None = None,
        max_payload: int | None = None,
    ) -> dict:
        desc, data = m.tensor_message(tid, codes, dtype, scale)
        offset = self.call(Opcode.TENSOR_BEGIN, {"tensor": desc})["offset"]
        for chunk in m.data_chunks(tid, data, max_payload or self.link.max_payload, offset):
            self.call(Opcode.TENSOR_DATA, chunk)
        self.call(Opcode.TENSOR_END, {"id": tid})
        return desc

    def upload_f32(self, tid: int, values: np.ndarray) -> dict:
        return self.upload(tid, np.asarray(values, np.float32).view(np.uint32), DType.FP32)

    def download(self, tid: int) -> tuple[dict, bytes]:
        parts: list[bytes] = []
        offset = 0
        while True:
            r = self.call(Opcode.TENSOR_READ, {"id": tid, "offset": offset, "length": 1 << 30})
            desc = r["tensor"]
            assert r["offset"] == offset
            assert len(r["data"]) + m.READ_OVERHEAD <= self.link.max_payload
            parts.append(r["data"])
            offset += len(r["data"])
            if not r["data"] or offset >= desc["nbytes"]:
                break
        return desc, b"".join(parts)

    def download_f32(self, tid: int) -> np.ndarray:
        desc, data = self.download(tid)
        assert desc["dtype"] == DType.FP32
        return np.frombuffer(data, np.float32).reshape(desc["shape"])


@pytest.fixture
def host() -> Any:
    h = Host()
    yield h
    h.close()


# ----------------------------------------------------------------------------- model helpers


def linear(fin: int, fout: int, bias: bool = True) -> dict[str, Any]:
    return {
        "kind": LayerKind.LINEAR,
        "params": {"in_features": fin, "out_features": fout, "bias": int(bias)},
    }


RELU = {"kind": LayerKind.RELU, "params": {}}
FLATTEN = {"kind": LayerKind.FLATTEN, "params": {}}


def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> dict[str, Any]:
    return {
        "kind": LayerKind.CONV2D,
        "params": {
            "in_channels": cin,
            "out_channels": cout,
            "kernel_h": k,
            "kernel_w": k,
            "stride_h": stride,
            "stride_w": stride,
            "padding_h": pad,
            "padding_w": pad,
            "bias": 1,
        },
    }


def train_config(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "precision": {"flags": 0, "sr_seed": 0, "policy": []},
        "algorithm": {
            "kind": m.Algorithm.BP,
            "feedback": m.FeedbackKind.DENSE,
            "feedback_storage": m.FeedbackStorage.STORED,
            "feedback_density": 0.5,
            "feedback_seed": 0,
        },
        "loss": m.Loss.SOFTMAX_CROSS_ENTROPY,
        "optimizer": {"kind": m.Optimizer.SGD, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
        "trainable": {"mode": m.TrainableMode.ALL, "last_k": 0, "masks": []},
        "pruning": {"mode": m.PruningMode.NONE, "ratio": 0.0, "masks": []},
    }
    body.update(over)
    return body


def policy_entry(fmt: DType, layer: int = ALL_LAYERS) -> dict[str, Any]:
    return {
        "layer": layer,
        "tensor_class": m.TensorClass.WEIGHTS,
        "format": fmt,
        "rounding": m.Rounding.NEAREST,
        "frac_mode": m.FracMode.FIXED,
        "saturate": 1,
        "scale": m.zero_scale(),
    }


IN, HID, OUT, BATCH = 12, 16, 5, 8


class Mlp:
    """A 12-16-5 MLP deployed with host-chosen weights, and its numpy reference."""

    def __init__(self, h: Host, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = {
            (0, ParamKind.WEIGHT): rng.standard_normal((HID, IN)).astype(np.float32) * 0.3,
            (0, ParamKind.BIAS): rng.standard_normal(HID).astype(np.float32) * 0.1,
            (2, ParamKind.WEIGHT): rng.standard_normal((OUT, HID)).astype(np.float32) * 0.3,
            (2, ParamKind.BIAS): rng.standard_normal(OUT).astype(np.float32) * 0.1,
        }
        refs = []
        for n, (key, arr) in enumerate(self.w.items()):
            h.upload_f32(100 + n, arr)
            refs.append({"layer": key[0], "param": key[1], "tensor_id": 100 + n})
        self.define = h.call(
            Opcode.DEFINE_MODEL,
            {
                "input_shape": [IN],
                "layers": [linear(IN, HID), RELU, linear(HID, OUT)],
                "init_seed": 1,
                "weights": refs,
            },
        )
        h.call(Opcode.TRAIN_CONFIG, train_config())
        self.x = rng.standard_normal((BATCH, IN)).astype(np.float32)
        self.labels = rng.integers(0, OUT, BATCH).astype(np.int32)
        h.upload_f32(1, self.x)
        h.upload(2, self.labels, DType.INT32)

    def reference(self, x: np.ndarray) -> np.ndarray:
        a = np.maximum(x @ self.w[0, ParamKind.WEIGHT].T + self.w[0, ParamKind.BIAS], 0)
        return a @ self.w[2, ParamKind.WEIGHT].T + self.w[2, ParamKind.BIAS]

    def loss(self) -> float:
        y = self.reference(self.x).astype(np.float64)
        p = np.exp(y - y.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return float(-np.log(p[np.arange(BATCH), self.labels]).mean())


def forward_inline(h: Host, tid: int = 1, out_id: int = 50) -> np.ndarray:
    r = h.call(
        Opcode.FORWARD,
        {"input_id": tid, "output_id": out_id, "flags": ForwardFlags.INLINE_OUTPUT},
    )
    return np.frombuffer(r["data"], np.float32).reshape(r["output"]["shape"])


# ----------------------------------------------------------------------------- HELLO


def test_hello_reports_versions_preset_limits_and_capabilities(host: Host) -> None:
    r = host.hello()
    assert (r["protocol_major"], r["protocol_minor"]) == (m.PROTOCOL_MAJOR, m.PROTOCOL_MINOR)
    assert r["schema_hash"] == m.schema_hash()
    assert r["preset"] == "hnpu-v2"
    params = {p["name"]: p["value"] for p in r["parameters"]}
    assert params["clock_hz"] == 250e6
    assert params["device_memory_bytes"] == 64 * 1024 * 1024
    assert r["max_payload"] == 4096
    assert set(r["dtypes"]) == set(DType)
    assert DType.DFXP8 in r["formats"] and DType.INT32 not in r["formats"]
    assert set(r["algorithms"]) == {m.Algorithm.BP, m.Algorithm.DFA, m.Algorithm.PIPELINED_DFA}
    assert r["features"] & Feature.RESUME and r["features"] & Feature.BACKWARD
    assert not r["features"] & Feature.AUTH_REQUIRED
    assert r["auth_challenge"] == bytes(m.AUTH_CHALLENGE_SIZE)


def test_hnpu_v1_offers_bp_only() -> None:
    h = Host("emu://hnpu-v1")
    r = h.hello()
    assert r["preset"] == "hnpu-v1" and r["algorithms"] == [m.Algorithm.BP]
    assert r["features"] & Feature.STOCHASTIC_THRESHOLDING


def test_hello_refuses_other_major_and_schema_then_answers(host: Host) -> None:
    with pytest.raises(DeviceError) as e:
        host.hello(protocol_major=m.PROTOCOL_MAJOR + 1)
    assert e.value.status == Status.VERSION_MISMATCH
    assert f"{m.PROTOCOL_MAJOR}.{m.PROTOCOL_MINOR}" in e.value.detail
    with pytest.raises(DeviceError) as e:
        host.hello(schema_hash=bytes(8))
    assert e.value.status == Status.SCHEMA_MISMATCH
    assert m.schema_hash().hex() in e.value.detail
    assert host.hello()["preset"] == "hnpu-v2"


# ----------------------------------------------------------------------------- tensors


def _codes(dtype: DType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    cd = CODE_DTYPE[dtype]
    if dtype == DType.DFXP4:
        return rng.integers(-8, 8, shape).astype(cd)
    info = np.iinfo(cd)
    return rng.integers(info.min, info.max, shape, dtype=cd, endpoint=True)


@pytest.mark.parametrize("dtype", list(DType), ids=lambda d: d.format_name)
def test_tensor_round_trip_every_dtype(dtype: DType) -> None:
    h = Host("emu://hnpu-v2", max_payload=256)  # the session agrees on the smaller offer
    assert h.hello()["max_payload"] == 256
    rng = np.random.default_rng(int(dtype))
    codes = _codes(dtype, (7, 61), rng)  # odd count: dfxp4 pad nibble
    scale = {"frac_bits": 5, "shared_exp": -3, "exp_bias": 9}
    desc = h.upload(17, codes, dtype, scale)
    got_desc, data = h.download(17)
    assert got_desc == desc
    assert data == m.tensor_message(17, codes, dtype, scale)[1]
    assert zlib.crc32(data) == desc["crc32"]
    # Reads stop at the end and never run past it.
    r = h.call(Opcode.TENSOR_READ, {"id": 17, "offset": desc["nbytes"], "length": 100})
    assert r["data"] == b""
    r = h.call(Opcode.TENSOR_READ, {"id": 17, "offset": 1, "length": 3})
    assert r["data"] == data[1:4]


def test_resume_after_interrupted_upload(host: Host) -> None:
    values = np.arange(5000, dtype=np.float32)
    desc, data = m.tensor_message(9, values.view(np.uint32), DType.FP32)
    assert host.call(Opcode.TENSOR_BEGIN, {"tensor": desc})["offset"] == 0
    chunks = m.data_chunks(9, data, 4096)
    host.call(Opcode.TENSOR_DATA, chunks[0])
    # The host restarts and asks again: the device reports what it holds.
    held = host.call(Opcode.TENSOR_BEGIN, {"tensor": desc})["offset"]
    assert held == len(chunks[0]["data"])
    for chunk in m.data_chunks(9, data, 4096, offset=held):
        host.call(Opcode.TENSOR_DATA, chunk)
    assert host.call(Opcode.TENSOR_END, {"id": 9})["crc32"] == zlib.crc32(data)
    assert host.download(9)[1] == data
    # A different descriptor for the same id starts over.
    other, _ = m.tensor_message(9, values[:10].view(np.uint32), DType.FP32)
    assert host.call(Opcode.TENSOR_BEGIN, {"tensor": other})["offset"] == 0


def test_data_at_wrong_offset_names_the_expected_offset(host: Host) -> None:
    desc, data = m.tensor_message(4, np.arange(300, dtype=np.int32), DType.INT32)
    host.call(Opcode.TENSOR_BEGIN, {"tensor": desc})
    host.call(Opcode.TENSOR_DATA, {"id": 4, "offset": 0, "data": data[:100]})
    bad = {"id": 4, "offset": 200, "data": data[200:]}
    resp = host.request(Opcode.TENSOR_DATA, bad)
    assert resp.is_error and resp.body["status"] == Status.TRANSFER_INCOMPLETE
    assert "offset 100" in resp.body["detail"]
    assert host.status(Opcode.TENSOR_END, {"id": 4}) == Status.TRANSFER_INCOMPLETE
    assert host.status(Opcode.TENSOR_READ, {"id": 4, "offset": 0, "length": 8}) == (
        Status.TRANSFER_INCOMPLETE
    )
    past = {"id": 4, "offset": 100, "data": data[100:] + b"xx"}
    assert host.status(Opcode.TENSOR_DATA, past) == Status.LIMIT
    host.call(Opcode.TENSOR_DATA, {"id": 4, "offset": 100, "data": data[100:]})
    host.call(Opcode.TENSOR_END, {"id": 4})
    assert host.download(4)[1] == data


def test_crc_mismatch_discards_the_tensor(host: Host) -> None:
    desc, data = m.tensor_message(5, np.arange(64, dtype=np.int16), DType.INT16)
    host.call(Opcode.TENSOR_BEGIN, {"tensor": {**desc, "crc32": desc["crc32"] ^ 1}})
    host.call(Opcode.TENSOR_DATA, {"id": 5, "offset": 0, "data": data})
    assert host.status(Opcode.TENSOR_END, {"id": 5}) == Status.CHECKSUM_MISMATCH
    assert host.status(Opcode.TENSOR_READ, {"id": 5, "offset": 0, "length": 4}) == (
        Status.UNKNOWN_TENSOR
    )
    host.upload(5, np.arange(64, dtype=np.int16), DType.INT16)
    assert host.download(5)[1] == data


def test_begin_refusals(host: Host) -> None:
    desc, _ = m.tensor_message(3, np.zeros((4, 4), np.uint16), DType.BF16)
    assert host.status(Opcode.TENSOR_BEGIN, {"tensor": {**desc, "nbytes": 31}}) == (
        Status.BAD_SHAPE
    )
    device_id = {**desc, "id": DEVICE_TENSOR_ID_BASE}
    assert host.status(Opcode.TENSOR_BEGIN, {"tensor": device_id}) == Status.LIMIT
    too_big = {**desc, "shape": [40_000_000], "nbytes": 80_000_000, "dtype": DType.FP16}
    assert host.status(Opcode.TENSOR_BEGIN, {"tensor": too_big}) == Status.TENSOR_TOO_LARGE
    # Held tensors count against device memory: six 12 MiB tensors do not fit in 64 MiB.
    n = 6 << 20
    big = {**desc, "shape": [n], "nbytes": 2 * n, "dtype": DType.FP16}
    for tid in range(10, 15):
        assert host.call(Opcode.TENSOR_BEGIN, {"tensor": {**big, "id": tid}})["offset"] == 0
    assert host.status(Opcode.TENSOR_BEGIN, {"tensor": {**big, "id": 4}}) == Status.OUT_OF_MEMORY
    host.call(Opcode.RESET, {"scope": m.ResetScope.TENSORS})
    assert host.call(Opcode.TENSOR_BEGIN, {"tensor": {**big, "id": 4}})["offset"] == 0
    assert host.status(Opcode.TENSOR_DATA, {"id": 77, "offset": 0, "data": b"x"}) == (
        Status.UNKNOWN_TENSOR
    )
    assert host.status(Opcode.TENSOR_END, {"id": 77}) == Status.UNKNOWN_TENSOR


# ----------------------------------------------------------------------------- model flows


def test_mlp_session(engine_kind: str, host: Host) -> None:
    host.hello()
    mlp = Mlp(host)
    assert mlp.define["layer_count"] == 3
    assert mlp.define["parameter_count"] == IN * HID + HID + HID * OUT + OUT
    assert mlp.define["output_shape"] == [OUT]
    assert mlp.define["memory_bytes"] > 0
    y = forward_inline(host)
    np.testing.assert_allclose(y, mlp.reference(mlp.x), rtol=1e-5, atol=1e-5)
    # The output is also stored under output_id and readable like any tensor.
    np.testing.assert_array_equal(host.download_f32(50), y)
    host.call(Opcode.RESET_COUNTERS)
    r = host.call(Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2})
    assert r["step"] == 1
    assert r["loss"] == pytest.approx(mlp.loss(), rel=1e-4)
    macs = BATCH * (IN * HID + HID * OUT)
    assert r["counters"]["ff"]["macs_total"] == macs
    totals = host.call(Opcode.READ_COUNTERS)["counters"]
    assert totals["ff"]["macs_total"] == macs
    listed = host.call(Opcode.GET_WEIGHTS, {"layer": ALL_LAYERS})["params"]
    assert [(p["layer"], p["param"]) for p in listed] == list(mlp.w)
    for p in listed:
        assert p["tensor"]["id"] >= DEVICE_TENSOR_ID_BASE
        w = host.download_f32(p["tensor"]["id"])
        before = mlp.w[p["layer"], p["param"]]
        assert w.shape == before.shape and not np.array_equal(w, before)
    one = host.call(Opcode.GET_WEIGHTS, {"layer": 2})["params"]
    assert [(p["layer"], p["param"]) for p in one] == [(2, ParamKind.WEIGHT), (2, ParamKind.BIAS)]
    host.call(Opcode.RESET_COUNTERS)
    zeroed = host.call(Opcode.READ_COUNTERS)["counters"]
    assert zeroed["ff"]["macs_total"] in (0, None)


def _inline_body(x: np.ndarray, labels: np.ndarray, xid: int = 1, yid: int = 2) -> dict:
    dx, bx = m.tensor_message(xid, np.asarray(x, np.float32).view(np.uint32), DType.FP32)
    dy, by = m.tensor_message(yid, labels, DType.INT32)
    return {"input": dx, "input_data": bx, "target": dy, "target_data": by}


def test_inline_train_step_equals_uploads_then_train_step(engine_kind: str) -> None:
    """TRAIN_STEP_INLINE stores input and target as completed uploads would and answers as
    TRAIN_STEP does: two devices, one fed each way, end with identical weights."""
    results = []
    for inline in (False, True):
        h = Host()
        try:
            assert h.hello()["features"] & Feature.INLINE_STEP
            mlp = Mlp(h, seed=3)
            rng = np.random.default_rng(4)
            steps = []
            for _ in range(3):
                x = rng.standard_normal((BATCH, IN)).astype(np.float32)
                y = rng.integers(0, OUT, BATCH).astype(np.int32)
                if inline:
                    r = h.call(Opcode.TRAIN_STEP_INLINE, _inline_body(x, y, 7, 8))
                else:
                    h.upload_f32(7, x)
                    h.upload(8, y, DType.INT32)
                    r = h.call(Opcode.TRAIN_STEP, {"input_id": 7, "target_id": 8})
                steps.append((r["loss"], r["step"], r["counters"]))
            listed = h.call(Opcode.GET_WEIGHTS, {"layer": ALL_LAYERS})["params"]
            weights = [h.download_f32(p["tensor"]["id"]) for p in listed]
            # The inline tensors are stored like uploads: the same descriptor resumes at the end.
            desc, _ = m.tensor_message(7, x.view(np.uint32), DType.FP32)
            assert h.call(Opcode.TENSOR_BEGIN, {"tensor": desc})["offset"] == desc["nbytes"]
            np.testing.assert_array_equal(h.download_f32(7), x)
            results.append((steps, weights))
            assert mlp.define["layer_count"] == 3
        finally:
            h.close()
    (s0, w0), (s1, w1) = results
    assert s0 == s1
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)


def test_inline_train_step_refusals_leave_the_device_usable(fake_engine: None, host: Host) -> None:
    mlp = Mlp(host)
    good = _inline_body(mlp.x, mlp.labels)
    op = Opcode.TRAIN_STEP_INLINE
    assert host.status(op, _inline_body(mlp.x, mlp.labels, 5, 5)) == Status.BAD_REQUEST
    bad_crc = {**good, "input": {**good["input"], "crc32": good["input"]["crc32"] ^ 1}}
    assert host.status(op, bad_crc) == Status.CHECKSUM_MISMATCH
    short = {**good, "target_data": good["target_data"][:-4]}
    assert host.status(op, short) == Status.BAD_REQUEST
    wrong_shape = {**good, "input": {**good["input"], "shape": [BATCH, IN + 1]}}
    assert host.status(op, wrong_shape) == Status.BAD_SHAPE
    big = _inline_body(np.zeros((BATCH, IN + 1), np.float32), mlp.labels)
    assert host.status(op, big) == Status.BAD_SHAPE  # the model takes IN features
    no_model = Host()
    try:
        no_model.hello()
        assert no_model.status(op, good) == Status.NO_MODEL
    finally:
        no_model.close()
    r = host.call(op, good)
    assert r["step"] == 1 and r["loss"] == pytest.approx(mlp.loss(), rel=1e-4)


def test_forward_keep_then_backward(engine_kind: str, host: Host) -> None:
    mlp = Mlp(host)
    assert host.status(Opcode.BACKWARD, {"error_id": 3}) == Status.BAD_REQUEST
    flags = ForwardFlags.KEEP_ACTIVATIONS
    r = host.call(Opcode.FORWARD, {"input_id": 1, "output_id": 51, "flags": flags})
    assert r["data"] == b"" and r["output"]["shape"] == [BATCH, OUT]
    host.upload_f32(3, np.ones((BATCH, 3), np.float32))
    assert host.status(Opcode.BACKWARD, {"error_id": 3}) == Status.BAD_SHAPE
    host.upload_f32(3, np.full((BATCH, OUT), 0.01, np.float32))
    assert host.call(Opcode.BACKWARD, {"error_id": 3})["step"] == 1
    assert host.status(Opcode.BACKWARD, {"error_id": 3}) == Status.BAD_REQUEST
    assert not np.allclose(forward_inline(host), mlp.reference(mlp.x))


def test_duplicate_request_id_is_answered_from_cache(engine_kind: str, host: Host) -> None:
    Mlp(host)
    body = {"input_id": 1, "target_id": 2}
    msg = m.encode_request(Opcode.TRAIN_STEP, 7777, body)
    host.send(msg)
    host.send(msg)  # e.g. replayed by the host link after a device link reset
    first, second = host.receive(2)
    assert first == second
    assert m.decode_response(first).body["step"] == 1
    executed = host.port.firmware.executed
    assert host.raw(msg).body["step"] == 1
    assert host.port.firmware.executed == executed
    # A new request id executes: the step ran once for the three copies.
    assert host.call(Opcode.TRAIN_STEP, body)["step"] == 2


@pytest.mark.parametrize("size", [64, fw_mod.CACHE_RAW_MAX, fw_mod.CACHE_RAW_MAX + 1, 40000])
def test_cache_tells_a_duplicate_from_a_reused_id(size: int) -> None:
    """Requests are cached with their bytes (longer ones than CACHE_RAW_MAX within a byte
    budget, tests/test_transport_cache.py): the same bytes are answered from the cache and a
    reused id with other bytes (even differing only in the last byte, same length) executes
    again."""
    fw = Firmware("hnpu-v2", engine_factory=ExplodingEngine, config_factory=fake_config)
    runs = counting_executions(fw)
    # Valid headers (HELLO, id 9) with bodies that do not decode: answered BAD_REQUEST, cached.
    head = bytes([Opcode.HELLO]) + (9).to_bytes(4, "little")
    a = head + bytes(size - len(head))
    b = a[:-1] + b"\x01"
    first = fw.receive(a)
    assert m.decode_response(first[0]).is_error and len(runs) == 1
    assert fw.receive(bytearray(a)) == first and len(runs) == 1  # duplicate: cached
    fw.receive(b)  # the same id, other bytes: executes
    assert len(runs) == 2 and runs[-1] == b
    fw.receive(b)
    assert len(runs) == 2
    fw.receive(b[:-1])  # shorter: executes
    assert len(runs) == 3


def test_cnn_define_and_forward_shapes(engine_kind: str, host: Host) -> None:
    if engine_kind == "fake":
        pytest.skip("the fake engine has no convolutions")
    layers = [conv(1, 4, 3, pad=1), RELU, {**POOL2}, FLATTEN, linear(4 * 4 * 4, 10)]
    r = host.call(
        Opcode.DEFINE_MODEL,
        {"input_shape": [1, 8, 8], "layers": layers, "init_seed": 3, "weights": []},
    )
    assert r["output_shape"] == [10]
    assert r["parameter_count"] == 4 * 9 + 4 + 64 * 10 + 10
    host.upload_f32(1, np.ones((2, 1, 8, 8), np.float32))
    assert forward_inline(host).shape == (2, 10)


POOL2 = {
    "kind": LayerKind.MAX_POOL2D,
    "params": {
        "kernel_h": 2,
        "kernel_w": 2,
        "stride_h": 2,
        "stride_w": 2,
        "padding_h": 0,
        "padding_w": 0,
    },
}


# ----------------------------------------------------------------------------- bad input


def _model_body(layers: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    return {"input_shape": [IN], "layers": layers, "init_seed": 0, "weights": [], **over}


def test_bad_input_gets_its_status_and_leaves_the_device_usable(
    engine_kind: str, host: Host
) -> None:
    assert host.status(Opcode.FORWARD, {"input_id": 1, "output_id": 2, "flags": 0}) == (
        Status.NO_MODEL
    )
    assert host.status(Opcode.GET_WEIGHTS, {"layer": 0}) == Status.NO_MODEL
    mlp = Mlp(host)
    good = forward_inline(host)

    def still_usable() -> None:
        assert host.hello()["preset"] == "hnpu-v2"
        np.testing.assert_array_equal(forward_inline(host), good)

    cases: list[tuple[Opcode, dict[str, Any] | None, Status]] = [
        # wrong shapes
        (Opcode.DEFINE_MODEL, _model_body([linear(IN + 1, 4)]), Status.BAD_SHAPE),
        (Opcode.DEFINE_MODEL, _model_body([conv(1, 2, 3)]), Status.BAD_SHAPE),
        (
            Opcode.DEFINE_MODEL,
            {**_model_body([conv(1, 2, 9)]), "input_shape": [1, 4, 4]},
            Status.BAD_SHAPE,
        ),
        (
            Opcode.DEFINE_MODEL,
            _model_body(
                [linear(IN, HID), RELU, linear(HID, OUT)],
                weights=[{"layer": 2, "param": ParamKind.WEIGHT, "tensor_id": 100}],
            ),
            Status.BAD_SHAPE,
        ),
        (Opcode.FORWARD, {"input_id": 102, "output_id": 60, "flags": 0}, Status.BAD_SHAPE),
        (Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 1}, Status.UNSUPPORTED_FORMAT),
        # unknown tensor ids
        (Opcode.FORWARD, {"input_id": 999, "output_id": 60, "flags": 0}, Status.UNKNOWN_TENSOR),
        (Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 999}, Status.UNKNOWN_TENSOR),
        (Opcode.TENSOR_READ, {"id": 999, "offset": 0, "length": 4}, Status.UNKNOWN_TENSOR),
        (
            Opcode.DEFINE_MODEL,
            _model_body(
                [linear(IN, 4)], weights=[{"layer": 0, "param": ParamKind.BIAS, "tensor_id": 999}]
            ),
            Status.UNKNOWN_TENSOR,
        ),
        # unknown layer ids
        (Opcode.GET_WEIGHTS, {"layer": 3}, Status.UNKNOWN_LAYER),
        (
            Opcode.DEFINE_MODEL,
            _model_body(
                [linear(IN, 4)], weights=[{"layer": 5, "param": ParamKind.WEIGHT, "tensor_id": 1}]
            ),
            Status.UNKNOWN_LAYER,
        ),
        (
            Opcode.TRAIN_CONFIG,
            train_config(
                precision={"flags": 0, "sr_seed": 0, "policy": [policy_entry(DType.FP32, 9)]}
            ),
            Status.UNKNOWN_LAYER,
        ),
        # a model larger than device memory
        (Opcode.DEFINE_MODEL, _model_body([linear(IN, 2_000_000)]), Status.OUT_OF_MEMORY),
        # unsupported format
        (
            Opcode.TRAIN_CONFIG,
            train_config(
                precision={"flags": 0, "sr_seed": 0, "policy": [policy_entry(DType.INT32)]}
            ),
            Status.UNSUPPORTED_FORMAT,
        ),
        # output id in the device range
        (Opcode.FORWARD, {"input_id": 1, "output_id": 0x9000_0000, "flags": 0}, Status.LIMIT),
    ]
    for opcode, body, want in cases:
        got = host.status(opcode, body)
        assert got == want, (opcode.name, body, got)
        still_usable()
    _ = mlp


def test_hnpu_v1_refuses_dfa(fake_engine: None) -> None:
    h = Host("emu://hnpu-v1")
    Mlp(h)
    dfa = {**train_config()["algorithm"], "kind": m.Algorithm.DFA}
    assert h.status(Opcode.TRAIN_CONFIG, train_config(algorithm=dfa)) == (
        Status.UNSUPPORTED_ALGORITHM
    )


def test_malformed_messages(host: Host) -> None:
    hello = m.encode_request(
        Opcode.HELLO,
        5,
        {"protocol_major": 1, "protocol_minor": 0, "schema_hash": bytes(8), "client": "abc"},
    )
    r = host.raw(hello[:-2])  # truncated body
    assert r.is_error and r.body["status"] == Status.BAD_REQUEST and r.request_id == 5
    r = host.raw(hello + b"\x00")  # trailing byte
    assert r.is_error and r.body["status"] == Status.BAD_REQUEST
    r = host.raw(bytes([0x55]) + (9).to_bytes(4, "little") + b"junk")  # unknown opcode
    assert r.is_error and r.body["status"] == Status.UNKNOWN_OPCODE and r.request_id == 9
    assert r.body["request_opcode"] == 0x55
    r = host.raw(b"\x01\x02")  # shorter than the header
    assert r.is_error and r.body["status"] == Status.BAD_REQUEST
    assert r.request_id == NO_REQUEST_ID
    assert host.hello()["preset"] == "hnpu-v2"


# ----------------------------------------------------------------------------- authentication


def _auth_body(key: bytes, challenge: bytes, counter: int) -> dict[str, Any]:
    nonce = bytes(range(16))
    return {
        "host_nonce": nonce,
        "counter": counter,
        "tag": m.auth_tag(key, "host", challenge, nonce, counter),
    }


def test_auth_gates_everything_but_hello_and_auth() -> None:
    key = bytes.fromhex("00112233445566778899")
    h = Host(f"emu://hnpu-v2?key={key.hex()}")
    assert h.status(Opcode.READ_COUNTERS) == Status.NOT_AUTHENTICATED
    hello = h.hello()
    assert hello["features"] & Feature.AUTH_REQUIRED
    challenge = hello["auth_challenge"]
    assert challenge != bytes(16)
    assert h.status(Opcode.AUTH, _auth_body(b"wrong key", challenge, 1)) == Status.AUTH_FAILED
    assert h.status(Opcode.RESET_COUNTERS) == Status.NOT_AUTHENTICATED
    # Frames are authenticated from the AUTH answer on: the host's link takes the keys.
    h.link.start_auth(*link_keys(key, challenge, bytes(range(16))), now=False)
    r = h.call(Opcode.AUTH, _auth_body(key, challenge, 5))
    assert r["tag"] == m.auth_tag(key, "device", challenge, bytes(range(16)), 5)
    h.call(Opcode.READ_COUNTERS)
    assert h.status(Opcode.AUTH, _auth_body(key, challenge, 5)) == Status.AUTH_FAILED


def test_auth_without_key_is_unsupported(host: Host) -> None:
    assert host.status(Opcode.AUTH, _auth_body(b"k", bytes(16), 1)) == Status.UNSUPPORTED


# ----------------------------------------------------------------------------- faults inside


class ExplodingEngine(FakeEngine):
    def forward(self, x: np.ndarray, *, keep_activations: bool = False) -> np.ndarray:
        if x.shape[0] == 3:
            raise RuntimeError("simulated datapath fault")
        if x.shape[0] == 4:
            raise FakeEngineError(Status.BAD_SHAPE, "engine says no")
        return super().forward(x, keep_activations=keep_activations)


def _direct(fw: Firmware, opcode: Opcode, body: dict[str, Any] | None, rid: int) -> m.ResponseMsg:
    (resp,) = fw.receive(m.encode_request(opcode, rid, body))
    r = m.decode_response(resp)
    assert r.request_id == rid
    return r


def _direct_upload(fw: Firmware, tid: int, values: np.ndarray) -> None:
    desc, data = m.tensor_message(tid, np.asarray(values, np.float32).view(np.uint32), DType.FP32)
    for op, body in (
        (Opcode.TENSOR_BEGIN, {"tensor": desc}),
        (Opcode.TENSOR_DATA, {"id": tid, "offset": 0, "data": data}),
        (Opcode.TENSOR_END, {"id": tid}),
    ):
        assert not _direct(fw, op, body, 1000 + tid * 10 + op).is_error


def test_engine_faults_become_errors_and_the_device_survives() -> None:
    fw = Firmware("hnpu-v2", engine_factory=ExplodingEngine, config_factory=fake_config)
    r = _direct(fw, Opcode.DEFINE_MODEL, _model_body([linear(IN, 3)]), 1)
    assert not r.is_error
    for batch, status in ((3, Status.INTERNAL), (4, Status.BAD_SHAPE)):
        _direct_upload(fw, batch, np.ones((batch, IN)))
        r = _direct(fw, Opcode.FORWARD, {"input_id": batch, "output_id": 9, "flags": 0}, batch)
        assert r.is_error and r.body["status"] == status and r.body["detail"]
    _direct_upload(fw, 5, np.ones((5, IN)))
    r = _direct(fw, Opcode.FORWARD, {"input_id": 5, "output_id": 9, "flags": 1}, 50)
    assert not r.is_error and len(r.body["data"]) == 5 * 3 * 4


# ----------------------------------------------------------------------------- fuzz


def _hello_ok(fw: Firmware, rid: int = 424242) -> bool:
    body = {"protocol_major": 1, "protocol_minor": 0, "schema_hash": m.schema_hash(), "client": ""}
    r = _direct(fw, Opcode.HELLO, body, rid)
    return r.opcode == ResponseOpcode.HELLO


def _check_answer(request: bytes, responses: list[bytes]) -> m.ResponseMsg:
    assert len(responses) == 1
    r = m.decode_response(responses[0])
    if len(request) >= m.HEADER_SIZE:
        assert r.request_id == int.from_bytes(request[1:5], "little")
        assert r.is_error or int(r.opcode) == request[0] | 0x80
    else:
        assert r.is_error and r.request_id == NO_REQUEST_ID
    return r


@given(st.lists(st.binary(max_size=80), max_size=8))
def test_random_bytes_never_crash_the_firmware(messages: list[bytes]) -> None:
    fw = Firmware("hnpu-v2", engine_factory=FakeEngine, config_factory=fake_config)
    for msg in messages:
        _check_answer(msg, fw.receive(msg))
    assert _hello_ok(fw)


@given(st.binary(max_size=600))
def test_random_line_bytes_never_crash_the_device_link(data: bytes) -> None:
    dev = DeviceLink(Firmware("hnpu-v2", engine_factory=FakeEngine, config_factory=fake_config))
    dev.feed(data, 0.0)
    dev.feed(data[::-1], 0.5)


def _valid_requests() -> list[bytes]:
    """A session's requests (model, tensors, training): material to mutate."""
    desc, data = m.tensor_message(1, np.ones((2, IN), np.float32).view(np.uint32), DType.FP32)
    ldesc, ldata = m.tensor_message(2, np.array([0, 1], np.int32), DType.INT32)
    bodies: list[tuple[Opcode, dict[str, Any] | None]] = [
        (Opcode.TENSOR_BEGIN, {"tensor": desc}),
        (Opcode.TENSOR_DATA, {"id": 1, "offset": 0, "data": data}),
        (Opcode.TENSOR_END, {"id": 1}),
        (Opcode.TENSOR_BEGIN, {"tensor": ldesc}),
        (Opcode.TENSOR_DATA, {"id": 2, "offset": 0, "data": ldata}),
        (Opcode.TENSOR_END, {"id": 2}),
        (Opcode.DEFINE_MODEL, _model_body([linear(IN, 4), RELU, linear(4, 3)])),
        (Opcode.TRAIN_CONFIG, train_config()),
        (Opcode.FORWARD, {"input_id": 1, "output_id": 3, "flags": 3}),
        (Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2}),
        (
            Opcode.TRAIN_STEP_INLINE,
            {"input": desc, "input_data": data, "target": ldesc, "target_data": ldata},
        ),
        (Opcode.GET_WEIGHTS, {"layer": ALL_LAYERS}),
        (Opcode.TENSOR_READ, {"id": DEVICE_TENSOR_ID_BASE, "offset": 0, "length": 64}),
        (Opcode.READ_COUNTERS, None),
        (Opcode.RESET, {"scope": m.ResetScope.MODEL}),
    ]
    return [m.encode_request(op, i + 1, body) for i, (op, body) in enumerate(bodies)]


VALID = _valid_requests()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    msg = bytearray(draw(st.sampled_from(VALID)))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "ids"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(msg) - 1))
            msg[i] = draw(st.integers(0, 255))
    elif kind == "truncate":
        msg = msg[: draw(st.integers(0, len(msg) - 1))]
    elif kind == "extend":
        msg += draw(st.binary(min_size=1, max_size=8))
    else:  # well-formed, wrong ids / sizes: overwrite one u32 after the header
        if len(msg) >= m.HEADER_SIZE + 4:
            i = draw(st.integers(m.HEADER_SIZE, len(msg) - 4))
            v = draw(st.sampled_from([0, 1, 3, 7, 0xFFFF, 0x8000_0000, 0xFFFF_FFFF]))
            msg[i : i + 4] = v.to_bytes(4, "little")
    return bytes(msg)


@given(st.lists(st.one_of(mutated(), st.sampled_from(VALID)), min_size=1, max_size=12))
def test_mutated_session_requests_never_crash_and_never_fault(messages: list[bytes]) -> None:
    fw = Firmware("hnpu-v2", engine_factory=FakeEngine, config_factory=fake_config)
    for msg in messages:
        r = _check_answer(msg, fw.receive(msg))
        if r.is_error:
            # Every refusal is a specific, explained status, never an internal fault.
            assert r.body["status"] != Status.INTERNAL, r.body["detail"]
            assert r.body["detail"]
    assert _hello_ok(fw)
    _direct_upload(fw, 77, np.arange(6))
    r = _direct(fw, Opcode.TENSOR_READ, {"id": 77, "offset": 0, "length": 100}, 999_999)
    assert r.body["data"] == np.arange(6, dtype=np.float32).tobytes()


# ----------------------------------------------------------------------------- reset, masks


def test_reset_scopes(engine_kind: str, host: Host) -> None:
    Mlp(host)
    host.call(Opcode.GET_WEIGHTS, {"layer": ALL_LAYERS})
    host.call(Opcode.RESET, {"scope": m.ResetScope.MODEL})
    assert host.status(Opcode.FORWARD, {"input_id": 1, "output_id": 9, "flags": 0}) == (
        Status.NO_MODEL
    )
    assert host.status(
        Opcode.TENSOR_READ, {"id": DEVICE_TENSOR_ID_BASE, "offset": 0, "length": 4}
    ) == (Status.UNKNOWN_TENSOR)
    assert host.download(1)[1]  # host tensors survive a MODEL reset
    Mlp(host)
    host.call(Opcode.RESET, {"scope": m.ResetScope.TENSORS})
    assert host.status(Opcode.TENSOR_READ, {"id": 1, "offset": 0, "length": 4}) == (
        Status.UNKNOWN_TENSOR
    )
    host.upload_f32(1, np.zeros((2, IN)))
    assert forward_inline(host).shape == (2, OUT)  # the model survives a TENSORS reset
    host.call(Opcode.RESET, {"scope": m.ResetScope.ALL})
    assert host.status(Opcode.TENSOR_READ, {"id": 1, "offset": 0, "length": 4}) == (
        Status.UNKNOWN_TENSOR
    )
    assert host.status(Opcode.GET_WEIGHTS, {"layer": ALL_LAYERS}) == Status.NO_MODEL


def _with_masks(trainable: list[dict[str, Any]], pruning: list[dict[str, Any]]) -> dict:
    return train_config(
        trainable={"mode": m.TrainableMode.MASKS, "last_k": 0, "masks": trainable},
        pruning={"mode": m.PruningMode.MASKS, "ratio": 0.0, "masks": pruning},
    )


def test_train_config_masks_are_checked(engine_kind: str, host: Host) -> None:
    Mlp(host)
    host.upload(30, np.ones((HID, IN), np.uint8), DType.UINT8)  # per weight, layer 0
    host.upload(31, np.array([1, 0, 1, 1, 0], np.uint8), DType.UINT8)  # per channel, layer 2
    host.upload(32, np.ones((3, 3), np.uint8), DType.UINT8)
    host.upload(33, np.full((OUT,), 2, np.uint8), DType.UINT8)
    w0 = {"layer": 0, "param": ParamKind.WEIGHT, "tensor_id": 30}
    w2 = {"layer": 2, "param": ParamKind.WEIGHT, "tensor_id": 31}
    assert host.call(Opcode.TRAIN_CONFIG, _with_masks([w0], [w2]))["memory_bytes"] > 0
    cases = [
        (_with_masks([{**w0, "tensor_id": 32}], []), Status.BAD_SHAPE),
        (_with_masks([], [{**w0, "tensor_id": 99}]), Status.UNKNOWN_TENSOR),
        (_with_masks([{**w0, "tensor_id": 1}], []), Status.UNSUPPORTED_FORMAT),
        (_with_masks([{**w0, "layer": 1}], []), Status.UNKNOWN_LAYER),
        (_with_masks([], [{**w2, "tensor_id": 33}]), Status.BAD_REQUEST),
    ]
    for body, want in cases:
        assert host.status(Opcode.TRAIN_CONFIG, body) == want
    assert host.call(Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2})["step"] == 1


# ----------------------------------------------------------------------------- exactly once


def test_refusals_for_missing_auth_are_not_cached() -> None:
    key = b"secret"
    fw = Firmware("hnpu-v2", key=key, engine_factory=FakeEngine, config_factory=fake_config)
    assert _direct(fw, Opcode.READ_COUNTERS, None, 7).body["status"] == Status.NOT_AUTHENTICATED
    hello = {"protocol_major": 1, "protocol_minor": 0, "schema_hash": m.schema_hash(), "client": ""}
    challenge = _direct(fw, Opcode.HELLO, hello, 1).body["auth_challenge"]
    assert not _direct(fw, Opcode.AUTH, _auth_body(key, challenge, 1), 2).is_error
    # The same request id now executes: the earlier refusal changed nothing.
    assert _direct(fw, Opcode.READ_COUNTERS, None, 7).opcode == ResponseOpcode.READ_COUNTERS
    # Once the key is forgotten, a replay does not get the cached answer either.
    fw.deauthenticate()
    assert _direct(fw, Opcode.READ_COUNTERS, None, 7).body["status"] == Status.NOT_AUTHENTICATED


def test_replay_after_a_link_reset_is_answered_from_the_cache(engine_kind: str, host: Host) -> None:
    """The host link loses its session after the device executed a request but before the
    answer arrived; the host replays it in the new session and gets the cached answer."""
    Mlp(host)
    host.call(Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2})
    msg = m.encode_request(Opcode.TRAIN_STEP, 4242, {"input_id": 1, "target_id": 2})
    host.send(msg)
    host.port.write(host.link.bytes_to_send(time.monotonic()))  # executed at once...
    host.port.reset_input_buffer()  # ...but the answer is lost with the session
    executed = host.port.firmware.executed
    host.link.reset(time.monotonic())
    (resp,) = host.receive(1)
    assert m.decode_response(resp).body["step"] == 2
    assert host.port.firmware.executed == executed
    assert host.call(Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2})["step"] == 3


@settings(max_examples=20)
@given(st.binary(min_size=1, max_size=400))
def test_line_garbage_then_a_working_session(garbage: bytes) -> None:
    """Bytes that are no protocol at all, written to the port before the host starts, cost
    nothing: the host sets up a session and the device answers HELLO."""
    h = Host()
    h.port.write(garbage)
    h.port.write(garbage[::-1] + b"\x00")
    assert h.hello()["preset"] == "hnpu-v2"
    h.close()
