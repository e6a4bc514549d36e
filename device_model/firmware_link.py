"""The device's link end: ``protocol.link.Link`` in the DEVICE role wrapped around a
``Firmware``, so that bytes from the line go in and the device's bytes come out.

Sans-I/O like the link itself: the caller feeds bytes and the time, and writes out what
``bytes_to_send`` returns. Every message the link delivers is answered at once by the firmware
(one response per request, sent on the request's channel), so a caller that feeds the host's
bytes and then asks for output gets the responses in the same call. The agreed max payload is
and window are handed to the firmware before each message, so HELLO reports what this
session uses and TENSOR_READ answers fit one frame.

Pending requests are bounded by flow control, whatever the host sends. Once
``Firmware.max_pending`` answers wait for the host's acknowledgement, the device executes
nothing more: new requests wait in its link, whose credits close as soon as one request waits
(``rx_buffer`` of one byte), so a host that respects credits pauses after the frames it already
had in flight and none of its requests is refused or reordered. A host that ignores the closed
credits gets, once more than ``max_waiting`` requests wait, TOO_MANY_PENDING for each of them
(not executed, not cached: sending it again later is safe), at most ``PENDING_RESERVE`` answers
beyond ``max_pending``; past that its frames are dropped by the link unacknowledged. The link
also reassembles requests of at most ``MAX_REQUEST_BYTES``.
"""

from __future__ import annotations

import random
from collections import deque

from device_model.firmware import MAX_REQUEST_BYTES, Firmware
from protocol.link import Link, LinkConfig, Message, Role

#: TOO_MANY_PENDING answers the device queues beyond ``max_pending`` before it stops reading.
PENDING_RESERVE = 64
#: Requests that may wait while the answer queue is full, in windows of the link: a host that
#: respects credits has at most one window in flight when they close.
WAITING_WINDOWS = 4


class DeviceLink:
    """A firmware behind its link end: ``feed(data, now) -> bytes`` is the whole device."""

    def __init__(
        self,
        firmware: Firmware,
        config: LinkConfig | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self.firmware = firmware
        cfg = config or LinkConfig(
            max_payload=firmware.max_payload,
            window=firmware.window,
            max_message=MAX_REQUEST_BYTES,
            # Credits close as soon as one request waits undelivered (the device takes every
            # request at once unless its answer queue is full): backpressure by frames.
            rx_buffer=1,
        )
        # The link epoch must differ after every restart, or the host cannot see that the
        # device lost its state: fresh OS randomness unless a test pins ``seed``.
        rng = random.SystemRandom() if seed is None else random.Random(seed)
        self.link = Link(Role.DEVICE, cfg, rng=rng)
        #: Most answers seen waiting for the host's acknowledgement (statistics).
        self.peak_pending = 0
        #: Requests taken from the link and not answered yet (the answer queue was full).
        self._waiting: deque[Message] = deque()
        self._waiting_session: tuple[int, int | None] = (self.link.epoch, None)
        #: The link session the firmware's authentication belongs to, and the link keys the
        #: link authenticates frames with.
        self._auth_session: tuple[int, int | None] = (self.link.epoch, None)
        self._keys: tuple[bytes, bytes] | None = None

    def receive_bytes(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes from the host: frames are decoded, and every delivered request is answered."""
        self.link.receive_bytes(data, now)
        self._serve()

    def poll(self, now: float) -> None:
        """Advance the link's timers (retransmissions, SYNC retries, delayed ACKs)."""
        self.link.poll(now)
        self._serve()

    def bytes_to_send(self, now: float) -> bytes | bytearray:
        """Everything the device wants on the line now."""
        return self.link.bytes_to_send(now)

    def next_deadline(self) -> float | None:
        """When ``poll`` must next be called (None: nothing pending)."""
        return self.link.next_deadline()

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> bytes | bytearray:
        """Receive ``data``, run due timers and return the device's output."""
        if data:
            self.link.receive_bytes(data, now)
        self.link.poll(now)
        self._serve()
        return self.link.bytes_to_send(now)

    @property
    def max_waiting(self) -> int:
        """Requests that may wait while the answer queue is full before they are refused."""
        return WAITING_WINDOWS * self.link.window

    def _serve(self) -> None:
        fw, link = self.firmware, self.link
        session = (link.epoch, link.peer_epoch)
        if session != self._auth_session:
            # A new link session ends the authenticated one: its link keys are gone, so the
            # host must prove the key again before anything but HELLO/AUTH executes.
            if self._auth_session[1] is not None and fw.key is not None:
                fw.deauthenticate()
            self._auth_session = session
            self._keys = None
        if session != self._waiting_session:
            self._waiting.clear()  # requests of an ended session: the host replays them
            self._waiting_session = session
        if not self._waiting and not link._inbox:
            return  # nothing to answer (an empty inbox has its credits open: nothing to free)
        if link.unacked_messages >= fw.max_pending:
            self._refuse_excess()
            return
        self._waiting.extend(link.take_messages())
        while self._waiting and link.unacked_messages < fw.max_pending:
            self._answer(self._waiting.popleft())

    def _refuse_excess(self) -> None:
        """The answer queue is full: requests wait (credits are closed). Only when more than
        ``max_waiting`` wait (the host ignored the credits) are they answered, each
        TOO_MANY_PENDING, up to PENDING_RESERVE answers beyond the queue."""
        link = self.link
        if len(link._inbox) + len(self._waiting) <= self.max_waiting:
            return
        if link.unacked_messages >= self.firmware.max_pending + PENDING_RESERVE:
            return  # no room even for refusals: the link drops what arrives beyond its inbox
        self._waiting.extend(link.take_messages())
        while self._waiting:
            if link.unacked_messages >= self.firmware.max_pending + PENDING_RESERVE:
                return
            self._answer(self._waiting.popleft())

    def _answer(self, msg: Message) -> None:
        self.firmware.max_payload = self.link.max_payload
        self.firmware.window = self.link.window
        pending = self.link.unacked_messages
        self.peak_pending = max(self.peak_pending, pending)
        for response in self.firmware.receive(msg.payload, pending=pending):
            keys = self.firmware.link_keys
            if keys is not None and keys is not self._keys:
                # AUTH succeeded: its answer and everything after go out authenticated.
                self._keys = keys
                self.link.start_auth(keys[1], keys[0], now=True)
            self.link.send_message(msg.channel, response)
