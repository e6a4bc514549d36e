"""Find a serial adapter by USB vendor id, product id and serial number.

``find_ports`` lists the matching ports (pyserial's ``serial.tools.list_ports``);
``find_port`` returns the one device path, or raises ``errors.DiscoveryError`` naming what was
found when none or several match, so the caller can narrow the search (add ``serial_number``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from serial.tools import list_ports

from host.errors import DiscoveryError, InvalidArgument

__all__ = ["describe", "find_port", "find_ports"]


def _check_id(value: int | str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        v = int(value, 16) if isinstance(value, str) else int(value)
    except ValueError:
        raise InvalidArgument(f"{name} {value!r} is not a number (hex string or int)") from None
    if not 0 <= v <= 0xFFFF:
        raise InvalidArgument(f"{name} {value!r} is outside 0..0xFFFF")
    return v


def describe(port: Any) -> str:
    """One line naming a port: path, VID:PID, serial number, description."""
    vid = f"{port.vid:04x}" if port.vid is not None else "----"
    pid = f"{port.pid:04x}" if port.pid is not None else "----"
    return f"{port.device} [{vid}:{pid} serial={port.serial_number or '-'}] {port.description}"


def find_ports(
    vid: int | str | None = None,
    pid: int | str | None = None,
    serial_number: str | None = None,
    *,
    ports: Callable[[], Iterable[Any]] = list_ports.comports,
) -> list[Any]:
    """USB serial ports matching every identifier given (None matches anything)."""
    v, p = _check_id(vid, "vid"), _check_id(pid, "pid")
    out = []
    for info in ports():
        if v is not None and info.vid != v:
            continue
        if p is not None and info.pid != p:
            continue
        if serial_number is not None and info.serial_number != serial_number:
            continue
        out.append(info)
    return sorted(out, key=lambda i: str(i.device))


def find_port(
    vid: int | str | None = None,
    pid: int | str | None = None,
    serial_number: str | None = None,
    *,
    ports: Callable[[], Iterable[Any]] = list_ports.comports,
) -> str:
    """The device path of the one port matching; DiscoveryError if none or several match."""
    found = find_ports(vid, pid, serial_number, ports=ports)
    want = ", ".join(
        f"{k}={val:#06x}" if isinstance(val, int) else f"{k}={val}"
        for k, val in (("vid", vid), ("pid", pid), ("serial_number", serial_number))
        if val is not None
    )
    if not found:
        present = [describe(i) for i in ports()]
        raise DiscoveryError(
            f"no serial port matches {want or 'anything'}; ports present: "
            f"{'; '.join(present) or 'none'} (is the adapter plugged in?)"
        )
    if len(found) > 1:
        raise DiscoveryError(
            f"{len(found)} serial ports match {want or 'anything'}: "
            f"{'; '.join(describe(i) for i in found)}; pass serial_number=... to pick one"
        )
    return str(found[0].device)
