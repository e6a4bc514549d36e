"""The reliable link: a sans-I/O state machine over the frame layer (protocol.framing).

``Link`` owns no socket, thread or clock. Feed it what arrived with ``receive_bytes(data, now)``
and the time with ``poll(now)``; write out what ``bytes_to_send(now)`` returns; take delivered
messages with ``take_messages()``; wake up at ``next_deadline()``. The same class serves both
ends; ``role`` only decides what happens to unanswered messages when a session ends.

Session setup (symmetric, either end may start or restart at any time):

* Every end has a random 32-bit *epoch*, new at every ``reset``. Until the peer has confirmed
  it, an end sends SYNC{epoch, max_payload, window} (retried with backoff). Every SYNC is
  answered by CONFIG{epoch, echo of the SYNC's epoch, max_payload, window}. An end is
  *established* once it knows the peer's epoch and has received a CONFIG echoing its own. An
  end not yet established answers a SYNC with its CONFIG and its own SYNC at once.
  Both ends use min(own, peer) for max payload and window.
* A SYNC or CONFIG carrying an epoch other than the known peer epoch means the peer reset:
  the session (sequence numbers, window, reassembly) starts over. A ``HOST`` end then re-sends,
  in order, every message the upper layer has not yet declared answered (``mark_answered``);
  a ``DEVICE`` end drops what it had not delivered (its responses belong to requests the host
  replays, and the device's request-id cache answers those again).
* Stale frames of an old session must not reach a new one, and they do not: the frames of a
  session (DATA, ACK, NAK) carry a CRC bound to both epochs (protocol.framing: the CRC-32
  continues from ``session_crc(sender epoch, receiver epoch)``), so in any other session they
  fail the check like corrupted frames. Setup frames carry the plain CRC and their epochs: for
  ``frame_lifetime`` seconds after a peer reset replaced a peer epoch (up to ``DEAD_EPOCHS``
  of them), SYNC/CONFIG carrying it are stale and ignored; a CONFIG that does not echo the
  end's own current epoch is ignored too. So a new session starts at once after a reset,
  whatever the line still holds, and reconnecting costs one SYNC/CONFIG round trip. (Before,
  both ends kept a quiet time of ``frame_lifetime`` after every reset.) A channel that holds a
  setup frame longer than ``frame_lifetime`` and reorders it behind newer ones costs at worst
  a needless session restart, never a stale frame delivered: an end that switches back to a
  peer epoch it had left takes a new epoch of its own (so the peer sees a new session), and
  an established end that gets ``DESYNC_FRAMES`` CRC failures and no valid frame for a frame
  lifetime starts a new session (its peer is in another one).

Data transfer:

* ``send_message(channel, payload)`` queues a message and returns its id. It is cut into DATA
  fragments of at most the agreed max payload; FLAG_LAST marks the last one. The receiver
  delivers whole messages, in the order sent, each once per session.
* Sliding window (default 8 frames, at most 64) with 16-bit sequence numbers. ACK carries the
  cumulative ack (next seq expected) and SACK, a u64 bitmap whose bit i says seq ack+1+i was
  received. The ack and credits fields of every frame are current, so DATA piggybacks them.
  A receiver acks once half a window of in-order frames has arrived, or ``ack_delay`` after
  the first unacknowledged one (default 0: one ACK per batch of received bytes), and at once
  for a duplicate, an out-of-order frame or a filled hole.
* NAK (same payload as ACK) is sent at once on a CRC or other frame error, and on a gap (once
  per missing seq); it asks for seq ``ack`` again, and for an ACK (the unreadable frame may
  have been one).
* Loss inference: an ACK, NAK or DATA that reports (cumulatively or in the SACK) a frame sent
  after an un-SACKed one means the earlier one was lost, since a serial line keeps the order
  of frames: it is sent again at once. Every transmission has a place in the sender's send
  order (``sent_no``), so each loss is inferred once per transmission, a lost retransmission
  included; a channel that reorders frames only costs spurious retransmissions.
* Retransmit timeout (for what no later frame reveals, e.g. the last frame of a burst):
  Jacobson/Karels SRTT/RTTVAR, Karn's rule (no samples from retransmitted frames), doubling
  backoff on expiry, bounded by ``rto_min``/``rto_max``; on expiry every unacknowledged,
  un-SACKed frame is sent again.
* Fragment size: the sender estimates the per-byte loss p from its DATA frames' fate (a
  decaying count of frames lost, by loss inference or NAK, over the wire bytes of frames whose
  fate is known; ``loss_per_byte``) and cuts the next fragments to L = (-c + sqrt(c^2 +
  4c/p)) / 2 payload bytes (c = ``frame_cost``), which maximises L / (L + c) * exp(-p (L + c)),
  within ``min_fragment``..max payload (``fragment``). A new end starts at FIRST_FRAGMENT
  and allows each frame twice the size of one that got through at once, and a lost frame caps
  the size at its own: frames already cut keep their size until acknowledged, and at 1e-3 per
  byte a 4 KiB frame gets through 1.7% of the time (400-byte fragments: two thirds).
* Credits: each frame advertises how many frames from its ack the sender may have in flight:
  the window while the receiver's undelivered inbox is under ``rx_buffer`` bytes, else 0. A
  sender held at 0 credits polls (ACK with FLAG_POLL) every RTO; freeing inbox space sends an
  ACK with the new credits at once. DATA arriving while the inbox holds more than ``rx_buffer``
  plus a window of frames plus ``max_message`` is dropped unacknowledged, so a sender that
  ignores credits gets retransmissions, not memory.
* Receive memory is bounded whatever arrives: the frame decoder holds one partial frame, the
  out-of-order store at most a window of frames, reassembly at most ``max_message`` bytes (a
  longer message is discarded up to its last fragment), the inbox about ``rx_buffer`` bytes.

Authentication (after the message layer's AUTH proved the key; see protocol.framing for the
frame layout):

* Both ends derive per-direction link keys from the key, the HELLO challenge and the AUTH
  nonce (``link_keys``). The device calls ``start_auth(own, host's, now=True)`` when AUTH
  succeeds, before its answer goes out: from then on every DATA/ACK/NAK it sends carries
  FLAG_AUTH, a counter (1, 2, ... per direction; every transmission, a retransmission
  included, takes the next) and the truncated HMAC tag. The host calls ``start_auth(own,
  device's, now=False)`` before it sends AUTH: it accepts authenticated frames, and switches
  to sending them when the first one (the AUTH answer) passes.
* A receiver with keys drops, counts (``stats["auth_rejected"]``) and never acknowledges: a
  frame with a wrong tag, with a counter not above the last one accepted from the peer (a
  replay), a FLAG_AUTH frame it has no key for, any unauthenticated frame once the peer has
  sent an authenticated one, and unauthenticated DATA once this end sends authenticated
  frames. (Unauthenticated ACK/NAK are accepted in the one round trip before the peer's
  first authenticated frame; they can only delay, never inject.)
* Setup frames (SYNC, CONFIG) are not authenticated. A new session ends authentication (keys
  and counters are per session): the upper layers authenticate again (the device forgets
  the proven key on a new session), so a forged SYNC can cost a re-AUTH, nothing more.

Exactly once: within a session every message is delivered once, in order. Across a peer reset
the link is at-least-once by design: the host replays each unanswered request, and the device
above the link suppresses duplicates by request id (protocol.messages) and answers them from
its response cache; the host marks a request answered when its response arrives, so it
receives exactly one response per request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from construct import Int8ul, Int16ul, Int32ul, Int64ul
from construct import Struct as CStruct

from protocol.framing import (
    DEFAULT_PAYLOAD,
    MAX_PAYLOAD,
    MIN_PAYLOAD,
    CrcError,
    Frame,
    FrameDecoder,
    FrameFlag,
    FrameParts,
    FrameType,
    FramingError,
    data_header,
    encode_frame,
    encode_frames,
    session_crc,
    verify_frame,
)

#: SYNC payload: epoch u32, max_payload u16, window u8, reserved u8 (0).
SYNC_PAYLOAD = struct.Struct("<IHBB")
#: CONFIG payload: epoch u32, echoed peer epoch u32, max_payload u16, window u8, reserved u8.
CONFIG_PAYLOAD = struct.Struct("<IIHBB")
#: ACK/NAK payload: selective-ack bitmap u64 (bit i: seq ack+1+i received).
SACK = struct.Struct("<Q")
#: SYNC_PAYLOAD as a construct Struct (field names for documentation and generated headers).
SYNC_STRUCT = CStruct(
    "epoch" / Int32ul, "max_payload" / Int16ul, "window" / Int8ul, "reserved" / Int8ul
)
#: CONFIG_PAYLOAD as a construct Struct.
CONFIG_STRUCT = CStruct(
    "epoch" / Int32ul,
    "echo_epoch" / Int32ul,
    "max_payload" / Int16ul,
    "window" / Int8ul,
    "reserved" / Int8ul,
)
#: SACK as a construct Struct.
SACK_STRUCT = CStruct("sack" / Int64ul)
assert SYNC_STRUCT.sizeof() == SYNC_PAYLOAD.size and CONFIG_STRUCT.sizeof() == CONFIG_PAYLOAD.size
#: Largest fragment of a new link end (it doubles with every frame that gets through at once):
#: frames already cut cannot shrink, and on a bad line a 4 KiB frame may never get through.
FIRST_FRAGMENT = 512
#: Frame outcomes the loss estimate remembers (exponential decay).
LOSS_MEMORY = 64
#: Wire bytes of a DATA frame beyond its payload: header, CRC and both delimiters.
_FRAME_BYTES = 18
#: CRC failures in a row (over a frame lifetime without a valid frame) that make an
#: established end start a new session.
DESYNC_FRAMES = 4
#: Peer epochs an end remembers as ended: SYNC/CONFIG carrying one of them are stale.
DEAD_EPOCHS = 16
#: Largest window: the SACK bitmap covers 64 frames beyond the cumulative ack.
MAX_WINDOW = 64
DEFAULT_WINDOW = 8

_SEQ_MASK = 0xFFFF
_LAST = int(FrameFlag.LAST)
_POLL = int(FrameFlag.POLL)
_AUTH = int(FrameFlag.AUTH)


def link_keys(key: bytes, challenge: bytes, host_nonce: bytes) -> tuple[bytes, bytes]:
    """(host's, device's) link keys of an authenticated session: HMAC-SHA256(key,
    b"microtrain-link-host" | challenge | host_nonce) and the same with b"...-device"."""
    return tuple(  # type: ignore[return-value]
        hmac.new(key, b"microtrain-link-" + who + challenge + host_nonce, hashlib.sha256).digest()
        for who in (b"host", b"device")
    )


class Role(Enum):
    """Which end a Link serves: decides the fate of unanswered messages after a reset."""

    HOST = "host"
    DEVICE = "device"


class LinkError(ValueError):
    """A bad argument to the link (out-of-range setting, unknown channel, oversize message)."""


@dataclass(frozen=True)
class LinkConfig:
    """What an end offers and how it times out (seconds)."""

    max_payload: int = DEFAULT_PAYLOAD
    window: int = DEFAULT_WINDOW
    rto_initial: float = 0.25
    rto_min: float = 0.02
    rto_max: float = 4.0
    #: Longest a frame may stay on the line (seconds): SYNC/CONFIG of a peer epoch that ended
    #: less than this ago are stale. Nobody waits for it.
    frame_lifetime: float = 1.0
    #: Undelivered inbox bytes above which the end advertises 0 credits; DATA frames that
    #: arrive while the inbox holds this much are dropped unacknowledged (credits ignored).
    rx_buffer: int = 1 << 22
    #: Largest message reassembled: a message growing past it is discarded up to its last
    #: fragment and counted (``stats["oversize_messages"]``), so reassembly memory is bounded.
    #: 32 MiB: above every message of the protocol (the largest is a FORWARD answer carrying
    #: an output of at most 16 MiB inline).
    max_message: int = 1 << 25
    #: Adapt the fragment size to the loss rate (see "Fragment size" in the module docstring).
    adaptive_fragments: bool = True
    #: Smallest fragment the sender cuts on a bad line (bytes of payload).
    min_fragment: int = 128
    #: What one frame costs beyond its payload, in wire bytes: header, CRC, delimiters, a share
    #: of an ACK, and per-frame processing; the fragment size trades it against loss.
    frame_cost: int = 256
    #: In-order DATA frames received before an ACK goes out at once (0: half the window).
    ack_every: int = 0
    #: Longest an ACK for in-order data waits for more frames or DATA to ride on. 0: the ACK
    #: goes out at the next ``poll``, i.e. one ACK per batch of received bytes.
    ack_delay: float = 0.0

    def __post_init__(self) -> None:
        if not MIN_PAYLOAD <= self.max_payload <= MAX_PAYLOAD:
            raise LinkError(
                f"max_payload {self.max_payload} out of range; accepted "
                f"{MIN_PAYLOAD}..{MAX_PAYLOAD}"
            )
        if not 1 <= self.window <= MAX_WINDOW:
            raise LinkError(f"window {self.window} out of range; accepted 1..{MAX_WINDOW}")
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise LinkError("timeouts must satisfy 0 < rto_min <= rto_initial <= rto_max")
        if self.frame_lifetime < 0 or self.rx_buffer < 1 or self.max_message < 1:
            raise LinkError("frame_lifetime must be >= 0, rx_buffer and max_message >= 1")
        if not 1 <= self.min_fragment <= self.max_payload or self.frame_cost < 1:
            raise LinkError("min_fragment must be 1..max_payload and frame_cost >= 1")
        if self.ack_every < 0 or not 0 <= self.ack_delay < self.rto_min:
            raise LinkError("ack_every must be >= 0 and 0 <= ack_delay < rto_min")


class Message(NamedTuple):
    """A delivered message: the channel it was sent on and its bytes."""

    channel: int
    payload: bytes


class _Out:
    """A DATA frame in flight: its fields, when it was last sent, and its ack state."""

    __slots__ = (
        "channel",
        "flags",
        "loss_no",
        "msg_id",
        "payload",
        "retransmitted",
        "sacked",
        "sent_at",
        "sent_no",
        "seq",
    )

    def __init__(
        self, seq: int, channel: int, flags: int, payload: bytes | memoryview, msg_id: int
    ) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.channel = channel
        self.flags = flags
        self.payload = payload
        self.sent_at = 0.0
        #: Position of its last transmission in this end's send order (loss detection).
        self.sent_no = 0
        #: ``sent_no`` of the transmission last counted as lost (each is counted once).
        self.loss_no = -1
        self.retransmitted = False
        self.sacked = False


class _Queued:
    """A message waiting to be fragmented: the bytes not yet put into frames start at off."""

    __slots__ = ("channel", "msg_id", "off", "payload")

    def __init__(self, msg_id: int, channel: int, payload: bytes) -> None:
        self.msg_id = msg_id
        self.channel = channel
        self.payload = payload
        self.off = 0


class Link:
    """One end of the reliable link. See the module docstring for the protocol."""

    # Session state, (re)initialised by _start and _new_session.
    _peer_epoch: int | None
    _sync_interval: float
    _sync_at: float
    _probe_at: float
    _ack_at: float | None
    _inflight: dict[int, _Out]
    _ooo: dict[int, Frame]
    _queue: deque[_Queued]
    _tx_key: bytes | None
    _rx_key: bytes | None

    def __init__(
        self,
        role: Role,
        config: LinkConfig | None = None,
        *,
        epoch: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.role = role
        self.config = config or LinkConfig()
        self._rng = rng or random.Random()
        self._decoder = FrameDecoder(self.config.max_payload)
        self._next_msg_id = 0
        self._acked_through = -1
        #: HOST: every message sent and not yet answered, in send order (replayed on reset).
        self._unanswered: dict[int, tuple[int, bytes]] = {}
        self._inbox: deque[Message] = deque()
        self._inbox_bytes = 0
        self._now = 0.0
        self._last_send = float("-inf")
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = self.config.rto_initial
        #: Transmissions of DATA frames so far (each frame's ``sent_no`` is its place in it).
        self._tx_no = 0
        #: Decaying sums of wire bytes sent in DATA frames whose fate is known, and of the
        #: frames among them that were lost (the per-byte loss estimate is their ratio). The
        #: prior: LOSS_MEMORY clean full frames. They outlive sessions (the line does).
        self._fate_bytes = float(LOSS_MEMORY * (self.config.max_payload + _FRAME_BYTES))
        self._fate_lost = 0.0
        #: Largest fragment allowed before more frames have got through (see _fate).
        self._cap = min(self.config.max_payload, max(self.config.min_fragment, FIRST_FRAGMENT))
        self._fragment = self._cap if self.config.adaptive_fragments else self.config.max_payload
        #: Counters: frames by fate, for tests and benchmarks.
        self.stats: dict[str, int] = {
            "frames_sent": 0,
            "retransmits": 0,
            "frame_errors": 0,
            "naks_sent": 0,
            "peer_resets": 0,
            "stale_setup": 0,
            "auth_rejected": 0,
            "desync_resets": 0,
            "bytes_sent": 0,
            "oversize_messages": 0,
            "frames_refused": 0,
        }
        #: Peer epochs replaced by a peer reset (their SYNC/CONFIG are stale).
        self._dead: deque[tuple[int, float]] = deque(maxlen=DEAD_EPOCHS)
        self._tx_session = 0
        self.epoch = 0
        self._start(epoch)

    # ------------------------------------------------------------------ public API

    @property
    def established(self) -> bool:
        """True while a session is set up (both epochs known and confirmed)."""
        return self._peer_epoch is not None and self._confirmed

    @property
    def max_payload(self) -> int:
        """Payload bytes per frame agreed for this session (own offer before agreement)."""
        return self._max_payload

    @property
    def fragment(self) -> int:
        """Payload bytes of the DATA frames being cut now (at most ``max_payload``)."""
        return min(self._fragment, self._max_payload)

    @property
    def loss_per_byte(self) -> float:
        """The sender's estimate of the probability that a wire byte is lost or damaged."""
        return self._fate_lost / self._fate_bytes

    @property
    def window(self) -> int:
        """Window in frames agreed for this session (own offer before agreement)."""
        return self._window

    @property
    def peer_epoch(self) -> int | None:
        """The peer's epoch in this session, None before the first SYNC/CONFIG."""
        return self._peer_epoch

    def send_message(self, channel: int, payload: bytes | bytearray | memoryview) -> int:
        """Queue a message for delivery on ``channel`` (0..255); return its message id."""
        if not 0 <= channel <= 0xFF:
            raise LinkError(f"channel {channel} out of range; accepted 0..255")
        data = bytes(payload)
        msg_id = self._next_msg_id
        self._next_msg_id += 1
        if self.role is Role.HOST:
            self._unanswered[msg_id] = (channel, data)
        self._queue.append(_Queued(msg_id, channel, data))
        return msg_id

    def acked(self, msg_id: int) -> bool:
        """True once the peer has acknowledged every fragment of ``msg_id`` (in some session):
        the message reached the peer's link. Whether it was *answered* is the upper layer's
        business (``mark_answered``)."""
        return msg_id <= self._acked_through

    def mark_answered(self, msg_id: int) -> None:
        """HOST: the upper layer has the answer to ``msg_id``; never replay it."""
        self._unanswered.pop(msg_id, None)

    @property
    def unanswered(self) -> list[int]:
        """HOST: ids of messages that would be replayed after a reset, in order."""
        return list(self._unanswered)

    @property
    def unacked_messages(self) -> int:
        """Messages of this session queued or in flight and not yet acknowledged by the peer
        (a device's answers the host has not read yet)."""
        return len(self._queue) + sum(1 for o in self._inflight.values() if o.flags & _LAST)

    def start_auth(self, tx_key: bytes, rx_key: bytes, *, now: bool) -> None:
        """Authenticate this session's frames with these link keys (see the module
        docstring): ``now`` (the peer proved the key) sends authenticated frames at once and
        refuses unauthenticated DATA; else only once the peer's first authenticated frame
        has passed."""
        if not tx_key or not rx_key:
            raise LinkError("link keys must not be empty")
        self._tx_key = bytes(tx_key)
        self._rx_key = bytes(rx_key)
        self._tx_counter = 0
        self._rx_counter = 0
        self._peer_authed = False
        self._tx_auth = now
        self._decoder.auth = True

    def stop_auth(self) -> None:
        """Forget the link keys (an AUTH that failed): frames go unauthenticated again."""
        self._tx_key = self._rx_key = None
        self._tx_auth = self._peer_authed = False
        self._decoder.auth = False

    @property
    def authenticated(self) -> bool:
        """True while this end sends authenticated frames."""
        return self._tx_auth

    def take_messages(self) -> list[Message]:
        """Delivered messages, in order; frees inbox space (and re-opens credits)."""
        out = list(self._inbox)
        was_blocked = self._credits() == 0
        self._inbox.clear()
        self._inbox_bytes = 0
        if was_blocked and self.established:
            self._ack_pending = True
        return out

    def receive_bytes(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process bytes from the line (any chunking)."""
        self._now = now
        for item in self._decoder.feed(data):
            if isinstance(item, FramingError):
                self.stats["frame_errors"] += 1
                if self.established:
                    self._on_frame_error(item)
            else:
                self._on_frame(item)

    def _on_frame_error(self, e: FramingError) -> None:
        # NAK at once: a retransmission is the cheapest repair (suppressing some of these NAKs
        # made recovery wait on timeouts). Two ends whose sessions disagree NAK each other's
        # NAKs until the check below starts a new session.
        self._nak_pending = True
        if isinstance(e, CrcError):
            self._bad_crcs += 1
            if self._bad_crcs >= DESYNC_FRAMES and (
                self._now - self._last_valid > self.config.frame_lifetime
            ):
                # Whole frames keep failing the session's check and none has passed for a
                # frame lifetime: the peer is in another session (a setup frame held back
                # longer than the lifetime fooled one end). Start a new one.
                self.stats["desync_resets"] += 1
                self.reset(self._now)

    def poll(self, now: float) -> None:
        """Advance time: run retransmit, SYNC and probe timers that are due."""
        self._now = now
        if self._peer_epoch is None or not self._confirmed:
            if now >= self._sync_at:
                self._sync_due = True
            return
        if self._ack_at is not None and now >= self._ack_at:
            self._ack_pending = True
        if self._inflight:
            oldest = min((o.sent_at for o in self._inflight.values() if not o.sacked), default=None)
            if oldest is not None and now >= oldest + self._rto:
                self._rto = min(self._rto * 2, self.config.rto_max)
                for o in self._inflight.values():
                    if not o.sacked:
                        o.retransmitted = True
                        self._retx[o.seq] = None
                        o.sent_at = now
        elif self._queue and self._peer_credits == 0 and now >= self._probe_at:
            self._poll_pending = True

    def next_deadline(self) -> float | None:
        """When ``poll`` must next be called, or None if no timer runs."""
        if self._peer_epoch is None or not self._confirmed:
            return self._sync_at
        t = self._ack_at
        if self._inflight:
            oldest = min((o.sent_at for o in self._inflight.values() if not o.sacked), default=None)
            if oldest is not None:
                t = oldest + self._rto if t is None else min(t, oldest + self._rto)
        elif self._queue and self._peer_credits == 0:
            t = self._probe_at if t is None else min(t, self._probe_at)
        return t

    def idle(self) -> bool:
        """Established with nothing queued, in flight or owed to the peer."""
        return (
            self.established
            and not self._queue
            and not self._inflight
            and not self._ack_pending
            and self._ack_at is None
            and not self._nak_pending
            and not self._ctrl
        )

    def reset(self, now: float, epoch: int | None = None) -> None:
        """Lose the session (as a restarted end would) and set up a new one with a new epoch.

        A HOST end keeps its unanswered messages and replays them; a DEVICE end drops its
        queue. Delivered but untaken messages stay in the inbox."""
        self._now = now
        self._start(epoch)

    def bytes_to_send(self, now: float | None = None) -> bytes | bytearray:
        """Everything the end wants on the line now: control frames, retransmissions, then
        new DATA frames as far as the window and the peer's credits allow."""
        if now is not None:
            self._now = now
        now = self._now
        out: list[bytes | FrameParts] = []
        credits = self._credits()
        ack = self._rcv_nxt
        if self._peer_epoch is None or not self._confirmed:
            if self._ctrl:
                out.extend(self._ctrl)
                self._ctrl.clear()
            if self._sync_due or now >= self._sync_at:
                out.append(
                    encode_frame(
                        FrameType.SYNC,
                        SYNC_PAYLOAD.pack(
                            self.epoch, self.config.max_payload, self.config.window, 0
                        ),
                    )
                )
                self._sync_due = False
                self._sync_at = now + self._sync_interval
                self._sync_interval = min(self._sync_interval * 2, self.config.rto_max)
            return self._emit(out)
        if not (
            self._queue
            or self._retx
            or self._ctrl
            or self._ack_pending
            or self._nak_pending
            or self._poll_pending
        ):
            return b""  # nothing due (the common idle call)
        if self._ctrl:
            out.extend(self._ctrl)
            self._ctrl.clear()
        carried = False
        for seq in self._retx:
            o = self._inflight.get(seq)
            if o is not None and not o.sacked:
                carried = True
                o.sent_at = now
                o.sent_no = self._tx_no
                self._tx_no += 1
                o.retransmitted = True
                self.stats["retransmits"] += 1
                out.append(
                    encode_frame(
                        FrameType.DATA,
                        o.payload,
                        seq=seq,
                        ack=ack,
                        credits=credits,
                        flags=o.flags,
                        channel=o.channel,
                        session=self._tx_session,
                        **self._auth_args(),
                    )
                )
        self._retx.clear()
        if self._fill_window(out, ack, credits, now) or carried:
            # DATA carries the cumulative ack and credits; only a SACK needs an ACK of its own.
            if not self._ooo:
                self._ack_pending = False
                self._ack_at = None
                self._rx_unacked = 0
        if self._nak_pending:
            self.stats["naks_sent"] += 1
            out.append(
                encode_frame(
                    FrameType.NAK,
                    self._sack(),
                    ack=ack,
                    credits=credits,
                    session=self._tx_session,
                    **self._auth_args(),
                )
            )
        elif self._ack_pending or self._poll_pending:
            flags = _POLL if self._poll_pending else 0
            out.append(
                encode_frame(
                    FrameType.ACK,
                    self._sack(),
                    ack=ack,
                    credits=credits,
                    flags=flags,
                    session=self._tx_session,
                    **self._auth_args(),
                )
            )
            if self._poll_pending:
                self._probe_at = now + self._rto
        else:
            return self._emit(out)
        self._nak_pending = self._ack_pending = self._poll_pending = False
        self._ack_at = None
        self._rx_unacked = 0
        return self._emit(out)

    # ------------------------------------------------------------------ session

    def _start(self, epoch: int | None) -> None:
        old = self.epoch
        if epoch is None:
            epoch = old
            while epoch in (0, old):
                epoch = self._rng.getrandbits(32)
        self.epoch = epoch
        self._set_peer(None)
        self._sync_interval = self.config.rto_initial
        self._sync_at = self._now
        self._sync_due = False
        self._new_session()

    def _new_session(self) -> None:
        """Forget sequence state; requeue (HOST) or drop (DEVICE) what was not delivered."""
        self._confirmed = False
        self._max_payload = self.config.max_payload
        self._window = self.config.window
        self._decoder.set_max_payload(self.config.max_payload)
        self._snd_una = 0
        self._snd_nxt = 0
        self._inflight = {}
        #: Seqs to send again at the next ``bytes_to_send`` (an ordered set).
        self._retx: dict[int, None] = {}
        #: Highest ``sent_no`` of a frame the peer has acked or SACKed in this session.
        self._delivered_no = -1
        self._peer_credits = self._window
        self._rcv_nxt = 0
        self._ooo = {}
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self._discarding = False
        self._nak_for: int | None = None
        self._ctrl: list[bytes] = []
        self._ack_pending = False
        self._ack_at = None
        self._rx_unacked = 0
        self._nak_pending = False
        #: Authentication (start_auth): keys, counters, and who has switched.
        self._tx_key = None
        self._rx_key = None
        self._tx_counter = 0
        self._rx_counter = 0
        self._tx_auth = False
        self._peer_authed = False
        self._decoder.auth = False
        #: Time of the last frame that passed this session's check, and CRC failures since.
        self._last_valid = self._now
        self._bad_crcs = 0
        self._poll_pending = False
        self._probe_at = 0.0
        self._queue = deque()
        if self.role is Role.HOST:
            for msg_id, (channel, data) in self._unanswered.items():
                self._queue.append(_Queued(msg_id, channel, data))

    def _peer_reset(self, new_epoch: int) -> bool:
        """Start a new session with a peer now at ``new_epoch``. True if this end took a new
        epoch of its own: it had a session with ``new_epoch`` before (a setup frame reordered
        behind newer ones made it leave), so the peer may still be in that session and must
        see this one as new."""
        self.stats["peer_resets"] += 1
        self._sync_interval = self.config.rto_initial
        self._sync_at = self._now
        self._new_session()
        again = any(e == new_epoch for e, _ in self._dead)
        if self._peer_epoch is not None:
            self._dead.append((self._peer_epoch, self._now + self.config.frame_lifetime))
        if again:
            old = self.epoch
            while self.epoch in (0, old):
                self.epoch = self._rng.getrandbits(32)
        self._set_peer(new_epoch)
        return again

    def _stale(self, epoch: int) -> bool:
        """Whether a SYNC/CONFIG of ``epoch`` is a leftover of a peer session that ended less
        than ``frame_lifetime`` ago (counted as ``stale_setup``)."""
        if any(e == epoch and self._now < until for e, until in self._dead):
            self.stats["stale_setup"] += 1
            return True
        return False

    def _set_peer(self, epoch: int | None) -> None:
        """Know the peer's epoch (None: no session): bind the CRC of session frames both ways."""
        self._peer_epoch = epoch
        if epoch is None:
            self._tx_session = 0
            self._decoder.session = None
        else:
            self._tx_session = session_crc(self.epoch, epoch)
            self._decoder.session = session_crc(epoch, self.epoch)

    def _agree(self, max_payload: int, window: int) -> None:
        self._max_payload = max(MIN_PAYLOAD, min(self.config.max_payload, max_payload))
        self._window = max(1, min(self.config.window, window, MAX_WINDOW))
        self._decoder.set_max_payload(self._max_payload)

    def _on_sync(self, f: Frame) -> None:
        if len(f.payload) != SYNC_PAYLOAD.size:
            self.stats["frame_errors"] += 1
            return
        epoch, max_payload, window, _ = SYNC_PAYLOAD.unpack(f.payload)
        if self._stale(epoch):
            return
        if self._peer_epoch is not None and epoch != self._peer_epoch:
            self._peer_reset(epoch)
        elif self._peer_epoch is None:
            self._set_peer(epoch)
        self._agree(max_payload, window)
        if not self._confirmed:
            # The peer is there now: our own SYNC goes out with the CONFIG, not at the next
            # backed-off retry (SYNCs sent before the peer listened, e.g. into a pty nobody
            # had opened yet, are lost).
            self._sync_due = True
            self._sync_interval = self.config.rto_initial
        self._ctrl.append(
            encode_frame(
                FrameType.CONFIG,
                CONFIG_PAYLOAD.pack(
                    self.epoch, epoch, self.config.max_payload, self.config.window, 0
                ),
            )
        )

    def _on_config(self, f: Frame) -> None:
        if len(f.payload) != CONFIG_PAYLOAD.size:
            self.stats["frame_errors"] += 1
            return
        epoch, echo, max_payload, window, _ = CONFIG_PAYLOAD.unpack(f.payload)
        if echo != self.epoch:
            return  # answer to a SYNC of an earlier epoch of ours
        if self._stale(epoch):
            return
        if self._peer_epoch is not None and epoch != self._peer_epoch:
            # The peer restarted and has already answered our SYNC in its new session.
            if self._peer_reset(epoch):
                return  # it echoed our previous epoch: set up again with the new one
        elif self._peer_epoch is None:
            self._set_peer(epoch)
        self._agree(max_payload, window)
        self._confirmed = True

    # ------------------------------------------------------------------ receiving

    def _on_frame(self, f: Frame) -> None:
        t = f.type
        if t == FrameType.SYNC:
            self._on_sync(f)
            return
        if t == FrameType.CONFIG:
            self._on_config(f)
            return
        if self._peer_epoch is None or not self._confirmed:  # not established
            return
        if (f.flags & _AUTH or self._rx_key is not None) and not self._authentic(f):
            return  # (a frame without the flag passes when this end has no keys)
        self._last_valid = self._now
        self._bad_crcs = 0
        delivered = self._delivered_no
        self._on_ack(f.ack, f.credits)
        if t == FrameType.DATA:
            self._on_data(f)
        elif t == FrameType.ACK or t == FrameType.NAK:
            if len(f.payload) == SACK.size:
                self._on_sack(f.ack, SACK.unpack(f.payload)[0])
            if t == FrameType.NAK:
                # The frame the peer could not read may have been our ACK: repeat it (else
                # the peer's DATA it acknowledged waits for a retransmit timeout).
                self._ack_pending = True
                o = self._inflight.get(f.ack)
                if o is not None and not o.sacked:
                    self._retx[f.ack] = None
                    if o.sent_at < self._now:  # sent before this NAK could know of it
                        self._fate(o, lost=True)
            if f.flags & _POLL:
                self._ack_pending = True
        if self._delivered_no > delivered:
            self._detect_losses()

    def _authentic(self, f: Frame) -> bool:
        """Whether a session frame passes authentication (always, without keys)."""
        if f.flags & _AUTH:
            counter = verify_frame(self._rx_key, f) if self._rx_key is not None else None
            if counter is None or counter <= self._rx_counter:
                self.stats["auth_rejected"] += 1  # forged, tampered with or replayed
                return False
            self._rx_counter = counter
            if not self._peer_authed:
                self._peer_authed = True
                self._tx_auth = True
            return True
        if self._rx_key is not None and (
            self._peer_authed or (self._tx_auth and f.type == FrameType.DATA)
        ):
            self.stats["auth_rejected"] += 1
            return False
        return True

    def _auth_args(self) -> dict[str, Any]:
        """encode_frame arguments authenticating the next frame sent (none before AUTH)."""
        if not self._tx_auth:
            return {}
        self._tx_counter += 1
        return {"auth_key": self._tx_key, "counter": self._tx_counter}

    def _on_ack(self, ack: int, credits: int) -> None:
        n = (ack - self._snd_una) & _SEQ_MASK
        if n > ((self._snd_nxt - self._snd_una) & _SEQ_MASK):
            return  # stale or bogus ack
        self._peer_credits = credits
        if n == 0:
            return
        sample: float | None = None
        delivered = self._delivered_no
        for _ in range(n):
            o = self._inflight.pop(self._snd_una)
            if o.flags & _LAST:
                self._acked_through = max(self._acked_through, o.msg_id)
            if not o.retransmitted and sample is None:
                sample = self._now - o.sent_at
            if o.sent_no > delivered:
                delivered = o.sent_no
            if not o.sacked:
                self._fate(o, lost=False)
            self._snd_una = (self._snd_una + 1) & _SEQ_MASK
        self._delivered_no = delivered
        if sample is not None:
            self._rtt_sample(sample)
        self._probe_at = self._now + self._rto

    def _on_sack(self, ack: int, bitmap: int) -> None:
        i = 0
        while bitmap:
            if bitmap & 1:
                o = self._inflight.get((ack + 1 + i) & _SEQ_MASK)
                if o is not None and not o.sacked:
                    o.sacked = True
                    self._fate(o, lost=False)
                    if o.sent_no > self._delivered_no:
                        self._delivered_no = o.sent_no
            bitmap >>= 1
            i += 1

    def _rtt_sample(self, r: float) -> None:
        if self._srtt is None:
            self._srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        self._rto = self._base_rto()

    def _base_rto(self) -> float:
        """The retransmit timeout without backoff: SRTT + 4 RTTVAR within the bounds."""
        cfg = self.config
        if self._srtt is None:
            return cfg.rto_initial
        return min(cfg.rto_max, max(cfg.rto_min, self._srtt + max(cfg.rto_min, 4 * self._rttvar)))

    def _detect_losses(self) -> None:
        """The peer has a frame sent after these un-SACKed ones: on a line that keeps the
        order of frames (a UART does) they were lost, so send them again now rather than at
        the timeout. Each loss is inferred once per transmission: a frame sent again gets a
        new ``sent_no`` above every one the peer has reported so far."""
        top = self._delivered_no
        for o in self._inflight.values():
            if not o.sacked and o.sent_no < top and o.seq not in self._retx:
                self._retx[o.seq] = None
                self._fate(o, lost=True)

    def _fate(self, o: _Out, lost: bool) -> None:
        """Count a transmission of ``o`` as delivered or lost (once each) and size the next
        fragments: the payload L maximising L / (L + frame_cost) * exp(-p (L + frame_cost))
        for the estimated per-byte loss p, i.e. L = (-c + sqrt(c^2 + 4c/p)) / 2 with
        c = frame_cost, within min_fragment..max_payload."""
        cfg = self.config
        n = len(o.payload)
        if lost:
            if o.loss_no == o.sent_no:
                return
            o.loss_no = o.sent_no
            self._cap = max(cfg.min_fragment, min(self._cap, n))
        elif o.loss_no < 0:  # through at its first transmission: larger ones may be tried
            self._cap = min(cfg.max_payload, max(self._cap, 2 * n))
        keep = 1.0 - 1.0 / LOSS_MEMORY
        self._fate_bytes = self._fate_bytes * keep + n + _FRAME_BYTES
        self._fate_lost = self._fate_lost * keep + (1.0 if lost else 0.0)
        if not cfg.adaptive_fragments:
            return
        p = self._fate_lost / self._fate_bytes
        c = cfg.frame_cost
        best = cfg.max_payload if p <= 0 else int((math.sqrt(c * c + 4 * c / p) - c) / 2)
        self._fragment = max(cfg.min_fragment, min(self._cap, best))

    def _on_data(self, f: Frame) -> None:
        d = (f.seq - self._rcv_nxt) & _SEQ_MASK
        if d >= self._window or len(f.payload) > self._max_payload:
            self._ack_pending = True  # a copy of something delivered: our ack was lost
            return
        cfg = self.config
        if self._inbox_bytes >= cfg.rx_buffer + self._window * self._max_payload + cfg.max_message:
            # Beyond what the last credits granted (the inbox was under rx_buffer when they
            # went out; a window of frames may then complete a message of max_message):
            # dropped, the sender retransmits once the inbox is taken. Bounds what a sender
            # that ignores credits costs.
            self.stats["frames_refused"] += 1
            self._ack_pending = True
            return
        if d > 0:
            self._ack_pending = True
            self._ooo[f.seq] = f
            if self._nak_for != self._rcv_nxt:
                self._nak_for = self._rcv_nxt
                self._nak_pending = True
            return
        self._deliver(f)
        if self._ooo:
            self._ack_pending = True  # a hole was filled: tell the sender at once
            while self._rcv_nxt in self._ooo:
                self._deliver(self._ooo.pop(self._rcv_nxt))
        self._rx_unacked += 1
        if self._rx_unacked >= (self.config.ack_every or max(1, self._window // 2)):
            self._ack_pending = True
        elif self._ack_at is None:
            self._ack_at = self._now + self.config.ack_delay

    def _deliver(self, f: Frame) -> None:
        self._rcv_nxt = (self._rcv_nxt + 1) & _SEQ_MASK
        if not self._discarding:
            self._parts.append(f.payload)
            self._parts_bytes += len(f.payload)
            if self._parts_bytes > self.config.max_message:
                self.stats["oversize_messages"] += 1
                self._discarding = True
                self._parts = []
                self._parts_bytes = 0  # what is held; the rest of the message is dropped
        if not f.flags & _LAST:
            return
        discarded, self._discarding, self._parts_bytes = self._discarding, False, 0
        if not discarded:
            # One copy into the message (frame payloads may be bytearrays of the decoder).
            payload = b"".join(self._parts) if len(self._parts) > 1 else bytes(self._parts[0])
            self._parts = []
            self._inbox.append(Message(f.channel, payload))
            self._inbox_bytes += len(payload)

    def _sack(self) -> bytes:
        bits = 0
        base = self._rcv_nxt
        for seq in self._ooo:
            bits |= 1 << (((seq - base) & _SEQ_MASK) - 1)
        return SACK.pack(bits & 0xFFFF_FFFF_FFFF_FFFF)

    def _credits(self) -> int:
        return self._window if self._inbox_bytes < self.config.rx_buffer else 0

    # ------------------------------------------------------------------ sending

    def _fill_window(
        self, out: list[bytes | FrameParts], ack: int, credits: int, now: float
    ) -> bool:
        limit = min(self._window, self._peer_credits)
        sent = False
        mp = min(self._fragment, self._max_payload)
        while self._queue and ((self._snd_nxt - self._snd_una) & _SEQ_MASK) < limit:
            q = self._queue[0]
            if q.off == 0 and len(q.payload) <= mp:
                chunk: bytes | memoryview = q.payload
            else:  # a view of the message: the frame encoder reads it in place
                chunk = memoryview(q.payload)[q.off : q.off + mp]
            q.off += len(chunk)
            flags = 0
            if q.off >= len(q.payload):
                flags = _LAST
                self._queue.popleft()
            o = _Out(self._snd_nxt, q.channel, flags, chunk, q.msg_id)
            o.sent_at = now
            o.sent_no = self._tx_no
            self._tx_no += 1
            self._inflight[o.seq] = o
            self._snd_nxt = (self._snd_nxt + 1) & _SEQ_MASK
            if self._tx_auth:
                out.append(
                    encode_frame(
                        FrameType.DATA,
                        chunk,
                        seq=o.seq,
                        ack=ack,
                        credits=credits,
                        flags=flags,
                        channel=q.channel,
                        session=self._tx_session,
                        **self._auth_args(),
                    )
                )
            else:  # encoded with the others by _emit (straight into one buffer when large)
                head = data_header(
                    len(chunk), seq=o.seq, ack=ack, credits=credits, flags=flags, channel=q.channel
                )
                out.append((head, chunk, self._tx_session))
            sent = True
        return sent

    def _emit(self, out: list[bytes | FrameParts]) -> bytes | bytearray:
        if not out:
            return b""
        data = encode_frames(out)
        self._last_send = self._now
        self.stats["frames_sent"] += len(out)
        self.stats["bytes_sent"] += len(data)
        return data
