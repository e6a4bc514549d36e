"""The frame layer: COBS byte stuffing, the 12-byte link header and CRC-32.

Wire format of one frame (all integers little-endian)::

    0x00 | COBS( header(12) | payload(length) | crc32(4) ) | 0x00

* ``header`` is ``HEADER`` (version u8, flags u8, type u8, channel u8, seq u16, ack u16,
  length u16, credits u16); ``length`` is the payload length in bytes.
* ``crc32`` is CRC-32/IEEE (``zlib.crc32``: reflected polynomial 0xEDB88320, init and final xor
  0xFFFFFFFF) over header and payload, stored little-endian. A receiver checks it before it
  parses anything.
* Authenticated frames (FLAG_AUTH, after an AUTH proved the key; see protocol.link) carry a
  trailer between payload and CRC: ``counter`` u64 (per direction, strictly increasing, a
  retransmission gets a new one) and ``tag``, the first 8 bytes of HMAC-SHA256(sender's link
  key, header | counter | payload). ``length`` still counts the payload only::

    0x00 | COBS( header(12) | payload(length) | counter(8) | tag(8) | crc32(4) ) | 0x00

* Session binding: the frames of an established link session (DATA, ACK, NAK) are checked
  with a CRC over ``SESSION_PREFIX`` (sender's epoch u32, receiver's epoch u32, never sent)
  followed by header and payload, i.e. the CRC-32 continued from ``session_crc(sender epoch,
  receiver epoch)``. Link setup frames (SYNC, CONFIG, RESET) use the plain CRC. A frame of an
  earlier session (another epoch at either end) therefore fails the check in a new one like a
  corrupted frame, so an end may start a new session at once after a reset without waiting
  for the old session's frames to leave the line.
* COBS removes every 0x00 from the frame so 0x00 only ever delimits frames. A block is a code
  byte ``c`` (1..255) followed by ``c - 1`` data bytes; a code below 0xFF means "a zero follows"
  unless the block is the last one. Overhead: one byte per 254 bytes, plus one (under 0.5% at
  4 KiB for any data).
* Every frame is written with a 0x00 on both sides. An empty frame (two delimiters in a row) is
  idle fill and is ignored, so the leading delimiter costs one byte and buys this: garbage that
  hits the line between two frames is cut off by the next frame's own leading delimiter and
  costs no frame at all; garbage inside a frame costs exactly that frame.

``FrameDecoder`` is the streaming receiver: feed it chunks of any size, it returns decoded
``Frame`` objects and ``FramingError`` instances (one per bad frame) in arrival order. Its
buffer is bounded by the largest encoded frame for the negotiated maximum payload: a run of
bytes without a delimiter longer than that is reported once as ``FrameTooLong`` and dropped up
to the next 0x00.

Every error this module raises or returns is a ``FramingError`` subclass (which is a
``ValueError``); nothing else escapes on any input.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import zlib
from enum import IntEnum, IntFlag
from typing import NamedTuple

from construct import Int8ul, Int16ul, Struct

# ----------------------------------------------------------------------------- constants

#: Link header version this module writes and accepts (the ``version`` byte).
LINK_VERSION = 1
#: Bytes of the link header.
HEADER_SIZE = 12
#: Bytes of the CRC-32 trailer.
CRC_SIZE = 4
#: Bytes of the authentication trailer of a FLAG_AUTH frame: counter u64 and a truncated tag.
FRAME_AUTH_SIZE = 16
#: Bytes of the truncated HMAC-SHA256 tag in that trailer.
FRAME_TAG_SIZE = 8
#: The frame delimiter.
DELIMITER = b"\x00"
#: Smallest and largest payload a link may negotiate, and the default.
MIN_PAYLOAD = 256
MAX_PAYLOAD = 61440
DEFAULT_PAYLOAD = 4096

#: The link header as a struct format (little-endian, no padding): version, flags, type,
#: channel, seq, ack, length, credits.
HEADER = struct.Struct("<BBBBHHHH")
#: The same layout as a construct Struct, for documentation and generated headers.
HEADER_STRUCT = Struct(
    "version" / Int8ul,
    "flags" / Int8ul,
    "type" / Int8ul,
    "channel" / Int8ul,
    "seq" / Int16ul,
    "ack" / Int16ul,
    "length" / Int16ul,
    "credits" / Int16ul,
)
assert HEADER.size == HEADER_SIZE == HEADER_STRUCT.sizeof()

_CRC = struct.Struct("<I")
#: The bytes a session frame's CRC covers before its header (not sent): sender's epoch,
#: receiver's epoch, both u32 little-endian.
SESSION_PREFIX = struct.Struct("<II")


class FrameType(IntEnum):
    """The ``type`` byte: what a frame carries (see protocol.link for the payloads)."""

    #: A fragment of a message; ``seq`` numbers it, FLAG_LAST marks a message's last fragment.
    DATA = 1
    #: Acknowledgement: ``ack`` is the next expected seq (all before it received); the payload
    #: is the selective-ack bitmap (protocol.link.SACK).
    ACK = 2
    #: Negative ack: like ACK, and asks for an immediate retransmit of seq ``ack``.
    NAK = 3
    #: Link setup: "this is my session epoch and my limits" (protocol.link.SYNC_PAYLOAD).
    SYNC = 4
    #: Answer to SYNC: the agreed configuration and both epochs (protocol.link.CONFIG_PAYLOAD).
    CONFIG = 5
    #: "I have no session with you": asks the peer to send SYNC (protocol.link).
    RESET = 6


#: Frame types that carry the plain CRC (link setup, valid outside any session).
SETUP_TYPES = frozenset({FrameType.SYNC, FrameType.CONFIG, FrameType.RESET})


def session_crc(sender_epoch: int, receiver_epoch: int) -> int:
    """The CRC-32 value a session's frames from ``sender_epoch`` to ``receiver_epoch`` start
    from: ``crc32(SESSION_PREFIX.pack(sender_epoch, receiver_epoch))``."""
    return zlib.crc32(SESSION_PREFIX.pack(sender_epoch, receiver_epoch))


class FrameFlag(IntFlag):
    """Bits of the ``flags`` byte."""

    #: DATA: this fragment ends a message.
    LAST = 0x01
    #: ACK/NAK: the sender wants an ACK back now (window probe, keepalive).
    POLL = 0x02
    #: The frame carries the authentication trailer (counter, tag) after its payload.
    AUTH = 0x04


#: FrameFlag.AUTH as a plain int: ``int & IntFlag`` builds an IntFlag (about 1 us a frame).
_FLAG_AUTH = int(FrameFlag.AUTH)


# ----------------------------------------------------------------------------- errors


class FramingError(ValueError):
    """Base of every error of the frame layer: the frame is dropped, the stream goes on."""


class CobsError(FramingError):
    """The bytes between two delimiters are not valid COBS."""


class CrcError(FramingError):
    """The CRC-32 trailer does not match header and payload."""


class FrameTooLong(FramingError):
    """More bytes without a delimiter than the largest frame allowed, or a payload too long."""


class ShortFrame(FramingError):
    """Fewer bytes than a header and a CRC."""


class BadVersion(FramingError):
    """The header's version byte is not LINK_VERSION."""


class LengthMismatch(FramingError):
    """The header's length field disagrees with the payload actually received."""


# ----------------------------------------------------------------------------- COBS

_CODE = [bytes([i]) for i in range(256)]
_ZERO = b"\x00"
_ONE = b"\x01"
_ZERO_RUNS = re.compile(b"(\x00\x00+)")
_ONES = re.compile(b"\x01+")


def _cobs_segments(data: bytes, out: list[bytes]) -> None:
    """Append the COBS blocks of ``data`` to ``out`` as alternating code bytes and runs."""
    _cobs_split(data.split(b"\x00"), out)


def _cobs_split(segs: list[bytes], out: list[bytes]) -> None:
    """Append the COBS blocks of data split on its zeros (``segs``) to ``out``."""
    append = out.append
    code = _CODE
    for seg in segs:
        n = len(seg)
        if n < 254:
            append(code[n + 1])
            append(seg)
        else:
            i = 0
            while n - i >= 254:
                append(b"\xff")
                append(seg[i : i + 254])
                i += 254
            append(code[n - i + 1])
            append(seg[i:])


def _cobs_blocks(data: bytes, out: list[bytes]) -> None:
    """Append the COBS encoding of ``data`` to ``out``. A run of k > 1 zeros is k - 1 empty
    blocks (0x01 each) after the block its first zero ends. Data with few zeros (tensor bytes,
    headers) is split on its zeros once, the split bounded so that it stops early on data rich
    in zeros; that data goes by runs instead (a regex split on runs of two or more zeros, each
    run emitted as one string), so zero-filled tensors cost one step per run, not one per byte.
    Both ways give the same bytes."""
    most = 16 + (len(data) >> 6)
    segs = data.split(b"\x00", most)
    if len(segs) <= most:
        _cobs_split(segs, out)
        return
    parts = _ZERO_RUNS.split(data)
    for k in range(0, len(parts) - 1, 2):
        _cobs_segments(parts[k], out)
        out.append(_ONE * (len(parts[k + 1]) - 1))
    _cobs_segments(parts[-1], out)


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data``: the result holds no 0x00 and is ``len + len // 254 + 1`` bytes at
    most. The work is done by bytes.split, slicing and join (C loops inside CPython)."""
    out: list[bytes] = []
    _cobs_blocks(bytes(data), out)
    return b"".join(out)


def _cobs_decode(enc: bytes | memoryview) -> bytes:
    """cobs_decode for a non-empty ``enc`` known to hold no 0x00 (a piece of a split on the
    delimiter). Works in place on a copy: every code byte after the first stands for the zero
    that ended the block before it, so it becomes 0x00, or is cut out where that block was a
    full 0xFF block (which ends without a zero). One Python step per block, one per run of
    empty blocks; the bytes themselves are moved by C (bytearray, memoryview, join)."""
    n = len(enc)
    buf = bytearray(enc)
    mv = memoryview(buf)
    parts: list[memoryview] = []
    prev = 1  # start of the output bytes not yet in parts
    code = buf[0]
    i = code
    while i < n:
        nxt = buf[i]
        if code == 0xFF:
            parts.append(mv[prev:i])
            prev = i + 1
        elif nxt == 1:  # a run of empty blocks: all their code bytes become zeros
            e = _ONES.match(buf, i).end()  # type: ignore[union-attr]
            buf[i:e] = bytes(e - i)
            i = e
            code = 1
            continue
        else:
            buf[i] = 0
        code = nxt
        i += code
    if i > n:
        start = i - code
        raise CobsError(
            f"COBS block at offset {start} claims {code - 1} data bytes but only "
            f"{n - start - 1} remain"
        )
    if not parts:
        return bytes(mv[1:])
    parts.append(mv[prev:])
    return b"".join(parts)


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Invert ``cobs_encode``. Raises CobsError if ``data`` is empty, holds a 0x00 or a block
    runs past the end."""
    enc = bytes(data)
    if not enc:
        raise CobsError("empty COBS block: at least one code byte is required")
    if 0 in enc:
        raise CobsError(f"0x00 at offset {enc.index(0)} inside a COBS frame (0x00 only delimits)")
    return bytes(_cobs_decode(enc))  # (the C decoder gives a view)


def _frame_wire(a: bytes, b: bytes | bytearray | memoryview, session: int) -> bytes:
    """``0x00 | COBS(a | b | crc) | 0x00``: the wire bytes of a frame whose header and payload
    (and trailer) are ``a`` and ``b``, with their CRC-32 continued from ``session``."""
    crc = zlib.crc32(b, zlib.crc32(a, session))
    out: list[bytes] = [b"\x00"]
    _cobs_blocks(b"".join((a, b, _CRC.pack(crc))), out)
    out.append(b"\x00")
    return b"".join(out)


def _split_py(data: bytes) -> list[bytes]:
    """``data.split(b"\\x00")``: the pieces between delimiters."""
    return data.split(b"\x00")


# ----------------------------------------------------------------------------- C accelerator
# protocol._framing_c (cext/framing.c, built with the package when a C compiler is there) does
# the COBS loops, the CRC-32 and the search for delimiters in C: same bytes, same errors. The
# Python functions above are the reference; use_accelerator(False) or MICROTRAIN_FRAMING=python
# in the environment selects them.
#: The cext/framing_api.h version this module is written for (another build is not used).
C_API_VERSION = 3
try:
    from protocol._framing_c import ffi as _ffi
    from protocol._framing_c import lib as _lib

    if _lib.mt_codec_version() != C_API_VERSION:  # a stale build: rebuild to use it
        _lib = None
except ImportError:  # not built: the pure-Python codec does the work
    _lib = None

#: The pure-Python codec functions (the reference the accelerator is tested against).
PY_CODEC = {
    "_cobs_decode": _cobs_decode,
    "_frame_wire": _frame_wire,
    "cobs_encode": cobs_encode,
    "_crc32": zlib.crc32,
    "_split": _split_py,
}


def _cobs_decode_c(enc: bytes | memoryview) -> memoryview:
    """_cobs_decode in C, into memory that is not cleared first, seen through a memoryview
    (``_decode_body`` hands out a slice of it as the payload: never copied again)."""
    n = len(enc)
    out = _alloc("uint8_t[]", n)
    k = _lib.mt_codec_cobs_decode(enc if type(enc) is bytes else _ffi.from_buffer(enc), n, out)
    if k < 0:
        start = -k - 1
        code = enc[start]
        raise CobsError(
            f"COBS block at offset {start} claims {code - 1} data bytes but only "
            f"{n - start - 1} remain"
        )
    return memoryview(_ffi.buffer(out, k))


def _frame_wire_c(a: bytes, b: bytes | bytearray | memoryview, session: int) -> bytes:
    """_frame_wire in C (CRC and COBS in one call)."""
    n = len(a) + len(b) + CRC_SIZE
    out = _alloc("uint8_t[]", n + n // 254 + 3)
    pb = b if type(b) is bytes else _ffi.from_buffer(b)
    k = _lib.mt_codec_frame_encode(a, len(a), pb, len(b), session, out)
    return _ffi.buffer(out, k)[:]


def _frame_wire_cz(a: bytes, b: bytes | bytearray | memoryview, session: int) -> bytes:
    """_frame_wire with zlib's CRC and COBS in C (for CPUs without carry-less multiply)."""
    crc = _CRC.pack(zlib.crc32(b, zlib.crc32(a, session)))
    n = len(a) + len(b) + CRC_SIZE
    out = _alloc("uint8_t[]", n + n // 254 + 3)
    pb = b if type(b) is bytes else _ffi.from_buffer(b)
    k = _lib.mt_codec_cobs_encode(a, len(a), pb, len(b), crc, CRC_SIZE, 1, out)
    return _ffi.buffer(out, k)[:]


def _split_c(data: bytes | bytearray) -> list[bytes] | list[memoryview]:
    """_split_py with the delimiters found by memchr in C (bytes.split scans byte by byte), as
    memoryview slices of ``data`` (no copy; the C decoder reads them in place), 256
    delimiters per C call; data whose pieces average under 16 bytes (idle fill, garbage) goes
    to bytes.split."""
    n = len(data)
    if n <= _SPLIT_SMALL and type(data) is bytes:  # a frame or two: slices are cheap copies
        pos = _alloc("size_t[]", 64)
        k = _lib.mt_codec_zeros(data, n, pos, 64)
        if k < 64:
            pieces = []
            i = 0
            for j in _ffi.unpack(pos, k):
                pieces.append(data[i:j])
                i = j + 1
            pieces.append(data[i:])
            return pieces
    pos = _alloc("size_t[]", _SPLIT_CAP)
    base = _ffi.from_buffer(data)
    mv = memoryview(data)
    out: list[memoryview] = []
    i = 0
    at = 0
    while True:
        k = _lib.mt_codec_zeros(base + at, n - at, pos, _SPLIT_CAP)
        found = _ffi.unpack(pos, k)
        if k == _SPLIT_CAP and found[-1] < 16 * _SPLIT_CAP and not out:
            return data.split(b"\x00")  # type: ignore[return-value]
        for j in found:
            j += at
            out.append(mv[i:j])
            i = j + 1
        if k < _SPLIT_CAP:
            break
        at = i
    out.append(mv[i:])
    return out


#: Delimiters one mt_codec_zeros call finds at most.
_SPLIT_CAP = 256
#: Bytes up to which _split_c cuts bytes slices (copies) rather than views.
_SPLIT_SMALL = 16384


def _crc32_c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """zlib.crc32 in C (carry-less multiplication, faster than zlib's tables)."""
    return _lib.mt_codec_crc32(
        value, data if type(data) is bytes else _ffi.from_buffer(data), len(data)
    )


def _cobs_encode_c(data: bytes | bytearray | memoryview) -> bytes:
    """cobs_encode in C."""
    n = len(data)
    out = _alloc("uint8_t[]", n + n // 254 + 1)
    k = _lib.mt_codec_cobs_encode(_ffi.from_buffer(data), n, _ffi.NULL, 0, _ffi.NULL, 0, 0, out)
    return _ffi.buffer(out, k)[:]


_C_CODEC = {
    "_cobs_decode": _cobs_decode_c,
    "_frame_wire": _frame_wire_c,
    "_crc32": _crc32_c,
    "_split": _split_c,
    "cobs_encode": _cobs_encode_c,
}


def use_accelerator(on: bool = True) -> bool:
    """Do the codec work of this module in C (``on``, when protocol._framing_c is built) or in
    the pure-Python reference; returns whether C is now in use. Wire bytes, frames and errors
    are the same either way."""
    use = bool(on) and _lib is not None
    globals().update(_C_CODEC if use else PY_CODEC)
    return use


def accelerated() -> bool:
    """Whether the C codec is in use."""
    return _cobs_decode is _cobs_decode_c


_crc32 = zlib.crc32
_split = _split_py
_choice = os.environ.get("MICROTRAIN_FRAMING", "c")
if _choice not in ("c", "python"):
    raise ValueError(
        f"MICROTRAIN_FRAMING={_choice!r}: set it to 'c' (the C codec, the default) or "
        "'python' (the pure-Python reference), or unset it"
    )
if _lib is not None:
    _alloc = _ffi.new_allocator(should_clear_after_alloc=False)
    if not _lib.mt_codec_crc32_simd():  # zlib's CRC is faster than a byte table
        _C_CODEC.update(_crc32=zlib.crc32, _frame_wire=_frame_wire_cz)
    use_accelerator(_choice == "c")


def max_encoded_size(payload_len: int) -> int:
    """Largest COBS body (without delimiters) of a frame with ``payload_len`` payload bytes."""
    raw = HEADER_SIZE + payload_len + CRC_SIZE
    return raw + raw // 254 + 1


def wire_size(payload_len: int) -> int:
    """Largest number of wire bytes one frame with ``payload_len`` payload bytes costs."""
    return max_encoded_size(payload_len) + 2


# ----------------------------------------------------------------------------- frames


class Frame(NamedTuple):
    """One decoded frame: the header fields and the payload (``length`` is implied);
    ``auth``: the authentication trailer (counter and tag) of a FLAG_AUTH frame, else empty."""

    type: int
    seq: int = 0
    ack: int = 0
    credits: int = 0
    flags: int = 0
    channel: int = 0
    payload: bytes = b""
    auth: bytes = b""


_COUNTER = struct.Struct("<Q")


def frame_tag(key: bytes, head: bytes, counter: int, payload: bytes) -> bytes:
    """The tag of an authenticated frame: HMAC-SHA256(key, header | counter u64le | payload),
    truncated to FRAME_TAG_SIZE bytes."""
    mac = hmac.new(key, head, hashlib.sha256)
    mac.update(_COUNTER.pack(counter))
    mac.update(payload)
    return mac.digest()[:FRAME_TAG_SIZE]


def verify_frame(key: bytes, f: Frame) -> int | None:
    """The counter of authenticated frame ``f`` if its tag is right under ``key``, else None."""
    if len(f.auth) != FRAME_AUTH_SIZE:
        return None
    counter = _COUNTER.unpack_from(f.auth)[0]
    head = HEADER.pack(
        LINK_VERSION, f.flags, f.type, f.channel, f.seq, f.ack, len(f.payload), f.credits
    )
    want = frame_tag(key, head, counter, f.payload)
    return counter if hmac.compare_digest(want, f.auth[8:]) else None


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32/IEEE of ``data`` (continuing from ``value``), as the frame trailer holds it: the
    C codec's carry-less-multiply CRC when it is in use (4x zlib's on 2.4 MB), else zlib's."""
    return _crc32(data, value)


#: A frame whose wire bytes ``encode_frames`` makes: (header | payload, its CRC's start value),
#: or wire bytes already made.
FrameParts = tuple[bytes, bytes | bytearray | memoryview, int]
#: Encoded bytes above which ``encode_frames`` writes every frame into one bytearray (each
#: frame's own bytes and the join of them are two copies of every payload byte).
_BATCH_MIN = 65536


def data_header(
    payload_len: int,
    *,
    seq: int = 0,
    ack: int = 0,
    credits: int = 0,
    flags: int = 0,
    channel: int = 0,
) -> bytes:
    """The link header of an unauthenticated DATA frame (the checks of ``encode_frame``)."""
    if payload_len > MAX_PAYLOAD:
        raise FrameTooLong(f"payload of {payload_len} bytes; at most {MAX_PAYLOAD} fit a frame")
    try:
        return HEADER.pack(
            LINK_VERSION, flags, FrameType.DATA, channel, seq, ack, payload_len, credits
        )
    except struct.error as e:
        raise FramingError(
            f"header field out of range ({e}): flags/type/channel are u8, seq/ack/credits are u16"
        ) from None


def _wire_of(f: bytes | FrameParts) -> bytes:
    return f if isinstance(f, bytes) else _frame_wire(*f)


def encode_frames(frames: list[bytes | FrameParts]) -> bytes | bytearray:
    """The wire bytes of several frames in order: each item is wire bytes already made or
    (header, payload, session) to encode as ``encode_frame`` does. With the C codec and more
    than _BATCH_MIN bytes the frames are encoded straight into one bytearray (no copy per
    frame), else each is made and the whole joined into bytes."""
    if len(frames) == 1:
        return _wire_of(frames[0])
    if not accelerated():
        return b"".join(map(_wire_of, frames))
    bound = 0
    for f in frames:
        if type(f) is tuple:
            n = len(f[0]) + len(f[1]) + CRC_SIZE
            bound += n + n // 254 + 3
        else:
            bound += len(f)
    if bound <= _BATCH_MIN:
        return b"".join(map(_wire_of, frames))
    out = bytearray(bound)
    base = _ffi.from_buffer(out)
    at = 0
    for f in frames:
        if isinstance(f, bytes):
            k = len(f)
            out[at : at + k] = f
            at += k
        else:
            head, payload, session = f
            pb = payload if type(payload) is bytes else _ffi.from_buffer(payload)
            at += _lib.mt_codec_frame_encode(head, len(head), pb, len(payload), session, base + at)
    _ffi.release(base)
    del out[at:]
    return out


def encode_frame(
    type: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    credits: int = 0,
    flags: int = 0,
    channel: int = 0,
    session: int = 0,
    auth_key: bytes | None = None,
    counter: int = 0,
) -> bytes:
    """The wire bytes of one frame, both delimiters included; ``session``: the value the CRC
    starts from (``session_crc`` for a session's frames, 0 for the plain CRC). Raises
    FrameTooLong if the payload exceeds MAX_PAYLOAD and FramingError if a header field is out
    of its range. With ``auth_key`` the frame is authenticated: FLAG_AUTH is set and the
    trailer holds ``counter`` and the tag (frame_tag)."""
    n = len(payload)
    if auth_key is not None:
        flags |= FrameFlag.AUTH
    if n > MAX_PAYLOAD:
        raise FrameTooLong(f"payload of {n} bytes; at most {MAX_PAYLOAD} fit a frame")
    try:
        head = HEADER.pack(LINK_VERSION, flags, type, channel, seq, ack, n, credits)
    except struct.error as e:
        raise FramingError(
            f"header field out of range ({e}): flags/type/channel are u8, seq/ack/credits are u16"
        ) from None
    if auth_key is not None:
        trailer = _COUNTER.pack(counter) + frame_tag(auth_key, head, counter, bytes(payload))
        return _frame_wire(b"".join((head, payload, trailer)), b"", session)
    return _frame_wire(head, payload, session)


def decode_frame(
    body: bytes | bytearray | memoryview, max_payload: int = MAX_PAYLOAD, session: int | None = None
) -> Frame:
    """Decode the bytes between two delimiters. Raises a FramingError subclass: CobsError,
    ShortFrame, CrcError (checked before any field is read), BadVersion, FrameTooLong (payload
    above ``max_payload``) or LengthMismatch. ``session``: None accepts the plain CRC on any
    frame; a ``session_crc`` value accepts that session's CRC on any frame and the plain CRC
    on setup frames (SETUP_TYPES) only."""
    enc = bytes(body)
    if not enc:
        raise CobsError("empty COBS block: at least one code byte is required")
    if 0 in enc:
        raise CobsError(f"0x00 at offset {enc.index(0)} inside a COBS frame (0x00 only delimits)")
    f = _decode_body(enc, max_payload, session, True)
    return f if type(f.payload) is bytes else f._replace(payload=bytes(f.payload))


def _decode_body(
    body: bytes | memoryview, max_payload: int, session: int | None = None, auth: bool = False
) -> Frame:
    """decode_frame for a non-empty ``body`` known to hold no 0x00; ``auth``: authenticated
    frames (16 bytes longer) are expected. With the C codec the payload is a memoryview of the
    decoded frame (no copy), else bytes."""
    limit = max_encoded_size(max_payload + (FRAME_AUTH_SIZE if auth else 0))
    if len(body) > limit:
        raise FrameTooLong(
            f"{len(body)} encoded bytes; a frame with at most {max_payload} payload bytes "
            f"encodes to at most {limit}"
        )
    raw = _cobs_decode(body)
    n = len(raw)
    if n < HEADER_SIZE + CRC_SIZE:
        raise ShortFrame(
            f"{n} bytes after COBS; a frame holds at least {HEADER_SIZE + CRC_SIZE} "
            "(header and CRC)"
        )
    want = _CRC.unpack_from(raw, n - CRC_SIZE)[0]
    checked = memoryview(raw)[: n - CRC_SIZE]
    got = _crc32(checked, session or 0)
    if want != got and (session is None or raw[2] not in SETUP_TYPES or want != _crc32(checked)):
        raise CrcError(f"CRC-32 mismatch: trailer 0x{want:08x}, computed 0x{got:08x}")
    version, flags, ftype, channel, seq, ack, length, credits = HEADER.unpack_from(raw)
    if version != LINK_VERSION:
        raise BadVersion(f"link header version {version}; this end speaks {LINK_VERSION}")
    end = n - CRC_SIZE
    trailer = b""
    if flags & _FLAG_AUTH:
        if end - HEADER_SIZE < FRAME_AUTH_SIZE:
            raise ShortFrame(
                f"authenticated frame of {n} bytes; it holds at least "
                f"{HEADER_SIZE + FRAME_AUTH_SIZE + CRC_SIZE} (header, counter, tag and CRC)"
            )
        end -= FRAME_AUTH_SIZE
        trailer = bytes(raw[end : end + FRAME_AUTH_SIZE])
    plen = end - HEADER_SIZE
    if plen > max_payload:
        raise FrameTooLong(f"payload of {plen} bytes; negotiated maximum is {max_payload}")
    if length != plen:
        raise LengthMismatch(f"header length {length} but {plen} payload bytes received")
    # bytes (the Python codec) or a memoryview of the C decoder's output: a slice, not a copy
    return Frame(ftype, seq, ack, credits, flags, channel, raw[HEADER_SIZE:end], trailer)


class FrameDecoder:
    """Streaming receiver: ``feed`` bytes as they arrive, get frames and errors back.

    Holds at most one partial frame, bounded by ``max_encoded_size(max_payload)`` bytes.
    Resynchronises on every 0x00: an error costs the bytes up to the next delimiter only.
    """

    __slots__ = ("_auth", "_buf", "_discarding", "_limit", "max_payload", "session")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._discarding = False
        self._auth = False
        #: The session CRC value frames are checked with (None: plain CRC; see decode_frame).
        self.session: int | None = None
        self.set_max_payload(max_payload)

    def set_max_payload(self, max_payload: int) -> None:
        """Bound frames (and the buffer) by a newly negotiated maximum payload."""
        if not MIN_PAYLOAD <= max_payload <= MAX_PAYLOAD:
            raise FramingError(
                f"max_payload {max_payload} out of range; accepted {MIN_PAYLOAD}..{MAX_PAYLOAD}"
            )
        self.max_payload = max_payload
        self._limit = max_encoded_size(max_payload + (FRAME_AUTH_SIZE if self._auth else 0))

    @property
    def auth(self) -> bool:
        """Whether authenticated frames (FRAME_AUTH_SIZE bytes longer) are expected: the
        buffer bound grows by that much."""
        return self._auth

    @auth.setter
    def auth(self, on: bool) -> None:
        self._auth = bool(on)
        self.set_max_payload(self.max_payload)

    @property
    def buffered(self) -> int:
        """Bytes of the partial frame currently held."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | FramingError]:
        """Consume ``data``; return the frames it completed and an error per bad frame."""
        if type(data) is not bytes and not (type(data) is bytearray and _split is _split_c):
            data = bytes(data)
        pieces = _split(data)  # type: ignore[arg-type]
        tail = pieces.pop()  # the bytes after the last delimiter: a frame still arriving
        out: list[Frame | FramingError] = []
        if pieces:
            buf = self._buf
            if self._discarding:
                pieces[0] = b""  # the rest of a frame already reported as too long
                self._discarding = False
            elif buf:
                buf += pieces[0]
                pieces[0] = bytes(buf)
                buf.clear()
            mp = self.max_payload
            session = self.session
            auth = self._auth
            append = out.append
            for body in pieces:
                if body:
                    try:
                        append(_decode_body(body, mp, session, auth))
                    except FramingError as e:
                        append(e)
        if tail and not self._discarding:
            if len(self._buf) + len(tail) > self._limit:
                out.append(
                    FrameTooLong(
                        f"over {self._limit} bytes without a delimiter; dropped up to the next 0x00"
                    )
                )
                self._buf.clear()
                self._discarding = True
            else:
                self._buf += tail
        return out
