"""Status codes of the ERROR response and the one exception type of the message layer.

Every request gets exactly one response: its own response (status OK implied) or ERROR with
one of these codes and a detail text saying what was wrong and what is accepted. The codes are
u16 on the wire and frozen; ``STATUS_MEANING`` holds the one-line meaning of each (it is
rendered into docs/protocol.md and the C header).
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Result code of a request (u16 on the wire)."""

    OK = 0x0000
    UNKNOWN_OPCODE = 0x0001
    BAD_REQUEST = 0x0002
    BAD_SHAPE = 0x0003
    UNKNOWN_TENSOR = 0x0004
    UNKNOWN_LAYER = 0x0005
    OUT_OF_MEMORY = 0x0006
    UNSUPPORTED_FORMAT = 0x0007
    UNSUPPORTED_ALGORITHM = 0x0008
    NOT_AUTHENTICATED = 0x0009
    AUTH_FAILED = 0x000A
    BUSY = 0x000B
    LIMIT = 0x000C
    CHECKSUM_MISMATCH = 0x000D
    TRANSFER_INCOMPLETE = 0x000E
    NO_MODEL = 0x000F
    VERSION_MISMATCH = 0x0010
    SCHEMA_MISMATCH = 0x0011
    UNSUPPORTED = 0x0012
    TENSOR_TOO_LARGE = 0x0013
    TOO_MANY_TENSORS = 0x0014
    TOO_MANY_LAYERS = 0x0015
    TOO_MANY_PENDING = 0x0016
    INTERNAL = 0x00FF


#: One-line meaning of every status code (normative; copied into the generated reference).
STATUS_MEANING: dict[Status, str] = {
    Status.OK: "success; only implied by a non-ERROR response, never sent in ERROR",
    Status.UNKNOWN_OPCODE: "the request's opcode is not defined by this protocol version",
    Status.BAD_REQUEST: (
        "the request body is malformed: truncated, trailing bytes, a field out of range, "
        "an unknown enum value, invalid UTF-8"
    ),
    Status.BAD_SHAPE: (
        "a shape or size is inconsistent: tensor nbytes vs dtype x shape, input vs model, "
        "layer sizes that do not chain"
    ),
    Status.UNKNOWN_TENSOR: "a tensor id names no tensor on the device",
    Status.UNKNOWN_LAYER: "a layer index is outside the defined model",
    Status.OUT_OF_MEMORY: "the device memory of the chip preset cannot hold what was asked",
    Status.UNSUPPORTED_FORMAT: "a dtype or number format the device does not implement",
    Status.UNSUPPORTED_ALGORITHM: "a training algorithm, feedback mode or optimizer not offered",
    Status.NOT_AUTHENTICATED: "the device has a key the host has not proven: only HELLO/AUTH",
    Status.AUTH_FAILED: "the AUTH proof is wrong or its counter was already used",
    Status.BUSY: "the device cannot take the request now; retry later",
    Status.LIMIT: (
        "a protocol limit without a code of its own is exceeded (batch size, a device-range "
        "tensor id, a chunk past the end of its tensor)"
    ),
    Status.CHECKSUM_MISMATCH: "END: the received tensor bytes do not match the CRC-32 of BEGIN",
    Status.TRANSFER_INCOMPLETE: (
        "END or use of a tensor whose bytes have not all arrived; detail names the offset"
    ),
    Status.NO_MODEL: "FORWARD/TRAIN_STEP/BACKWARD/GET_WEIGHTS/TRAIN_CONFIG before DEFINE_MODEL",
    Status.VERSION_MISMATCH: "HELLO: the host's protocol major version differs from the device's",
    Status.SCHEMA_MISMATCH: "HELLO: the host's schema hash differs from the device's",
    Status.UNSUPPORTED: "a valid request the device does not implement (feature bit clear)",
    Status.TENSOR_TOO_LARGE: (
        "a tensor (upload or FORWARD output) is larger than the device's largest tensor "
        "(HELLO parameter max_tensor_bytes)"
    ),
    Status.TOO_MANY_TENSORS: (
        "the device holds as many tensors as it can describe (HELLO parameter max_tensors): "
        "reuse an id or RESET TENSORS"
    ),
    Status.TOO_MANY_LAYERS: (
        "DEFINE_MODEL: more layers than the chip's layer table (HELLO parameter max_layers)"
    ),
    Status.TOO_MANY_PENDING: (
        "more answers wait for the host's acknowledgement than the device queues (HELLO "
        "parameter max_pending); the request was not executed: read the answers, then retry"
    ),
    Status.INTERNAL: "a device fault; the device stays usable, the detail describes it",
}


class MessageError(ValueError):
    """A message could not be encoded or decoded.

    ``status`` is the code the device answers with when the bad bytes were a request
    (usually BAD_REQUEST or UNKNOWN_OPCODE); ``str(err)`` says what was wrong and what is
    accepted. This is the only exception ``decode_request``/``decode_response``/``encode_*``
    raise on bad input. When the 5-byte message header could be read, ``opcode`` and
    ``request_id`` hold it, so a device can still answer ERROR echoing the request id;
    otherwise they are None (the device answers with request id 0xFFFFFFFF).
    """

    def __init__(
        self,
        status: Status,
        detail: str,
        *,
        opcode: int | None = None,
        request_id: int | None = None,
    ) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status
        self.detail = detail
        self.opcode = opcode
        self.request_id = request_id
