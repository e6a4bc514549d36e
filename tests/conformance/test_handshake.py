"""Handshake: the device speaks this host's protocol and reports what it offers."""

from __future__ import annotations

from collections.abc import Callable

import host
from protocol import messages as m
from protocol.dtypes import DType
from protocol.framing import MAX_PAYLOAD, MIN_PAYLOAD


def test_protocol_version_and_schema_hash_match_the_host(dev: host.Device) -> None:
    info = dev.info()
    major, minor = (int(v) for v in info["protocol"].split("."))
    assert major == m.PROTOCOL_MAJOR
    assert minor >= 0
    assert info["schema_hash"] == m.schema_hash().hex()


def test_info_fields_name_a_usable_device(dev: host.Device) -> None:
    info = dev.info()
    assert isinstance(info["firmware"], str) and info["firmware"]
    assert isinstance(info["preset"], str) and info["preset"]
    known = {d.format_name for d in DType}
    assert "fp32" in info["formats"]
    assert set(info["formats"]) <= set(info["dtypes"]) <= known
    assert "bp" in info["algorithms"]
    limits = info["limits"]
    assert MIN_PAYLOAD <= limits["max_payload"] <= MAX_PAYLOAD
    assert MIN_PAYLOAD <= limits["link_max_payload"] <= limits["max_payload"]
    assert limits["window"] >= 1 and limits["link_window"] >= 1
    assert all(isinstance(v, float) for v in info["parameters"].values())


def test_a_second_session_gets_the_same_handshake(
    dev: host.Device, open_device: Callable[[], host.Device]
) -> None:
    with open_device() as other:
        again = other.info()
    first = dev.info()
    for k in ("protocol", "schema_hash", "firmware", "preset", "formats", "algorithms"):
        assert again[k] == first[k]
