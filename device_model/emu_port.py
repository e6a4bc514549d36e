"""The ``emu://`` pyserial port: a serial port whose other end is the emulated device.

``serial.serial_for_url("emu://hnpu-v2?seed=1")`` returns an ``EmuSerial`` (a
``serial.SerialBase`` like pyserial's ``loop://``) wired to a ``Firmware`` behind its
``DeviceLink`` in the same process. It is synchronous and has no threads: ``write()`` feeds the
bytes to the device link, which answers every complete request at once, and collects the
device's output into the read buffer; ``read()`` returns what the device sent, running the
device link's timers (delayed ACKs, retransmissions) while it waits, within the port's timeout.

URL: ``emu://PRESET[?option=value&...]``; PRESET is a chip preset name (default ``hnpu-v2``).
Options (each at most once):

* ``seed`` - integer >= 0, seed of the device's randomness (link epochs). Default 0.
* ``key`` - hex bytes: the device requires AUTH with this key.
* ``max_payload`` / ``window`` - the device link's offer (256..61440 / 1..64). Default
  61440 / 32 (``CLEAN_PAYLOAD`` / ``CLEAN_WINDOW``: an in-process line costs per frame, not
  per byte, so big frames only save work), with or without fault options, so that a faulted
  run and its fault-free reference use the same frames. A lossy line needs no shorter offer:
  the sender sizes its fragments from the loss it sees (protocol.link, "Fragment size").
  ``tools/fault_campaign.py --quick`` (medians of three runs each) measured the same payload
  per wire byte at 16 KiB x 32 as at the protocol's 4 KiB x 8 (0.93 / 0.83 / 0.59 at
  per-byte corruption 1e-5 / 1e-4 / 1e-3) and more payload per second (at 1e-4: 10.5
  against 7.7 MiB/s of wall time, 25.6 against 17.7 MiB/s of process CPU time).
* ``transpose`` - the preset's transposed-read solution for EP (survey Table 2): ``software``,
  ``transposable-pe`` or ``transpose-sram``. Default: the preset's own.

Fault options (``device_model.emu_faults``; each maps to a ``Fault`` filtering the bytes in
each direction, applied in the URL's order, all seeded so that a failing run replays):

* ``corrupt=P`` / ``insert=P`` / ``delete=P`` - per-byte bit flip / inserted garbage byte /
  lost byte, both ways (0..0.1).
* ``drop=P`` / ``dup=P`` - per-frame loss / duplication, both ways (0..0.5).
* ``reset_every=N`` - the device restarts (state and link lost, new epoch) after a random
  number of frames to it, mean N (1..2**40).
* ``fault_seed`` - integer >= 0, seed of the faults. Default: ``seed``.

``EmuSerial.fault_stats`` counts the faults really injected since the port opened.

pyserial finds this handler as ``device_model.protocol_emu`` once ``"device_model"`` is in
``serial.protocol_handler_packages``: importing this module (or calling ``register()``) adds
it, and a host may add the package name itself without importing anything of ours.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from device_model import emu_faults
from device_model.config import TRANSPOSE_MODES, get_preset, preset_names
from device_model.firmware import Firmware
from device_model.firmware_link import DeviceLink
from protocol.framing import MAX_PAYLOAD, MIN_PAYLOAD
from protocol.link import MAX_WINDOW

SCHEME = "emu"
DEFAULT_PRESET = "hnpu-v2"
#: Link offer of every port (fault options or not): the largest frame the protocol allows, and a
#: window of 1.9 MiB in flight. The window hardly matters in-process (the device answers
#: every frame as it is written): the protocol path of a 2.4 MB MDNet step measured the same
#: within noise at windows 8, 16, 32 and 64; 16 KiB frames instead of 4 KiB ones cut its
#: frame count by 4, 60 KiB ones by 15 (protocol path 5.4 -> 4.0 ms CPU per step at 60 KiB).
CLEAN_PAYLOAD = MAX_PAYLOAD
CLEAN_WINDOW = 32
#: Package pyserial searches for ``protocol_emu``.
HANDLER_PACKAGE = "device_model"


class Fault(Protocol):
    """A channel impairment between host and device (issue of the fault options)."""

    def to_device(self, data: bytes) -> bytes: ...

    def to_host(self, data: bytes) -> bytes: ...


def _int_option(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise ValueError(f"option {name}={text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise ValueError(f"option {name}={v} out of range; accepted {lo}..{hi}")
        return v

    return parse


def _hex_option(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"option key={text!r} is not hex bytes") from None
    if not key:
        raise ValueError("option key must not be empty")
    return key


def _transpose_option(text: str) -> str:
    if text not in TRANSPOSE_MODES:
        raise ValueError(f"option transpose={text!r}; accepted: {', '.join(TRANSPOSE_MODES)}")
    return text


#: Device options: name -> parser of its text value.
DEVICE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "seed": _int_option("seed", 0, (1 << 64) - 1),
    "key": _hex_option,
    "max_payload": _int_option("max_payload", MIN_PAYLOAD, MAX_PAYLOAD),
    "window": _int_option("window", 1, MAX_WINDOW),
    "fault_seed": _int_option("fault_seed", 0, (1 << 64) - 1),
    "transpose": _transpose_option,
}
#: Fault options: name -> parser returning a Fault.
FAULT_OPTIONS: dict[str, Callable[[str], Fault]] = dict(emu_faults.FAULTS)


@dataclass(frozen=True)
class EmuOptions:
    """What an ``emu://`` URL asks for."""

    preset: str = DEFAULT_PRESET
    seed: int = 0
    key: bytes | None = None
    max_payload: int = CLEAN_PAYLOAD
    window: int = CLEAN_WINDOW
    faults: tuple[Fault, ...] = field(default=())
    #: Seed of the faults (None: ``seed``).
    fault_seed: int | None = None
    #: The preset's transposed-read solution overridden (None: the preset's own).
    transpose: str | None = None


def parse_url(url: str) -> EmuOptions:
    """The options of an ``emu://PRESET?...`` URL; ValueError naming what is accepted."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != SCHEME:
        raise ValueError(f"expected a URL of the form emu://PRESET[?options], got {url!r}")
    preset = (parts.netloc + parts.path).strip("/") or DEFAULT_PRESET
    if preset not in preset_names():
        raise ValueError(f"unknown chip preset {preset!r}; accepted: {', '.join(preset_names())}")
    values: dict[str, Any] = {}
    faults: list[Fault] = []
    accepted = ", ".join([*DEVICE_OPTIONS, *FAULT_OPTIONS])
    for name, text in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name in values:
            raise ValueError(f"option {name!r} given twice")
        if name in DEVICE_OPTIONS:
            values[name] = DEVICE_OPTIONS[name](text)
        elif name in FAULT_OPTIONS:
            values[name] = True
            faults.append(FAULT_OPTIONS[name](text))
        else:
            raise ValueError(f"unknown option {name!r} in {url!r}; accepted: {accepted}")
    device = {k: v for k, v in values.items() if k in DEVICE_OPTIONS}
    return EmuOptions(preset=preset, faults=tuple(faults), **device)


class EmuSerial(SerialBase):
    """A pyserial port whose other end is the emulated device (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rx = bytearray()
        self._device: DeviceLink | None = None
        self.options: EmuOptions | None = None
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self.port is None:
            raise SerialException("Port must be configured before it can be used.")
        try:
            opts = parse_url(str(self.port))
        except ValueError as e:
            raise SerialException(str(e)) from None
        self.options = opts
        fault_seed = opts.seed if opts.fault_seed is None else opts.fault_seed
        for f in opts.faults:
            reseed = getattr(f, "seed", None)
            if reseed is not None:
                reseed(fault_seed)
        # In-process: every open is a new device, so a seeded link epoch makes a whole session
        # replay byte for byte. (A served device takes fresh epochs: see DeviceLink.)
        self._device = self._new_device(opts.seed)
        self._rx = bytearray()
        self._reconfigure_port()
        self.is_open = True

    def _new_device(self, seed: int) -> DeviceLink:
        opts = self.options
        assert opts is not None
        preset = get_preset(opts.preset)
        if opts.transpose is not None:
            preset = preset.with_overrides(transpose_mode=opts.transpose)
        fw = Firmware(
            preset,
            seed=seed,
            key=opts.key,
            max_payload=opts.max_payload,
            window=opts.window,
        )
        return DeviceLink(fw, seed=seed)

    @property
    def fault_stats(self) -> dict[str, int]:
        """Faults injected since the port opened, by kind (both directions summed)."""
        out: dict[str, int] = {}
        for f in self.options.faults if self.options else ():
            for k, v in getattr(f, "stats", {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        self.is_open = False
        self._device = None
        self._rx = bytearray()

    def _reconfigure_port(self) -> None:
        """Line settings mean nothing to an in-process device; the baud rate is validated."""
        baud = self.baudrate
        if not isinstance(baud, int) or not 0 < baud < 2**32:
            raise ValueError(f"invalid baudrate: {baud!r}")

    @property
    def firmware(self) -> Firmware:
        """The device behind this port (for tests and the CLI; drivers use the protocol)."""
        return self._dev().firmware

    def _dev(self) -> DeviceLink:
        if not self.is_open or self._device is None:
            raise PortNotOpenError()
        return self._device

    # ------------------------------------------------------------------ data

    def _clean(self) -> bool:
        return self.options is not None and not self.options.faults

    def _pump(self, data: bytes | bytearray = b"") -> None:
        dev = self._dev()
        assert self.options is not None
        faults = self.options.faults
        if faults:
            data = bytes(data)  # the fault filters take and give bytes
        for f in faults:
            data = f.to_device(data)  # type: ignore[arg-type]
        for f in faults:
            take_reset = getattr(f, "take_reset", None)
            seed = take_reset() if take_reset is not None else None
            if seed is not None:
                # The device restarts: its state, its link session and these bytes are lost.
                dev = self._device = self._new_device(seed)
                data = b""
        out = dev.feed(data, time.monotonic())
        if faults:
            out = bytes(out)
        for f in faults:
            out = f.to_host(out)  # type: ignore[arg-type]
        self._rx += out

    def write(self, data: Any) -> int | None:
        """Hand ``data`` to the device; its answers land in the read buffer at once."""
        self._dev()
        if isinstance(data, str):
            raise TypeError("write() takes bytes-like data, not str")
        # bytes, and the link's bytearray of large batches of frames when no fault filters the
        # line: no copy (the device reads them before write returns)
        if type(data) is bytes or (type(data) is bytearray and self._clean()):
            raw = data
        else:
            raw = bytes(memoryview(data))
        self._pump(raw)
        return len(raw)

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes the device sent. Waits for the device's timers within the
        timeout (None: until ``size`` bytes arrived or the device has nothing left to do,
        since nothing else in this process can make it speak; 0: no waiting)."""
        dev = self._dev()
        if len(self._rx) >= size:  # the device's answer is here already (written at once)
            out = bytes(self._rx[:size])
            del self._rx[:size]
            return out
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._pump()
            if len(self._rx) >= size or timeout == 0:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wake = dev.next_deadline()
            if wake is None and deadline is None:
                break
            until = min(t for t in (wake, deadline) if t is not None)
            time.sleep(min(max(until - now, 0.0005), 0.05))
        out = bytes(self._rx[:size])
        del self._rx[:size]
        return out

    @property
    def in_waiting(self) -> int:
        self._pump()
        return len(self._rx)

    @property
    def out_waiting(self) -> int:
        self._dev()
        return 0

    def reset_input_buffer(self) -> None:
        self._dev()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        self._dev()

    def flush(self) -> None:
        self._dev()

    # ------------------------------------------------------------------ modem lines

    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        self._dev()
        return True

    @property
    def dsr(self) -> bool:
        self._dev()
        return True

    @property
    def ri(self) -> bool:
        self._dev()
        return False

    @property
    def cd(self) -> bool:
        self._dev()
        return True


def register() -> None:
    """Make ``serial.serial_for_url`` find ``emu://`` (idempotent)."""
    if HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(HANDLER_PACKAGE)


register()
