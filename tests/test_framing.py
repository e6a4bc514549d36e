"""Laws of the frame layer: COBS, CRC, the header and the streaming decoder."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import framing as fr
from protocol.framing import Frame, FrameDecoder, FrameType

# Sparse data: runs of zeros between runs of other bytes (lengths around the 254-byte block).
runs = st.lists(
    st.tuples(
        st.integers(0, 300), st.sampled_from([b"\x01", b"\xff", b"\x5a"]), st.integers(0, 300)
    ),
    max_size=8,
).map(lambda rs: b"".join(b"\x00" * z + c * n for z, c, n in rs))
payloads = (
    st.binary(max_size=2048)
    | runs
    | st.builds(
        lambda b, n: b * n,
        st.sampled_from([b"\x00", b"\xc0", b"\x00\x01", b"\x01"]),
        st.integers(0, 1200),
    )
)
frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)),
    seq=st.integers(0, 0xFFFF),
    ack=st.integers(0, 0xFFFF),
    credits=st.integers(0, 0xFFFF),
    # FLAG_AUTH frames carry a trailer: encoded with an auth key (test below), not here.
    flags=st.integers(0, 0xFF).map(lambda x: x & ~fr.FrameFlag.AUTH),
    channel=st.integers(0, 0xFF),
    payload=payloads,
    auth=st.just(b""),
)


def wire(f: Frame) -> bytes:
    return fr.encode_frame(
        f.type,
        f.payload,
        seq=f.seq,
        ack=f.ack,
        credits=f.credits,
        flags=f.flags,
        channel=f.channel,
    )


def cobs_reference(data: bytes) -> bytes:
    """Textbook byte-at-a-time COBS (code 0xFF blocks carry no zero)."""
    out = bytearray([0])
    code_at, code = 0, 1
    for b in data:
        if b == 0:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
        else:
            out.append(b)
            code += 1
            if code == 0xFF:
                out[code_at] = code
                code_at, code = len(out), 1
                out.append(0)
    out[code_at] = code
    return bytes(out)


@given(payloads)
def test_cobs_round_trip_and_no_zero(data: bytes) -> None:
    enc = fr.cobs_encode(data)
    assert 0 not in enc
    assert fr.cobs_decode(enc) == data
    assert len(enc) <= len(data) + len(data) // 254 + 1


@given(payloads)
def test_cobs_decodes_textbook_encoding(data: bytes) -> None:
    # Interoperability: a C implementation written from the textbook algorithm (which may
    # end a 254-byte final run with an extra 0x01 block or not) is understood.
    assert fr.cobs_decode(cobs_reference(data)) == data


def test_cobs_known_vectors() -> None:
    assert fr.cobs_encode(b"") == b"\x01"
    assert fr.cobs_encode(b"\x00") == b"\x01\x01"
    assert fr.cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    block = bytes(range(1, 255))
    assert fr.cobs_encode(block) == b"\xff" + block + b"\x01"


@pytest.mark.parametrize("bad", [b"", b"\x05\x01", b"\x02\x00\x01"])
def test_cobs_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(fr.CobsError):
        fr.cobs_decode(bad)


@given(frames)
def test_frame_round_trip(f: Frame) -> None:
    w = wire(f)
    assert w[0] == 0 and w[-1] == 0 and 0 not in w[1:-1]
    assert len(w) <= fr.wire_size(len(f.payload))
    assert fr.decode_frame(w[1:-1]) == f
    assert FrameDecoder().feed(w) == [f]


def test_header_layout_and_crc_are_little_endian_ieee() -> None:
    w = fr.encode_frame(FrameType.DATA, b"ab", seq=0x0102, ack=0x0304, credits=7, flags=1)
    raw = fr.cobs_decode(w[1:-1])
    assert raw[:12] == bytes([1, 1, 1, 0, 2, 1, 4, 3, 2, 0, 7, 0])
    assert raw[12:14] == b"ab"
    assert raw[14:] == struct.pack("<I", zlib.crc32(raw[:14]))
    assert fr.HEADER_STRUCT.parse(raw[:12]).length == 2
    # The check value of CRC-32/IEEE, which a C implementation must reproduce.
    assert fr.crc32(b"123456789") == 0xCBF43926


@given(frames, st.data())
def test_any_single_bit_flip_is_detected(f: Frame, data: st.DataObject) -> None:
    w = bytearray(wire(f))
    bit = data.draw(st.integers(0, 8 * (len(w) - 2) - 1))
    w[1 + bit // 8] ^= 1 << (bit % 8)
    out = FrameDecoder().feed(bytes(w))
    # A flip may turn a byte into a delimiter (splitting the frame) but never yields a frame.
    assert out and all(isinstance(e, fr.FramingError) for e in out)


@given(frames, st.data())
def test_any_truncation_is_detected(f: Frame, data: st.DataObject) -> None:
    w = wire(f)
    cut = data.draw(st.integers(2, len(w) - 2))
    out = FrameDecoder().feed(w[:cut] + b"\x00")
    assert len(out) == 1 and isinstance(out[0], fr.FramingError)


@given(st.lists(frames, min_size=2, max_size=6), st.data())
def test_garbage_burst_costs_only_what_it_overwrote(fs: list[Frame], data: st.DataObject) -> None:
    wires = [wire(f) for f in fs]
    stream = bytearray(b"".join(wires))
    start = data.draw(st.integers(0, len(stream) - 1))
    burst = data.draw(st.binary(min_size=1, max_size=300))
    end = min(len(stream), start + len(burst))
    stream[start:end] = burst[: end - start]
    # Frames whose bytes (delimiters included) were not overwritten must all come out.
    intact, pos = [], 0
    for f, w in zip(fs, wires, strict=True):
        if pos + len(w) <= start or pos >= end:
            intact.append(f)
        pos += len(w)
    dec = FrameDecoder()
    chunks = data.draw(st.lists(st.integers(1, 500), max_size=8))
    got: list[Frame | fr.FramingError] = []
    at = 0
    for c in chunks:
        got += dec.feed(bytes(stream[at : at + c]))
        at += c
    got += dec.feed(bytes(stream[at:]))
    decoded = [g for g in got if isinstance(g, Frame)]
    for f in intact:
        assert f in decoded
    # Anything decoded beyond the intact frames is a frame the burst left (CRC-)valid.
    assert len(decoded) <= len(fs) + 2


@given(st.lists(st.binary(max_size=3000), max_size=12), st.sampled_from([256, 1024, 4096]))
def test_random_bytes_give_only_framing_errors_with_bounded_buffer(
    chunks: list[bytes], max_payload: int
) -> None:
    dec = FrameDecoder(max_payload)
    for c in chunks:
        for item in dec.feed(c):
            assert isinstance(item, Frame | fr.FramingError)
        assert dec.buffered <= fr.max_encoded_size(max_payload)


@given(st.binary(max_size=600))
def test_decode_frame_raises_only_framing_errors(body: bytes) -> None:
    try:
        fr.decode_frame(body, 256)
    except fr.FramingError:
        pass


def test_flood_without_delimiter_is_reported_once_then_resyncs() -> None:
    dec = FrameDecoder(256)
    good = fr.encode_frame(FrameType.ACK, seq=5)
    out = dec.feed(b"\x11" * 5000)
    out += dec.feed(b"\x22" * 5000)
    assert len(out) == 1 and isinstance(out[0], fr.FrameTooLong)
    assert dec.buffered == 0
    assert dec.feed(b"\x33" * 10 + good) == [Frame(FrameType.ACK, seq=5)]


def test_typed_errors() -> None:
    raw = fr.cobs_decode(fr.encode_frame(FrameType.DATA, b"xyz")[1:-1])

    def reframe(body: bytes) -> bytes:
        return fr.cobs_encode(body + struct.pack("<I", zlib.crc32(body)))

    with pytest.raises(fr.BadVersion):
        fr.decode_frame(reframe(b"\x02" + raw[1:-4]))
    with pytest.raises(fr.LengthMismatch):
        fr.decode_frame(reframe(raw[:8] + b"\x09\x00" + raw[10:-4]))
    with pytest.raises(fr.ShortFrame):
        fr.decode_frame(reframe(raw[:5]))
    with pytest.raises(fr.CrcError):
        fr.decode_frame(fr.cobs_encode(raw[:-1] + bytes([raw[-1] ^ 0x80])))
    with pytest.raises(fr.FrameTooLong):
        fr.decode_frame(fr.encode_frame(FrameType.DATA, bytes(300))[1:-1], 256)
    with pytest.raises(fr.FrameTooLong):
        fr.encode_frame(FrameType.DATA, bytes(fr.MAX_PAYLOAD + 1))
    with pytest.raises(fr.FramingError, match="u16"):
        fr.encode_frame(FrameType.DATA, seq=70000)
    with pytest.raises(fr.FramingError, match=rf"256\.\.{fr.MAX_PAYLOAD}\b"):
        FrameDecoder(100)


def test_empty_frames_are_idle_fill() -> None:
    good = fr.encode_frame(FrameType.SYNC, b"s")
    assert (
        FrameDecoder().feed(b"\x00\x00\x00" + good + good)
        == [Frame(FrameType.SYNC, payload=b"s")] * 2
    )


def test_session_frames_are_bound_to_both_epochs() -> None:
    from protocol.framing import CrcError, FrameType, decode_frame, encode_frame, session_crc

    s = session_crc(1, 2)
    assert s == zlib.crc32(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    data = encode_frame(FrameType.DATA, b"payload", seq=3, session=s)
    assert decode_frame(data[1:-1], session=s).payload == b"payload"
    for other in (None, session_crc(2, 1), session_crc(1, 3)):  # another session: a bad CRC
        with pytest.raises(CrcError):
            decode_frame(data[1:-1], session=other)
    # Setup frames carry the plain CRC and pass in any session; other frames do not.
    sync = encode_frame(FrameType.SYNC, bytes(8))
    assert decode_frame(sync[1:-1], session=s).type == FrameType.SYNC
    with pytest.raises(CrcError):
        decode_frame(encode_frame(FrameType.ACK, bytes(8))[1:-1], session=s)


def test_authenticated_frames_carry_counter_and_tag_and_any_change_is_caught() -> None:
    key = bytes(range(32))
    data = fr.encode_frame(FrameType.DATA, b"abc", seq=5, auth_key=key, counter=7)
    f = fr.decode_frame(data[1:-1])
    assert f.flags & fr.FrameFlag.AUTH and f.payload == b"abc" and len(f.auth) == 16
    assert fr.verify_frame(key, f) == 7
    assert fr.verify_frame(bytes(32), f) is None  # another key
    for changed in (
        f._replace(payload=b"abd"),
        f._replace(seq=6),
        f._replace(auth=struct.pack("<Q", 8) + f.auth[8:]),  # another counter
    ):
        assert fr.verify_frame(key, changed) is None
    # Wire size: the trailer is 16 bytes; the decoder's buffer bound grows by as much.
    plain = fr.encode_frame(FrameType.DATA, b"abc", seq=5)
    assert len(data) == len(plain) + fr.FRAME_AUTH_SIZE
    dec = FrameDecoder(256)
    full = fr.encode_frame(FrameType.DATA, b"\x55" * 256, auth_key=key, counter=1)
    assert isinstance(dec.feed(full)[0], fr.FrameTooLong)
    dec.auth = True
    assert fr.verify_frame(key, dec.feed(full)[0]) == 1  # type: ignore[arg-type]
