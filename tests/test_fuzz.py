"""Short fuzz campaign for CI (issue 7): the device end and the host's decoder.

The inputs come from ``tools/fuzz_campaign.py``'s seeded mutator, driven here by hypothesis
(``st.randoms``: hypothesis chooses every random draw, so failures shrink and replay). The
long campaign is ``python tools/fuzz_campaign.py --inputs 1000000 --seed S``.

Properties (see the tool's docstring): nothing escapes the device end or the host's decoder
but the documented errors, every request gets exactly one answer with its request id and never
INTERNAL, the links' buffers stay within their bounds, and after each input the device still
answers HELLO, an upload and a read-back to a new host session.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from device_model.firmware import MAX_REQUEST_BYTES, Firmware
from device_model.firmware_link import PENDING_RESERVE, DeviceLink
from protocol.framing import FrameDecoder, max_encoded_size
from protocol.link import Link, LinkConfig, Role
from tools.fuzz_campaign import (
    DeviceHarness,
    HostHarness,
    Mutator,
    Stats,
    _receive_bound,
    campaign,
)

DEVICE_KINDS = st.sampled_from(["direct", "session", "line"])


@settings(max_examples=40)
@given(st.randoms(use_true_random=False), DEVICE_KINDS)
def test_device_end_survives_structured_inputs(rnd: random.Random, kind: str) -> None:
    actions = Mutator(rnd).device_input(kind)
    device = DeviceHarness(seed=1)
    stats = Stats()
    assert device.run(kind, actions, stats) is None
    assert device.hello_ok() is None


@settings(max_examples=40)
@given(st.randoms(use_true_random=False))
def test_host_decoder_survives_structured_inputs(rnd: random.Random) -> None:
    actions = Mutator(rnd).host_input()
    assert HostHarness(seed=2).run(actions, Stats()) is None


@settings(max_examples=30)
@given(st.lists(st.binary(max_size=3000), max_size=12), st.sampled_from([256, 4096, 16384]))
def test_frame_decoder_holds_at_most_one_frame(chunks: list[bytes], max_payload: int) -> None:
    dec = FrameDecoder(max_payload)
    for chunk in chunks:
        dec.feed(chunk)
        assert dec.buffered <= max_encoded_size(max_payload)


@settings(max_examples=20)
@given(st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=8))
def test_device_link_answers_hello_after_line_garbage(chunks: list[bytes]) -> None:
    device = DeviceHarness(seed=3)
    for chunk in chunks:
        device.dev.feed(chunk, device.now)
        device.now += 0.01
    assert device.hello_ok() is None


def test_seeded_campaign_finds_nothing_and_reaches_every_kind() -> None:
    """A few hundred seeded inputs of every kind on one device, with the after-burst HELLO
    check: no finding, and the structure-aware inputs get past the parser (successes and the
    specific refusals of deep handlers, resource limits included)."""
    out = campaign(300, seed=11, burst=100)
    assert out["crashes"] == 0, out["findings"]
    assert set(out["per_kind"]) == {"direct", "session", "line", "host"}
    seen = set(out["unique_statuses"])
    assert {"OK", "BAD_REQUEST", "UNKNOWN_OPCODE", "BAD_SHAPE", "UNKNOWN_TENSOR"} <= seen
    assert seen & {"TENSOR_TOO_LARGE", "TOO_MANY_LAYERS", "OUT_OF_MEMORY"}
    assert out["decoder_peak_bytes"]["device"] <= out["decoder_bound_bytes"]["device"]


def test_device_memory_stays_bounded_under_a_flood() -> None:
    """Bytes from a host that never reads its answers, then frames of a message that never
    ends, then line garbage: what the device's link holds stays within its receive bound
    (a partial frame, a window of frames, one request in reassembly, the inbox), and the
    Python heap grows by no more than that plus the answers it may queue."""
    fw = Firmware("hnpu-v2")
    dev = DeviceLink(fw, seed=5)
    h = Link(Role.HOST, LinkConfig(), rng=random.Random(6))
    now = 0.0
    for _ in range(20):
        dev.receive_bytes(h.bytes_to_send(now), now)
        h.receive_bytes(dev.bytes_to_send(now), now)
        now += 0.3
    assert h.established
    bound = _receive_bound(dev.link.config)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    # 600 requests from a host that takes the device's acks but never its answers.
    h._on_data = lambda f: None  # type: ignore[method-assign]
    for i in range(600):
        h.send_message(0, b"\x41" + i.to_bytes(4, "little"))  # RESET_COUNTERS
    for _ in range(120):
        h.receive_bytes(dev.feed(h.bytes_to_send(now), now), now)
        now += 0.01
    assert dev.link.unacked_messages == fw.max_pending  # the rest wait: credits closed
    assert fw.executed == fw.max_pending
    # A 1.5 MiB message: reassembly stops at MAX_REQUEST_BYTES and discards it.
    h2 = Link(Role.HOST, LinkConfig(), rng=random.Random(7))
    h2.send_message(0, bytes(3 * MAX_REQUEST_BYTES // 2))
    for _ in range(2000):
        out = h2.bytes_to_send(now)
        back = dev.feed(out, now)
        h2.receive_bytes(back, now)
        now += 0.01
        if h2.idle():
            break
    garbage = np.random.default_rng(0).integers(1, 256, 200_000, dtype=np.uint8).tobytes()
    dev.feed(garbage, now)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert dev.link.stats["oversize_messages"] == 1
    held = dev.link._decoder.buffered + dev.link._parts_bytes + dev.link._inbox_bytes
    assert held <= bound
    # Answers queued: at most max_pending + reserve of a few hundred bytes each at most,
    # plus the receive bound, plus the 1.5 MiB message being sent by the test's own host link.
    answers = (fw.max_pending + PENDING_RESERVE) * 400
    assert peak < bound + answers + 3 * MAX_REQUEST_BYTES, peak
