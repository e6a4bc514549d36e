"""The reliable link over a hostile channel, with a simulated clock.

The channel model carries each frame with its own random delay (so frames reorder) no longer
than the link's frame lifetime, and the rules corrupt, drop, duplicate frames, inject garbage
and reset either end. Above the links sit a host application that sends numbered requests and
a device application that executes each request id once (a request-id cache answers
duplicates) and responds.

Laws: within each session, each end delivers messages in the order sent without duplicates;
the device executes every request exactly once, in order; the host receives exactly one
response per request, in order; and once the channel behaves, both ends reach idle.
"""

from __future__ import annotations

import heapq
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from protocol.framing import (
    MAX_PAYLOAD,
    Frame,
    FrameType,
    decode_frame,
    encode_frame,
    session_crc,
)
from protocol.link import Link, LinkConfig, LinkError, Message, Role

CFG = LinkConfig(
    max_payload=256, window=4, rto_initial=0.05, rto_min=0.01, rto_max=0.4, frame_lifetime=0.3
)
#: How long the channel may hold a frame (below CFG.frame_lifetime): longer than several round
#: trips, so frames of an old session still arrive after a reset; nobody waits for them to go
#: (sessions are told apart by their CRC, setup frames by their epochs).
MAX_DELAY = 0.25
REQ = struct.Struct("<I")


def split_frames(data: bytes) -> list[bytes]:
    return [b"\x00" + p + b"\x00" for p in data.split(b"\x00") if p]


class Channel:
    """Frames in flight in one direction: a heap of (arrival, tiebreak, bytes, sent at).

    Every frame arrives within MAX_DELAY of the time it was sent, duplicates included."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.heap: list[tuple[float, int, bytes, float]] = []
        self.n = 0

    def put(self, data: bytes, now: float, delay: float, sent: float | None = None) -> None:
        sent = now if sent is None else sent
        for fr in split_frames(data):
            self.n += 1
            at = self.rng.uniform(now, max(now, sent + delay))
            heapq.heappush(self.heap, (at, self.n, fr, sent))

    def due(self, now: float) -> bytes:
        out = []
        while self.heap and self.heap[0][0] <= now:
            out.append(heapq.heappop(self.heap)[2])
        return b"".join(out)

    def next_time(self) -> float | None:
        return self.heap[0][0] if self.heap else None


class HostApp:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.next_req = 0
        self.msg_of: dict[int, int] = {}
        self.answers: list[int] = []

    def request(self, size: int) -> None:
        r = self.next_req
        self.next_req += 1
        self.msg_of[r] = self.link.send_message(1, REQ.pack(r) + bytes([r & 0xFF]) * size)

    def pump(self) -> list[Message]:
        msgs = self.link.take_messages()
        for m in msgs:
            (r,) = REQ.unpack_from(m.payload)
            assert r in self.msg_of, f"response to unknown request {r}"
            self.answers.append(r)
            self.link.mark_answered(self.msg_of[r])
        return msgs


class DeviceApp:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.executed: list[int] = []
        self.cache: set[int] = set()

    def pump(self) -> list[Message]:
        msgs = self.link.take_messages()
        for m in msgs:
            (r,) = REQ.unpack_from(m.payload)
            assert m.payload == REQ.pack(r) + bytes([r & 0xFF]) * (len(m.payload) - 4)
            assert m.channel == 1
            if r not in self.cache:  # execute once; a duplicate is answered from the cache
                self.cache.add(r)
                self.executed.append(r)
            self.link.send_message(2, REQ.pack(r))
        return msgs


def session_ids(msgs: list[Message]) -> list[int]:
    return [REQ.unpack_from(m.payload)[0] for m in msgs]


class LinkMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.host = Link(Role.HOST, CFG, rng=random.Random(seed + 1))
        self.dev = Link(Role.DEVICE, CFG, rng=random.Random(seed + 2))
        self.to_dev = Channel(self.rng)
        self.to_host = Channel(self.rng)
        self.happ = HostApp(self.host)
        self.dapp = DeviceApp(self.dev)
        # Deliveries in the current session of each receiving end (reset by either end).
        self.dev_session: list[int] = []
        self.host_session: list[int] = []
        self.sessions: tuple[int, int, int | None, int | None] = (
            self.host.epoch,
            self.dev.epoch,
            None,
            None,
        )

    # ---------------------------------------------------------------- plumbing

    def exchange(self, delay: float = MAX_DELAY) -> None:
        for link in (self.host, self.dev):
            link.poll(self.now)
        self.to_dev.put(self.host.bytes_to_send(self.now), self.now, delay)
        self.to_host.put(self.dev.bytes_to_send(self.now), self.now, delay)
        self.dev.receive_bytes(self.to_dev.due(self.now), self.now)
        self.host.receive_bytes(self.to_host.due(self.now), self.now)
        self.check_session()
        self.dev_session += session_ids(self.dapp.pump())
        self.host_session += session_ids(self.happ.pump())

    def check_session(self) -> None:
        key = (self.host.epoch, self.dev.epoch, self.host.peer_epoch, self.dev.peer_epoch)
        if key != self.sessions:
            self.sessions = key
            self.dev_session = []
            self.host_session = []

    def channel(self) -> Channel:
        return self.rng.choice([self.to_dev, self.to_host])

    # ---------------------------------------------------------------- rules

    @rule(size=st.integers(0, 900) | st.just(252))
    def request(self, size: int) -> None:
        self.happ.request(size)

    @rule(dt=st.floats(0, 0.2))
    def step(self, dt: float) -> None:
        self.now += dt
        self.exchange()

    @rule(data=st.data())
    def corrupt(self, data: st.DataObject) -> None:
        ch = self.channel()
        if ch.heap:
            i = data.draw(st.integers(0, len(ch.heap) - 1))
            t, n, fr, sent = ch.heap[i]
            b = bytearray(fr)
            bit = data.draw(st.integers(8, 8 * len(b) - 9))
            b[bit // 8] ^= 1 << (bit % 8)
            ch.heap[i] = (t, n, bytes(b), sent)

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        ch = self.channel()
        if ch.heap:
            ch.heap.pop(data.draw(st.integers(0, len(ch.heap) - 1)))
            heapq.heapify(ch.heap)

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        ch = self.channel()
        if ch.heap:
            _, _, fr, sent = ch.heap[data.draw(st.integers(0, len(ch.heap) - 1))]
            ch.put(fr, self.now, MAX_DELAY, sent)

    @rule(garbage=st.binary(min_size=1, max_size=40))
    def inject_garbage(self, garbage: bytes) -> None:
        self.channel().put(garbage + b"\x00", self.now, MAX_DELAY)

    @rule()
    def reset_host(self) -> None:
        self.host.reset(self.now)

    @rule()
    def reset_device(self) -> None:
        self.dev.reset(self.now)

    # ---------------------------------------------------------------- laws

    @invariant()
    def in_order_without_duplicates_per_session(self) -> None:
        if not hasattr(self, "host"):
            return
        assert self.dev_session == sorted(set(self.dev_session))
        assert self.host_session == sorted(set(self.host_session))
        assert self.dapp.executed == list(range(len(self.dapp.executed)))
        assert self.happ.answers == list(range(len(self.happ.answers)))

    def teardown(self) -> None:
        if not hasattr(self, "host"):
            return
        # The channel now behaves: both ends must finish everything and go idle.
        for _ in range(5000):
            if (
                self.host.idle()
                and self.dev.idle()
                and not self.to_dev.heap
                and not self.to_host.heap
                and len(self.happ.answers) == self.happ.next_req
            ):
                break
            times = [
                t
                for t in (
                    self.host.next_deadline(),
                    self.dev.next_deadline(),
                    self.to_dev.next_time(),
                    self.to_host.next_time(),
                )
                if t is not None
            ]
            self.now = max(self.now, min(times)) if times else self.now + 0.01
            self.exchange(delay=0.01)
        assert self.happ.answers == list(range(self.happ.next_req))
        assert self.dapp.executed == list(range(self.happ.next_req))
        assert self.host.idle() and self.dev.idle()
        assert self.host.unanswered == []


TestLinkMachine = LinkMachine.TestCase
# Five times the profile's example count: each example is cheap (ci: 300 runs, ~5 s).
TestLinkMachine.settings = settings(
    max_examples=5 * settings().max_examples, stateful_step_count=50, deadline=None
)


# ---------------------------------------------------------------------- direct tests


def pair(cfg_h: LinkConfig = CFG, cfg_d: LinkConfig = CFG) -> tuple[Link, Link]:
    return Link(Role.HOST, cfg_h, rng=random.Random(1)), Link(
        Role.DEVICE, cfg_d, rng=random.Random(2)
    )


def frames_from(sender: Link, data: bytes) -> list[Frame]:
    """The frames ``sender`` wrote in ``data``, checked with its current session's CRC."""
    assert sender.peer_epoch is not None
    session = session_crc(sender.epoch, sender.peer_epoch)
    return [decode_frame(f[1:-1], session=session) for f in split_frames(data)]


def run(a: Link, b: Link, now: float, rounds: int = 20) -> None:
    for _ in range(rounds):
        b.receive_bytes(a.bytes_to_send(now), now)
        a.receive_bytes(b.bytes_to_send(now), now)


def test_setup_negotiates_minimum_payload_and_window() -> None:
    h, d = pair(CFG, LinkConfig(max_payload=1024, window=16))
    run(h, d, 0.0)
    assert h.established and d.established
    assert (h.max_payload, h.window) == (d.max_payload, d.window) == (256, 4)
    assert h.peer_epoch == d.epoch and d.peer_epoch == h.epoch


def test_large_message_is_fragmented_and_reassembled() -> None:
    h, d = pair()
    run(h, d, 0.0)
    big = bytes(range(256)) * 40
    h.send_message(7, big)
    run(h, d, 0.0, rounds=60)
    assert d.take_messages() == [Message(7, big)]
    assert h.idle() and d.idle()


def test_gap_triggers_nak_and_immediate_retransmit() -> None:
    h, d = pair()
    run(h, d, 0.0)
    h.send_message(1, b"a")
    h.send_message(1, b"b")
    frames = split_frames(h.bytes_to_send(0.0))
    assert len(frames) == 2
    d.receive_bytes(frames[1], 0.0)  # the first frame is lost
    reply = d.bytes_to_send(0.0)
    assert FrameType.NAK in [f.type for f in frames_from(d, reply)]
    h.receive_bytes(reply, 0.001)
    again = h.bytes_to_send(0.001)  # retransmitted before any timeout
    assert again and h.stats["retransmits"] == 1
    d.receive_bytes(again, 0.002)
    assert [m.payload for m in d.take_messages()] == [b"a", b"b"]


def test_timeout_backs_off_and_karn_skips_retransmitted_samples() -> None:
    h, d = pair()
    run(h, d, 0.0)
    h.send_message(1, b"x")
    h.bytes_to_send(0.0)  # lost
    first = h.next_deadline()
    assert first is not None
    h.poll(first)
    h.bytes_to_send(first)  # lost again
    second = h.next_deadline()
    assert second is not None and second - first == pytest.approx(2 * (first - 0.0))
    h.poll(second)
    d.receive_bytes(h.bytes_to_send(second), second)
    d.poll(second + CFG.ack_delay)  # a lone in-order frame is acked after ack_delay
    h.receive_bytes(d.bytes_to_send(second + CFG.ack_delay), second + 5.0)
    assert h.idle() and h._srtt is None  # the only ack was for a retransmitted frame


def test_credits_stop_the_sender_until_the_inbox_drains() -> None:
    h = Link(Role.HOST, CFG, rng=random.Random(1))
    d = Link(Role.DEVICE, LinkConfig(**{**CFG.__dict__, "rx_buffer": 300}), rng=random.Random(2))
    run(h, d, 0.0)
    for _ in range(8):
        h.send_message(1, bytes(200))
    run(h, d, 0.0)
    # The first window (sent on the initial credits) lands; then credits are 0.
    assert len(d._inbox) == 4 and h._queue
    assert len(d.take_messages()) == 4
    run(h, d, 0.0)
    assert len(d.take_messages()) == 4 and h.idle()


def test_device_reset_replays_unanswered_requests_only() -> None:
    h, d = pair()
    run(h, d, 0.0)
    a = h.send_message(1, b"answered")
    b = h.send_message(1, b"unanswered")
    run(h, d, 0.0)
    assert [m.payload for m in d.take_messages()] == [b"answered", b"unanswered"]
    h.mark_answered(a)
    d.reset(0.0)
    t = 0.0
    for _ in range(50):
        t += 0.05
        h.poll(t)
        d.poll(t)
        run(h, d, t, rounds=3)
    assert h.stats["peer_resets"] == 1 and h.unanswered == [b]
    assert [m.payload for m in d.take_messages()] == [b"unanswered"]


def test_stale_session_data_is_not_accepted_after_a_reset() -> None:
    h, d = pair()
    run(h, d, 0.0)
    h.send_message(1, b"old")
    stale = h.bytes_to_send(0.0)
    h.reset(0.0)  # host restarts: its new SYNC goes out at once, no quiet time
    sync = h.bytes_to_send(0.0)
    assert [decode_frame(f[1:-1]).type for f in split_frames(sync)] == [FrameType.SYNC]
    d.receive_bytes(sync, 0.0)
    run(h, d, 0.0)
    assert h.established and d.established and h.stats["retransmits"] == 0
    assert [m.payload for m in d.take_messages()] == [b"old"]  # replayed once, new session
    h.send_message(1, b"new")  # seq 1 of the new session
    errors = d.stats["frame_errors"]
    d.receive_bytes(stale + h.bytes_to_send(0.0), 0.0)
    # The old session's seq 0 fails the new session's CRC: dropped like a corrupted frame.
    assert d.stats["frame_errors"] == errors + 1
    assert [m.payload for m in d.take_messages()] == [b"new"]


def test_a_peer_reset_is_followed_at_once_by_the_new_session() -> None:
    # Reconnect (issue 7: within 500 ms of the device being ready): no quiet time; one
    # SYNC/CONFIG exchange at the same instant re-establishes and replays.
    h, d = pair()
    run(h, d, 0.0)
    h.send_message(1, b"before")
    run(h, d, 0.0)
    assert [m.payload for m in d.take_messages()] == [b"before"]
    d2 = Link(Role.DEVICE, CFG, rng=random.Random(3))  # the device restarted: new epoch
    run(h, d2, 1.0, rounds=3)
    assert h.established and d2.established and h.stats["peer_resets"] == 1
    assert [m.payload for m in d2.take_messages()] == [b"before"]  # unanswered: replayed


def test_setup_frames_of_an_ended_epoch_are_ignored() -> None:
    h, d = pair()
    run(h, d, 0.0)
    # A SYNC of the device's first epoch, still on the line when the device restarts.
    stale = Link(Role.DEVICE, CFG, epoch=d.epoch).bytes_to_send(0.0)
    assert [decode_frame(f[1:-1]).type for f in split_frames(stale)] == [FrameType.SYNC]
    d2 = Link(Role.DEVICE, CFG, rng=random.Random(3))
    run(h, d2, 1.0)
    assert h.peer_epoch == d2.epoch and h.stats["peer_resets"] == 1
    h.receive_bytes(stale, 1.1)  # late: must not be taken for another device restart
    assert h.peer_epoch == d2.epoch and h.stats["peer_resets"] == 1 and h.established
    assert h.stats["stale_setup"] == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(LinkError, match=rf"256\.\.{MAX_PAYLOAD}\b"):
        LinkConfig(max_payload=100)
    with pytest.raises(LinkError, match=r"1\.\.64"):
        LinkConfig(window=65)
    with pytest.raises(LinkError, match="channel"):
        Link(Role.HOST).send_message(256, b"")


def test_garbage_and_foreign_frames_do_not_disturb_setup() -> None:
    h, d = pair()
    d.receive_bytes(b"\x01\x02\x00" + encode_frame(FrameType.DATA, b"zz", seq=0), 0.0)
    d.receive_bytes(encode_frame(FrameType.SYNC, b"short"), 0.0)
    run(h, d, 0.0)
    assert h.established and d.established and d.take_messages() == []


@given(
    st.lists(
        st.binary(max_size=300)
        | st.builds(
            lambda t, p, seq, ack, credits, flags: encode_frame(
                t, p, seq=seq, ack=ack, credits=credits, flags=flags
            ),
            st.integers(0, 255),
            st.binary(max_size=300),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF),
            st.integers(0, 255),
        ),
        max_size=20,
    )
)
def test_any_input_to_an_established_link_is_survived(inputs: list[bytes]) -> None:
    # Random bytes and well-formed frames with any header values: nothing raises, the
    # decoder's buffer stays bounded and the ends still complete a transfer afterwards
    # (a peer reset the input triggers included).
    h, d = pair()
    run(h, d, 0.0)
    t = 0.0
    for data in inputs:
        d.receive_bytes(data, t)
        d.bytes_to_send(t)
    for _ in range(60):
        t += 0.05
        h.poll(t)
        d.poll(t)
        run(h, d, t, rounds=2)
    h.send_message(1, b"after")
    for _ in range(60):
        t += 0.05
        h.poll(t)
        d.poll(t)
        run(h, d, t, rounds=2)
    assert [m.payload for m in d.take_messages()][-1:] == [b"after"]


# ---------------------------------------------------------------------- loss recovery


def data_seqs(data: bytes, sender: Link) -> list[int]:
    return [f.seq for f in frames_from(sender, data) if f.type == FrameType.DATA]


def test_a_lost_retransmission_is_sent_again_once_a_later_frame_is_sacked() -> None:
    # The combined-fault stall (issue 7): a retransmission lost again used to wait for the
    # (backed-off) retransmit timeout although the peer had meanwhile reported later frames.
    # On a line that keeps frame order, a frame sent before one the peer has is lost.
    h, d = pair()
    run(h, d, 0.0)
    for i in range(3):
        h.send_message(1, bytes([i]))
    first = split_frames(h.bytes_to_send(0.0))
    assert data_seqs(b"".join(first), h) == [0, 1, 2]
    d.receive_bytes(b"".join(first[1:]), 0.001)  # seq 0 lost; 1 and 2 arrive: NAK + SACK
    h.receive_bytes(d.bytes_to_send(0.001), 0.002)
    assert data_seqs(h.bytes_to_send(0.002), h) == [0]  # the NAK's retransmission: lost too
    h.send_message(1, b"later")
    later = h.bytes_to_send(0.003)
    assert data_seqs(later, h) == [3]
    d.receive_bytes(later, 0.004)  # the device SACKs 1..3, still missing 0
    h.receive_bytes(d.bytes_to_send(0.004), 0.005)
    deadline = h.next_deadline()
    assert deadline is not None and deadline > 0.005
    again = h.bytes_to_send(0.005)
    assert data_seqs(again, h) == [0]  # at once, not at the timeout
    assert h.bytes_to_send(0.005) == b""  # inferred once per transmission
    d.receive_bytes(again, 0.006)
    assert [m.payload for m in d.take_messages()] == [b"\x00", b"\x01", b"\x02", b"later"]


SIM_CFG = LinkConfig(max_payload=4096, window=8)


def simulate(
    query: str,
    seed: int,
    n: int = 60,
    size: int = 4096,
    links: tuple[Link, Link] | None = None,
    cfg: LinkConfig = SIM_CFG,
) -> tuple[float, Link, Link]:
    """Simulated seconds for ``n`` request/response pairs of ``size`` bytes (4 in flight)
    over a FIFO line of 20 Mbaud and 0.5 ms latency each way, with the emu:// faults of
    ``query`` applied to both directions; and the two link ends (new, or ``links`` again)."""
    from device_model import emu_faults

    h, d = links or (
        Link(Role.HOST, cfg, rng=random.Random(seed)),
        Link(Role.DEVICE, cfg, rng=random.Random(seed + 1)),
    )
    faults = []
    for part in filter(None, query.split("&")):
        name, value = part.split("=")
        fault = emu_faults.FAULTS[name](value)
        fault.seed(seed)
        faults.append(fault)
    lines: dict[bool, list[tuple[float, bytes]]] = {True: [], False: []}
    start = now = h._now
    free = {True: now, False: now}
    sent, answered, ids = 0, 0, {}

    def put(down: bool, data: bytes) -> None:
        for f in faults:
            data = f.to_device(data) if down else f.to_host(data)
        if data:
            free[down] = max(now, free[down]) + len(data) * 10 / 20e6
            lines[down].append((free[down] + 0.0005, data))

    while answered < n:
        assert now < start + 600, "the transfer stalled"
        while sent < n and sent - answered < 4:
            ids[sent] = h.send_message(0, REQ.pack(sent) + bytes(size - 4))
            sent += 1
        for link, down in ((h, True), (d, False)):
            link.poll(now)
            put(down, link.bytes_to_send(now))
        for link, down in ((d, True), (h, False)):
            while lines[down] and lines[down][0][0] <= now:
                link.receive_bytes(lines[down].pop(0)[1], now)
        for m in d.take_messages():
            d.send_message(0, m.payload)
        for m in h.take_messages():
            (r,) = REQ.unpack_from(m.payload)
            if r in ids:
                h.mark_answered(ids.pop(r))
                answered += 1
        for link, down in ((h, True), (d, False)):
            put(down, link.bytes_to_send(now))
        wakes = [h.next_deadline(), d.next_deadline()] + [q[0][0] for q in lines.values() if q]
        now = max(now + 1e-4, min([w for w in wakes if w is not None], default=now + 1e-3))
    return now - start, h, d


@pytest.mark.parametrize("seed", [0, 3])
def test_combined_faults_cost_retransmissions_not_waiting(seed: int) -> None:
    # Regression (issue 7, fault campaign "all of them" took 93 s instead of 2.8 s): losses
    # were repaired at the retransmit timeout, doubled on each expiry. Simulated time, no
    # wall clock: 4 KiB frames survive corrupt+insert 1e-4 about 44% of the time, so about
    # 2.3 transmissions per frame is the floor; before the fix seed 3 took 5.4x fault-free.
    fixed = LinkConfig(max_payload=4096, window=8, adaptive_fragments=False)
    clean = simulate("", seed, cfg=fixed)[0]
    faulty = simulate("corrupt=1e-4&drop=0.01&dup=0.01&insert=1e-4", seed, cfg=fixed)[0]
    assert faulty < 2.6 * clean, (faulty, clean)


def test_fragments_shrink_on_a_bad_line_and_grow_back() -> None:
    # Issue 7: at 1e-3 per byte a 4 KiB frame gets through 1.7% of the time and the run never
    # completed. The sender estimates the per-byte loss from its frames' fate and cuts
    # fragments to suit (about 400 bytes there), and back to the full payload once clean.
    clean, h, d = simulate("", 1)
    assert h.fragment == d.fragment == 4096 and h.loss_per_byte == 0
    bad, h, d = simulate("corrupt=1e-3", 1)
    assert 128 <= h.fragment <= 1024 and 128 <= d.fragment <= 1024, (h.fragment, d.fragment)
    assert 3e-4 < h.loss_per_byte < 3e-3
    assert bad < 6 * clean, (bad, clean)
    fixed = LinkConfig(max_payload=4096, window=8, adaptive_fragments=False)
    short = simulate("corrupt=1e-3", 1, n=8)[0]
    assert simulate("corrupt=1e-3", 1, n=8, cfg=fixed)[0] > 50 * short  # 4 KiB frames: ~120x
    _, h, d = simulate("", 2, n=200, links=(h, d))
    assert h.fragment == d.fragment == 4096
    # And down again when the line turns bad (the frames already cut at 4 KiB cost most).
    _, h, d = simulate("corrupt=1e-3", 3, n=20, links=(h, d))
    assert h.fragment <= 1024 and d.fragment <= 1024


def test_an_end_whose_syncs_were_lost_syncs_again_when_the_peer_appears() -> None:
    # A served device SYNCs into a pty nobody has opened (lost); its retries back off to
    # rto_max. When the host's SYNC arrives, the device's own SYNC goes out with its CONFIG,
    # so the session is up within one exchange, not at the next retry (was ~4 s for the first
    # `microtrain info` against a fresh `microtrain serve --pty`).
    h, d = pair()
    t = 0.0
    for _ in range(6):  # the device's SYNCs of the first seconds go nowhere
        t = d.next_deadline() or t
        d.poll(t)
        d.bytes_to_send(t)
    assert (d.next_deadline() or 0) - t >= CFG.rto_max / 2  # backed off
    run(h, d, t, rounds=2)
    assert h.established and d.established


def test_a_nak_is_answered_with_an_ack_at_once() -> None:
    # The frame the peer could not read may have been an ACK: the device's answer would wait
    # for its retransmit timeout (the combined-fault campaign spent most of its time there).
    h, d = pair()
    run(h, d, 0.0)
    d.send_message(2, b"answer")
    h.receive_bytes(d.bytes_to_send(0.0), 0.001)
    h.poll(0.001)
    ack = h.bytes_to_send(0.001)
    assert [f.type for f in frames_from(h, ack)] == [FrameType.ACK]
    bad = bytearray(ack)
    bad[5] ^= 0x10  # the ACK arrives corrupted: the device NAKs
    d.receive_bytes(bytes(bad), 0.002)
    nak = d.bytes_to_send(0.002)
    assert [f.type for f in frames_from(d, nak)] == [FrameType.NAK]
    h.receive_bytes(nak, 0.003)
    d.receive_bytes(h.bytes_to_send(0.003), 0.004)  # the ACK again, before any timeout
    assert d.idle() and d.stats["retransmits"] == 0
