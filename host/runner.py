"""The link runner: ``protocol.link.Link`` in the HOST role driving a pyserial port.

One runner owns one port and is its only reader. It is synchronous: the thread that makes a
call runs the link (writes what the link wants sent, reads what arrived, runs its timers) until
the responses it waits for are in, or the call's deadline passes. A lock serialises callers.

* Request ids are u32, counted up from a random start per runner, so a second host session on
  the same device never collides with the device's response cache of an earlier one.
* Every call has a deadline: ``timeout`` (the device's think time) plus twice the time the
  call's bytes take on the wire at the port's baud rate (10 bits per byte), see ``deadline``,
  plus the set-up of a new link session after a reset (SYNC_ALLOWANCE; the link itself
  reconnects at once, this covers lost SYNC/CONFIG frames and their retries).
  No answer by then raises ``errors.Timeout``; a port that fails or closes raises
  ``errors.LinkLost``. Nothing blocks longer than one short read (``POLL_INTERVAL``).
* Exactly once: the link replays unanswered requests after a peer reset, the device answers
  duplicates from its cache, and the runner marks a request answered when its response
  arrives. ``resets`` counts ended link sessions (a new device epoch, or a new session this
  end starts after a timeout, which resynchronises with a device that restarted unnoticed) so
  the caller can check whether the device lost its state.
* ERROR responses raise ``errors.DeviceError`` (status and detail) from ``call``; ``submit``
  and ``wait`` let a caller pipeline several requests (tensor chunks) and see each result.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import serial
from serial import SerialException

from host import errors
from protocol import messages as m
from protocol.framing import MAX_PAYLOAD
from protocol.link import MAX_WINDOW, Link, LinkConfig, Role
from protocol.messages import Opcode
from protocol.status import MessageError, Status

#: Longest single blocking read (seconds): bounds how late a deadline or timer is noticed.
POLL_INTERVAL = 0.01
#: Default think time of the device per call (seconds), on top of the wire time.
DEFAULT_TIMEOUT = 10.0
#: Seconds allowed for setting up a new link session after a reset (SYNC retries under loss).
SYNC_ALLOWANCE = 1.0
#: Baud rate assumed when nothing says otherwise.
DEFAULT_BAUD = 115_200
#: Line rate assumed for ports that are not UARTs (emu://, socket://, loop://): their nominal
#: baud rate means nothing, and 1 Mbaud (100 kB/s) is a safe floor for what they move.
VIRTUAL_BAUD = 1_000_000
#: Wire bytes per payload byte assumed for deadlines: framing, headers, acks, retransmits.
WIRE_FACTOR = 2.0


def wire_seconds(nbytes: int, baudrate: int | None) -> float:
    """Seconds ``nbytes`` take on a UART of ``baudrate`` (10 bits per byte)."""
    return nbytes * 10.0 / float(baudrate or DEFAULT_BAUD)


def line_rate(port: Any) -> int:
    """The baud rate deadlines assume for ``port``: its own for a real serial port (a tty,
    a pty, spy://), VIRTUAL_BAUD for the others."""
    if isinstance(port, serial.Serial):
        return int(port.baudrate or DEFAULT_BAUD)
    return VIRTUAL_BAUD


class Runner:
    """One HOST link end over a pyserial port (see the module docstring)."""

    def __init__(
        self,
        port: Any,
        *,
        timeout: float | None = None,
        baudrate: int | None = None,
        config: LinkConfig | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise errors.InvalidArgument(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.port = port
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        self.baudrate = baudrate or line_rate(port)
        # The host offers the largest frame and window; the device's offer decides (the link
        # agrees on the smaller of each): emu:// offers 60 KiB x 32, a board its own. At the
        # default window of 8 a 2.4 MB request took five round trips instead of two.
        self.link = Link(
            Role.HOST, config or LinkConfig(max_payload=MAX_PAYLOAD, window=MAX_WINDOW)
        )
        self._rng = random.SystemRandom()
        self._next_id = self._rng.getrandbits(32)
        self._lock = threading.RLock()
        #: request id -> link message id, for requests not answered yet.
        self._pending: dict[int, int] = {}
        #: request id -> decoded response, answered and not yet taken.
        self._answers: dict[int, m.ResponseMsg] = {}
        self._own_resets = 0
        #: Requests whose caller gave up (timed out): their late answers are dropped.
        self._abandoned: set[int] = set()
        #: Messages from the device that did not decode as a response (counted, dropped).
        self.bad_messages = 0
        self.closed = False
        try:
            port.timeout = POLL_INTERVAL
        except (AttributeError, ValueError, SerialException):
            pass

    # ------------------------------------------------------------------ public

    @property
    def resets(self) -> int:
        """How many link sessions ended during this device session: the device's link
        restarted (new epoch), or this end restarted its own after a timeout."""
        return self.link.stats["peer_resets"] + self._own_resets

    @property
    def max_payload(self) -> int:
        """Payload bytes per frame agreed with the device."""
        return self.link.max_payload

    def deadline(self, nbytes: int = 0, timeout: float | None = None) -> float:
        """Seconds a call moving ``nbytes`` payload bytes may take before it times out."""
        base = self.timeout if timeout is None else timeout
        return base + WIRE_FACTOR * wire_seconds(nbytes + 64, self.baudrate)

    def submit(self, opcode: Opcode, body: dict[str, Any] | None = None) -> int:
        """Queue a request and return its request id (answered by ``wait``)."""
        with self._lock:
            self._check_open()
            rid = self._next_id
            self._next_id = (self._next_id + 1) & 0xFFFF_FFFF
            if rid == m.NO_REQUEST_ID:
                rid, self._next_id = 0, 1
            try:
                data = m.encode_request(opcode, rid, body)
            except MessageError as e:
                raise errors.InvalidArgument(f"cannot encode {opcode.name}: {e.detail}") from None
            self._pending[rid] = self.link.send_message(0, data)
            self._flush(time.monotonic())
            return rid

    def wait(
        self, ids: Sequence[int], *, nbytes: int = 0, timeout: float | None = None
    ) -> list[m.ResponseMsg]:
        """The responses of ``ids`` (ERROR responses included), in the order of ``ids``."""
        with self._lock:
            limit = self.deadline(nbytes, timeout)
            if self.resets and not self.link.established:
                # A session after a reset is set up at once, but its SYNC/CONFIG may be
                # lost and SYNC retries back off: allow for it.
                limit += SYNC_ALLOWANCE
            end = time.monotonic() + limit
            want = set(ids)
            while not want <= self._answers.keys():
                if time.monotonic() >= end:
                    missing = want - self._answers.keys()
                    self._abandoned |= missing
                    for i in want:
                        self._answers.pop(i, None)
                    # Start a new link session: if the device restarted without our noticing
                    # (same epoch), this resynchronises; if it was only slow, the replayed
                    # requests are answered from its cache (exactly once).
                    self.link.reset(time.monotonic())
                    self._own_resets += 1
                    raise errors.Timeout(
                        f"the device did not answer within {limit:.2f} s "
                        f"({len(missing)} of {len(want)} request(s) unanswered); check "
                        "that it is powered and connected, or pass a larger timeout to host.open",
                        limit,
                    )
                self._step()
            return [self._answers.pop(i) for i in ids]

    def call(
        self, opcode: Opcode, body: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and return its response body; ERROR raises DeviceError."""
        nbytes = _body_bytes(body)
        with self._lock:
            (resp,) = self.wait([self.submit(opcode, body)], nbytes=nbytes, timeout=timeout)
        return check(resp, opcode)

    def close(self) -> None:
        """Close the port (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.port.close()
            except (OSError, SerialException):
                pass

    # ------------------------------------------------------------------ the loop

    def _check_open(self) -> None:
        if self.closed:
            raise errors.LinkLost("the device was closed; open it again with host.open(url)")

    def _flush(self, now: float) -> None:
        self.link.poll(now)
        out = self.link.bytes_to_send(now)
        if out:
            try:
                self.port.write(out)
            except (OSError, SerialException, AttributeError, TypeError) as e:
                self._lost(e)

    def _lost(self, e: BaseException) -> None:
        self.closed = True
        try:
            self.port.close()
        except (OSError, SerialException, AttributeError, TypeError):
            pass
        raise errors.LinkLost(
            f"the link to the device was lost ({type(e).__name__}: {e}); check the cable or "
            "the serving process, then open the device again"
        ) from e

    def _step(self) -> None:
        """Write what the link wants sent, wait up to POLL_INTERVAL for bytes, take them in."""
        self._check_open()
        self._flush(time.monotonic())
        try:
            data = self.port.read(1)
            if data:
                waiting = self.port.in_waiting
                if waiting:
                    data += self.port.read(waiting)
        except (OSError, SerialException, AttributeError, TypeError) as e:
            self._lost(e)
        if data:
            self.link.receive_bytes(data, time.monotonic())
            self._collect()

    def _collect(self) -> None:
        for msg in self.link.take_messages():
            try:
                resp = m.decode_response(msg.payload)
            except MessageError:
                self.bad_messages += 1
                continue
            link_id = self._pending.pop(resp.request_id, None)
            if link_id is None:
                self.bad_messages += 1  # a duplicate or a stray answer
                continue
            self.link.mark_answered(link_id)
            if resp.request_id in self._abandoned:
                self._abandoned.discard(resp.request_id)
                continue
            self._answers[resp.request_id] = resp


def check(resp: m.ResponseMsg, opcode: Opcode) -> dict[str, Any]:
    """The body of ``resp``, or DeviceError if it is an ERROR."""
    if resp.is_error:
        raise errors.DeviceError(Status(resp.body["status"]), resp.body["detail"], opcode.name)
    if resp.answers != opcode:
        raise errors.DeviceError(
            Status.INTERNAL, f"answered {resp.opcode.name} to {opcode.name}", opcode.name
        )
    return resp.body


def _body_bytes(body: dict[str, Any] | None) -> int:
    """Rough payload size of a request body (its byte fields), for deadlines."""
    if not body:
        return 0
    return sum(len(v) for v in body.values() if isinstance(v, bytes | bytearray | memoryview))
