"""The frame codec's C accelerator (protocol._framing_c) against the pure-Python reference:
the same wire bytes, the same decoded frames, the same errors (type and message), and the
fallback when the module is missing or switched off."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import framing as fr
from protocol.framing import Frame, FrameDecoder, FrameType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip(
    "protocol._framing_c", reason="C accelerator not built (run tools/build_ext.sh)"
)


@pytest.fixture(autouse=True)
def _restore_codec() -> Iterator[None]:
    was = fr.accelerated()
    yield
    fr.use_accelerator(was)


def outcome(fn: Callable[[], Any]) -> Any:
    """What ``fn`` returns, or the type and message of the FramingError it raises."""
    try:
        return fn()
    except fr.FramingError as e:
        return (type(e), str(e))


def both(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """The outcome of ``fn`` with the Python codec, then with the C codec."""
    assert fr.use_accelerator(False) is False
    py = outcome(fn)
    assert fr.use_accelerator(True) is True
    return py, outcome(fn)


# Data around the COBS block boundaries: pieces of zeros, of non-zero bytes (runs of 253, 254,
# 255 ... are where a 0xFF block ends or does not), of one repeated byte and of random bytes.
LENGTHS = st.sampled_from([0, 1, 2, 253, 254, 255, 256, 507, 508, 509, 762]) | st.integers(0, 600)
piece = st.one_of(
    LENGTHS.map(bytes),
    st.tuples(LENGTHS, st.integers(1, 255)).map(lambda t: bytes([t[1]]) * t[0]),
    st.tuples(st.integers(0, 2**32), LENGTHS).map(
        lambda t: random.Random(t[0]).randbytes(t[1]).replace(b"\x00", b"\x01")
    ),
    st.binary(max_size=700),
)
data = st.lists(piece, max_size=12).map(b"".join) | st.builds(
    lambda b, n: b * n,
    st.sampled_from([b"\x00", b"\x01", b"\xff", b"\x00\x01", b"\xc0"]),
    st.integers(0, 65536),
)


def rand_bytes(max_n: int) -> st.SearchStrategy[bytes]:
    """Random bytes (tensor-like: about one zero in 256) of up to ``max_n`` bytes, from a seed."""
    return st.tuples(st.integers(0, 2**32), st.integers(0, max_n)).map(
        lambda t: random.Random(t[0]).randbytes(t[1])
    )


big_random = rand_bytes(65536)


@given(data | big_random)
def test_cobs_encode_and_decode_match_python(d: bytes) -> None:
    enc_py = fr.PY_CODEC["cobs_encode"](d)
    assert fr._cobs_encode_c(d) == enc_py
    assert fr._cobs_encode_c(bytearray(d)) == enc_py
    assert fr._cobs_decode_c(enc_py) == d == fr.PY_CODEC["_cobs_decode"](enc_py)


def test_cobs_boundaries_exhaustive() -> None:
    # every length 0..1100 of all-zero, no-zero and alternating data
    for n in range(1100):
        for d in (bytes(n), b"\x07" * n, bytes(i & 1 for i in range(n))):
            enc = fr.PY_CODEC["cobs_encode"](d)
            assert fr._cobs_encode_c(d) == enc, n
            assert fr._cobs_decode_c(enc) == d, n


@given(data | big_random, st.integers(0, 2**32 - 1))
def test_crc32_matches_zlib(d: bytes, value: int) -> None:
    assert fr._crc32_c(d, value) == zlib.crc32(d, value)
    assert fr._crc32_c(memoryview(d)[1:], value) == zlib.crc32(d[1:], value)


def test_crc32_every_length_around_the_folds() -> None:
    d = random.Random(5).randbytes(400)
    for n in range(len(d)):
        assert fr._crc32_c(d[:n], 0x1234) == zlib.crc32(d[:n], 0x1234), n


@given(data | big_random, st.integers(0, 0xFFFFFFFF))
def test_frame_wire_variants_match_python(d: bytes, session: int) -> None:
    head, payload = d[:12], d[12 : 12 + fr.MAX_PAYLOAD]
    want = fr.PY_CODEC["_frame_wire"](head, payload, session)
    assert fr._frame_wire_c(head, payload, session) == want
    assert fr._frame_wire_c(head, bytearray(payload), session) == want
    assert fr._frame_wire_cz(head, memoryview(payload), session) == want


@given(
    st.lists(st.sampled_from([b"\x00", b"\x00\x00", b"ab", b"\x01" * 300]), max_size=150).map(
        b"".join
    )
    | data
)
def test_split_matches_bytes_split(d: bytes) -> None:
    # more than 64 delimiters take bytes.split, fewer the memchr scan: both tried here
    assert fr._split_c(d) == d.split(b"\x00")


def test_bad_environment_value_is_refused() -> None:
    env = {**os.environ, "MICROTRAIN_FRAMING": "fast"}
    res = subprocess.run(
        [sys.executable, "-c", "import protocol.framing"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "MICROTRAIN_FRAMING='fast': set it to 'c'" in res.stderr


def test_stale_build_is_not_used() -> None:
    """A module of another API version (a build older than the sources) is ignored."""
    code = (
        "import protocol._framing_c as m\n"
        "class Lib:\n"
        "    def mt_codec_version(self): return 1\n"
        "m.lib = Lib()\n"
        "from protocol import framing as fr\n"
        "assert not fr.accelerated() and not fr.use_accelerator(True)\n"
        "assert fr.decode_frame(fr.encode_frame(1, b'x')[1:-1]).payload == b'x'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)) | st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    ack=st.integers(0, 0xFFFF),
    credits=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFF).map(lambda x: x & ~fr.FrameFlag.AUTH),
    channel=st.integers(0, 0xFF),
    payload=st.binary(max_size=2048)
    | st.lists(piece, max_size=6).map(lambda ps: b"".join(ps)[: fr.MAX_PAYLOAD])
    | rand_bytes(fr.MAX_PAYLOAD),
)
sessions = st.sampled_from([0, fr.session_crc(1, 2), fr.session_crc(0xFFFFFFFF, 7)])
keys = st.none() | st.binary(min_size=1, max_size=32)


def encode(f: Frame, session: int, key: bytes | None, counter: int) -> bytes:
    return fr.encode_frame(
        f.type,
        f.payload,
        seq=f.seq,
        ack=f.ack,
        credits=f.credits,
        flags=f.flags,
        channel=f.channel,
        session=session,
        auth_key=key,
        counter=counter,
    )


@given(frames, sessions, keys, st.integers(0, 2**64 - 1))
def test_frames_match_python_and_round_trip(
    f: Frame, session: int, key: bytes | None, counter: int
) -> None:
    py, c = both(lambda: encode(f, session, key, counter))
    assert c == py
    py, c = both(lambda: fr.decode_frame(py[1:-1], fr.MAX_PAYLOAD, session or None))
    assert c == py
    assert c.payload == f.payload and c.seq == f.seq and c.type == f.type
    if key is not None:
        assert fr.verify_frame(key, c) == counter


# Damage to a frame: flip, set or zero a byte, cut, insert, or splice two frames.
@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, int, int | None]:
    f = draw(frames)
    session = draw(sessions)
    w = bytearray(encode(f, session, None, 0)[1:-1])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "zero", "cut", "insert", "truncate"]))
        i = draw(st.integers(0, max(len(w) - 1, 0)))
        if op == "flip" and w:
            w[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and w:
            w[i] = draw(st.integers(1, 255))
        elif op == "zero" and w:
            w[i] = 0
        elif op == "cut":
            del w[i : i + draw(st.integers(1, 300))]
        elif op == "insert":
            w[i:i] = draw(st.binary(min_size=1, max_size=20))
        elif op == "truncate":
            del w[i:]
    max_payload = draw(st.sampled_from([fr.MIN_PAYLOAD, fr.DEFAULT_PAYLOAD, fr.MAX_PAYLOAD]))
    return bytes(w), max_payload, draw(st.none() | st.just(session))


@given(damaged())
def test_damaged_frames_give_the_same_error_or_frame(case: tuple[bytes, int, int | None]) -> None:
    body, max_payload, session = case
    py, c = both(lambda: fr.decode_frame(body, max_payload, session))
    assert c == py
    py, c = both(lambda: fr.cobs_decode(body))
    assert c == py


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00", b"\x05ab", b"\x02a\x00", b"\x03ab\x04xy", b"\xff" + b"a" * 200, b"\x01\x00"],
)
def test_malformed_cobs_same_error(bad: bytes) -> None:
    py, c = both(lambda: fr.cobs_decode(bad))
    assert isinstance(py, tuple) and py[0] is fr.CobsError
    assert c == py


@given(st.lists(damaged(), max_size=6), st.integers(1, 5000))
def test_stream_decoder_matches_python(
    cases: list[tuple[bytes, int, int | None]], cut: int
) -> None:
    stream = b"".join(b"\x00" + body + b"\x00" for body, _, _ in cases) + b"\x07" * 30

    def feed() -> list[Any]:
        dec = FrameDecoder(fr.DEFAULT_PAYLOAD)
        out: list[Any] = []
        for i in range(0, len(stream), cut):
            out += [
                (type(x), str(x)) if isinstance(x, fr.FramingError) else x
                for x in dec.feed(stream[i : i + cut])
            ]
        return [*out, dec.buffered]

    py, c = both(feed)
    assert c == py


def test_use_accelerator_switches_and_reports() -> None:
    assert fr.use_accelerator(False) is False
    assert not fr.accelerated()
    assert fr.cobs_encode is fr.PY_CODEC["cobs_encode"]
    assert fr.use_accelerator(True) is True
    assert fr.accelerated()
    assert fr.cobs_encode is fr._cobs_encode_c


@pytest.mark.parametrize(
    "setup",
    [
        "import sys; sys.modules['protocol._framing_c'] = None",  # module missing
        "import os; os.environ['MICROTRAIN_FRAMING'] = 'python'",  # switched off
    ],
)
def test_fallback_without_the_module(setup: str) -> None:
    """Without the C module (or with MICROTRAIN_FRAMING=python) the Python codec does the work
    and the wire bytes are the ones the accelerator writes."""
    payload = bytes(range(256)) * 40 + bytes(600)
    code = (
        f"{setup}\n"
        "from protocol import framing as fr\n"
        "assert not fr.accelerated()\n"
        f"w = fr.encode_frame(1, {payload!r}, seq=9, session=fr.session_crc(3, 4))\n"
        "assert fr.decode_frame(w[1:-1], session=fr.session_crc(3, 4)).seq == 9\n"
        "print(w.hex())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MICROTRAIN_FRAMING"}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert fr.accelerated()
    want = fr.encode_frame(1, payload, seq=9, session=fr.session_crc(3, 4))
    assert bytes.fromhex(res.stdout.strip()) == want
