"""The emu:// pyserial port: URL parsing, the pyserial port contract, synchronous answers.

The protocol behind the port (every command, bad input, fuzzing) is tested in
tests/test_firmware.py through this same port.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from device_model import emu_port
from device_model.emu_port import EmuOptions, EmuSerial, parse_url
from protocol import messages as m
from protocol.framing import MAX_PAYLOAD
from protocol.link import Link, LinkConfig, Role


def _open(url: str, **kw: Any) -> Any:
    return serial.serial_for_url(url, **kw)


def test_serial_for_url_gives_an_emulator_port() -> None:
    port = _open("emu://hnpu-v2?seed=1", timeout=0)
    assert isinstance(port, EmuSerial) and isinstance(port, SerialBase)
    assert port.is_open
    assert port.firmware.preset.name == "hnpu-v2"
    assert port.options == EmuOptions(preset="hnpu-v2", seed=1)
    port.close()
    assert not port.is_open
    with pytest.raises(PortNotOpenError):
        port.read(1)
    with pytest.raises(PortNotOpenError):
        port.write(b"x")


def test_handler_module_and_registration() -> None:
    from device_model import protocol_emu

    assert protocol_emu.Serial is EmuSerial
    emu_port.register()
    emu_port.register()
    assert serial.protocol_handler_packages.count(emu_port.HANDLER_PACKAGE) == 1


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("emu://", EmuOptions()),
        ("emu://hnpu-v1", EmuOptions(preset="hnpu-v1")),
        ("EMU://hnpu-v2?seed=7", EmuOptions(seed=7)),
        (
            "emu://hnpu-v2?seed=3&key=00ff&max_payload=256&window=4",
            EmuOptions(seed=3, key=b"\x00\xff", max_payload=256, window=4),
        ),
    ],
)
def test_parse_url(url: str, want: EmuOptions) -> None:
    assert parse_url(url) == want


def test_link_offer_defaults_to_big_frames_with_or_without_faults() -> None:
    from protocol.framing import MAX_PAYLOAD

    clean = parse_url("emu://hnpu-v2")
    assert (clean.max_payload, clean.window) == (MAX_PAYLOAD, emu_port.CLEAN_WINDOW)
    faulty = parse_url("emu://hnpu-v2?corrupt=1e-4")
    assert (faulty.max_payload, faulty.window) == (MAX_PAYLOAD, emu_port.CLEAN_WINDOW)
    chosen = parse_url("emu://hnpu-v2?drop=0.01&max_payload=8192&window=16")
    assert (chosen.max_payload, chosen.window) == (8192, 16)
    with serial.serial_for_url("emu://hnpu-v2") as port:
        fw = port.firmware
        assert (fw.max_payload, fw.window) == (MAX_PAYLOAD, emu_port.CLEAN_WINDOW)


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("emu://hnpu-v9", ["hnpu-v9", "hnpu-v1", "hnpu-v2"]),
        ("emu://hnpu-v2?sed=1", ["sed", "seed", "key", "max_payload", "window"]),
        ("emu://hnpu-v2?seed=x", ["seed", "integer"]),
        ("emu://hnpu-v2?seed=-1", ["seed", "accepted"]),
        ("emu://hnpu-v2?seed=1&seed=2", ["seed", "twice"]),
        ("emu://hnpu-v2?key=zz", ["key", "hex"]),
        ("emu://hnpu-v2?max_payload=100", ["max_payload", f"256..{MAX_PAYLOAD}"]),
        ("emu://hnpu-v2?window=0", ["window", "1..64"]),
    ],
)
def test_bad_urls_name_what_is_accepted(url: str, names: list[str]) -> None:
    with pytest.raises(SerialException) as e:
        _open(url)
    for name in names:
        assert name in str(e.value)


def test_wrong_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="emu://PRESET"):
        parse_url("loop://")


def _sync_bytes(seed: int) -> bytes:
    port = _open(f"emu://hnpu-v2?seed={seed}", timeout=0)
    return bytes(port.read(1000))


def test_seed_makes_the_device_reproducible() -> None:
    first = _sync_bytes(1)
    assert first  # the device offers a link session (SYNC) on its own
    assert _sync_bytes(1) == first
    assert _sync_bytes(2) != first


def test_reads_honour_the_timeout_and_run_the_device_timers() -> None:
    port = _open("emu://hnpu-v2", timeout=0)
    assert port.read(1000)[:1] == b"\x00"  # the device's first SYNC, there without waiting
    assert port.read(10) == b""  # timeout 0: nothing more now, no waiting
    port.timeout = 0.01  # returns by the deadline with at most what was asked
    assert len(port.read(10)) <= 10
    # timeout None: blocks until ``size`` bytes came; the device's SYNC retry (its link timer
    # runs inside read) brings them.
    port.timeout = None
    assert port.read(3)[:1] == b"\x00"


def test_write_takes_bytes_only() -> None:
    port = _open("emu://hnpu-v2", timeout=0)
    with pytest.raises(TypeError):
        port.write("text")
    assert port.write(bytearray(b"\x00\x00")) == 2
    assert port.out_waiting == 0


def _established(port: Any) -> Link:
    host = Link(Role.HOST, LinkConfig(), rng=random.Random(5))
    end = time.monotonic() + 5
    while not host.established:
        assert time.monotonic() < end
        now = time.monotonic()
        host.poll(now)
        out = host.bytes_to_send(now)
        if out:
            port.write(out)
        data = port.read(port.in_waiting)
        if data:
            host.receive_bytes(data, time.monotonic())
    return host


def test_the_answer_is_in_the_read_buffer_when_write_returns() -> None:
    port = _open("emu://hnpu-v2?seed=4", timeout=0)
    host = _established(port)
    port.reset_input_buffer()
    body = {"protocol_major": 1, "protocol_minor": 0, "schema_hash": m.schema_hash(), "client": ""}
    host.send_message(0, m.encode_request(m.Opcode.HELLO, 11, body))
    port.write(host.bytes_to_send(time.monotonic()))
    waiting = port.in_waiting
    assert waiting > 0
    host.receive_bytes(port.read(waiting), time.monotonic())
    (msg,) = host.take_messages()
    resp = m.decode_response(msg.payload)
    assert resp.request_id == 11 and resp.body["preset"] == "hnpu-v2"


class _Silence:
    """A fault that loses everything the device sends."""

    def __init__(self, text: str) -> None:
        self.text = text

    def to_device(self, data: bytes) -> bytes:
        return data

    def to_host(self, data: bytes) -> bytes:
        return b""


def test_fault_options_join_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(emu_port.FAULT_OPTIONS, "mute", _Silence)
    opts = parse_url("emu://hnpu-v2?mute=1&seed=2")
    assert opts.seed == 2 and isinstance(opts.faults[0], _Silence)
    port = _open("emu://hnpu-v2?mute=1", timeout=0)
    assert port.read(1000) == b""
    with pytest.raises(SerialException, match="mute"):
        _open("emu://hnpu-v2?nosuch=1")
