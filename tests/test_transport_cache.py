"""The firmware's duplicate cache keeps request bytes (no digest) within a byte budget.

Every cached response keeps a reference to its request's bytes; a duplicate (same id, same
bytes) is answered from the cache and a reused id with other bytes executes. Requests longer
than CACHE_RAW_MAX are kept within CACHE_LONG_BYTES: the oldest long entries leave first, the
newest one always stays, and short entries are not evicted by the budget.
"""

from __future__ import annotations

import hashlib

import pytest

from device_model import firmware as fw_mod
from device_model.firmware import Firmware
from protocol import messages as m
from protocol.messages import Opcode
from tests.test_firmware import counting_executions


def _request(request_id: int, size: int, fill: int = 0) -> bytes:
    # A HELLO header with a body that does not decode: answered BAD_REQUEST, and cached.
    head = bytes([Opcode.HELLO]) + request_id.to_bytes(4, "little")
    return head + bytes([fill]) * (size - len(head))


def test_long_requests_are_not_hashed_and_tell_duplicates_from_reused_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fw = Firmware("hnpu-v2")
    runs = counting_executions(fw)

    def no_hash(*a: object, **k: object) -> object:
        raise AssertionError("the cache must not hash requests")

    monkeypatch.setattr(hashlib, "sha256", no_hash)
    a = _request(9, 3 * fw_mod.CACHE_RAW_MAX)
    first = fw.receive(a)
    assert m.decode_response(first[0]).is_error and len(runs) == 1
    assert fw.receive(bytes(bytearray(a))) == first and len(runs) == 1  # equal bytes: cached
    b = a[:-1] + b"\x01"  # same id and length, last byte differs: executes
    fw.receive(b)
    assert len(runs) == 2
    assert fw.receive(b) and len(runs) == 2


def test_long_requests_stay_within_the_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    long = 4 * fw_mod.CACHE_RAW_MAX
    monkeypatch.setattr(fw_mod, "CACHE_LONG_BYTES", 3 * long)
    fw = Firmware("hnpu-v2")
    runs = counting_executions(fw)
    small = [_request(100 + i, 64) for i in range(3)]
    for r in small:
        fw.receive(r)
    longs = [_request(i, long, fill=i + 1) for i in range(5)]
    for r in longs:
        fw.receive(r)
    assert fw._cache_long == 3 * long
    executed = len(runs)
    for r in [*longs[2:], *small]:  # kept: answered from the cache
        fw.receive(r)
    assert len(runs) == executed
    fw.receive(longs[0])  # evicted by the budget: executes again
    assert len(runs) == executed + 1
    assert fw._cache_long == 3 * long


def test_a_request_above_the_budget_is_still_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fw_mod, "CACHE_LONG_BYTES", 2 * fw_mod.CACHE_RAW_MAX)
    fw = Firmware("hnpu-v2")
    runs = counting_executions(fw)
    big = _request(5, 5 * fw_mod.CACHE_RAW_MAX)
    fw.receive(big)
    fw.receive(big)
    assert len(runs) == 1
    fw.receive(_request(6, 5 * fw_mod.CACHE_RAW_MAX))  # the newest stays, the older goes
    fw.receive(big)
    assert len(runs) == 3


def test_replacing_and_count_eviction_keep_the_byte_total(monkeypatch: pytest.MonkeyPatch) -> None:
    fw = Firmware("hnpu-v2", cache_size=2)
    long = 2 * fw_mod.CACHE_RAW_MAX
    fw.receive(_request(1, long))
    fw.receive(_request(1, long, fill=7))  # the same id, other bytes: replaces the entry
    assert fw._cache_long == long
    fw.receive(_request(2, 64))
    fw.receive(_request(3, 64))  # the count bound evicts id 1
    assert fw._cache_long == 0 and set(fw._cache) == {2, 3}
