"""``microtrain serve``: the emulated device in its own process behind a pty or a TCP socket,
a "virtual FPGA" that the host reaches exactly as it reaches a board.

* ``--pty``: a pseudo-terminal pair (raw mode); the slave's path is printed as one line
  ``PTY <path>`` and the host opens that path like a serial adapter. The server keeps the slave
  open too, so a host may close the port and open it again. A host that starts a new link
  session (a new link epoch) must authenticate again.
* ``--tcp HOST:PORT``: a loopback TCP server (``socket://HOST:PORT`` on the host side), one
  connection at a time; a second one while a host is connected is closed at once. Each
  connection gets a fresh link session and must authenticate again; the device's state (tensors,
  model) survives, as a powered board's does. Port 0 picks a free port; the line ``TCP
  HOST:PORT`` says which.

``--faults "corrupt=1e-4&drop=0.01&...&fault_seed=N"`` impairs the line with the fault options of
``emu://`` (same names, same parsers and seeded generators: ``device_model.emu_faults``), on the
bytes both ways by default or one way with ``--fault-direction to-device|to-host``. With
``reset_every=N`` the served device restarts as a board would: fresh firmware (no tensors, no
model, not authenticated), a new link session with a new epoch; the bytes of the read in which
the reset falls and the output not yet written die with the old device. Faults and restarts are
counted and logged when the server stops, with the requests the devices executed.

``--baud N`` paces both directions like a UART of that rate (10 bits per byte, see ``Pacer``).
The loop sleeps in ``select`` until bytes arrive, the device link's next timer, the pacer's next
slot, or a signal; it stops on SIGINT/SIGTERM or when the parent process goes away.

This module is application layer: it may import ``device_model`` (the CLI's privilege).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import select
import signal
import socket
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from device_model import emu_faults
from device_model.config import preset_names
from device_model.emu_faults import FaultLine
from device_model.firmware import Firmware
from device_model.firmware_link import DeviceLink

#: Bits a UART moves per byte (start, 8 data, stop).
BITS_PER_BYTE = 10
#: Pacing granule (seconds): the pacer releases at most this much line time at once.
PACE_GRANULE = 0.002
#: Longest sleep in one select (seconds): how often the parent's presence is checked.
PARENT_CHECK = 0.5
#: Output held back while the reader does not keep up; beyond it the oldest bytes are lost,
#: as on a UART line nobody reads.
MAX_PENDING = 1 << 20
READ_SIZE = 65536


class ServeError(ValueError):
    """A bad ``serve`` argument or a resource that cannot be set up; the message says what
    was wrong and what is accepted."""


# ---------------------------------------------------------------------- arguments


@dataclass(frozen=True)
class ServeOptions:
    """What ``microtrain serve`` was asked for (validated)."""

    preset: str = "hnpu-v2"
    pty: bool = False
    tcp: tuple[str, int] | None = None
    baud: int | None = None
    #: Pins the device link's random epochs (a replayable session); None: OS randomness.
    seed: int | None = None
    key: bytes | None = None
    #: The fault options as given (``corrupt=1e-4&...``), validated; "" for none.
    faults: str = ""
    fault_direction: str = "both"

    def fault_line(self) -> FaultLine | None:
        """A fresh FaultLine for ``faults`` (None without faults). The fault seed is the
        string's ``fault_seed``, else ``--seed``, else 0."""
        if not self.faults:
            return None
        faults, seed = emu_faults.parse_faults(self.faults)
        if seed is None:
            seed = self.seed or 0
        return FaultLine(faults, seed, self.fault_direction)


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of a loopback address; ServeError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ServeError(f"--tcp takes HOST:PORT (e.g. 127.0.0.1:7000), got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ServeError(f"--tcp port {port_text!r} is not an integer; accepted 0..65535") from None
    if not 0 <= port <= 65535:
        raise ServeError(f"--tcp port {port} out of range; accepted 0..65535 (0: any free port)")
    if host != "localhost":
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ServeError(
                f"--tcp host {host!r} is not an IP address; accepted: localhost, 127.0.0.1 "
                "or another loopback address, ::1"
            ) from None
        if not addr.is_loopback:
            raise ServeError(
                f"--tcp host {host} is not a loopback address: the emulator serves this machine "
                "only; accepted: localhost, 127.x.x.x, ::1"
            )
    return host, port


def read_key_file(path: str) -> bytes:
    """The key held in ``path`` as hex text (whitespace ignored). The error messages never
    show the file's contents."""
    try:
        with open(path, encoding="ascii", errors="strict") as f:
            text = f.read()
    except OSError as e:
        raise ServeError(f"cannot read key file {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ServeError(
            f"key file {path!r} is not ASCII text; it must hold the key as hex digits"
        ) from None
    digits = "".join(text.split())
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise ServeError(
            f"key file {path!r} does not hold hex text; it must hold the key as an even number "
            "of hex digits (whitespace ignored)"
        ) from None
    if not key:
        raise ServeError(f"key file {path!r} is empty; it must hold the key as hex digits")
    return key


def options(
    *,
    preset: str,
    pty: bool,
    tcp: str | None,
    baud: int | None,
    seed: int | None,
    key_file: str | None,
    faults: str | None = None,
    fault_direction: str | None = None,
) -> ServeOptions:
    """Validate the command line's values into ServeOptions (ServeError on bad ones)."""
    if pty == (tcp is not None):
        raise ServeError("give exactly one of --pty or --tcp HOST:PORT")
    if preset not in preset_names():
        raise ServeError(f"unknown preset {preset!r}; accepted: {', '.join(preset_names())}")
    if baud is not None and baud <= 0:
        raise ServeError(f"--baud must be a positive number of bits per second, got {baud}")
    if seed is not None and not 0 <= seed < 2**64:
        raise ServeError(f"--seed must be in 0..2**64-1, got {seed}")
    if fault_direction is not None and fault_direction not in emu_faults.DIRECTIONS:
        raise ServeError(
            f"--fault-direction {fault_direction!r} unknown; accepted: "
            + ", ".join(emu_faults.DIRECTIONS)
        )
    if fault_direction is not None and not faults:
        raise ServeError("--fault-direction needs --faults (the faults to apply)")
    if faults:
        try:
            emu_faults.parse_faults(faults)
        except ValueError as e:
            raise ServeError(
                f"--faults: {e} (e.g. --faults 'corrupt=1e-4&drop=0.01&fault_seed=1')"
            ) from None
    return ServeOptions(
        preset=preset,
        pty=pty,
        tcp=parse_hostport(tcp) if tcp is not None else None,
        baud=baud,
        seed=seed,
        key=read_key_file(key_file) if key_file is not None else None,
        faults=faults or "",
        fault_direction=fault_direction or "both",
    )


# ---------------------------------------------------------------------- pacing


class Pacer:
    """When bytes may cross a UART of ``baud`` bits per second (None: no pacing).

    The line is busy until ``free_at``; ``take(want, now)`` grants up to one granule's worth
    of bytes once the line is free and books their transmit time. Lateness of the caller up to
    one granule is not lost (the next slot starts where the last ended); after a longer idle
    the line starts afresh at ``now``, so no credit accumulates. On average n bytes take
    n * 10 / baud seconds.
    """

    def __init__(self, baud: int | None, granule: float = PACE_GRANULE) -> None:
        self.baud = baud
        self.byte_time = BITS_PER_BYTE / baud if baud else 0.0
        self.burst = max(1, int(granule / self.byte_time)) if baud else 0
        self.granule = granule
        self.free_at = float("-inf")

    def ready(self, now: float) -> bool:
        """Whether the line may take bytes now."""
        return self.baud is None or now >= self.free_at

    def take(self, want: int, now: float) -> int:
        """How many of ``want`` bytes go on the line now (their time is booked)."""
        if self.baud is None:
            return want
        if want <= 0 or now < self.free_at:
            return 0
        n = min(want, self.burst)
        start = self.free_at if now - self.free_at < self.granule else now
        self.free_at = start + n * self.byte_time
        return n

    def wake(self) -> float | None:
        """When the line is next free (None: unpaced)."""
        return None if self.baud is None else self.free_at


# ---------------------------------------------------------------------- the device session


class Board:
    """The served device across restarts: its firmware (rebuilt fresh when a ``reset_every``
    fault restarts it), the fault line, and what all its incarnations executed."""

    def __init__(self, opts: ServeOptions, log: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.line = opts.fault_line()
        self.firmware = self._build()
        self.restarts = 0
        self._executed_before = 0
        self._log = log

    def _build(self) -> Firmware:
        return Firmware(self.opts.preset, seed=self.opts.seed or 0, key=self.opts.key)

    def restart(self) -> Firmware:
        """Power-cycle: a fresh firmware (no tensors, no model, not authenticated)."""
        self._executed_before += self.firmware.executed
        self.restarts += 1
        self.firmware = self._build()
        return self.firmware

    def ready(self) -> None:
        """Log that the restarted device is ready, with the time on the system's monotonic
        clock (``time.monotonic()`` in another process on Linux: reconnect times)."""
        if self._log is not None:
            self._log(
                f"device restart {self.restarts} (reset_every fault), "
                f"ready at monotonic {time.monotonic():.6f}"
            )

    @property
    def executed(self) -> int:
        """Requests executed (not answered from a cache) by every incarnation of the device."""
        return self._executed_before + self.firmware.executed

    def summary(self) -> str:
        """One log line: requests executed, restarts and the faults injected."""
        text = f"{self.executed} requests executed, {self.restarts} device restarts"
        if self.line is not None:
            stats = ", ".join(f"{k} {v}" for k, v in sorted(self.line.stats.items()))
            text += f"; faults {self.line.describe()}: {stats or 'none injected'}"
        return text


class Session:
    """One host's session: the device link over the firmware, the pacers of both directions
    and the device's output not yet written. With a ``board`` that has a fault line, the bytes
    both ways go through it and a due reset restarts the device (``Board.restart``) and its
    link (a new epoch: from OS randomness, or from the fault's seed when ``seed`` pins the
    epochs)."""

    def __init__(
        self,
        firmware: Firmware,
        baud: int | None,
        seed: int | None = None,
        *,
        board: Board | None = None,
    ) -> None:
        self.firmware = firmware
        self._seed = seed
        self._board = board
        self.line = board.line if board is not None else None
        # Link epochs from OS randomness unless pinned (DeviceLink's default): a restarted
        # server must show a new epoch, or the host could not tell that it lost its state.
        self.link = DeviceLink(firmware, seed=seed)
        self.rx = Pacer(baud)
        self.tx = Pacer(baud)
        self.out = bytearray()
        self._peer_epoch: int | None = None
        firmware.deauthenticate()

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the host. A new host link epoch is a new host: it must AUTH again,
        so the firmware forgets the key before it serves any message of the new session."""
        if self.line is not None:
            data = self.line.to_device(data)
            reset_seed = self.line.take_reset()
            if reset_seed is not None:
                self._restart(reset_seed)
                return  # these bytes die with the old device
            if not data:
                return
        self.link.link.receive_bytes(data, now)  # decode only; the messages wait
        epoch = self.link.link.peer_epoch
        if epoch is not None and epoch != self._peer_epoch:
            if self._peer_epoch is not None:
                self.firmware.deauthenticate()
            self._peer_epoch = epoch
        self.link.poll(now)  # serve what arrived

    def _restart(self, reset_seed: int) -> None:
        """The device restarts: fresh firmware, a fresh link (new epoch), output lost."""
        assert self._board is not None
        self.firmware = self._board.restart()
        self.link = DeviceLink(self.firmware, seed=None if self._seed is None else reset_seed)
        self.out.clear()
        self._peer_epoch = None
        self._board.ready()

    def produce(self, now: float) -> None:
        """Run the device link's timers and queue what it sends (bounded: see MAX_PENDING)."""
        self.link.poll(now)
        out = self.link.bytes_to_send(now)
        if self.line is not None and out:
            out = self.line.to_host(bytes(out))  # a faulted line takes bytes
        self.out += out
        if len(self.out) > MAX_PENDING:
            del self.out[: len(self.out) - MAX_PENDING]

    def timeout(self, now: float, cap: float) -> float:
        """Seconds select may sleep: until the link's timer or the output pacer's slot."""
        wakes = [self.link.next_deadline()]
        if self.out and not self.tx.ready(now):
            wakes.append(self.tx.wake())  # a free line with a full buffer waits in wlist
        if not self.rx.ready(now):
            wakes.append(self.rx.wake())
        t = min([w for w in wakes if w is not None], default=now + cap)
        return min(max(t - now, 0.0), cap)


class Stop:
    """SIGINT/SIGTERM set ``requested`` and wake the select loop through a pipe."""

    def __init__(self) -> None:
        self.requested = False
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        self._old: dict[int, object] = {}
        self.parent = os.getppid()

    def _handler(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.wfd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.wfd, b"\0")

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def close(self) -> None:
        # Once a stop was asked for, further SIGINT/SIGTERM are ignored: a second one during
        # the shutdown must not kill the process half way (exit status 0 all the same).
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_IGN if self.requested else old)  # type: ignore[arg-type]
        os.close(self.rfd)
        wfd, self.wfd = self.wfd, -1  # a late signal must not write to a reused fd number
        os.close(wfd)

    def check(self) -> bool:
        """Whether to stop: a signal came, or the parent went away (we were re-parented)."""
        with contextlib.suppress(OSError):
            os.read(self.rfd, 64)
        return self.requested or os.getppid() != self.parent


@contextlib.contextmanager
def stop_signals() -> Iterator[Stop]:
    stop = Stop()
    stop.install()
    try:
        yield stop
    finally:
        stop.close()


# ---------------------------------------------------------------------- the loop


def pump(
    session: Session,
    fd: int,
    stop: Stop,
    *,
    extra: int | None = None,
    on_extra: Callable[[], None] | None = None,
) -> str:
    """Serve ``session`` over the non-blocking ``fd`` until it closes ("eof") or a stop is
    asked for ("stop"). ``extra`` is another readable fd (a listening socket) handled by
    ``on_extra``."""
    while True:
        now = time.monotonic()
        session.produce(now)
        if session.out and session.tx.ready(now):
            n = session.tx.take(len(session.out), now)
            try:
                written = os.write(fd, session.out[:n])
            except BlockingIOError:
                written = 0
                session.tx.free_at = now  # nothing went out: give the slot back
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO):
                    return "eof"
                raise
            del session.out[:written]
        rlist = [stop.rfd]
        if session.rx.ready(now):
            rlist.append(fd)
        if extra is not None:
            rlist.append(extra)
        wlist = [fd] if session.out and session.tx.ready(time.monotonic()) else []
        readable, _, _ = select.select(
            rlist, wlist, [], session.timeout(time.monotonic(), PARENT_CHECK)
        )
        if stop.check():
            return "stop"
        now = time.monotonic()
        if fd in readable:
            want = session.rx.take(READ_SIZE, now)
            try:
                data = os.read(fd, want) if want else None
            except BlockingIOError:
                data = None
            except OSError as e:
                if e.errno in (errno.EIO, errno.ECONNRESET):
                    return "eof"
                raise
            if data == b"":
                return "eof"
            if data:
                session.receive(data, now)
        if extra is not None and extra in readable and on_extra is not None:
            on_extra()


def _log(err: TextIO, text: str) -> None:
    print(f"microtrain serve: {text}", file=err, flush=True)


def serve_pty(opts: ServeOptions, out: TextIO, err: TextIO) -> int:
    """Serve over a new pty until stopped (see the module docstring)."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        path = os.ttyname(slave)
        board = Board(opts, lambda text: _log(err, text))
        session = Session(board.firmware, opts.baud, opts.seed, board=board)
        with stop_signals() as stop:
            print(f"PTY {path}", file=out, flush=True)
            _log(err, f"{opts.preset} on {path}" + (f" at {opts.baud} baud" if opts.baud else ""))
            if board.line is not None:
                _log(err, f"faults {board.line.describe()}")
            pump(session, master, stop)
        _log(err, board.summary())
        _log(err, "stopped")
        return 0
    finally:
        os.close(master)
        os.close(slave)


def serve_tcp(opts: ServeOptions, out: TextIO, err: TextIO) -> int:
    """Serve on a loopback TCP port, one connection at a time, until stopped."""
    assert opts.tcp is not None
    host, port = opts.tcp
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ServeError(f"cannot resolve --tcp {host}:{port}: {e}") from None
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(addr)
        except OSError as e:
            raise ServeError(
                f"cannot listen on {host}:{port}: {e.strerror or e}; pick another port "
                "(0: any free port)"
            ) from None
        listener.listen(1)
        listener.setblocking(False)
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        board = Board(opts, lambda text: _log(err, text))
        sessions = 0

        def refuse() -> None:
            with contextlib.suppress(BlockingIOError):
                extra, peer = listener.accept()
                extra.close()
                _log(err, f"refused {peer[0]}:{peer[1]}: a host is already connected")

        with stop_signals() as stop:
            print(f"TCP {shown}:{bound_port}", file=out, flush=True)
            _log(err, f"{opts.preset} on {shown}:{bound_port}, one connection at a time")
            if board.line is not None:
                _log(err, f"faults {board.line.describe()}")
            while not stop.check():
                readable, _, _ = select.select([listener.fileno(), stop.rfd], [], [], PARENT_CHECK)
                if listener.fileno() not in readable:
                    continue
                try:
                    conn, peer = listener.accept()
                except BlockingIOError:
                    continue
                sessions += 1
                _log(err, f"connection {sessions} from {peer[0]}:{peer[1]}")
                with conn:
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    seed = None if opts.seed is None else (opts.seed + sessions) % 2**64
                    session = Session(board.firmware, opts.baud, seed, board=board)
                    why = pump(
                        session, conn.fileno(), stop, extra=listener.fileno(), on_extra=refuse
                    )
                _log(err, f"connection {sessions} closed" if why == "eof" else "stopping")
        _log(err, board.summary())
        _log(err, "stopped")
    return 0


def serve(opts: ServeOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the server described by ``opts``; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if opts.pty:
        return serve_pty(opts, out, err)
    return serve_tcp(opts, out, err)
