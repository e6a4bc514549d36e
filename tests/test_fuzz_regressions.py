"""Regressions of what fuzzing the device end found (issue 7), each with its input.

* A message that never ends (DATA frames without FLAG_LAST) grew the device link's reassembly
  buffer without bound (8 MB after 2,000 frames of 4 KB): reassembly now stops at
  ``max_message`` (the device's ``MAX_REQUEST_BYTES``) and discards the message.
* A host that sends requests and never acknowledges the answers grew the device's answer queue
  without bound (4,992 answers queued after 5,000 requests): past ``max_pending`` answers the
  device executes nothing more and its link's credits close (a host ignoring them gets
  TOO_MANY_PENDING, then dropped frames).
* A sender that ignores credits filled the receiver's inbox without bound while the device was
  not reading: DATA beyond ``rx_buffer`` plus a window is now dropped unacknowledged.
* A request the protocol defines but the firmware has no handler for answered INTERNAL (a
  KeyError inside): it is UNSUPPORTED.
* Zero-byte tensors cost no device memory, so a stream of empty uploads grew the tensor table
  without bound: at most ``max_tensors`` host tensors (TOO_MANY_TENSORS).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from device_model.firmware import MAX_REQUEST_BYTES, Firmware
from device_model.firmware_link import PENDING_RESERVE, DeviceLink
from protocol import messages as m
from protocol.dtypes import DType
from protocol.link import Link, LinkConfig, Role
from protocol.messages import Opcode
from protocol.status import Status
from tools.fuzz_campaign import SCHEMA_HASH, DeviceHarness, replay

HELLO = m.encode_request(
    Opcode.HELLO,
    99,
    {"protocol_major": m.PROTOCOL_MAJOR, "protocol_minor": m.PROTOCOL_MINOR,
     "schema_hash": SCHEMA_HASH, "client": "regression"},
)  # fmt: skip


def _pair(**dev_kw: Any) -> tuple[Firmware, DeviceLink, Link, float]:
    fw = Firmware("hnpu-v2", **dev_kw)
    dev = DeviceLink(fw, seed=1)
    h = Link(Role.HOST, LinkConfig(window=dev.link.config.window), rng=random.Random(2))
    now = 0.0
    for _ in range(20):
        dev.receive_bytes(h.bytes_to_send(now), now)
        h.receive_bytes(dev.bytes_to_send(now), now)
        if h.established:
            return fw, dev, h, now
        now += 0.3
    raise AssertionError("no link session")


def _exchange(dev: DeviceLink, h: Link, now: float, rounds: int) -> tuple[float, list[bytes]]:
    got: list[bytes] = []
    for _ in range(rounds):
        h.receive_bytes(dev.feed(h.bytes_to_send(now), now), now)
        got += [msg.payload for msg in h.take_messages()]
        now += 0.01
    return now, got


def test_a_message_that_never_ends_costs_at_most_max_request_bytes() -> None:
    fw, dev, h, now = _pair()
    h.send_message(0, bytes(2 * MAX_REQUEST_BYTES + 12_345))
    peak = 0
    # A window of default frames a round: the rounds scale with the message (2 x 8 MiB).
    for _ in range(300 * max(1, MAX_REQUEST_BYTES >> 20)):
        h.receive_bytes(dev.feed(h.bytes_to_send(now), now), now)
        peak = max(peak, dev.link._parts_bytes)
        now += 0.01
        if h.idle():
            break
    assert h.idle()  # every fragment was acknowledged: nothing to retransmit forever
    assert peak <= MAX_REQUEST_BYTES
    assert dev.link.stats["oversize_messages"] == 1
    assert fw.executed == 0  # discarded, never parsed
    h.send_message(0, HELLO)
    now, got = _exchange(dev, h, now, 10)
    assert [m.decode_response(g).body["preset"] for g in got] == ["hnpu-v2"]


def test_unacknowledged_answers_are_bounded() -> None:
    fw, dev, h, now = _pair()
    h._on_data = lambda f: None  # type: ignore[method-assign]  # takes acks, never answers
    for i in range(1000):
        h.send_message(0, m.encode_request(Opcode.RESET_COUNTERS, i, None))
    _exchange(dev, h, now, 300)
    assert dev.link.unacked_messages == fw.max_pending  # was 992 (one per request) before
    assert dev.peak_pending < fw.max_pending
    assert fw.executed == fw.max_pending


def test_a_sender_that_ignores_credits_is_refused_not_buffered() -> None:
    fw, dev, h, now = _pair(max_pending=4)
    real_on_ack = h._on_ack
    h._on_ack = lambda ack, credits: real_on_ack(ack, h.window)  # type: ignore[method-assign]
    h._on_data = lambda f: None  # type: ignore[method-assign]  # so the device stops reading
    # 3000 UNKNOWN_TENSOR requests of at least 1 KB, 1.5 x MAX_REQUEST_BYTES in all: more
    # than the inbox may hold (rx_buffer, a window of frames and the largest message).
    size = max(1000, MAX_REQUEST_BYTES // 2000)
    for i in range(3000):
        body = {"id": 5, "offset": 0, "data": bytes(size)}
        h.send_message(0, m.encode_request(Opcode.TENSOR_DATA, i, body))
    inbox_peak = 0
    for _ in range(600):
        h.receive_bytes(dev.feed(h.bytes_to_send(now), now), now)
        inbox_peak = max(inbox_peak, dev.link._inbox_bytes)
        now += 0.01
    cfg = dev.link.config
    assert dev.link.stats["frames_refused"] > 0
    bound = cfg.rx_buffer + dev.link.window * dev.link.max_payload + 2 * cfg.max_message
    assert inbox_peak <= bound
    assert dev.link.unacked_messages <= fw.max_pending + PENDING_RESERVE
    assert fw.executed == fw.max_pending


def test_a_defined_opcode_without_a_handler_is_unsupported() -> None:
    fw = Firmware("hnpu-v2")
    del fw._handlers[Opcode.RESET_COUNTERS]
    (resp,) = fw.receive(m.encode_request(Opcode.RESET_COUNTERS, 5, None))
    r = m.decode_response(resp)
    assert r.is_error and Status(r.body["status"]) == Status.UNSUPPORTED
    assert "RESET_COUNTERS" in r.body["detail"]


def test_empty_tensors_are_bounded_by_the_descriptor_table() -> None:
    fw = Firmware("hnpu-v2", max_tensors=50)
    desc = {"dtype": DType.FP32, "scale": m.zero_scale(), "shape": [0], "nbytes": 0, "crc32": 0}
    codes = []
    for i in range(80):
        (resp,) = fw.receive(
            m.encode_request(Opcode.TENSOR_BEGIN, i, {"tensor": {**desc, "id": 1000 + i}})
        )
        r = m.decode_response(resp)
        codes.append(Status(r.body["status"]) if r.is_error else Status.OK)
    assert codes == [Status.OK] * 50 + [Status.TOO_MANY_TENSORS] * 30
    assert len(fw.tensors) == 50


def test_campaign_inputs_replay_clean() -> None:
    """Inputs of the long campaign's kinds, replayed on a fresh device (the harness the
    regressions of future findings use: ``replay(kind, actions)``)."""
    flood = [("msg", m.encode_request(Opcode.RESET_COUNTERS, i, None)) for i in range(30)]
    garbage = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    for kind, actions in [
        ("session", [("noack", b""), *flood]),
        ("line", [("line", garbage), ("line", b"\x00" + bytes(range(1, 256)) * 80)]),
        ("direct", [("msg", b""), ("msg", b"\x10\x01"), ("msg", HELLO[:7])]),
    ]:
        assert replay(kind, list(actions)) is None
    assert DeviceHarness(seed=9).hello_ok() is None
