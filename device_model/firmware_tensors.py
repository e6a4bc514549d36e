"""The firmware's tensor store: tensors the host streams in (BEGIN/DATA/END) and tensors the
device creates (FORWARD outputs, GET_WEIGHTS snapshots), read back with TENSOR_READ.

Every tensor is held as its wire bytes plus its descriptor (id, dtype, scale, shape, nbytes,
crc32). A host transfer keeps the count of bytes received so far, so an interrupted upload
resumes from the offset the device reports; only completed (CRC-checked) tensors can be used by
other requests. Every method validates everything before it changes anything and raises
``FirmwareError`` with the specific status; the store is never left half-updated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device_model import numerics
from protocol.dtypes import (
    CODE_DTYPE,
    FORMATS,
    PLAIN_INTEGERS,
    DType,
    from_wire,
    shape_count,
    wire_nbytes,
)
from protocol.framing import crc32
from protocol.messages import DEVICE_TENSOR_ID_BASE, HfpStage, zero_scale
from protocol.status import Status

#: DType by wire code (a dict lookup instead of an enum call; stored descriptors are valid).
_DTYPES: dict[int, DType] = {int(d): d for d in DType}


class FirmwareError(ValueError):
    """A request the firmware refuses: ``status`` goes on the wire with ``detail``."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status
        self.detail = detail


@dataclass
class StoredTensor:
    """One tensor: its descriptor (TensorDesc dict), its wire bytes and how many arrived."""

    desc: dict[str, Any]
    #: The wire bytes: a bytearray while a transfer fills it, immutable bytes (or a read-only
    #: view of the request that carried them) when the tensor arrived whole (TRAIN_STEP_INLINE)
    #: or was made by the device.
    buf: bytearray | bytes | memoryview
    received: int = 0
    complete: bool = False
    #: True for tensors the device created (outputs, weight snapshots).
    device_made: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> DType:
        return _DTYPES[self.desc["dtype"]]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.desc["shape"])


def same_desc(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two descriptors name the same tensor contents (resume condition)."""
    keys = ("id", "dtype", "shape", "nbytes", "crc32")
    return all(a[k] == b[k] for k in keys) and dict(a["scale"]) == dict(b["scale"])


def _scale_params(dtype: DType, scale: dict[str, Any]) -> dict[str, Any]:
    """numerics.decode parameters of a wire descriptor's Scale for ``dtype``."""
    name = dtype.format_name
    if name.startswith("dfxp"):
        return {"frac_bits": int(scale["frac_bits"])}
    if name in ("fp8-seb", "flex16"):
        return {"shared_exp": int(scale["shared_exp"])}
    if name == "hfp8":
        stage = "backward" if scale["stage"] == HfpStage.BACKWARD else "forward"
        return {"stage": stage, "bias": int(scale["exp_bias"])}
    return {}


class TensorStore:
    """Tensors by id, with the byte total the device-memory check counts."""

    def __init__(self) -> None:
        self._tensors: dict[int, StoredTensor] = {}

    # ------------------------------------------------------------------ queries

    def __contains__(self, tensor_id: int) -> bool:
        return tensor_id in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def held_bytes(self, *, exclude: int | None = None) -> int:
        """Bytes held by every tensor except device weight snapshots (those mirror engine
        memory, which the engine already counts) and except ``exclude``."""
        return sum(
            len(t.buf)
            for i, t in self._tensors.items()
            if i != exclude and not t.meta.get("mirror")
        )

    def counted_bytes(self, tensor_id: int) -> int:
        """Bytes of tensor ``tensor_id`` that ``held_bytes`` counts (0 if there is none)."""
        t = self._tensors.get(tensor_id)
        return 0 if t is None or t.meta.get("mirror") else len(t.buf)

    def get(self, tensor_id: int, what: str = "tensor") -> StoredTensor:
        """A completed tensor, else UNKNOWN_TENSOR / TRANSFER_INCOMPLETE."""
        t = self._tensors.get(tensor_id)
        if t is None:
            raise FirmwareError(
                Status.UNKNOWN_TENSOR,
                f"{what} id {tensor_id} names no tensor on the device; upload it with "
                "TENSOR_BEGIN/DATA/END first",
            )
        if not t.complete:
            raise FirmwareError(
                Status.TRANSFER_INCOMPLETE,
                f"{what} id {tensor_id} is incomplete: {t.received} of {len(t.buf)} bytes "
                f"arrived; continue at offset {t.received} and send TENSOR_END",
            )
        return t

    def values(self, tensor_id: int, what: str = "tensor") -> NDArray[np.float32]:
        """float32 values of a completed number-format tensor (plain integers are cast)."""
        t = self.get(tensor_id, what)
        if t.desc["dtype"] == DType.FP32:  # a completed tensor has its shape's wire size
            return np.frombuffer(t.buf, "<f4").reshape(t.desc["shape"]).copy()
        codes = from_wire(t.buf, t.dtype, t.shape)  # a view: every decode below copies
        if t.dtype in PLAIN_INTEGERS:
            return np.asarray(codes, dtype=np.float32)
        if t.dtype.format_name not in numerics.FORMATS:
            raise FirmwareError(
                Status.UNSUPPORTED_FORMAT,
                f"{what} id {tensor_id} has dtype {t.dtype.format_name}, which the datapath "
                f"cannot decode; accepted: {', '.join(numerics.FORMATS)}",
            )
        params = _scale_params(t.dtype, t.desc["scale"])
        return numerics.decode(codes, t.dtype.format_name, **params)

    def integers(self, tensor_id: int, what: str = "tensor") -> NDArray[np.int64]:
        """int64 values of a completed plain-integer tensor (labels, masks)."""
        t = self.get(tensor_id, what)
        if t.dtype not in PLAIN_INTEGERS:
            accepted = ", ".join(d.format_name for d in sorted(PLAIN_INTEGERS))
            raise FirmwareError(
                Status.UNSUPPORTED_FORMAT,
                f"{what} id {tensor_id} has dtype {t.dtype.format_name}; accepted: {accepted}",
            )
        # a completed tensor has its shape's wire size; plain integers need no unpacking
        codes = np.frombuffer(t.buf, CODE_DTYPE[t.dtype]).reshape(t.desc["shape"])
        return codes.astype(np.int64)

    # ------------------------------------------------------------------ host transfers

    def check_begin(
        self, desc: dict[str, Any], dtypes: frozenset[DType], *, resume: bool = True
    ) -> StoredTensor | None:
        """Validate a TENSOR_BEGIN descriptor; return the tensor it resumes, if any (never with
        ``resume=False``: a tensor that arrives whole resumes nothing)."""
        tid = int(desc["id"])
        if tid >= DEVICE_TENSOR_ID_BASE:
            raise FirmwareError(
                Status.LIMIT,
                f"tensor id {tid:#x} is in the device range; host tensors take ids below "
                f"{DEVICE_TENSOR_ID_BASE:#x}",
            )
        dtype = _DTYPES.get(desc["dtype"]) or DType(desc["dtype"])  # the enum call raises
        if dtype not in dtypes:
            accepted = ", ".join(d.format_name for d in sorted(dtypes))
            raise FirmwareError(
                Status.UNSUPPORTED_FORMAT,
                f"dtype {dtype.format_name} is not implemented; accepted: {accepted}",
            )
        shape = [int(d) for d in desc["shape"]]
        need = wire_nbytes(dtype, shape_count(shape))
        if int(desc["nbytes"]) != need:
            raise FirmwareError(
                Status.BAD_SHAPE,
                f"nbytes {desc['nbytes']} does not match {dtype.format_name} x shape "
                f"{tuple(shape)}, which takes {need} bytes",
            )
        if not resume:
            return None
        old = self._tensors.get(tid)
        if old is not None and not old.device_made and same_desc(old.desc, desc):
            return old
        return None

    def begin(self, desc: dict[str, Any]) -> StoredTensor:
        """Allocate a fresh transfer (the caller validated it and checked memory)."""
        t = StoredTensor(desc=dict(desc), buf=bytearray(int(desc["nbytes"])))
        self._tensors[int(desc["id"])] = t
        return t

    def data(self, tensor_id: int, offset: int, data: bytes) -> int:
        """Store a TENSOR_DATA chunk; return the receiver's offset after it."""
        t = self._tensors.get(tensor_id)
        if t is None or t.device_made:
            raise FirmwareError(
                Status.UNKNOWN_TENSOR,
                f"tensor id {tensor_id} was not begun; send TENSOR_BEGIN first",
            )
        if offset != t.received:
            raise FirmwareError(
                Status.TRANSFER_INCOMPLETE,
                f"data for tensor {tensor_id} at offset {offset}, but the device holds "
                f"{t.received} bytes: send from offset {t.received}",
            )
        end = offset + len(data)
        if end > len(t.buf):
            raise FirmwareError(
                Status.LIMIT,
                f"chunk [{offset}, {end}) runs past the tensor's {len(t.buf)} bytes",
            )
        if not isinstance(t.buf, bytearray):
            t.buf = bytearray(t.buf)
        t.buf[offset:end] = data
        t.received = end
        return end

    def end(self, tensor_id: int) -> StoredTensor:
        """Complete a transfer after checking its length and CRC-32 (a CRC mismatch or a bad
        dfxp4 pad discards the tensor)."""
        t = self._tensors.get(tensor_id)
        if t is None or t.device_made:
            raise FirmwareError(
                Status.UNKNOWN_TENSOR,
                f"tensor id {tensor_id} was not begun; send TENSOR_BEGIN first",
            )
        if t.received < len(t.buf):
            raise FirmwareError(
                Status.TRANSFER_INCOMPLETE,
                f"tensor {tensor_id}: {t.received} of {len(t.buf)} bytes arrived; continue "
                f"at offset {t.received}",
            )
        crc = crc32(t.buf)
        if crc != t.desc["crc32"]:
            del self._tensors[tensor_id]
            raise FirmwareError(
                Status.CHECKSUM_MISMATCH,
                f"tensor {tensor_id}: CRC-32 of the received bytes is {crc:#010x}, BEGIN "
                f"announced {t.desc['crc32']:#010x}; the tensor was discarded, upload it again",
            )
        try:
            from_wire(t.buf, t.dtype, t.shape)
        except ValueError as e:
            del self._tensors[tensor_id]
            raise FirmwareError(
                Status.BAD_REQUEST, f"tensor {tensor_id}: {e}; the tensor was discarded"
            ) from None
        t.complete = True
        return t

    def put_host(self, desc: dict[str, Any], data: bytes | memoryview) -> StoredTensor:
        """Store a host tensor that arrived whole (TRAIN_STEP_INLINE) as a completed transfer of
        ``desc`` (validated by ``check_begin`` and the memory checks first): the length, the
        CRC-32 and the wire form are checked as TENSOR_DATA and TENSOR_END would check them,
        and nothing is stored if one fails. The bytes are kept as they are, not copied (a
        read-only view, e.g. of the request message, is kept as the view)."""
        tid = int(desc["id"])
        if len(data) != int(desc["nbytes"]):
            raise FirmwareError(
                Status.BAD_REQUEST,
                f"tensor {tid}: {len(data)} data bytes, but its descriptor says nbytes "
                f"{desc['nbytes']}",
            )
        crc = crc32(data)
        if crc != desc["crc32"]:
            raise FirmwareError(
                Status.CHECKSUM_MISMATCH,
                f"tensor {tid}: CRC-32 of the data is {crc:#010x}, the descriptor says "
                f"{desc['crc32']:#010x}; nothing was stored, send it again",
            )
        if desc["dtype"] == DType.DFXP4:  # the length was checked above; dfxp4 has its pad
            try:
                from_wire(data, DType.DFXP4, desc["shape"])
            except ValueError as e:
                raise FirmwareError(Status.BAD_REQUEST, f"tensor {tid}: {e}") from None
        keep = data if type(data) is memoryview and data.readonly else bytes(data)
        t = StoredTensor(desc=dict(desc), buf=keep, received=len(keep), complete=True)
        self._tensors[tid] = t
        return t

    # ------------------------------------------------------------------ device tensors

    def put(
        self,
        tensor_id: int,
        values: NDArray[np.generic],
        *,
        device_made: bool,
        mirror: bool = False,
    ) -> StoredTensor:
        """Store a float32 array as a completed fp32 tensor (outputs, weight snapshots)."""
        arr = np.ascontiguousarray(values, dtype="<f4")
        data = arr.tobytes()
        desc = {
            "id": tensor_id,
            "dtype": DType.FP32,
            "scale": zero_scale(),
            "shape": list(arr.shape),
            "nbytes": len(data),
            "crc32": crc32(data),
        }
        t = StoredTensor(
            desc=desc,
            buf=data,
            received=len(data),
            complete=True,
            device_made=device_made,
            meta={"mirror": mirror},
        )
        self._tensors[tensor_id] = t
        return t

    def read(
        self, tensor_id: int, offset: int, length: int, limit: int
    ) -> tuple[StoredTensor, bytes]:
        """Bytes [offset, offset + min(length, limit)) of a completed tensor (empty past the
        end)."""
        t = self.get(tensor_id)
        n = max(0, min(length, limit, len(t.buf) - offset))
        return t, bytes(t.buf[offset : offset + n])

    # ------------------------------------------------------------------ clearing

    def clear(self, *, host: bool = True, device: bool = True) -> None:
        """Drop host tensors (ids below the device range) and/or device-made tensors."""
        self._tensors = {
            i: t
            for i, t in self._tensors.items()
            if not ((host and i < DEVICE_TENSOR_ID_BASE) or (device and i >= DEVICE_TENSOR_ID_BASE))
        }

    def drop_mirrors(self) -> None:
        """Forget weight snapshots (the model they mirror is gone or changed)."""
        self._tensors = {i: t for i, t in self._tensors.items() if not t.meta.get("mirror")}


#: Wire dtypes the device stores: every DType (formats are decoded by the datapath).
STORABLE: frozenset[DType] = frozenset(DType)
#: Number formats valid in a precision policy.
POLICY_FORMATS: frozenset[DType] = frozenset(
    d for d in FORMATS if d.format_name in numerics.FORMATS
)
