"""Typed errors of the host driver. Every message says what went wrong and what to do.

``MicrotrainError`` is the base of all of them. Link problems: ``Timeout`` (the device stopped
answering within the call's deadline), ``LinkLost`` (the port closed or failed). Session
problems: ``ProtocolMismatch`` (HELLO: other protocol major or schema hash), ``AuthError``
(key missing, wrong, or the device's proof wrong), ``StateLost`` (the device restarted and lost
the deployed model or tensors). ``DeviceError`` is an ERROR response of the device, with its
``status`` (protocol.status.Status) and ``detail``. Bad arguments to the API raise
``InvalidArgument`` (a ValueError) or ``ShapeError`` (its subclass for shapes) before anything
is sent, and ``DiscoveryError`` reports USB port discovery problems.
"""

from __future__ import annotations

from protocol.status import Status

__all__ = [
    "LOST_STATUSES",
    "AuthError",
    "DeviceError",
    "DiscoveryError",
    "InvalidArgument",
    "LinkLost",
    "MicrotrainError",
    "ProtocolMismatch",
    "ShapeError",
    "StateLost",
    "Timeout",
]


class MicrotrainError(Exception):
    """Base class of every error the host driver raises."""


class Timeout(MicrotrainError, TimeoutError):
    """The device did not answer within the deadline of a call (``seconds``)."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class LinkLost(MicrotrainError, ConnectionError):
    """The port was closed or failed (unplugged adapter, closed pty, dropped socket)."""


class ProtocolMismatch(MicrotrainError):
    """The device speaks another protocol major version or schema: update host or firmware."""


class AuthError(MicrotrainError):
    """Authentication failed: no key for a device that needs one, a wrong key, or a device
    whose proof does not match the key."""


class StateLost(MicrotrainError):
    """The device restarted (new link epoch) and no longer holds what this host deployed."""


#: What to do about a device status, appended to DeviceError messages.
_HINTS: dict[Status, str] = {
    Status.OUT_OF_MEMORY: "use a smaller model, batch or format, or a preset with more memory",
    Status.BUSY: "the device is busy: retry later",
    Status.NOT_AUTHENTICATED: "open the device with its key: host.open(url, key=...)",
    Status.UNSUPPORTED_FORMAT: "see Device.info()['formats'] for what this device offers",
    Status.UNSUPPORTED_ALGORITHM: "see Device.info()['algorithms'] for what this device offers",
    Status.NO_MODEL: "deploy a model first",
    Status.INTERNAL: "a device fault: the device stays usable; report the detail",
    Status.TENSOR_TOO_LARGE: (
        "split the tensor or use a smaller batch; Device.info()['parameters'] lists the limit"
    ),
    Status.TOO_MANY_TENSORS: "reuse tensor ids, or reset the device's tensors (RESET)",
    Status.TOO_MANY_LAYERS: (
        "use fewer layers; Device.info()['parameters'] lists the preset's maximum"
    ),
    Status.TOO_MANY_PENDING: (
        "the host sent requests faster than it acknowledged answers: read the answers "
        "(the driver does this itself; a custom client must honour the link's credits)"
    ),
}


class DeviceError(MicrotrainError):
    """An ERROR response: ``status`` (a protocol Status), ``detail`` (the device's text) and
    ``opcode`` (name of the failed request)."""

    def __init__(self, status: Status, detail: str, opcode: str = "") -> None:
        what = f"{opcode} failed" if opcode else "device error"
        hint = _HINTS.get(status, "")
        super().__init__(f"{what}: {status.name}: {detail}" + (f" ({hint})" if hint else ""))
        self.status = status
        self.detail = detail
        self.opcode = opcode


class InvalidArgument(MicrotrainError, ValueError):
    """A bad argument to the host API (unknown precision, algorithm, loss, weight name...);
    nothing was sent to the device."""


class ShapeError(InvalidArgument):
    """An array of the wrong shape or dtype (input, target, weights); nothing was sent."""


class DiscoveryError(MicrotrainError):
    """No serial port, or more than one, matches the USB identifiers asked for."""


#: Statuses a request gets from a device that restarted and lost the state it referred to.
LOST_STATUSES = frozenset({Status.NO_MODEL, Status.UNKNOWN_TENSOR, Status.NOT_AUTHENTICATED})
