"""Resource limits (issue 7): tensor size, tensor count, device memory, layers and pending
requests, each refused with its own status code, and the device usable afterwards with its state
intact (same weights, same tensors, the next valid command succeeds).

Each limit is checked twice: through the whole path (``host.open("emu://hnpu-v2")``: host API or
runner, link, emu:// port, firmware), asserting the host's exception and its status, and on the
firmware directly, asserting what did not change.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import host
from device_model import firmware as fw_mod
from device_model import firmware_link
from device_model.config import get_preset
from device_model.firmware import Firmware
from device_model.firmware_link import DeviceLink
from host import errors, nn
from host.runner import check
from protocol import messages as m
from protocol.dtypes import DType
from protocol.link import Link, LinkConfig, Role
from protocol.messages import ALL_LAYERS, DEVICE_TENSOR_ID_BASE, LayerKind, Opcode
from protocol.status import Status

URL = "emu://hnpu-v2?seed=3"
MIB = 1 << 20

# ----------------------------------------------------------------------------- whole path


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], np.float32).tobytes())
    return h.hexdigest()


@pytest.fixture
def deployed() -> Iterator[tuple[Any, Any]]:
    """A device with a trained MLP on it: (device, model)."""
    dev = host.open(URL)
    model = dev.deploy(_mlp(), seed=1)
    rng = np.random.default_rng(0)
    model.train_step(rng.standard_normal((4, 6)).astype(np.float32), np.array([0, 1, 2, 0]))
    yield dev, model
    dev.close()


def _still_usable(model: Any, before: str) -> None:
    """The model's weights are what they were, and it trains on."""
    assert _digest(model.get_weights()) == before
    x = np.ones((2, 6), np.float32)
    assert model.predict(x).shape == (2, 3)
    assert model.train_step(x, np.array([1, 2])).step >= 2


def test_hello_reports_every_limit() -> None:
    with host.open(URL) as dev:
        params = dev.info()["parameters"]
    preset = get_preset("hnpu-v2")
    assert params["max_tensor_bytes"] == fw_mod.MAX_TENSOR_BYTES == 16 * MIB
    assert params["max_tensors"] == fw_mod.MAX_TENSORS
    assert params["max_pending"] == fw_mod.MAX_PENDING
    assert params["max_layers"] == preset.max_layers
    assert params["device_memory_bytes"] == preset.device_memory_bytes
    assert params["max_batch"] == fw_mod.MAX_BATCH
    assert params["max_request_bytes"] == fw_mod.MAX_REQUEST_BYTES


def test_too_many_layers_through_the_host(deployed: tuple[Any, Any]) -> None:
    dev, model = deployed
    before = _digest(model.get_weights())
    layers = get_preset("hnpu-v2").max_layers
    deep = nn.Sequential(nn.Linear(6, 6), *[nn.ReLU() for _ in range(layers)])
    with pytest.raises(errors.DeviceError) as e:
        dev.deploy(deep)
    assert e.value.status == Status.TOO_MANY_LAYERS
    assert f"at most {layers}" in str(e.value)
    _still_usable(model, before)
    # One layer fewer is within the table.
    assert dev.deploy(nn.Sequential(nn.Linear(6, 6), *[nn.ReLU()] * (layers - 1)))


def test_out_of_memory_through_the_host(deployed: tuple[Any, Any]) -> None:
    dev, model = deployed
    before = _digest(model.get_weights())
    with pytest.raises(errors.DeviceError) as e:
        dev.deploy(nn.Sequential(nn.Linear(4096, 4096)))  # 64 MiB of fp32 weights alone
    assert e.value.status == Status.OUT_OF_MEMORY
    _still_usable(model, before)


def test_tensor_too_large_through_the_host(deployed: tuple[Any, Any]) -> None:
    dev, model = deployed
    before = _digest(model.get_weights())
    wide = dev.deploy(nn.Sequential(nn.Linear(16400, 2)), seed=2)
    # 256 x 16400 fp32 inputs are 16.8 MB: over the 16 MiB a tensor may take.
    x = np.zeros((256, 16400), np.float32)
    with pytest.raises(errors.DeviceError) as e:
        wide.predict(x)
    assert e.value.status == Status.TENSOR_TOO_LARGE
    assert "max_tensor_bytes" in e.value.detail
    assert wide.predict(x[:200]).shape == (200, 2)  # 13 MB fits
    del model, before


def test_too_many_tensors_through_the_host(deployed: tuple[Any, Any]) -> None:
    dev, model = deployed
    before = _digest(model.get_weights())
    empty = {
        "dtype": DType.FP32,
        "scale": m.zero_scale(),
        "shape": [0],
        "nbytes": 0,
        "crc32": 0,
    }
    ids = [dev.runner.submit(Opcode.TENSOR_BEGIN, {"tensor": {**empty, "id": 5000 + i}})
           for i in range(fw_mod.MAX_TENSORS + 1)]  # fmt: skip
    answers = dev.runner.wait(ids)
    refused = [Status(r.body["status"]) for r in answers if r.is_error]
    # Zero-byte tensors cost no memory: the descriptor table is what runs out.
    assert refused and set(refused) == {Status.TOO_MANY_TENSORS}
    with pytest.raises(errors.DeviceError) as e:
        model.predict(np.ones((2, 6), np.float32))  # its input needs one more tensor
    assert e.value.status == Status.TOO_MANY_TENSORS
    dev.runner.call(Opcode.RESET, {"scope": m.ResetScope.TENSORS})
    _still_usable(model, before)


def test_pending_requests_through_the_host(deployed: tuple[Any, Any]) -> None:
    """A device whose answer queue holds 2: a host that pipelines 6 requests before reading
    is held back by the link's credits (nothing refused, every request executed once, in
    order); a host that ignores the closed credits and reads nothing gets TOO_MANY_PENDING for
    the requests beyond what may wait, not executed; the device answers normally after."""
    dev, model = deployed
    before = _digest(model.get_weights())
    fw = dev.runner.port.firmware
    fw.max_pending = 2
    executed = fw.executed
    ids = [dev.runner.submit(Opcode.RESET_COUNTERS) for _ in range(6)]
    assert all(not r.is_error for r in dev.runner.wait(ids))
    assert fw.executed == executed + 6
    assert dev.runner.port._dev().peak_pending <= 2
    # A host link that ignores credits and takes the device's acks but not its answers.
    link = dev.runner.link
    on_ack, on_data = link._on_ack, link._on_data
    link._on_ack = lambda ack, credits: on_ack(ack, link.window)
    link._on_data = lambda f: None
    n = 2 + firmware_link.WAITING_WINDOWS * link.window + 10
    ids = [dev.runner.submit(Opcode.RESET_COUNTERS) for _ in range(n)]
    for _ in range(50):
        dev.runner._step()
    link._on_ack, link._on_data = on_ack, on_data
    link.reset(0.0)  # a new session: the device's unread answers are replayed or re-sent
    answers = dev.runner.wait(ids)
    codes = [Status(r.body["status"]) if r.is_error else Status.OK for r in answers]
    assert Status.TOO_MANY_PENDING in codes and set(codes) <= {Status.OK, Status.TOO_MANY_PENDING}
    refused = next(r for r in answers if r.is_error)
    with pytest.raises(errors.DeviceError) as e:
        check(refused, Opcode.RESET_COUNTERS)
    assert e.value.status == Status.TOO_MANY_PENDING
    assert "not executed" in e.value.detail
    fw.max_pending = fw_mod.MAX_PENDING
    _still_usable(model, before)


# ----------------------------------------------------------------------------- firmware


HELLO = {
    "protocol_major": m.PROTOCOL_MAJOR,
    "protocol_minor": m.PROTOCOL_MINOR,
    "schema_hash": m.schema_hash(),
    "client": "limits",
}


class Direct:
    """Requests straight into a Firmware (real engine)."""

    def __init__(self, fw: Firmware | None = None) -> None:
        self.fw = fw or Firmware("hnpu-v2")
        self.rid = 0

    def request(self, op: Opcode, body: dict[str, Any] | None = None, **kw: Any) -> m.ResponseMsg:
        self.rid += 1
        (resp,) = self.fw.receive(m.encode_request(op, self.rid, body), **kw)
        r = m.decode_response(resp)
        assert r.request_id == self.rid
        return r

    def ok(self, op: Opcode, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.request(op, body)
        assert not r.is_error, r.body
        return r.body

    def refused(self, op: Opcode, body: dict[str, Any] | None = None, **kw: Any) -> Status:
        r = self.request(op, body, **kw)
        assert r.is_error, f"{op.name} succeeded"
        assert r.body["detail"]
        return Status(r.body["status"])

    def upload(self, tid: int, values: np.ndarray) -> None:
        desc, data = m.tensor_message(tid, np.asarray(values, np.float32).view(np.uint32),
                                      DType.FP32)  # fmt: skip
        assert self.ok(Opcode.TENSOR_BEGIN, {"tensor": desc})["offset"] == 0
        self.ok(Opcode.TENSOR_DATA, {"id": tid, "offset": 0, "data": data})
        self.ok(Opcode.TENSOR_END, {"id": tid})

    def state(self) -> tuple[str, int]:
        """(digest of every weight read back, number of tensors held)."""
        h = hashlib.sha256()
        for p in self.ok(Opcode.GET_WEIGHTS, {"layer": ALL_LAYERS})["params"]:
            t = p["tensor"]
            r = self.ok(Opcode.TENSOR_READ, {"id": t["id"], "offset": 0, "length": 1 << 20})
            h.update(r["data"])
        return h.hexdigest(), len(self.fw.tensors)


def _linear(fin: int, fout: int) -> dict[str, Any]:
    return {"kind": LayerKind.LINEAR, "params": {"in_features": fin, "out_features": fout,
                                                 "bias": 1}}  # fmt: skip


RELU = {"kind": LayerKind.RELU, "params": {}}


@pytest.fixture
def direct() -> Direct:
    d = Direct()
    d.ok(Opcode.HELLO, HELLO)
    d.ok(
        Opcode.DEFINE_MODEL,
        {"input_shape": [6], "layers": [_linear(6, 4), RELU, _linear(4, 3)], "init_seed": 5,
         "weights": []},
    )  # fmt: skip
    from tools.fuzz_campaign import train_config

    d.ok(Opcode.TRAIN_CONFIG, train_config())
    d.upload(1, np.linspace(-1, 1, 12).reshape(2, 6))
    d.ok(Opcode.TENSOR_BEGIN, {"tensor": m.tensor_message(2, np.array([0, 2], np.int32),
                                                          DType.INT32)[0]})  # fmt: skip
    d.ok(Opcode.TENSOR_DATA, {"id": 2, "offset": 0, "data": np.array([0, 2], "<i4").tobytes()})
    d.ok(Opcode.TENSOR_END, {"id": 2})
    d.ok(Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2})
    return d


def _desc(tid: int, n: int, dtype: DType = DType.FP32) -> dict[str, Any]:
    width = {DType.FP32: 4, DType.UINT8: 1}[dtype]
    return {"id": tid, "dtype": dtype, "scale": m.zero_scale(), "shape": [n],
            "nbytes": width * n, "crc32": 0}  # fmt: skip


def test_firmware_tensor_size_limit(direct: Direct) -> None:
    before = direct.state()
    limit = direct.fw.max_tensor_bytes
    assert direct.refused(Opcode.TENSOR_BEGIN, {"tensor": _desc(9, limit + 1, DType.UINT8)}) == (
        Status.TENSOR_TOO_LARGE
    )
    # Also for a tensor the device would make: a FORWARD output over the limit.
    direct.fw.max_tensor_bytes = 4 * 2 * 3 - 1
    fwd = {"input_id": 1, "output_id": 20, "flags": 0}
    assert direct.refused(Opcode.FORWARD, fwd) == Status.TENSOR_TOO_LARGE
    direct.fw.max_tensor_bytes = limit
    assert direct.state() == before
    assert direct.ok(Opcode.TENSOR_BEGIN, {"tensor": _desc(9, limit, DType.UINT8)})["offset"] == 0
    assert direct.ok(Opcode.FORWARD, fwd)["output"]["shape"] == [2, 3]


def test_firmware_tensor_count_limit(direct: Direct) -> None:
    direct.fw.max_tensors = 5  # tensors 1 and 2 are held already
    for tid in (10, 11, 12):
        direct.ok(Opcode.TENSOR_BEGIN, {"tensor": _desc(tid, 0)})
    before = direct.state()
    assert direct.refused(Opcode.TENSOR_BEGIN, {"tensor": _desc(13, 0)}) == Status.TOO_MANY_TENSORS
    fwd = {"input_id": 1, "output_id": 14, "flags": 0}
    assert direct.refused(Opcode.FORWARD, fwd) == Status.TOO_MANY_TENSORS
    assert direct.state() == before
    # Reusing an id is always possible; GET_WEIGHTS snapshots do not count.
    assert direct.ok(Opcode.TENSOR_BEGIN, {"tensor": _desc(12, 3)})["offset"] == 0
    assert direct.ok(Opcode.FORWARD, {**fwd, "output_id": 11})["output"]["id"] == 11
    direct.ok(Opcode.RESET, {"scope": m.ResetScope.TENSORS})
    assert direct.ok(Opcode.TENSOR_BEGIN, {"tensor": _desc(13, 0)})["offset"] == 0


def test_firmware_memory_limit(direct: Direct) -> None:
    before = direct.state()
    free = direct.fw.preset.device_memory_bytes - direct.fw.tensors.held_bytes()
    free -= int(direct.fw.engine.memory_bytes())
    n = 12 * MIB
    held = 0
    tid = 30
    while held + n <= free:
        assert direct.ok(Opcode.TENSOR_BEGIN, {"tensor": _desc(tid, n, DType.UINT8)})["offset"] == 0
        held += n
        tid += 1
    assert direct.refused(Opcode.TENSOR_BEGIN, {"tensor": _desc(tid, n, DType.UINT8)}) == (
        Status.OUT_OF_MEMORY
    )
    model = {"input_shape": [4096], "layers": [_linear(4096, 4096)], "init_seed": 1, "weights": []}
    assert direct.refused(Opcode.DEFINE_MODEL, model) == Status.OUT_OF_MEMORY
    direct.ok(Opcode.RESET, {"scope": m.ResetScope.TENSORS})
    direct.upload(1, np.linspace(-1, 1, 12).reshape(2, 6))
    assert direct.state()[0] == before[0]  # the model was never touched
    assert direct.ok(Opcode.TENSOR_BEGIN, {"tensor": _desc(tid, n, DType.UINT8)})["offset"] == 0


def test_firmware_layer_limit(direct: Direct) -> None:
    before = direct.state()
    most = direct.fw.preset.max_layers
    deep = {"input_shape": [6], "layers": [_linear(6, 6)] + [RELU] * most, "init_seed": 1,
            "weights": []}  # fmt: skip
    assert direct.refused(Opcode.DEFINE_MODEL, deep) == Status.TOO_MANY_LAYERS
    assert direct.state() == before
    assert direct.ok(Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2})["step"] == 2
    deep["layers"] = deep["layers"][:most]
    assert direct.ok(Opcode.DEFINE_MODEL, deep)["layer_count"] == most


def test_firmware_pending_limit_is_not_cached_and_not_executed(direct: Direct) -> None:
    before = direct.state()
    executed = direct.fw.executed
    body = {"input_id": 1, "target_id": 2}
    msg = m.encode_request(Opcode.TRAIN_STEP, 777, body)
    (refusal,) = direct.fw.receive(msg, pending=direct.fw.max_pending)
    r = m.decode_response(refusal)
    assert r.is_error and Status(r.body["status"]) == Status.TOO_MANY_PENDING
    assert str(direct.fw.max_pending) in r.body["detail"]
    assert direct.fw.executed == executed and direct.state() == before
    # The same request id executes once the answers are read (nothing was cached).
    (answer,) = direct.fw.receive(msg, pending=direct.fw.max_pending - 1)
    assert m.decode_response(answer).body["step"] == 2


def _session(dev: DeviceLink, host_link: Link) -> float:
    now = 0.0
    for _ in range(20):
        dev.receive_bytes(host_link.bytes_to_send(now), now)
        host_link.receive_bytes(dev.bytes_to_send(now), now)
        if host_link.established:
            return now
        now += 0.3
    raise AssertionError("no link session")


def test_a_full_answer_queue_holds_requests_back_by_credits() -> None:
    """A host that sends a window of requests and reads none of the answers: the device
    executes ``max_pending`` of them and holds the rest back (its link's credits close), with
    no refusal. Once the host reads, every request gets exactly one answer, in order, each
    executed once."""
    fw = Firmware("hnpu-v2", max_pending=8, window=64)
    dev = DeviceLink(fw, seed=1)
    h = Link(Role.HOST, LinkConfig(window=64), rng=random.Random(2))
    now = _session(dev, h)
    n = 40
    for i in range(n):
        h.send_message(0, m.encode_request(Opcode.RESET_COUNTERS, i, None))
    for _ in range(5):  # the device's output is lost: no answer is acknowledged
        dev.feed(h.bytes_to_send(now), now)
        now += 0.01
    assert dev.link.unacked_messages == 8 and fw.executed == 8
    answers: list[bytes] = []
    for _ in range(400):  # now the host reads (the device retransmits what was lost)
        back = dev.feed(h.bytes_to_send(now), now)
        h.receive_bytes(back, now)
        answers += [msg.payload for msg in h.take_messages()]
        now += 0.05
        if len(answers) >= n:
            break
    decoded = [m.decode_response(a) for a in answers]
    assert [r.request_id for r in decoded] == list(range(n))
    assert not any(r.is_error for r in decoded)
    assert fw.executed == n and dev.peak_pending < 8


def test_limits_are_validated() -> None:
    for name in ("max_tensor_bytes", "max_tensors", "max_pending"):
        with pytest.raises(ValueError, match=name):
            Firmware("hnpu-v2", **{name: 0})
    assert DEVICE_TENSOR_ID_BASE > fw_mod.MAX_TENSORS
