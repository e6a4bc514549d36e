"""Fast paths are the slow paths, only faster. The struct path of TENSOR_DATA
(protocol.messages) is the construct codec: for any body, valid or not, both give the same bytes
or the same error; for any bytes, both decoders give the same message or the same error. The
plain COBS path of protocol.framing gives the bytes of its zero-run path.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from protocol import messages as m
from protocol.status import MessageError

U32 = st.integers(0, 0xFFFF_FFFF)
#: Field values around the fast path's edges: in range, out of range, wrong types.
ODD_INT: st.SearchStrategy[Any] = st.one_of(
    U32,
    st.integers(-(2**33), 2**34),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.text(max_size=3),
)
DATA: st.SearchStrategy[Any] = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(bytearray),
    st.binary(max_size=300).map(lambda b: memoryview(b)),
    st.binary(min_size=2, max_size=300).map(lambda b: memoryview(b)[::2]),  # not contiguous
    st.text(max_size=5),
    st.none(),
)


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except MessageError as e:
        return ("error", e.status, e.detail)


def _body(draw: Any, keys: dict[str, Any]) -> dict[str, Any]:
    return {k: draw(s) for k, s in keys.items() if draw(st.booleans()) or draw(st.booleans())}


@st.composite
def data_bodies(draw: Any) -> tuple[Any, dict[str, Any]]:
    rid = draw(st.one_of(U32, ODD_INT))
    return rid, _body(draw, {"id": ODD_INT, "offset": ODD_INT, "data": DATA})


@st.composite
def data_response_bodies(draw: Any) -> tuple[Any, dict[str, Any]]:
    rid = draw(st.one_of(U32, ODD_INT))
    return rid, _body(draw, {"id": ODD_INT, "offset": ODD_INT})


@given(data_bodies())
def test_data_request_encodes_as_construct_does(case: tuple[Any, dict[str, Any]]) -> None:
    rid, body = case
    fast = _outcome(m.encode_request, m.Opcode.TENSOR_DATA, rid, body)
    slow = _outcome(m._encode, m.Request, m.REQUEST_BODIES, m.Opcode.TENSOR_DATA, rid, body)
    assert fast == slow


@given(data_response_bodies())
def test_data_response_encodes_as_construct_does(case: tuple[Any, dict[str, Any]]) -> None:
    rid, body = case
    fast = _outcome(m.encode_response, m.Opcode.TENSOR_DATA, rid, body)
    slow = _outcome(
        m._encode, m.Response, m.RESPONSE_BODIES, m.ResponseOpcode.TENSOR_DATA, rid, body
    )
    assert fast == slow


def _slow_request(data: bytes) -> m.RequestMsg:
    opcode, rid, body = m._decode(m.Request, data, "request")
    return m.RequestMsg(m.Opcode(opcode), rid, body)


def _slow_response(data: bytes) -> m.ResponseMsg:
    opcode, rid, body = m._decode(m.Response, data, "response")
    return m.ResponseMsg(m.ResponseOpcode(opcode), rid, body)


@st.composite
def data_messages(draw: Any, opcode: int) -> bytes:
    """TENSOR_DATA-like bytes: a valid message, or one with a wrong length field or size."""
    head = bytes([opcode]) + draw(st.binary(min_size=4, max_size=4))
    fields = draw(st.binary(min_size=8, max_size=8))
    chunk = draw(st.binary(max_size=64))
    length = draw(st.one_of(st.just(len(chunk)), st.integers(0, 0xFFFF_FFFF)))
    raw = head + fields
    if opcode == 0x11:
        raw += length.to_bytes(4, "little") + chunk
    cut = draw(st.integers(0, len(raw) + 2))
    extra = draw(st.binary(max_size=3))
    return draw(st.sampled_from([raw, raw[:cut], raw + extra]))


@given(data_messages(0x11))
def test_data_request_decodes_as_construct_does(data: bytes) -> None:
    assert _outcome(m.decode_request, data) == _outcome(_slow_request, data)


@given(data_messages(0x91))
def test_data_response_decodes_as_construct_does(data: bytes) -> None:
    assert _outcome(m.decode_response, data) == _outcome(_slow_response, data)


@given(U32, U32, U32, st.binary(max_size=4096))
def test_fast_path_round_trips_through_memoryview(rid: int, tid: int, off: int, b: bytes) -> None:
    raw = m.encode_request(
        m.Opcode.TENSOR_DATA, rid, {"id": tid, "offset": off, "data": memoryview(b)}
    )
    msg = m.decode_request(bytearray(raw))
    assert msg == m.RequestMsg(m.Opcode.TENSOR_DATA, rid, {"id": tid, "offset": off, "data": b})
    assert type(msg.body["data"]) is bytes


@given(
    st.lists(st.one_of(st.binary(max_size=600), st.integers(1, 40).map(bytes)), max_size=12).map(
        b"".join
    )
)
def test_cobs_zero_run_path_and_plain_path_give_the_same_bytes(data: bytes) -> None:
    """protocol.framing encodes data rich in zeros by a regex path and other data by a
    plain split: the two must agree byte for byte on any data (one wire format)."""
    from protocol import framing

    plain: list[bytes] = []
    framing._cobs_segments(data, plain)
    assert framing.cobs_encode(data) == b"".join(plain)
    assert framing.cobs_decode(b"".join(plain)) == data
