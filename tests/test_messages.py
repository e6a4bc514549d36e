"""Laws of the message layer: every message round-trips, bad bytes raise only MessageError with
the right status, the schema hash is deterministic and sensitive, wire dtypes pack exactly.

Strategies are derived from the construct definitions themselves (``strategy_for``), so a
message added to protocol.messages is covered without touching this file.
"""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from construct import (
    Adapter,
    Bytes,
    Construct,
    FormatField,
    Int8ul,
    Int16ul,
    Renamed,
    Struct,
    Switch,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import dtypes as wd
from protocol import messages as m
from protocol.framing import MAX_PAYLOAD
from protocol.messages_counters import COUNTER_FIELDS, FLOAT_LEAVES, empty_counters
from protocol.messages_types import Blob, Code, Flags, List, Ranged, Text
from protocol.status import STATUS_MEANING, MessageError, Status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_INT_RANGES = {
    "<B": (0, 2**8 - 1),
    "<H": (0, 2**16 - 1),
    "<I": (0, 2**32 - 1),
    "<L": (0, 2**32 - 1),
    "<Q": (0, 2**64 - 1),
    "<b": (-(2**7), 2**7 - 1),
    "<h": (-(2**15), 2**15 - 1),
    "<l": (-(2**31), 2**31 - 1),
    "<q": (-(2**63), 2**63 - 1),
}


def _unwrap(con: Construct) -> Construct:
    while isinstance(con, Renamed):
        con = con.subcon
    return con


def _text(lenfield: Construct, max_len: int | None) -> st.SearchStrategy[str]:
    limit = min(2 ** (8 * lenfield.sizeof()) - 1, max_len or 2**32)
    return st.text(max_size=40).filter(lambda s: len(s.encode()) <= limit)


def _counters() -> st.SearchStrategy[dict[str, Any]]:
    """Counters with a random set of present fields; values from a seeded generator (two
    draws instead of 83 keeps the strategy fast), edge values included."""
    edges_int = [0, 1, 2**63, 2**64 - 1]
    edges_float = [0.0, -0.0, 1.5, 1e-300, -2.5e300, float("inf")]

    def build(mask: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        out = empty_counters()
        for i, path in enumerate(COUNTER_FIELDS):
            if not mask >> i & 1:
                continue
            if path.rsplit(".", 1)[-1] in FLOAT_LEAVES:
                pick = rng.integers(0, len(edges_float) + 1)
                v: Any = float(rng.normal() * 1e6) if pick == 0 else edges_float[pick - 1]
            else:
                pick = rng.integers(0, len(edges_int) + 1)
                v = int(rng.integers(0, 2**63)) if pick == 0 else edges_int[pick - 1]
            *parents, name = path.split(".")
            node = out
            for p in parents:
                node = node[p]
            node[name] = v
        return out

    n = len(COUNTER_FIELDS)
    return st.builds(build, st.integers(0, 2**n - 1), st.integers(0, 2**32 - 1))


def strategy_for(con: Construct) -> st.SearchStrategy[Any]:
    """A strategy of Python values that ``con`` builds and parses back to themselves."""
    con = _unwrap(con)
    if isinstance(con, FormatField):
        if con.fmtstr == "<f":
            return st.floats(width=32, allow_nan=False)
        if con.fmtstr == "<d":
            return st.floats(allow_nan=False)
        lo, hi = _INT_RANGES[con.fmtstr]
        return st.integers(lo, hi)
    if isinstance(con, Bytes):
        return st.binary(min_size=con.length, max_size=con.length)
    if isinstance(con, Code):
        return st.sampled_from(list(con.enumcls))
    if isinstance(con, Flags):
        return st.integers(0, 2 ** (8 * con.subcon.sizeof()) - 1).map(con.flagcls)
    if isinstance(con, Ranged):
        return st.integers(con.lo, con.hi)
    if isinstance(con, Text):
        return _text(con.lenfield, con.subcon.max_len)
    if isinstance(con, Blob):
        return st.binary(max_size=64)
    if isinstance(con, List):
        return st.lists(strategy_for(con.subcon), max_size=min(3, con.max_count or 3))
    if isinstance(con, Adapter) and isinstance(con.subcon, Struct) and con.subcon.subcons:
        return _counters()  # the only record behind a value mapping
    if isinstance(con, Struct):
        return _struct_strategy(con)
    raise TypeError(f"no strategy for {con!r}")


def _struct_strategy(con: Struct) -> st.SearchStrategy[dict[str, Any]]:
    fields = [(sc.name, _unwrap(sc)) for sc in con.subcons]
    switches = [(n, c) for n, c in fields if isinstance(c, Switch)]
    if not switches:
        return st.fixed_dictionaries({n: strategy_for(c) for n, c in fields})
    # a Switch selected by a sibling field: generate the key, then the matching case
    ((sw_name, sw),) = switches
    key_name = repr(sw.keyfunc).replace("this['", "").replace("']", "").replace("this.", "")
    others = {n: strategy_for(c) for n, c in fields if n not in (sw_name, key_name)}
    options = [
        st.fixed_dictionaries({**others, key_name: st.just(k), sw_name: strategy_for(case)})
        for k, case in sw.cases.items()
    ]
    return st.one_of(options)


def _ids() -> st.SearchStrategy[int]:
    return st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("opcode", list(m.Opcode), ids=lambda o: o.name)
@given(data=st.data(), request_id=_ids())
def test_every_request_round_trips(opcode: m.Opcode, data: st.DataObject, request_id: int) -> None:
    body = data.draw(strategy_for(m.REQUEST_BODIES[opcode]))
    wire = m.encode_request(opcode, request_id, body)
    msg = m.decode_request(wire)
    assert msg == m.RequestMsg(opcode, request_id, body)
    assert m.encode_request(msg.opcode, msg.request_id, msg.body) == wire  # canonical


@pytest.mark.parametrize("opcode", list(m.ResponseOpcode), ids=lambda o: o.name)
@given(data=st.data(), request_id=_ids())
def test_every_response_round_trips(
    opcode: m.ResponseOpcode, data: st.DataObject, request_id: int
) -> None:
    body = data.draw(strategy_for(m.RESPONSE_BODIES[opcode]))
    wire = m.encode_response(opcode, request_id, body)
    msg = m.decode_response(wire)
    assert msg == m.ResponseMsg(opcode, request_id, body)
    assert msg.is_error == (opcode == m.ResponseOpcode.ERROR)
    assert m.encode_response(msg.opcode, msg.request_id, msg.body) == wire


def test_every_request_has_a_response_and_opcodes_pair() -> None:
    assert set(m.REQUEST_BODIES) == set(m.Opcode) == set(m.MESSAGE_DOCS)
    assert set(m.RESPONSE_BODIES) == set(m.ResponseOpcode)
    for op in m.Opcode:
        assert m.response_opcode(op).name == op.name
        assert int(op) < m.RESPONSE_BIT
        assert m.ResponseMsg(m.response_opcode(op), 1).answers == op


# ----------------------------------------------------------------------------- bad input


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    for decode in (m.decode_request, m.decode_response):
        try:
            decode(data)
        except MessageError as e:
            assert e.status in (Status.BAD_REQUEST, Status.UNKNOWN_OPCODE)
            assert str(e)


@given(
    opcode=st.sampled_from(list(m.Opcode) + list(m.ResponseOpcode)),
    request_id=_ids(),
    body=st.binary(max_size=120),
)
def test_random_bodies_of_valid_opcodes_raise_only_message_error(
    opcode: int, request_id: int, body: bytes
) -> None:
    data = bytes([opcode]) + request_id.to_bytes(4, "little") + body
    for decode in (m.decode_request, m.decode_response):
        try:
            decode(data)
        except MessageError as e:
            assert e.request_id == request_id and e.opcode == opcode


@pytest.mark.parametrize("opcode", list(m.ResponseOpcode), ids=lambda o: o.name)
@settings(max_examples=min(30, settings().max_examples))
@given(data=st.data())
def test_corrupted_valid_messages_decode_or_raise_message_error(
    opcode: m.ResponseOpcode, data: st.DataObject
) -> None:
    wire = bytearray(
        m.encode_response(opcode, 1, data.draw(strategy_for(m.RESPONSE_BODIES[opcode])))
    )
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    try:
        msg = m.decode_response(bytes(wire))
    except MessageError as e:
        assert e.status in (Status.BAD_REQUEST, Status.UNKNOWN_OPCODE)
    else:  # whatever decodes re-encodes, and the re-encoding is a fixed point (NaN payloads
        # may be normalised once, nothing else changes)
        again = m.encode_response(msg.opcode, msg.request_id, msg.body)
        assert len(again) == len(wire)
        msg2 = m.decode_response(again)
        assert m.encode_response(msg2.opcode, msg2.request_id, msg2.body) == again


@given(opcode=st.integers(0, 255), request_id=_ids(), body=st.binary(max_size=16))
def test_unknown_opcode_gives_unknown_opcode_with_the_request_id(
    opcode: int, request_id: int, body: bytes
) -> None:
    assume(opcode not in set(m.Opcode))
    with pytest.raises(MessageError) as err:
        m.decode_request(bytes([opcode]) + request_id.to_bytes(4, "little") + body)
    assert err.value.status == Status.UNKNOWN_OPCODE
    assert err.value.request_id == request_id
    assert f"{opcode:#04x}" in str(err.value)


def test_forged_counts_and_lengths_fail_without_allocating() -> None:
    header = bytes([m.Opcode.DEFINE_MODEL]) + (1).to_bytes(4, "little")
    # input_shape with 255 dims (limit 8), then 65535 layers with no bytes behind them
    with pytest.raises(MessageError, match="exceeds the limit 8"):
        m.decode_request(header + b"\xff")
    with pytest.raises(MessageError, match="BAD_REQUEST"):
        m.decode_request(header + b"\x00" + b"\xff\xff")
    data = bytes([m.Opcode.TENSOR_DATA]) + bytes(12) + b"\xff\xff\xff\xff"
    with pytest.raises(MessageError, match="BAD_REQUEST"):
        m.decode_request(data)  # a 4 GiB blob announced, 0 bytes present


@pytest.mark.parametrize("opcode", list(m.Opcode), ids=lambda o: o.name)
@given(data=st.data())
def test_truncated_or_extended_requests_are_bad_requests(
    opcode: m.Opcode, data: st.DataObject
) -> None:
    body = data.draw(strategy_for(m.REQUEST_BODIES[opcode]))
    wire = m.encode_request(opcode, 9, body)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(MessageError) as err:
        m.decode_request(wire[:cut])
    assert err.value.status == Status.BAD_REQUEST
    with pytest.raises(MessageError, match="trailing"):
        m.decode_request(wire + data.draw(st.binary(min_size=1, max_size=8)))


def test_out_of_range_and_unknown_values_are_refused_both_ways() -> None:
    hello = {
        "protocol_major": 1,
        "protocol_minor": 0,
        "schema_hash": bytes(8),
        "firmware": "fw",
        "preset": "hnpu-v2",
        "parameters": [],
        "max_payload": 4096,
        "window": 8,
        "dtypes": [wd.DType.DFXP8],
        "formats": [],
        "algorithms": [m.Algorithm.BP],
        "features": 0,
        "auth_challenge": bytes(16),
    }
    wire = m.encode_response(m.Opcode.HELLO, 3, hello)
    for bad in (255, MAX_PAYLOAD + 1):
        with pytest.raises(MessageError, match=rf"outside \[256, {MAX_PAYLOAD}\]"):
            m.encode_response(m.Opcode.HELLO, 3, {**hello, "max_payload": bad})
    # patch max_payload on the wire to 100: the decoder refuses it too
    offset = wire.index((4096).to_bytes(2, "little"))
    bad_wire = wire[:offset] + (100).to_bytes(2, "little") + wire[offset + 2 :]
    with pytest.raises(MessageError) as err:
        m.decode_response(bad_wire)
    assert err.value.status == Status.BAD_REQUEST and "256" in str(err.value)
    # an unknown dtype code in the list is refused, naming the accepted ones
    i = wire.index(bytes([1, int(wd.DType.DFXP8)]))
    with pytest.raises(MessageError, match="is not a DType; accepted: FP32=1"):
        m.decode_response(wire[: i + 1] + b"\x99" + wire[i + 2 :])
    with pytest.raises(MessageError, match="missing field 'window'"):
        m.encode_response(m.Opcode.HELLO, 3, {k: v for k, v in hello.items() if k != "window"})
    with pytest.raises(MessageError, match="request_id"):
        m.encode_request(m.Opcode.RESET, -1, {"scope": 0})
    with pytest.raises(MessageError) as err:
        m.encode_request(0x7E, 1, {})  # type: ignore[arg-type]
    assert err.value.status == Status.UNKNOWN_OPCODE


def test_invalid_utf8_text_is_a_bad_request() -> None:
    wire = m.encode_request(
        m.Opcode.HELLO,
        1,
        {"protocol_major": 1, "protocol_minor": 0, "schema_hash": bytes(8), "client": "ab"},
    )
    with pytest.raises(MessageError, match="UTF-8"):
        m.decode_request(wire[:-2] + b"\xff\xfe")


def test_error_response_carries_status_and_detail() -> None:
    wire = m.encode_error(77, Status.UNKNOWN_TENSOR, "tensor 5 is not on the device", 0x11)
    msg = m.decode_response(wire)
    assert msg.is_error and msg.answers is None and msg.request_id == 77
    assert msg.body == {
        "status": Status.UNKNOWN_TENSOR,
        "request_opcode": 0x11,
        "detail": "tensor 5 is not on the device",
    }
    long = m.decode_response(m.encode_error(1, Status.INTERNAL, "é" * 2000))
    assert len(long.body["detail"].encode()) <= m.MAX_DETAIL_BYTES


def test_every_status_has_a_one_line_meaning() -> None:
    assert set(STATUS_MEANING) == set(Status)
    assert all(v and "\n" not in v for v in STATUS_MEANING.values())
    required = {
        "OK", "UNKNOWN_OPCODE", "BAD_REQUEST", "BAD_SHAPE", "UNKNOWN_TENSOR", "UNKNOWN_LAYER",
        "OUT_OF_MEMORY", "UNSUPPORTED_FORMAT", "UNSUPPORTED_ALGORITHM", "NOT_AUTHENTICATED",
        "AUTH_FAILED", "BUSY", "LIMIT", "CHECKSUM_MISMATCH", "TRANSFER_INCOMPLETE", "NO_MODEL",
        "INTERNAL",
    }  # fmt: skip
    assert required <= {s.name for s in Status}


# ----------------------------------------------------------------------------- layout pins


def test_header_and_tensor_data_layout_are_pinned() -> None:
    wire = m.encode_request(
        m.Opcode.TENSOR_DATA, 0x01020304, {"id": 5, "offset": 4096, "data": b"\xaa\xbb"}
    )
    assert wire.hex() == "1104030201050000000010000002000000aabb"
    resp = m.encode_response(m.Opcode.TENSOR_BEGIN, 0x01020304, {"id": 5, "offset": 8})
    assert resp.hex() == "90040302010500000008000000"


def test_counters_absent_fields_are_null_and_canonical() -> None:
    counters = empty_counters()
    counters["ff"]["macs_total"] = 123
    counters["total"]["energy_pj"] = 1.5
    counters["latency_s"] = 2e-3
    wire = m.encode_response(m.Opcode.READ_COUNTERS, 1, {"counters": counters})
    back = m.decode_response(wire).body["counters"]
    assert back == counters
    assert back["ep"]["skipped"]["pruned"] is None
    # an absent field with a nonzero slot is refused: the slot of ff.macs_executed is
    # right after the bitmap and ff.macs_total
    i = m.HEADER_SIZE + 16 + 8
    bad = wire[:i] + b"\x01" + wire[i + 1 :]
    with pytest.raises(MessageError, match=r"absent field ff\.macs_executed"):
        m.decode_response(bad)
    # valid bits past the last field are refused
    last_byte = m.HEADER_SIZE + 15
    bad = wire[:last_byte] + b"\x80" + wire[last_byte + 1 :]
    with pytest.raises(MessageError, match="beyond the last field"):
        m.decode_response(bad)


# ----------------------------------------------------------------------------- schema hash


def test_schema_hash_is_deterministic_across_processes() -> None:
    h = m.schema_hash()
    assert len(h) == 8 and h == m.schema_hash()
    code = "from protocol.messages import schema_hash; print(schema_hash().hex())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    assert out.stdout.strip() == h.hex()


def _hash_with(
    requests: dict[Any, Struct] | None = None,
    responses: dict[Any, Struct] | None = None,
    enums: dict[str, Any] | None = None,
) -> bytes:
    return m.schema_hash(m.schema_text(requests=requests, responses=responses, enums=enums))


@dataclass(frozen=True)
class _Op:
    """A stand-in opcode (name, value) for a renumbered definition."""

    name: str
    value: int

    def __int__(self) -> int:
        return self.value


def test_schema_hash_changes_with_any_definition() -> None:
    base = m.schema_hash()
    assert _hash_with() == base
    reqs = dict(m.REQUEST_BODIES)
    variants = [
        # a field renamed
        {**reqs, m.Opcode.TENSOR_END: Struct("tensor_id" / m.U32)},
        # a field's type changed
        {**reqs, m.Opcode.TENSOR_END: Struct("id" / m.U16)},
        # a field added
        {**reqs, m.Opcode.TENSOR_END: Struct("id" / m.U32, "flags" / Int8ul)},
        # a list's count width changed
        {**reqs, m.Opcode.GET_WEIGHTS: Struct("layer" / Int16ul, "x" / List(Int8ul, Int8ul))},
    ]
    hashes = {_hash_with(requests=v) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)
    # an opcode renumbered: move TENSOR_END's body to a new opcode enum value
    renumbered = {
        (_Op("TENSOR_END", 0x14) if o == m.Opcode.TENSOR_END else o): b for o, b in reqs.items()
    }
    assert _hash_with(requests=renumbered) != base
    # an enum value changed
    enums = {"Opcode": m.Opcode, "ResponseOpcode": m.ResponseOpcode}

    class changed(enum.IntEnum):
        NEAREST = 0
        STOCHASTIC = 1
        TRUNCATE = 3

    from protocol.messages_types import referenced

    _, used = referenced([*m.REQUEST_BODIES.values(), *m.RESPONSE_BODIES.values()])
    assert _hash_with(enums={**enums, **used}) == base
    assert _hash_with(enums={**enums, **used, "Rounding": changed}) != base


# ----------------------------------------------------------------------------- dtypes

_DTYPE_LIMITS = {
    d: (np.iinfo(wd.CODE_DTYPE[d]).min, np.iinfo(wd.CODE_DTYPE[d]).max) for d in wd.DType
}
_DTYPE_LIMITS[wd.DType.DFXP4] = (-8, 7)


@pytest.mark.parametrize("dtype", list(wd.DType), ids=lambda d: d.format_name)
@given(data=st.data())
def test_tensor_codes_round_trip_through_wire_bytes(dtype: wd.DType, data: st.DataObject) -> None:
    shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=3)))
    n = wd.shape_count(shape)
    lo, hi = _DTYPE_LIMITS[dtype]
    values = data.draw(st.lists(st.integers(int(lo), int(hi)), min_size=n, max_size=n))
    codes = np.array(values, dtype=wd.CODE_DTYPE[dtype]).reshape(shape)
    wire = wd.to_wire(codes, dtype)
    assert len(wire) == wd.wire_nbytes(dtype, n)
    back = wd.from_wire(wire, dtype, shape)
    assert back.shape == shape and np.array_equal(back, codes)
    desc, payload = m.tensor_message(3, codes, dtype)
    assert payload == wire and desc["crc32"] == zlib.crc32(wire) and desc["nbytes"] == len(wire)


def test_dfxp8_costs_one_byte_and_dfxp4_half_a_byte_per_element() -> None:
    codes = np.arange(-8, 8, dtype=np.int8)
    assert len(wd.to_wire(codes, wd.DType.DFXP8)) == 16
    packed = wd.to_wire(codes[:15], wd.DType.DFXP4)
    assert len(packed) == 8
    assert packed[0] == 0x98  # -8 -> 0x8 low nibble, -7 -> 0x9 high nibble
    assert packed[-1] == 0x06  # the odd element (6) with a zero pad nibble
    with pytest.raises(ValueError, match="pad nibble"):
        wd.from_wire(packed[:-1] + b"\x16", wd.DType.DFXP4, (15,))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        wd.to_wire(np.array([8], dtype=np.int8), wd.DType.DFXP4)
    with pytest.raises(ValueError, match="takes 16 bytes, got 15"):
        wd.from_wire(bytes(15), wd.DType.DFXP8, (16,))
    with pytest.raises(ValueError, match="integer codes"):
        wd.to_wire(np.zeros(3, np.float32), wd.DType.FP32)
    with pytest.raises(ValueError, match="unknown dtype name 'dfxp3'; accepted: fp32"):
        wd.DType.from_name("dfxp3")


def test_wire_dtypes_cover_the_numerics_contract() -> None:
    names = {d.format_name for d in wd.FORMATS}
    expected = {"fp32", "fp16", "bf16", "tf32", "dlfloat16", "e4m3", "e5m2", "hfp8", "fp8-seb"}
    expected |= {"flex16", "fgmp"} | {f"dfxp{n}" for n in range(4, 17)}
    assert names == expected
    assert {d.format_name for d in wd.PLAIN_INTEGERS} == {
        "int8",
        "int16",
        "int32",
        "uint8",
        "int64",
    }
    assert all(wd.DType.from_name(d.format_name) is d for d in wd.DType)


def test_wire_dtypes_match_the_numerics_module_when_present() -> None:
    numerics = pytest.importorskip("protocol.numerics", reason="protocol.numerics not there yet")
    assert set(numerics.FORMATS) == {d.format_name for d in wd.FORMATS}
    for d in wd.FORMATS:
        assert np.dtype(numerics.code_dtype(d.format_name)).newbyteorder("<") == wd.CODE_DTYPE[d]


def test_auth_tags_bind_role_counter_and_nonces() -> None:
    key, ch, nonce = b"k" * 32, bytes(range(16)), bytes(16)
    host = m.auth_tag(key, "host", ch, nonce, 1)
    assert len(host) == 8
    assert host != m.auth_tag(key, "device", ch, nonce, 1)
    assert host != m.auth_tag(key, "host", ch, nonce, 2)
    assert host != m.auth_tag(b"x" * 32, "host", ch, nonce, 1)
    with pytest.raises(ValueError, match="role"):
        m.auth_tag(key, "peer", ch, nonce, 1)


@given(
    data=st.binary(max_size=3000),
    max_payload=st.integers(256, 1024),
    start=st.integers(0, 3000),
)
def test_data_chunks_fit_one_frame_and_reassemble(
    data: bytes, max_payload: int, start: int
) -> None:
    start = min(start, len(data))
    chunks = m.data_chunks(9, data, max_payload, offset=start)
    wires = [m.encode_request(m.Opcode.TENSOR_DATA, i, c) for i, c in enumerate(chunks)]
    assert all(len(w) <= max_payload for w in wires)
    bodies = [m.decode_request(w).body for w in wires]
    assert b"".join(b["data"] for b in bodies) == data[start:]
    offsets = [b["offset"] for b in bodies]
    assert offsets == sorted(offsets) and (not offsets or offsets[0] == start)


def test_largest_read_response_overhead_is_read_overhead() -> None:
    desc = {
        "id": 2**32 - 1,
        "dtype": wd.DType.FP32,
        "scale": m.zero_scale(),
        "shape": [1] * m.MAX_NDIM,
        "nbytes": 4,
        "crc32": 0,
    }
    body = {"tensor": desc, "offset": 0, "data": b""}
    assert len(m.encode_response(m.Opcode.TENSOR_READ, 1, body)) == m.READ_OVERHEAD
