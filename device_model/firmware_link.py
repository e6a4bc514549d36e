"""The device's link end: ``protocol.link.Link`` in the DEVICE role wrapped around a
``Firmware``, so that bytes from the line go in and the device's bytes come out.

Sans-I/O like the link itself: the caller feeds bytes and the time, and writes out what
``bytes_to_send`` returns. Every message the link delivers is answered at once by the firmware
(one response per request, sent on the request's channel), so a caller that feeds the host's
bytes and then asks for output gets the responses in the same call. The agreed max payload is
and window are handed to the firmware before each message, so HELLO reports what this
session uses and TENSOR_READ answers fit one frame.

Bounded whatever the host sends: the device's link reassembles requests of at most
``MAX_REQUEST_BYTES`` and holds at most two windows of undelivered requests; the firmware answers
TOO_MANY_PENDING once ``Firmware.max_pending`` answers wait for the host's acknowledgement, and
after ``PENDING_RESERVE`` more such refusals the device stops taking requests (the link's credits
close) until the host has read its answers.
"""

from __future__ import annotations

import random
from collections import deque

from device_model.firmware import MAX_REQUEST_BYTES, Firmware
from protocol.link import Link, LinkConfig, Message, Role

#: TOO_MANY_PENDING answers the device queues beyond ``max_pending`` before it stops reading.
PENDING_RESERVE = 64


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
            rx_buffer=2 * firmware.window * firmware.max_payload,
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

    def receive_bytes(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes from the host: frames are decoded, and every delivered request is answered."""
        self.link.receive_bytes(data, now)
        self._serve()

    def poll(self, now: float) -> None:
        """Advance the link's timers (retransmissions, SYNC retries, delayed ACKs)."""
        self.link.poll(now)
        self._serve()

    def bytes_to_send(self, now: float) -> bytes:
        """Everything the device wants on the line now."""
        return self.link.bytes_to_send(now)

    def next_deadline(self) -> float | None:
        """When ``poll`` must next be called (None: nothing pending)."""
        return self.link.next_deadline()

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> bytes:
        """Receive ``data``, run due timers and return the device's output."""
        if data:
            self.link.receive_bytes(data, now)
        self.link.poll(now)
        self._serve()
        return self.link.bytes_to_send(now)

    def _serve(self) -> None:
        cap = self.firmware.max_pending + PENDING_RESERVE
        session = (self.link.epoch, self.link.peer_epoch)
        if session != self._waiting_session:
            self._waiting.clear()  # requests of an ended session: the host replays them
            self._waiting_session = session
        if self.link.unacked_messages >= cap:
            return  # requests wait in the link's inbox until the host reads its answers
        self._waiting.extend(self.link.take_messages())
        while self._waiting:
            if self.link.unacked_messages >= cap:
                return  # the rest waits here (at most one inbox) until the host reads
            msg = self._waiting.popleft()
            self.firmware.max_payload = self.link.max_payload
            self.firmware.window = self.link.window
            pending = self.link.unacked_messages
            self.peak_pending = max(self.peak_pending, pending)
            for response in self.firmware.receive(msg.payload, pending=pending):
                self.link.send_message(msg.channel, response)
