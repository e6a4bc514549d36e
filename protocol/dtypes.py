"""Wire data types of tensors: one code per number format of the numerics contract, plus plain
integers for labels and indices, and the conversion between numpy code arrays and wire bytes.

A tensor travels as the *codes* of its format (docs/numerics.md, "code dtype"), never widened
to float32, so a DFXP8 tensor costs one byte per element. ``dfxp4`` is packed two codes per
byte (element ``2k`` in the low nibble of byte ``k``, element ``2k+1`` in the high nibble; an
odd count leaves the last high nibble zero). Everything else is the code array's little-endian
bytes in C order. Conversions use ``numpy.frombuffer`` / ``tobytes``: never element by element.

Per-tensor scale parameters (``frac_bits``, ``shared_exp``, the hfp8 exponent ``bias`` and
stage) travel next to the dtype in the tensor descriptor (see ``protocol.messages.Scale``).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numpy.typing import NDArray


class DType(IntEnum):
    """Wire code (u8) of a tensor's element type. Values are frozen: they are on the wire."""

    FP32 = 0x01
    FP16 = 0x02
    BF16 = 0x03
    TF32 = 0x04
    DLFLOAT16 = 0x05
    E4M3 = 0x06
    E5M2 = 0x07
    HFP8 = 0x08
    FP8_SEB = 0x09
    FLEX16 = 0x0A
    FGMP = 0x0B
    DFXP4 = 0x14
    DFXP5 = 0x15
    DFXP6 = 0x16
    DFXP7 = 0x17
    DFXP8 = 0x18
    DFXP9 = 0x19
    DFXP10 = 0x1A
    DFXP11 = 0x1B
    DFXP12 = 0x1C
    DFXP13 = 0x1D
    DFXP14 = 0x1E
    DFXP15 = 0x1F
    DFXP16 = 0x20
    INT8 = 0x30
    INT16 = 0x31
    INT32 = 0x32
    UINT8 = 0x33
    INT64 = 0x34

    @property
    def format_name(self) -> str:
        """The name used by the numerics contract and the host API ("fp8-seb", "dfxp8", ...)."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_name(cls, name: str) -> DType:
        """The dtype of a format name ("dfxp8", "fp8-seb", "int32", ...)."""
        key = name.strip().upper().replace("-", "_")
        try:
            return cls[key]
        except KeyError:
            accepted = ", ".join(d.format_name for d in cls)
            raise ValueError(f"unknown dtype name {name!r}; accepted: {accepted}") from None


#: numpy dtype of the codes of each wire dtype (docs/numerics.md, "code dtype"); little-endian.
CODE_DTYPE: dict[DType, np.dtype] = {
    DType.FP32: np.dtype("<u4"),
    DType.FP16: np.dtype("<u2"),
    DType.BF16: np.dtype("<u2"),
    DType.TF32: np.dtype("<u4"),
    DType.DLFLOAT16: np.dtype("<u2"),
    DType.E4M3: np.dtype("u1"),
    DType.E5M2: np.dtype("u1"),
    DType.HFP8: np.dtype("u1"),
    DType.FP8_SEB: np.dtype("u1"),
    DType.FLEX16: np.dtype("<i2"),
    DType.FGMP: np.dtype("<u4"),
    **{DType(0x10 + n): np.dtype("i1") if n <= 8 else np.dtype("<i2") for n in range(4, 17)},
    DType.INT8: np.dtype("i1"),
    DType.INT16: np.dtype("<i2"),
    DType.INT32: np.dtype("<i4"),
    DType.UINT8: np.dtype("u1"),
    DType.INT64: np.dtype("<i8"),
}

#: Wire dtypes that are plain integers (labels, indices, masks), not number formats.
PLAIN_INTEGERS: frozenset[DType] = frozenset(
    {DType.INT8, DType.INT16, DType.INT32, DType.UINT8, DType.INT64}
)

#: Wire dtypes that are number formats of the numerics contract (valid in a precision policy).
FORMATS: tuple[DType, ...] = tuple(d for d in DType if d not in PLAIN_INTEGERS)


def dfxp_bits(dtype: DType) -> int | None:
    """Word length N of a ``dfxpN`` dtype, None for every other dtype."""
    return int(dtype) - 0x10 if DType.DFXP4 <= dtype <= DType.DFXP16 else None


def element_bits(dtype: DType) -> int:
    """Bits one element occupies on the wire (4 for packed dfxp4, else the code width)."""
    return 4 if dtype == DType.DFXP4 else CODE_DTYPE[dtype].itemsize * 8


def wire_nbytes(dtype: DType, count: int) -> int:
    """Bytes on the wire of ``count`` elements of ``dtype``."""
    if count < 0:
        raise ValueError(f"element count must be >= 0, got {count}")
    return (count * element_bits(dtype) + 7) // 8


def shape_count(shape: tuple[int, ...] | list[int]) -> int:
    """Number of elements of a shape (1 for the empty shape of a scalar)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def to_wire(codes: NDArray[np.generic], dtype: DType) -> bytes:
    """Wire bytes of a code array (C order). The array's values must fit the dtype's codes.

    Raises ValueError when the array's numpy dtype cannot hold the wire codes losslessly, or
    when a dfxp4 code is outside [-8, 7].
    """
    dtype = DType(dtype)
    want = CODE_DTYPE[dtype]
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu" or not np.can_cast(arr.dtype, want, casting="same_kind"):
        raise ValueError(
            f"{dtype.format_name} tensors take integer codes of dtype {want.name}, got {arr.dtype}"
        )
    flat = np.ascontiguousarray(arr, dtype=want).reshape(-1)
    if dtype != DType.DFXP4:
        return flat.tobytes()
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError("dfxp4 codes must lie in [-8, 7]")
    nib = (flat.astype(np.uint8) & 0x0F).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def from_wire(
    data: bytes | bytearray | memoryview, dtype: DType, shape: tuple[int, ...] | list[int]
) -> NDArray[np.generic]:
    """Code array of ``shape`` from wire bytes (a view of ``data`` where no unpacking is needed).

    Raises ValueError when ``len(data)`` is not exactly the wire size of the shape, or when the
    padding nibble of an odd-length dfxp4 tensor is not zero.
    """
    dtype = DType(dtype)
    shape = tuple(int(d) for d in shape)
    count = shape_count(shape)
    need = wire_nbytes(dtype, count)
    if len(data) != need:
        raise ValueError(
            f"{dtype.format_name} tensor of shape {shape} takes {need} bytes, got {len(data)}"
        )
    if dtype != DType.DFXP4:
        return np.frombuffer(data, dtype=CODE_DTYPE[dtype], count=count).reshape(shape)
    packed = np.frombuffer(data, dtype=np.uint8)
    nib = np.empty(packed.size * 2, dtype=np.uint8)
    nib[0::2] = packed & 0x0F
    nib[1::2] = packed >> 4
    if count % 2 and nib[-1] != 0:
        raise ValueError("dfxp4 tensor with an odd element count must have a zero pad nibble")
    signed = nib[:count].astype(np.int8)
    signed[signed > 7] -= 16
    return signed.reshape(shape)
