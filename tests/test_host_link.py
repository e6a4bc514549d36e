"""The link runner's failure behaviour: deadlines, a silent device, a lost port, a restarted
device (replay and lost state), and a real pty."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import tty
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import serial
from serial import SerialException

import host
from device_model.firmware import Firmware
from device_model.firmware_link import DeviceLink
from host import errors, nn
from host.device import Device
from host.runner import VIRTUAL_BAUD, Runner
from protocol import messages as m
from protocol.messages import Opcode

# The emu:// handler, found by package name as host.open does (tests build ports directly).
if "device_model" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("device_model")

# Slack allowed past a deadline for the check itself and a loaded machine; a hang would blow
# far past it (the bound is about never hanging, not about speed).
SLACK = 5.0


class SilentPort:
    """A port whose other end never says anything."""

    baudrate = 115_200

    def __init__(self) -> None:
        self.timeout = 0.01
        self.written = 0
        self.is_open = True

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        time.sleep(self.timeout)
        return b""

    @property
    def in_waiting(self) -> int:
        return 0

    def close(self) -> None:
        self.is_open = False


class FaultyPort:
    """An emu:// port that can go silent, be unplugged, or restart its device."""

    baudrate = 115_200

    def __init__(self, url: str = "emu://hnpu-v2?seed=1") -> None:
        self.inner: Any = serial.serial_for_url(url, timeout=0.01)
        self.silent = False
        self.unplugged = False
        self.restart_url: str | None = None

    @property
    def timeout(self) -> float:
        return float(self.inner.timeout)

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.inner.timeout = value

    def write(self, data: bytes) -> int:
        if self.unplugged:
            raise SerialException("write failed: [Errno 5] Input/output error")
        if self.restart_url is not None:
            # These bytes are lost with the old device; a fresh one (new epoch) takes over.
            self.inner.close()
            self.inner = serial.serial_for_url(self.restart_url, timeout=0.01)
            self.restart_url = None
            return len(data)
        if self.silent:
            return len(data)
        return int(self.inner.write(data))

    def read(self, size: int = 1) -> bytes:
        if self.unplugged:
            raise SerialException("device reports readiness to read but returned no data")
        if self.silent:
            time.sleep(self.inner.timeout)
            return b""
        return bytes(self.inner.read(size))

    @property
    def in_waiting(self) -> int:
        return 0 if self.silent or self.unplugged else int(self.inner.in_waiting)

    def close(self) -> None:
        self.inner.close()


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


def test_a_silent_port_times_out_within_the_deadline() -> None:
    port = SilentPort()
    t0 = time.monotonic()
    with pytest.raises(errors.Timeout, match="did not answer within") as exc:
        Device(port, timeout=0.3)
    elapsed = time.monotonic() - t0
    assert exc.value.seconds >= 0.3
    assert elapsed < exc.value.seconds + SLACK
    assert port.written > 0  # it did try (SYNC frames)
    assert not port.is_open  # a failed open closes the port


def test_loop_port_hearing_itself_is_no_device() -> None:
    # loop:// echoes our own frames: the link even "connects" to itself, but nothing ever
    # answers a request.
    with pytest.raises(errors.Timeout):
        host.open("loop://", timeout=0.3)


def test_a_device_that_stops_answering_times_out_then_recovers() -> None:
    port = FaultyPort()
    dev = Device(port, timeout=0.5)
    model = dev.deploy(mlp())
    x = np.ones((2, 4), np.float32)
    before = model.predict(x)
    port.silent = True
    t0 = time.monotonic()
    with pytest.raises(errors.Timeout) as exc:
        model.predict(x)
    assert time.monotonic() - t0 < exc.value.seconds + SLACK
    port.silent = False
    # The link retransmits what was lost; the abandoned answer is dropped, the next call works.
    np.testing.assert_array_equal(model.predict(x), before)
    assert dev.counters()["ff"]["macs_total"] is not None
    dev.close()


def test_an_unplugged_port_raises_link_lost_and_stays_closed() -> None:
    port = FaultyPort()
    dev = Device(port, timeout=5.0)
    port.unplugged = True
    t0 = time.monotonic()
    with pytest.raises(errors.LinkLost, match="lost"):
        dev.counters()
    assert time.monotonic() - t0 < 5.0 + SLACK
    with pytest.raises(errors.LinkLost):
        dev.counters()


def test_a_restarted_device_answers_replayed_requests_and_reports_lost_models() -> None:
    port = FaultyPort("emu://hnpu-v2?seed=1")
    dev = Device(port, timeout=10.0)
    model = dev.deploy(mlp())
    # The next request's bytes die with the old device; the new one (another epoch) gets it
    # replayed by the link and answers it once.
    port.restart_url = "emu://hnpu-v2?seed=2"
    counters = dev.counters()
    assert dev.runner.resets == 1
    assert counters["ff"]["macs_total"] == 0  # a fresh device: nothing counted yet
    with pytest.raises(errors.StateLost, match="deploy it again"):
        model.predict(np.ones((1, 4), np.float32))
    again = dev.deploy(mlp())
    assert again.predict(np.ones((1, 4), np.float32)).shape == (1, 2)
    dev.close()


def test_a_restart_during_a_model_call_is_state_lost() -> None:
    port = FaultyPort("emu://hnpu-v2?seed=1")
    dev = Device(port, timeout=10.0)
    model = dev.deploy(mlp())
    port.restart_url = "emu://hnpu-v2?seed=3"
    with pytest.raises(errors.StateLost):
        model.train_step(np.ones((2, 4), np.float32), np.array([0, 1]))
    dev.close()


def test_a_device_restarted_unnoticed_times_out_once_then_resynchronises() -> None:
    # Same seed, so the same link epoch: the host cannot see the restart, and the first
    # request is lost in a session the device no longer has. After the timeout the host
    # starts a new session; the device is greeted again and its lost model is reported.
    port = FaultyPort("emu://hnpu-v2?seed=1")
    dev = Device(port, timeout=1.0)
    model = dev.deploy(mlp())
    port.restart_url = "emu://hnpu-v2?seed=1"
    with pytest.raises(errors.Timeout):
        dev.counters()
    assert dev.counters()["ff"]["macs_total"] == 0
    with pytest.raises(errors.StateLost):
        model.predict(np.ones((1, 4), np.float32))
    assert dev.deploy(mlp()).predict(np.ones((1, 4), np.float32)).shape == (1, 2)
    dev.close()


def test_request_ids_start_at_random_so_sessions_do_not_collide() -> None:
    a = Runner(SilentPort())
    b = Runner(SilentPort())
    assert a.submit(Opcode.READ_COUNTERS) != b.submit(Opcode.READ_COUNTERS)


def test_deadlines_scale_with_payload_and_baud_rate() -> None:
    slow = Runner(SilentPort(), timeout=1.0, baudrate=9600)
    fast = Runner(SilentPort(), timeout=1.0, baudrate=3_000_000)
    assert slow.deadline(0) > 1.0
    assert slow.deadline(100_000) > slow.deadline(1000) > fast.deadline(1000) > 1.0
    # 100 kB at 9600 baud take ~104 s on the wire: the deadline must allow it.
    assert slow.deadline(100_000) > 100_000 * 10 / 9600
    # Ports that are no UART (emu://, socket://) get a nominal line rate, not pyserial's
    # default 9600 baud, so a stalled bulk transfer does not wait for half an hour.
    assert Runner(SilentPort()).baudrate == VIRTUAL_BAUD
    assert Runner(serial.serial_for_url("loop://", baudrate=9600)).baudrate == VIRTUAL_BAUD


class HelloWithOtherMajor(Device):
    """A host that claims another protocol major (what an incompatible host would send)."""

    def _hello_request(self) -> dict[str, Any]:
        return {**super()._hello_request(), "protocol_major": m.PROTOCOL_MAJOR + 1}


def test_protocol_major_mismatch_is_refused_with_a_clear_error() -> None:
    port = serial.serial_for_url("emu://hnpu-v2", timeout=0.01)
    with pytest.raises(errors.ProtocolMismatch, match="same major required"):
        HelloWithOtherMajor(port)
    assert not port.is_open


class TolerantDeviceOtherSchema(Device):
    """The device accepts the HELLO but answers a schema the host does not speak: the host
    itself must refuse (a device may answer HELLO whatever the host sent)."""

    def _hello_request(self) -> dict[str, Any]:
        body = super()._hello_request()
        real = self.runner.call

        def call(opcode: Opcode, b: Any = None, **kw: Any) -> Any:
            out = real(opcode, b, **kw)
            if opcode == Opcode.HELLO:
                out = {**out, "schema_hash": bytes(8)}
            return out

        self.runner.call = call  # type: ignore[method-assign,assignment]
        return body


def test_a_device_answering_another_schema_hash_is_refused_by_the_host() -> None:
    with pytest.raises(errors.ProtocolMismatch, match="0000000000000000"):
        TolerantDeviceOtherSchema(serial.serial_for_url("emu://hnpu-v2", timeout=0.01))


# ----------------------------------------------------------------------------- a real pty


PTY_KEY = b"pty-device-key"


@pytest.fixture
def pty_device() -> Iterator[tuple[str, int, threading.Event]]:
    """The firmware served over a real pty by a thread; yields (path, master fd, stop)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    stop = threading.Event()
    dl = DeviceLink(Firmware("hnpu-v2", seed=4, key=PTY_KEY))

    def serve() -> None:
        try:
            while not stop.is_set():
                r, _, _ = select.select([master], [], [], 0.01)
                data = os.read(master, 1 << 16) if r else b""
                out = dl.feed(data, time.monotonic())
                if out:
                    os.write(master, out)
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, master, stop
    stop.set()
    t.join(2)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_training_over_a_real_pty_then_closing_it_is_link_lost(
    pty_device: tuple[str, int, threading.Event],
) -> None:
    path, master, stop = pty_device
    # A second session on the same device authenticates again (a fresh challenge and a
    # counter above the first session's).
    for _ in range(2):
        dev = host.open(path, baudrate=3_000_000, timeout=5.0, key=PTY_KEY)
        assert dev.info()["preset"] == "hnpu-v2"
        assert "auth_required" in dev.info()["features"]
        dev.close()
    dev = host.open(path, baudrate=3_000_000, timeout=5.0, key=PTY_KEY)
    model = dev.deploy(mlp(), optimizer=host.optim.SGD(0.1))
    res = model.train_step(np.ones((4, 4), np.float32), np.array([0, 1, 0, 1]))
    assert np.isfinite(res.loss)
    stop.set()
    time.sleep(0.05)
    os.close(master)  # unplug: the pty's other end goes away
    t0 = time.monotonic()
    with pytest.raises(errors.LinkLost):
        dev.counters()
    assert time.monotonic() - t0 < dev.runner.deadline() + SLACK


def test_spy_url_over_the_pty_logs_the_traffic(
    pty_device: tuple[str, int, threading.Event], tmp_path: Any
) -> None:
    path, _, _ = pty_device
    log = tmp_path / "spy.txt"
    with host.open(f"spy://{path}?file={log}", timeout=5.0, key=PTY_KEY) as dev:
        assert dev.info()["preset"] == "hnpu-v2"
    assert log.stat().st_size > 0


@pytest.fixture
def tcp_device() -> Iterator[tuple[int, threading.Event]]:
    """The firmware behind a TCP socket served by a thread; yields (port, hang-up event)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    hang_up = threading.Event()
    dl = DeviceLink(Firmware("hnpu-v2", seed=6))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while not hang_up.is_set():
                r, _, _ = select.select([conn], [], [], 0.01)
                data = conn.recv(1 << 16) if r else b""
                if r and not data:
                    return
                out = dl.feed(data, time.monotonic())
                if out:
                    conn.sendall(out)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port, hang_up
    hang_up.set()
    t.join(2)
    server.close()


def test_training_over_tcp_then_a_hang_up_is_link_lost(
    tcp_device: tuple[int, threading.Event],
) -> None:
    port, hang_up = tcp_device
    dev = host.open(f"socket://127.0.0.1:{port}", timeout=5.0)
    model = dev.deploy(mlp(), optimizer=host.optim.SGD(0.1))
    assert np.isfinite(model.train_step(np.ones((4, 4), np.float32), np.array([0, 1, 0, 1])).loss)
    hang_up.set()
    time.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises(errors.LinkLost):
        dev.counters()
    assert time.monotonic() - t0 < dev.runner.deadline() + SLACK


def test_a_restarted_device_with_a_key_is_authenticated_again() -> None:
    key = "00112233445566778899aabbccddeeff"
    port = FaultyPort(f"emu://hnpu-v2?seed=1&key={key}")
    dev = Device(port, key=bytes.fromhex(key), timeout=10.0)
    port.restart_url = f"emu://hnpu-v2?seed=2&key={key}"
    # The replayed request meets an unauthenticated new device: the host greets it, proves
    # the key again and retries (the device did not execute the refused request).
    assert dev.counters()["ff"]["macs_total"] == 0
    assert dev.runner.resets == 1
    dev.deploy(mlp())
    dev.close()
