#!/usr/bin/env python3
"""Fault campaign: seeded training and tensor traffic over ``emu://`` under each fault setting.

For every setting, and for a fault-free reference before every setting and after the last,
one run does, through ``host.open``:

* training: deploy a small MLP (SGD), ``--steps`` train steps on seeded data, get_weights; the
  SHA-256 of the final weights must equal the fault-free run's;
* tensor traffic: ``--tensor-rounds`` rounds of set_weights / get_weights on a 512x512 layer
  (1 MiB up and 1 MiB down per round) with seeded random weights; every read must equal
  what was written.

The device-reset setting (``reset_every=--reset-every``, default a reset every 40 frames to the
device on average) runs the training part again and again, each run seeded like the reference
and each final hash checked, until ``--resets`` device resets (default 1,000) have happened.
A reset loses the device's state; the host reports it (``StateLost``) and this script recovers
the way a user would: deploy again from its last checkpoint (the weights after the last
completed step) and redo the step. A reset reported as DeviceError(UNKNOWN_TENSOR or NO_MODEL)
instead is counted apart (state_lost_as_device_error) and recovered the same way. Any other
host error ends the run (the row's ``error``).

Exactly once is checked on request-id logs: every request the device's firmware executes (not
answered from its cache) is logged with its request id, per device (a reset makes a new one).
``duplicates_executed`` counts ids executed twice by one device, ``lost`` ids the host sent that
no device executed, ``replayed_after_reset`` ids executed by an old device that died before its
answer got through and again by the new one (the link replays unanswered requests; what the old
device did died with its state).

Reconnect time: for every reset, the time from the new device existing (it is ready at once in
this in-process port) to the host receiving the first response from it (from the new link epoch).

Printed as JSON (``--json-out`` writes it to a file too), one row per setting: commands (host
requests), payload_bytes (tensor bytes moved), wire_bytes (both directions), undetected_errors
(weight hash mismatches plus tensor read-backs that differ), state_lost (recoveries), the
request-id checks above, faults injected, seconds, goodput (payload bytes per second relative
to the mean rate of the two fault-free runs around the setting), cpu_goodput (per CPU second)
and wire_goodput (payload bytes per wire byte relative to fault-free: the same figure without
timing noise). ``--markdown`` prints the table for docs/reliability.md instead; ``--pty`` runs
every setting over ``microtrain serve --pty --faults`` (see ``run_pty``).

    python tools/fault_campaign.py --quick        # about a minute
    python tools/fault_campaign.py --json-out campaign.json
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import host
from device_model.emu_port import EmuSerial
from host import errors, nn
from host.runner import Runner
from protocol import messages as m
from protocol.framing import DEFAULT_PAYLOAD
from protocol.link import DEFAULT_WINDOW
from protocol.messages import Status
from protocol.status import MessageError

#: Every run uses the link's default frame size and window, which emu:// also picks under a
#: fault option (on a clean port it offers 16 KiB x 32): the reference differs only by faults.
BASE = f"emu://hnpu-v2?seed=1&max_payload={DEFAULT_PAYLOAD}&window={DEFAULT_WINDOW}"
#: (name, URL query) of every setting after the fault-free reference, resets excepted.
SETTINGS: list[tuple[str, str]] = [
    ("corrupt 1e-5", "corrupt=1e-5"),
    ("corrupt 1e-4", "corrupt=1e-4"),
    ("corrupt 1e-3", "corrupt=1e-3"),
    ("drop 1%", "drop=0.01"),
    ("dup 1%", "dup=0.01"),
    ("insert 1e-4", "insert=1e-4"),
    ("delete 1e-4", "delete=1e-4"),
    ("all of them", "corrupt=1e-4&drop=0.01&dup=0.01&insert=1e-4&delete=1e-4"),
]
TENSOR_SHAPE = (512, 512)
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One setting's figures."""

    setting: str
    url: str
    runs: int = 0
    commands: int = 0
    device_executed: int = 0
    #: Request ids executed more than once by one device.
    duplicates_executed: int = 0
    #: Request ids the host sent that no device executed.
    lost: int = 0
    #: Request ids executed by a device that then restarted, and again by its successor.
    replayed_after_reset: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0
    undetected_errors: int = 0
    state_lost: int = 0
    #: Device resets the host reported as a DeviceError (UNKNOWN_TENSOR / NO_MODEL) instead
    #: of StateLost; recovered like StateLost.
    state_lost_as_device_error: int = 0
    seconds: float = 0.0
    #: CPU seconds of this process (host and device both run in it): the work, without waits.
    cpu_seconds: float = 0.0
    goodput: float = 1.0
    #: Payload bytes per CPU second relative to fault-free: less sensitive to machine load,
    #: blind to time spent waiting (timers, quiet time).
    cpu_goodput: float = 1.0
    #: Payload bytes per wire byte relative to fault-free: goodput free of timing noise.
    wire_goodput: float = 1.0
    weights_sha256: str = ""
    #: The exception that ended the run early, if any ("" when it completed).
    error: str = ""
    faults: dict[str, int] = field(default_factory=dict)
    #: Seconds from a restarted device being ready to the host's next answer from it.
    reconnect_s: list[float] = field(default_factory=list)
    #: Fault-free row only: min and max over its runs of each goodput against their mean.
    spread: dict[str, list[float]] = field(default_factory=dict)


class Meter:
    """Counts what crosses an EmuSerial and every device behind it (resets make new ones):
    wire bytes, request ids executed per device, and reconnect times."""

    def __init__(self, dev: host.Device) -> None:
        port = dev.runner.port
        assert isinstance(port, EmuSerial)
        self.port = port
        self.wire = 0
        #: Per device: request id -> times executed.
        self.logs: list[collections.Counter[int]] = []
        self.reconnect: list[float] = []
        #: After a reset: when the new device was made, and the ids it was asked.
        self._ready: tuple[float, set[int]] | None = None
        self._watch(port._dev())
        write, read, new_device = port.write, port.read, port._new_device
        link = dev.runner.link
        take = link.take_messages

        def counted_write(data: Any) -> int | None:
            n = write(data)
            self.wire += n or 0
            return n

        def counted_read(size: int = 1) -> bytes:
            out = read(size)
            self.wire += len(out)
            return out

        def tracked_device(seed: int) -> Any:
            d = new_device(seed)
            self._ready = (time.monotonic(), self._watch(d))
            return d

        def timed_take() -> Any:
            msgs = take()
            if msgs and self._ready is not None:
                t, asked = self._ready
                # The first response the new device gave (a response of the old one may
                # still arrive after the reset: it is not counted).
                if any(_response_id(msg.payload) in asked for msg in msgs):
                    self.reconnect.append(time.monotonic() - t)
                    self._ready = None
            return msgs

        port.write = counted_write  # type: ignore[method-assign]
        port.read = counted_read  # type: ignore[method-assign]
        port._new_device = tracked_device  # type: ignore[method-assign]
        link.take_messages = timed_take  # type: ignore[method-assign]

    def _watch(self, device: Any) -> set[int]:
        """Log the request ids ``device``'s firmware executes (not answered from its cache);
        returns the set of every id it is asked (executed or not), filled as it runs."""
        fw = device.firmware
        log: collections.Counter[int] = collections.Counter()
        asked: set[int] = set()
        self.logs.append(log)
        receive = fw.receive

        def logged(message: Any, *a: Any, **kw: Any) -> Any:
            rid = int.from_bytes(bytes(message[1:5]), "little")
            asked.add(rid)
            before = fw.executed
            out = receive(message, *a, **kw)
            if fw.executed > before:
                log[rid] += 1
            return out

        fw.receive = logged
        return asked

    def check(self, row: Row, sent: set[int]) -> None:
        """Add the request-id checks of this run to ``row``."""
        anywhere: collections.Counter[int] = collections.Counter()
        for log in self.logs:
            row.device_executed += sum(log.values())
            row.duplicates_executed += sum(n - 1 for n in log.values() if n > 1)
            anywhere.update(log.keys())
        row.replayed_after_reset += sum(1 for n in anywhere.values() if n > 1)
        # HELLO/AUTH of the session are sent before the meter counts: only counted ids.
        row.lost += len(sent - anywhere.keys())
        row.reconnect_s += [round(t, 4) for t in self.reconnect]


def _response_id(payload: bytes) -> int | None:
    try:
        return int(m.decode_response(payload).request_id)
    except MessageError:
        return None


def count_wire_bytes(dev: host.Device) -> list[int]:
    """Wrap the device's port so every byte read or written is counted; the one-element list
    holds the running total."""
    port = dev.runner.port
    read, write = port.read, port.write
    wire = [0]

    def counted_read(size: int = 1) -> bytes:
        out: bytes = read(size)
        wire[0] += len(out)
        return out

    def counted_write(data: Any) -> int | None:
        n: int | None = write(data)
        wire[0] += n or 0
        return n

    port.read, port.write = counted_read, counted_write
    return wire


def digest(w: dict[str, np.ndarray]) -> str:
    """SHA-256 of a weights dict, keys in order: the identity of a training run's result."""
    return hashlib.sha256(b"".join(k.encode() + w[k].tobytes() for k in sorted(w))).hexdigest()


_LOST = {Status.UNKNOWN_TENSOR, Status.NO_MODEL}


def _retrying(dev: host.Device, fn: Any, recover: Any, row: Row) -> Any:
    """``fn()``; on a state loss (StateLost, or a DeviceError of a lost tensor or model across
    a reset), ``recover()`` then ``fn()`` again: a device reset loses the model."""
    lost = False
    for _ in range(1000):
        resets = dev.runner.resets
        try:
            if lost:
                recover()
            return fn()
        except errors.StateLost:
            row.state_lost += 1
        except errors.DeviceError as e:
            if dev.runner.resets == resets or e.status not in _LOST:
                raise
            row.state_lost_as_device_error += 1
        lost = True
    raise RuntimeError("1000 state losses in a row")


def run(name: str, url: str, steps: int, rounds: int, row: Row | None = None) -> Row:
    """One run of a setting (training, then ``rounds`` of tensor traffic) added to ``row``; a
    run that fails (e.g. times out) sets the row's ``error``."""
    row = row or Row(name, url)
    t0 = time.monotonic()
    c0 = time.process_time()
    dev = host.open(url, timeout=5.0)
    meter = Meter(dev)
    sent: set[int] = set()
    try:
        _run(dev, row, steps, rounds, sent)
    except (errors.MicrotrainError, RuntimeError) as e:
        row.error = f"{type(e).__name__}: {e}"
    finally:
        dev.close()
    meter.check(row, sent)
    row.runs += 1
    row.wire_bytes += meter.wire
    for k, v in meter.port.fault_stats.items():
        row.faults[k] = row.faults.get(k, 0) + v
    row.seconds = round(row.seconds + time.monotonic() - t0, 3)
    row.cpu_seconds = round(row.cpu_seconds + time.process_time() - c0, 3)
    return row


#: The server's closing log line (host/cli_serve.py ``Board.summary``).
SERVE_SUMMARY = r"(\d+) requests executed, (\d+) device restarts(?:; faults .*?\): (.*))?"


class ServedDevice:
    """``microtrain serve --pty --seed S [--faults F]`` in a subprocess, its stderr read by a
    thread: device restarts and the time each restarted device was ready (the server logs it
    on the system's monotonic clock), and the closing counts."""

    def __init__(self, faults: str, seed: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "serve", "--pty", "--seed", str(seed)]
            + (["--faults", faults] if faults else []),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().split() if ready else []
        if len(line) != 2 or line[0] != "PTY":
            self.proc.kill()
            raise RuntimeError(f"microtrain serve did not start: {self.proc.stderr.read()}")
        self.path = line[1]
        self.lines: list[str] = []
        self.restarts = 0
        #: time.monotonic() at which each restarted device was ready.
        self.ready_at: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "device restart" in line:
                self.restarts += 1
                found = re.search(r"ready at monotonic ([0-9.]+)", line)
                if found:
                    self.ready_at.append(float(found.group(1)))

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server so far (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self) -> dict[str, Any]:
        """SIGTERM the server; its closing counts (executed requests, restarts, faults)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        found = re.search(SERVE_SUMMARY, "\n".join(self.lines))
        out: dict[str, Any] = {"exit_status": self.proc.returncode}
        if found:
            out["executed"] = int(found.group(1))
            out["restarts"] = int(found.group(2))
            faults = {}
            for part in (found.group(3) or "").split(", "):
                kind, _, count = part.rpartition(" ")
                if count.isdigit():
                    faults[kind] = int(count)
            out["faults"] = faults
        return out


class EpochClock:
    """When the host got its first answer in each new link session: wraps the host link's
    ``take_messages``. Messages taken in the same batch as the new session's SYNC/CONFIG may
    be late answers of the old device, so the first answer counted is one taken after the
    host already knew the new epoch."""

    def __init__(self, dev: host.Device) -> None:
        link = dev.runner.link
        take = link.take_messages
        self.first_answer: list[float] = []
        state = {"seen": link.peer_epoch, "answered": link.peer_epoch}

        def timed_take() -> Any:
            msgs = take()
            epoch = link.peer_epoch
            if msgs and epoch == state["seen"] and epoch != state["answered"]:
                self.first_answer.append(time.monotonic())
                state["answered"] = epoch
            state["seen"] = epoch
            return msgs

        link.take_messages = timed_take  # type: ignore[method-assign]

    def reconnect(self, ready_at: list[float]) -> list[float]:
        """For each time a device was ready, seconds to the host's next first answer."""
        out = []
        for t in ready_at:
            after = [a for a in self.first_answer if a >= t]
            if after:
                out.append(round(after[0] - t, 4))
        return out


def _open_counting(url: str) -> tuple[host.Device, int]:
    """``host.open(url)`` and how many requests it sent (HELLO, AUTH) before returning."""
    orig = Runner.submit
    count = [0]

    def counting(self: Runner, *a: Any, **kw: Any) -> int:
        count[0] += 1
        return orig(self, *a, **kw)

    Runner.submit = counting  # type: ignore[method-assign]
    try:
        dev = host.open(url, timeout=5.0)
    finally:
        Runner.submit = orig  # type: ignore[method-assign]
    return dev, count[0]


def run_pty(name: str, faults: str, steps: int, rounds: int, row: Row | None = None) -> Row:
    """``run`` over ``microtrain serve --pty --faults FAULTS``: the device in another process
    behind a real pty. Exactly once is checked on counts (the server's executed requests
    against the host's): ``duplicates_executed`` is the excess without resets; with resets it is
    reported as ``replayed_after_reset`` (an old device's work cannot be told apart)."""
    where = f"serve --pty --seed 1 --faults '{faults}'" if faults else "serve --pty --seed 1"
    row = row or Row(name, where)
    server = ServedDevice(faults)
    t0 = time.monotonic()
    c0 = time.process_time()
    sent: set[int] = set()
    wire = [0]
    clock: EpochClock | None = None
    pre = 0
    try:
        dev, pre = _open_counting(server.path)
        wire = count_wire_bytes(dev)
        clock = EpochClock(dev)
        try:
            _run(dev, row, steps, rounds, sent)
        finally:
            dev.close()
    except (errors.MicrotrainError, RuntimeError) as e:
        row.error = f"{type(e).__name__}: {e}"
    cpu = server.cpu_seconds()
    closing = server.stop()
    executed = int(closing.get("executed", 0))
    row.device_executed += executed
    extra = executed - pre - len(sent)
    if "reset_every" in faults:
        row.replayed_after_reset += max(extra, 0)
    else:
        row.duplicates_executed += max(extra, 0)
    row.lost += max(-extra, 0) if not row.error else 0
    if clock is not None:
        row.reconnect_s += clock.reconnect(server.ready_at)
    row.runs += 1
    row.wire_bytes += wire[0]
    for k, v in closing.get("faults", {}).items():
        row.faults[k] = row.faults.get(k, 0) + v
    row.seconds = round(row.seconds + time.monotonic() - t0, 3)
    row.cpu_seconds = round(row.cpu_seconds + time.process_time() - c0 + cpu, 3)
    return row


def _run(dev: host.Device, row: Row, steps: int, rounds: int, sent: set[int]) -> None:
    submit = dev.runner.submit

    def counted_submit(*a: Any, **kw: Any) -> int:
        rid = submit(*a, **kw)
        row.commands += 1
        sent.add(rid)
        return rid

    dev.runner.submit = counted_submit  # type: ignore[method-assign]

    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = host.optim.SGD(0.05)
    state: dict[str, Any] = {}

    def deploy(weights: dict[str, np.ndarray] | None) -> None:
        state["model"] = dev.deploy(net, optimizer=opt)
        if weights is not None:
            state["model"].set_weights(weights)

    _retrying(dev, lambda: deploy(None), lambda: None, row)
    ckpt = _retrying(dev, lambda: state["model"].get_weights(), lambda: deploy(None), row)
    rng = np.random.default_rng(0)
    resets = "reset" in row.url
    for _ in range(steps):
        x = rng.standard_normal((16, 32)).astype(np.float32)
        y = rng.integers(0, 10, 16)

        def step(x: np.ndarray = x, y: np.ndarray = y) -> dict[str, np.ndarray]:
            state["model"].train_step(x, y)
            return dict(state["model"].get_weights()) if resets else {}

        restore = ckpt  # the weights before this step
        got = _retrying(dev, step, lambda w=restore: deploy(w), row)
        ckpt = got or ckpt
        row.payload_bytes += x.nbytes
    final = _retrying(dev, lambda: state["model"].get_weights(), lambda: deploy(ckpt), row)
    sha = digest(final)
    if row.weights_sha256 and sha != row.weights_sha256:
        row.undetected_errors += 1  # runs of one setting must agree
    row.weights_sha256 = sha

    big = nn.Sequential(nn.Linear(*TENSOR_SHAPE))
    trng = np.random.default_rng(1)
    for _ in range(rounds):
        w = {
            "0.weight": trng.standard_normal(TENSOR_SHAPE[::-1]).astype(np.float32),
            "0.bias": trng.standard_normal(TENSOR_SHAPE[1]).astype(np.float32),
        }

        def traffic(w: dict[str, np.ndarray] = w) -> dict[str, np.ndarray]:
            model = dev.deploy(big)
            model.set_weights(w)
            return dict(model.get_weights())

        back = _retrying(dev, traffic, lambda: None, row)
        row.undetected_errors += sum(not np.array_equal(back[k], w[k]) for k in w)
        row.payload_bytes += 2 * sum(v.nbytes for v in w.values())


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        ).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance() -> dict[str, Any]:
    """The commit the figures come from, and the code files that differed from it."""
    dirty = _git("status", "--porcelain", "--", "protocol", "host", "device_model", "cext")
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted": [line[3:] for line in dirty.splitlines() if line[:2].strip()],
    }


def summary(xs: list[float]) -> dict[str, float]:
    """n, median, p95 and max of ``xs`` (seconds)."""
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(0.95 * len(s)))]
    return {"n": len(s), "median": statistics.median(s), "p95": p95, "max": s[-1]}


def _merge(name: str, refs: list[Row]) -> Row:
    """The fault-free runs as one row (sums; goodputs: the runs' spread as min..max)."""
    out = Row(name, refs[0].url, weights_sha256=refs[0].weights_sha256)
    for r in refs:
        for k in ("runs", "commands", "device_executed", "duplicates_executed", "lost"):
            setattr(out, k, getattr(out, k) + getattr(r, k))
        for k in ("payload_bytes", "wire_bytes", "undetected_errors", "state_lost"):
            setattr(out, k, getattr(out, k) + getattr(r, k))
        out.seconds = round(out.seconds + r.seconds, 3)
        out.cpu_seconds = round(out.cpu_seconds + r.cpu_seconds, 3)
        if r.weights_sha256 != refs[0].weights_sha256:
            out.undetected_errors += 1  # fault-free runs must agree too
        out.error = out.error or r.error
    out.goodput = 1.0
    out.cpu_goodput = 1.0
    out.wire_goodput = 1.0
    out.spread = {
        k: [round(min(getattr(r, k) for r in refs), 3), round(max(getattr(r, k) for r in refs), 3)]
        for k in ("goodput", "cpu_goodput", "wire_goodput")
    }
    return out


def _score(row: Row, refs: list[Row]) -> None:
    if row.error:
        row.goodput = row.wire_goodput = row.cpu_goodput = 0.0
        return
    if row.weights_sha256 != refs[0].weights_sha256:
        row.undetected_errors += 1
    ref_rate = statistics.mean(r.payload_bytes / r.seconds for r in refs)
    ref_cpu = statistics.mean(r.payload_bytes / max(r.cpu_seconds, 1e-6) for r in refs)
    ref_ratio = statistics.mean(r.payload_bytes / r.wire_bytes for r in refs)
    row.goodput = round((row.payload_bytes / row.seconds) / ref_rate, 3)
    row.cpu_goodput = round((row.payload_bytes / max(row.cpu_seconds, 1e-6)) / ref_cpu, 3)
    row.wire_goodput = round((row.payload_bytes / row.wire_bytes) / ref_ratio, 3)


def campaign(args: argparse.Namespace) -> dict[str, Any]:
    steps, rounds = (40, 4) if args.quick else (args.steps, args.tensor_rounds)
    target = args.resets if args.resets is not None else (20 if args.quick else 1000)
    only = set(args.only.split(",")) if args.only else None
    t_start = time.monotonic()
    source = provenance()  # the code this process loaded, not what the tree holds at the end

    def one(name: str, query: str, n_rounds: int, row: Row | None = None) -> Row:
        if args.pty:
            return run_pty(name, query, steps, n_rounds, row)
        return run(name, f"{BASE}&{query}" if query else BASE, steps, n_rounds, row)

    # A fault-free run before every setting and one after the last: each setting's goodput is
    # relative to the two fault-free runs around it, so that the machine's load, which drifts
    # over minutes on a shared machine, moves both alike.
    refs = [one("fault-free", "", rounds)]
    rows: list[Row] = []
    around: list[int] = []  # index in refs of the fault-free run before each row
    for name, query in SETTINGS:
        if only is not None and name not in only:
            continue
        if rows:
            refs.append(one("fault-free", "", rounds))
        row = one(name, f"{query}&fault_seed={args.fault_seed}", rounds)
        rows.append(row)
        around.append(len(refs) - 1)
        print(f"{name}: {row.seconds} s {row.error}", file=sys.stderr, flush=True)
    if target and (only is None or "resets" in only):
        query = f"reset_every={args.reset_every}"
        row = Row("resets", f"{query}&fault_seed={args.fault_seed}+k")
        k = 0
        while row.faults.get("device_resets", 0) < target and not row.error:
            one("resets", f"{query}&fault_seed={args.fault_seed + k}", 0, row)
            k += 1
            print(f"resets: {row.faults} in {row.seconds} s", file=sys.stderr, flush=True)
        rows.append(row)
        around.append(len(refs) - 1)
    refs.append(one("fault-free", "", rounds))
    for i, row in zip(around, rows, strict=True):
        _score(row, [refs[i], refs[i + 1]])
    for ref in refs:
        _score(ref, refs)
    rows = [_merge("fault-free", refs), *rows]
    reconnect = [t for r in rows for t in r.reconnect_s]
    return {
        "command": " ".join(["tools/fault_campaign.py", *args.argv]),
        **source,
        "seconds": round(time.monotonic() - t_start, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "path": "serve --pty" if args.pty else "emu://",
        "steps": steps,
        "tensor_rounds": rounds,
        "totals": {
            "commands": sum(r.commands for r in rows),
            "payload_mib": round(sum(r.payload_bytes for r in rows) / 2**20, 1),
            "device_resets": sum(r.faults.get("device_resets", 0) for r in rows),
        },
        "reconnect_s": summary(reconnect),
        "rows": [asdict(r) for r in rows],
    }


def _fmt_faults(faults: dict[str, int]) -> str:
    short = {
        "corrupted_bytes": "corrupted",
        "inserted_bytes": "inserted",
        "deleted_bytes": "deleted",
        "dropped_frames": "dropped frames",
        "duplicated_frames": "dup frames",
        "device_resets": "resets",
    }
    return ", ".join(f"{v} {short.get(k, k)}" for k, v in faults.items()) or "-"


def markdown(out: dict[str, Any]) -> str:
    """The campaign as a Markdown table (docs/reliability.md)."""
    head = (
        "| setting | runs | commands | dup exec | replayed | lost | payload MiB | wire MiB "
        "| undetected | state lost | faults | s | goodput | CPU goodput | wire goodput |"
    )
    lines = [head, "|" + " --- |" * 15]
    for r in out["rows"]:
        lost = r["state_lost"] + r["state_lost_as_device_error"]
        lines.append(
            f"| {r['setting']} | {r['runs']} | {r['commands']} | {r['duplicates_executed']} | "
            f"{r['replayed_after_reset']} | "
            f"{r['lost']} | {r['payload_bytes'] / 2**20:.1f} | {r['wire_bytes'] / 2**20:.1f} | "
            f"{r['undetected_errors']} | {lost} | {_fmt_faults(r['faults'])} | "
            f"{r['seconds']:.1f} | "
            + (
                f"**{r['error'].split(':')[0]}** | 0 | 0 |"
                if r["error"]
                else "- | - | - |"  # training only, with a checkpoint read per step
                if "reset_every" in r["url"]
                else " | ".join(f"1 ({a}..{b})" for a, b in r["spread"].values()) + " |"
                if r.get("spread")
                else f"{r['goodput']} | {r['cpu_goodput']} | {r['wire_goodput']} |"
            )
        )
    rc = out["reconnect_s"]
    if rc.get("n"):
        lines.append("")
        lines.append(
            f"Reconnect after a reset (device ready to host's next answer, {rc['n']} resets): "
            f"median {rc['median'] * 1e3:.0f} ms, p95 {rc['p95'] * 1e3:.0f} ms, "
            f"max {rc['max'] * 1e3:.0f} ms."
        )
    return "\n".join(lines)


def failures(out: dict[str, Any]) -> list[str]:
    """Settings that broke exactly-once or bit-exactness (a loud timeout is not one)."""
    return [
        r["setting"]
        for r in out["rows"]
        if r["undetected_errors"] or r["duplicates_executed"] or (r["lost"] and not r["error"])
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    ap.add_argument("--steps", type=int, default=400, help="train steps per run")
    ap.add_argument("--tensor-rounds", type=int, default=40, help="1 MiB up+down rounds")
    ap.add_argument("--reset-every", type=int, default=40, help="mean frames between resets")
    ap.add_argument(
        "--resets", type=int, default=None, help="device resets to reach (default 1000, quick 20)"
    )
    ap.add_argument("--fault-seed", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated setting names (and 'resets')")
    ap.add_argument("--json-out", default="", help="also write the JSON to this file")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table, not JSON")
    ap.add_argument(
        "--pty",
        action="store_true",
        help="run every setting over microtrain serve --pty --faults (a device in another "
        "process behind a real pty) instead of emu://",
    )
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    out = campaign(args)
    text = json.dumps(out, indent=1)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(markdown(out) if args.markdown else text)
    bad = failures(out)
    if bad:
        print(f"exactly-once or bit-exactness broken in: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
