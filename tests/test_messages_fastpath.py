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


# ----------------------------------------------------------------------------- training steps

from protocol.dtypes import DType  # noqa: E402
from protocol.messages_counters import COUNTER_FIELDS, empty_counters  # noqa: E402

SMALL: st.SearchStrategy[Any] = st.one_of(
    st.integers(-70, 70), st.booleans(), st.none(), st.sampled_from(list(m.HfpStage))
)


@st.composite
def descs(draw: Any) -> Any:
    """TensorDesc dicts: valid ones and ones with a field missing, out of range or mistyped."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.none(), st.text(max_size=2), st.just([])))
    scale = _body(
        draw, {"frac_bits": SMALL, "shared_exp": SMALL, "exp_bias": SMALL, "stage": SMALL}
    )
    dims = st.lists(st.one_of(U32, ODD_INT), max_size=10)
    return _body(
        draw,
        {
            "id": st.one_of(U32, ODD_INT),
            "dtype": st.one_of(st.sampled_from(list(DType)), st.integers(-1, 300), ODD_INT),
            "scale": st.one_of(st.just(scale), st.none()),
            "shape": st.one_of(dims, dims.map(tuple), st.none()),
            "nbytes": st.one_of(U32, ODD_INT),
            "crc32": st.one_of(U32, ODD_INT),
        },
    )


@st.composite
def inline_bodies(draw: Any) -> tuple[Any, dict[str, Any]]:
    rid = draw(st.one_of(U32, ODD_INT))
    keys = {"input": descs(), "input_data": DATA, "target": descs(), "target_data": DATA}
    return rid, _body(draw, keys)


@given(inline_bodies())
def test_inline_step_request_encodes_as_construct_does(case: tuple[Any, dict[str, Any]]) -> None:
    rid, body = case
    op = m.Opcode.TRAIN_STEP_INLINE
    fast = _outcome(m.encode_request, op, rid, body)
    slow = _outcome(m._encode, m.Request, m.REQUEST_BODIES, op, rid, body)
    assert fast == slow


def _valid_desc(draw: Any) -> dict[str, Any]:
    return {
        "id": draw(U32),
        "dtype": draw(st.sampled_from(list(DType))),
        "scale": {
            "frac_bits": draw(st.integers(-64, 64)),
            "shared_exp": draw(st.integers(-64, 64)),
            "exp_bias": draw(st.integers(0, 15)),
            "stage": draw(st.sampled_from(list(m.HfpStage))),
        },
        "shape": draw(st.lists(U32, max_size=8)),
        "nbytes": draw(U32),
        "crc32": draw(U32),
    }


@st.composite
def inline_messages(draw: Any) -> bytes:
    """TRAIN_STEP_INLINE bytes: valid, then maybe cut, extended or with bytes overwritten."""
    body = {
        "input": _valid_desc(draw),
        "input_data": draw(st.binary(max_size=40)),
        "target": _valid_desc(draw),
        "target_data": draw(st.binary(max_size=40)),
    }
    raw = bytearray(m.encode_request(m.Opcode.TRAIN_STEP_INLINE, draw(U32), body))
    for _ in range(draw(st.integers(0, 3))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    raw[0] = m.Opcode.TRAIN_STEP_INLINE
    cut = draw(st.integers(0, len(raw) + 2))
    return draw(st.sampled_from([bytes(raw), bytes(raw[:cut]), bytes(raw) + b"\x00\x01"]))


@given(inline_messages())
def test_inline_step_request_decodes_as_construct_does(data: bytes) -> None:
    assert _outcome(m.decode_request, data) == _outcome(_slow_request, data)


@given(st.one_of(U32, ODD_INT), st.one_of(U32, ODD_INT), st.one_of(U32, ODD_INT))
def test_step_request_encodes_and_decodes_as_construct_does(rid: Any, x: Any, y: Any) -> None:
    op = m.Opcode.TRAIN_STEP
    body = {"input_id": x, "target_id": y}
    fast = _outcome(m.encode_request, op, rid, body)
    assert fast == _outcome(m._encode, m.Request, m.REQUEST_BODIES, op, rid, body)
    if fast[0] == "ok":
        assert m.decode_request(fast[1]) == _slow_request(fast[1])


@st.composite
def counter_trees(draw: Any) -> Any:
    """Counters dicts: leaves present (in or out of range), absent, or a leaf missing."""
    tree = empty_counters()
    leaf = st.one_of(
        st.none(),
        st.integers(0, 2**64 - 1),
        st.integers(-5, 2**65),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=2),
    )
    for path in draw(st.lists(st.sampled_from(COUNTER_FIELDS), max_size=20)):
        *parents, name = path.split(".")
        node = tree
        for p in parents:
            node = node[p]
        if draw(st.integers(0, 30)) == 0:
            node.pop(name, None)
        else:
            node[name] = draw(leaf)
    return tree


@given(
    st.sampled_from([m.Opcode.TRAIN_STEP, m.Opcode.TRAIN_STEP_INLINE]),
    st.one_of(U32, ODD_INT),
    st.one_of(st.floats(), st.integers(-3, 3), st.none()),
    st.one_of(st.integers(0, 2**64 - 1), ODD_INT),
    counter_trees(),
)
def test_step_response_encodes_and_decodes_as_construct_does(
    op: m.Opcode, rid: Any, loss: Any, step: Any, counters: Any
) -> None:
    body = {"loss": loss, "step": step, "counters": counters}
    rop = m.response_opcode(op)
    fast = _outcome(m.encode_response, op, rid, body)
    assert fast == _outcome(m._encode, m.Response, m.RESPONSE_BODIES, rop, rid, body)
    if fast[0] == "ok":  # repr: a NaN loss or counter is unequal to itself, its repr is not
        assert repr(_outcome(m.decode_response, fast[1])) == repr(_outcome(_slow_response, fast[1]))


@given(st.data())
def test_step_response_bytes_decode_as_construct_does(data: st.DataObject) -> None:
    """Bytes of the step response's length: canonical counters (absent slots zero, present
    ones any 8 bytes, NaNs included) or not (a nonzero absent slot, bits past the last field)."""
    n = len(COUNTER_FIELDS)
    mask = data.draw(st.one_of(st.integers(0, 2**n - 1), st.integers(0, 2**128 - 1)))
    slots = b"".join(
        data.draw(st.binary(min_size=8, max_size=8))
        if mask >> i & 1 or data.draw(st.integers(0, 50)) == 0
        else bytes(8)
        for i in range(n)
    )
    op = data.draw(st.sampled_from([0xB1, 0xB4]))
    head = bytes([op]) + data.draw(st.binary(min_size=16, max_size=16))
    raw = head + mask.to_bytes(16, "little") + slots
    # repr: NaN loss or counters compare unequal to themselves, their reprs do not
    assert repr(_outcome(m.decode_response, raw)) == repr(_outcome(_slow_response, raw))
