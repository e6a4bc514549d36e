"""``microtrain serve``: the emulator in its own process behind a real pty or a TCP port.

Servers run as subprocesses (``python -m host.cli serve ...``) and the host reaches them
exactly as it reaches a board. The pacing arithmetic of ``--baud`` is checked on the pacer
itself; one end-to-end run only checks that a paced transfer is not faster than the line.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st

import host
from host import cli, cli_serve, errors, nn
from host.cli_serve import Pacer, ServeError
from host.runner import Runner
from protocol.messages import Opcode
from protocol.status import Status

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes.fromhex("5ec12e7c0ffee0ddba11f00dfeedface")
START_DEADLINE = 30.0
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def _first_line(proc: subprocess.Popen[str]) -> str:
    """The server's first stdout line (PTY <path> / TCP <host:port>), or a failure with its
    stderr if it exits or stays silent."""
    assert proc.stdout is not None
    end = time.monotonic() + START_DEADLINE
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line.strip()
        if proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"microtrain serve did not start: {err}")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM (then SIGKILL) the server; (exit status, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


@contextlib.contextmanager
def served(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A running ``microtrain serve ARGS``: (process, address from its first line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "serve", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        kind, _, where = line.partition(" ")
        assert kind in ("PTY", "TCP") and where, line
        yield proc, where
    finally:
        _stop(proc)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 4)).astype(np.float32), (np.arange(16) % 3).astype(np.int64)


def _train(url: str, **kw: object) -> tuple[dict, dict[str, np.ndarray]]:
    """info and weights after deploy + 4 dfxp8+sr training steps (seeded)."""
    x, y = _data()
    with host.open(url, timeout=10, **kw) as dev:  # type: ignore[arg-type]
        model = dev.deploy(mlp(), precision="dfxp8+sr", optimizer=host.optim.SGD(0.1), seed=4)
        for _ in range(4):
            model.train_step(x, y)
        return dev.info(), model.get_weights()


# ---------------------------------------------------------------------- end to end


def test_pty_training_equals_the_in_process_emulator_and_the_port_reopens() -> None:
    with served("--pty", "--seed", "1") as (_, path):
        assert path.startswith("/dev/")
        info, w_pty = _train(path)
        info2, w_again = _train(path)  # a second host session on the same pty
    _, w_emu = _train("emu://hnpu-v2?seed=1")
    assert info["preset"] == "hnpu-v2" and info2["schema_hash"] == info["schema_hash"]
    for k in w_emu:
        np.testing.assert_array_equal(w_pty[k], w_emu[k])
        np.testing.assert_array_equal(w_again[k], w_emu[k])


def test_the_conformance_suite_passes_unchanged_against_a_served_pty() -> None:
    with served("--pty") as (_, path):
        run = subprocess.run(
            [*PYTEST, "tests/conformance", "--device", path],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_tcp_serves_one_connection_at_a_time_each_a_fresh_session() -> None:
    with served("--tcp", "127.0.0.1:0") as (proc, where):
        url = f"socket://{where}"
        with host.open(url, timeout=10) as dev:
            model = dev.deploy(mlp(), mlp().init_weights(seed=1))
            # While one host is connected, another is turned away at once.
            with pytest.raises(errors.LinkLost):
                host.open(url, timeout=5)
            assert model.predict(np.ones((2, 4), np.float32)).shape == (2, 3)
        with host.open(url, timeout=10) as dev:  # the next connection: a fresh link session
            # The device kept its model, as a powered board does.
            body = dev._call(Opcode.GET_WEIGHTS, {"layer": 0})
            assert body["params"]
        code, err = _stop(proc)
    assert code == 0
    assert "connection 2" in err and "already connected" in err


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_a_keyed_server_refuses_hosts_without_the_key_and_never_shows_it(
    tmp_path: Path, transport: str
) -> None:
    key_file = tmp_path / "device.key"
    key_file.write_text(KEY.hex() + "\n")
    where = ("--pty",) if transport == "pty" else ("--tcp", "127.0.0.1:0")
    with served(*where, "--key-file", str(key_file)) as (proc, addr):
        url = addr if transport == "pty" else f"socket://{addr}"
        with pytest.raises(errors.AuthError, match="requires authentication"):
            host.open(url, timeout=10)
        with pytest.raises(errors.AuthError, match="refused the key"):
            host.open(url, timeout=10, key=b"not the key")
        _, weights = _train(url, key=KEY)
        assert set(weights) == set(mlp().param_shapes())
        # A new host session (a new link epoch, a new connection) must prove the key again:
        # a raw session that skips HELLO/AUTH is refused.
        runner = Runner(serial.serial_for_url(url, timeout=0.01), timeout=10)
        with pytest.raises(errors.DeviceError) as exc:
            runner.call(Opcode.READ_COUNTERS)
        runner.close()
        assert exc.value.status == Status.NOT_AUTHENTICATED
        code, err = _stop(proc)
    assert code == 0
    assert KEY.hex() not in err.lower()


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_killing_the_server_makes_the_host_raise_link_lost(transport: str) -> None:
    args = ("--pty",) if transport == "pty" else ("--tcp", "127.0.0.1:0")
    with served(*args) as (proc, where):
        url = where if transport == "pty" else f"socket://{where}"
        with host.open(url, timeout=5) as dev:
            model = dev.deploy(mlp())
            proc.kill()
            proc.wait(timeout=10)
            with pytest.raises(errors.LinkLost):
                model.predict(np.ones((1, 4), np.float32))


def test_sigint_stops_the_server_cleanly() -> None:
    with served("--pty") as (proc, _):
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)  # a second signal during the shutdown changes nothing
        proc.wait(timeout=10)
        code, err = _stop(proc)
    assert code == 0
    assert "stopped" in err
    assert "Traceback" not in err


def test_the_server_exits_when_its_parent_goes_away() -> None:
    # A parent that starts the server, reports its pid, and dies.
    script = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'host.cli', 'serve', '--pty'],"
        " stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,"
        " text=True)\n"
        "print(p.pid, p.stdout.readline().strip(), flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout.split()
    pid = int(out[0])
    assert out[1] == "PTY"
    end = time.monotonic() + 10
    while time.monotonic() < end and _alive(pid):
        time.sleep(0.05)
    alive = _alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def test_baud_pacing_keeps_a_transfer_no_faster_than_the_line() -> None:
    baud = 38_400
    x = np.arange(500, dtype=np.float32)  # 2000 bytes up, the same down
    line_time = 2 * x.nbytes * 10 / baud  # about 1 s
    with served("--pty", "--baud", str(baud)) as (_, path):
        with host.open(path, baudrate=baud, timeout=10) as dev:
            t0 = time.monotonic()
            dev._upload_array(9, x, "fp32")
            np.testing.assert_array_equal(dev._download(9), x)
            elapsed = time.monotonic() - t0
    # Only the order of magnitude: pacing can be late, never early by much.
    assert elapsed > 0.5 * line_time


# ---------------------------------------------------------------------- the pacer


def _drain(p: Pacer, n: int, start: float, jitter: list[float]) -> float:
    """Send n bytes, waking at each slot (late by jitter[i]); returns when the line is free."""
    now, left, i = start, n, 0
    while left:
        got = p.take(left, now)
        if got == 0:
            now = p.free_at + jitter[i % len(jitter)]
            i += 1
        left -= got
    return p.free_at


@given(
    baud=st.sampled_from([9_600, 115_200, 1_000_000, 3_000_000]),
    n=st.integers(1, 20_000),
    jitter=st.lists(st.floats(0, 0.0019), min_size=1, max_size=5),
)
def test_paced_bytes_take_ten_bits_each_whatever_the_wakeup_jitter(
    baud: int, n: int, jitter: list[float]
) -> None:
    p = Pacer(baud)
    end = _drain(p, n, 100.0, jitter)
    assert end - 100.0 == pytest.approx(n * 10 / baud, rel=1e-9, abs=1e-9)


def test_pacer_grants_nothing_before_the_line_is_free_and_no_credit_after_idle() -> None:
    p = Pacer(10_000)  # 1 ms per byte, 2-byte bursts
    assert p.take(100, 0.0) == 2
    assert p.free_at == pytest.approx(0.002)
    assert p.take(100, 0.001) == 0
    assert not p.ready(0.001)
    # Idle for a second: the next bytes start now, not a second ago.
    assert p.take(100, 1.0) == 2
    assert p.free_at == pytest.approx(1.002)


def test_unpaced_lines_grant_everything_at_once() -> None:
    p = Pacer(None)
    assert p.take(123_456, 0.0) == 123_456
    assert p.ready(0.0) and p.wake() is None


def test_a_session_sleeps_until_something_is_due() -> None:
    from device_model.firmware import Firmware

    s = cli_serve.Session(Firmware("hnpu-v2"), 10_000)  # 1 ms per byte
    now = time.monotonic()
    s.produce(now)  # the device's first SYNC goes out; its retry is the link's next timer
    s.out.clear()
    due = s.link.next_deadline()
    link_wait = 0.5 if due is None else min(max(due - now, 0.0), 0.5)
    assert link_wait > 0
    assert s.timeout(now, 0.5) == link_wait
    s.out += b"x" * 100
    assert s.timeout(now, 0.5) == link_wait  # the line is free: select waits for writability
    assert s.tx.take(100, now) == 2
    assert s.timeout(now, 0.5) == pytest.approx(min(0.002, link_wait))  # the line's next slot


# ---------------------------------------------------------------------- arguments


def _opts(**kw: object) -> cli_serve.ServeOptions:
    base: dict[str, object] = dict(
        preset="hnpu-v2", pty=False, tcp=None, baud=None, seed=None, key_file=None
    )
    base.update(kw)
    return cli_serve.options(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tcp", "message"),
    [
        ("nope", "HOST:PORT"),
        ("127.0.0.1:", "HOST:PORT"),
        ("127.0.0.1:x", "port 'x' is not an integer"),
        ("127.0.0.1:70000", "out of range; accepted 0..65535"),
        ("10.1.2.3:7000", "not a loopback address"),
        ("example.org:7000", "not an IP address"),
    ],
)
def test_bad_host_port_is_refused_with_what_is_accepted(tcp: str, message: str) -> None:
    with pytest.raises(ServeError, match=message):
        _opts(tcp=tcp)


def test_good_addresses_parse() -> None:
    assert _opts(tcp="127.0.0.1:7000").tcp == ("127.0.0.1", 7000)
    assert _opts(tcp="[::1]:0").tcp == ("::1", 0)
    assert _opts(tcp="localhost:7001").tcp == ("localhost", 7001)


def test_other_bad_arguments() -> None:
    with pytest.raises(ServeError, match="exactly one of --pty or --tcp"):
        _opts()
    with pytest.raises(ServeError, match=r"unknown preset 'hnpu-v9'; accepted: .*hnpu-v2"):
        _opts(pty=True, preset="hnpu-v9")
    with pytest.raises(ServeError, match="--baud must be a positive"):
        _opts(pty=True, baud=0)
    with pytest.raises(ServeError, match="--seed"):
        _opts(pty=True, seed=-1)


def test_key_file_errors_never_show_its_contents(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="cannot read key file"):
        _opts(pty=True, key_file=str(tmp_path / "missing.key"))
    secret = tmp_path / "bad.key"
    secret.write_text("s3cr3t-passphrase-not-hex")
    with pytest.raises(ServeError, match="does not hold hex text") as exc:
        _opts(pty=True, key_file=str(secret))
    assert "s3cr3t" not in str(exc.value)
    (tmp_path / "empty.key").write_text(" \n")
    with pytest.raises(ServeError, match="is empty"):
        _opts(pty=True, key_file=str(tmp_path / "empty.key"))
    (tmp_path / "ok.key").write_text("00 11\naa\n")
    assert _opts(pty=True, key_file=str(tmp_path / "ok.key")).key == bytes.fromhex("0011aa")


def test_the_cli_reports_bad_arguments_on_stderr_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["serve", "--tcp", "127.0.0.1:port"]) == 2
    assert "microtrain serve: --tcp port 'port' is not an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--pty", "--tcp", "127.0.0.1:1"])
    assert exc.value.code == 2


def test_a_port_in_use_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--tcp", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pick another port" in err


def test_bad_fault_arguments_say_what_is_accepted() -> None:
    with pytest.raises(ServeError, match=r"--faults: option corrupt=0.5 out of range; accepted"):
        _opts(pty=True, faults="corrupt=0.5")
    with pytest.raises(ServeError, match=r"--faults: unknown fault option 'crupt'"):
        _opts(pty=True, faults="crupt=1e-4")
    with pytest.raises(ServeError, match="accepted: both, to-device, to-host"):
        _opts(pty=True, faults="drop=0.1", fault_direction="sideways")
    with pytest.raises(ServeError, match="--fault-direction needs --faults"):
        _opts(pty=True, fault_direction="to-host")
    opts = _opts(pty=True, seed=7, faults="drop=0.1&reset_every=9", fault_direction="to-host")
    line = opts.fault_line()
    assert line is not None and line.seed == 7 and line.direction == "to-host"
    assert _opts(pty=True).fault_line() is None
