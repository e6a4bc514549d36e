#!/usr/bin/env python3
"""Fault campaign: seeded training and tensor traffic over ``emu://`` under each fault setting.

For every setting (fault-free first, as the reference) one run does, through ``host.open``:

* training: deploy a small MLP (SGD), ``--steps`` train steps on seeded data, get_weights; the
  SHA-256 of the final weights must equal the fault-free run's;
* tensor traffic: ``--tensor-rounds`` rounds of set_weights / get_weights on a 512x512 layer
  (1 MiB up and 1 MiB down per round) with seeded random weights; every read must equal
  what was written.

A device reset loses the device's state; the host reports it (``StateLost``) and this script
recovers the way a user would: deploy again from its last checkpoint (the weights after the
last completed step) and redo the step. A reset in a pipelined tensor transfer currently
reaches the caller as DeviceError(UNKNOWN_TENSOR or NO_MODEL) instead of StateLost; it is
recovered the same way and counted apart (state_lost_as_device_error). Any other host error
ends the run (the row's ``error``).

Printed as JSON, one row per setting: commands (host requests), device_executed (requests the
device executed, all devices of the run), duplicates_executed (executed - commands on a single
device; with resets, requests the old device executed before dying are counted too),
payload_bytes (tensor bytes moved), wire_bytes (both directions), undetected_errors (weight hash
mismatches plus tensor read-backs that differ), state_lost (recoveries), faults injected,
seconds, goodput (payload bytes per second relative to fault-free) and wire_goodput (payload
bytes per wire byte relative to fault-free: the same figure without timing noise). A run that
ended early has ``error`` set; its commands then include the unanswered ones.

    python tools/fault_campaign.py --quick        # about a minute
    python tools/fault_campaign.py --steps 2000 --tensor-rounds 128
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import host
from device_model.emu_port import EmuSerial
from host import errors, nn
from protocol.messages import Status

BASE = "emu://hnpu-v2?seed=1"
#: (name, URL query) of every setting after the fault-free reference.
SETTINGS: list[tuple[str, str]] = [
    ("corrupt 1e-5", "corrupt=1e-5"),
    ("corrupt 1e-4", "corrupt=1e-4"),
    ("corrupt 1e-3", "corrupt=1e-3"),
    ("corrupt 1e-3, 256 B frames", "corrupt=1e-3&max_payload=256"),
    ("drop 1%", "drop=0.01"),
    ("dup 1%", "dup=0.01"),
    ("insert 1e-4", "insert=1e-4"),
    ("delete 1e-4", "delete=1e-4"),
    ("all of them", "corrupt=1e-4&drop=0.01&dup=0.01&insert=1e-4"),
]
TENSOR_SHAPE = (512, 512)


@dataclass
class Row:
    """One setting's figures."""

    setting: str
    url: str
    commands: int = 0
    device_executed: int = 0
    duplicates_executed: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0
    undetected_errors: int = 0
    state_lost: int = 0
    #: Device resets the host reported as a DeviceError (UNKNOWN_TENSOR / NO_MODEL in a
    #: pipelined tensor transfer) instead of StateLost; recovered like StateLost.
    state_lost_as_device_error: int = 0
    seconds: float = 0.0
    goodput: float = 1.0
    #: Payload bytes per wire byte relative to fault-free: goodput free of timing noise.
    wire_goodput: float = 1.0
    weights_sha256: str = ""
    #: The exception that ended the run early, if any ("" when it completed).
    error: str = ""
    faults: dict[str, int] = field(default_factory=dict)


class Meter:
    """Counts what crosses an EmuSerial and every device behind it (resets make new ones)."""

    def __init__(self, port: EmuSerial) -> None:
        self.port = port
        self.wire = 0
        self.devices: list[Any] = [port._dev()]
        #: Requests the device executed before the meter was attached (HELLO, AUTH).
        self.before = port.firmware.executed
        write, read, new_device = port.write, port.read, port._new_device

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
            self.devices.append(d)
            return d

        port.write = counted_write  # type: ignore[method-assign]
        port.read = counted_read  # type: ignore[method-assign]
        port._new_device = tracked_device  # type: ignore[method-assign]

    @property
    def executed(self) -> int:
        """Requests executed by every device since the meter was attached."""
        return sum(d.firmware.executed for d in self.devices) - self.before


def _digest(w: dict[str, np.ndarray]) -> str:
    return hashlib.sha256(b"".join(k.encode() + w[k].tobytes() for k in sorted(w))).hexdigest()


_LOST = {Status.UNKNOWN_TENSOR, Status.NO_MODEL}


def _retrying(dev: host.Device, fn: Any, recover: Any, row: Row) -> Any:
    """``fn()``; on StateLost, ``recover()`` and try again (a device reset loses the model)."""
    for _ in range(100):
        resets = dev.runner.resets
        try:
            return fn()
        except errors.StateLost:
            row.state_lost += 1
        except errors.DeviceError as e:
            if dev.runner.resets == resets or e.status not in _LOST:
                raise
            row.state_lost_as_device_error += 1
        recover()
    raise RuntimeError("100 state losses in a row")


def run(name: str, url: str, steps: int, rounds: int) -> Row:
    """One setting: training then tensor traffic (see the module docstring); a run that fails
    (e.g. times out) is a row with ``error`` set."""
    row = Row(name, url)
    t0 = time.monotonic()
    dev = host.open(url, timeout=5.0)
    port = dev.runner.port
    assert isinstance(port, EmuSerial)
    meter = Meter(port)
    try:
        _run(dev, row, steps, rounds)
    except (errors.MicrotrainError, RuntimeError) as e:
        row.error = f"{type(e).__name__}: {e}"
    finally:
        dev.close()
    row.device_executed = meter.executed
    row.duplicates_executed = meter.executed - row.commands
    row.wire_bytes = meter.wire
    row.faults = port.fault_stats
    row.seconds = round(time.monotonic() - t0, 3)
    return row


def _run(dev: host.Device, row: Row, steps: int, rounds: int) -> None:
    submit = dev.runner.submit

    def counted_submit(*a: Any, **kw: Any) -> int:
        row.commands += 1
        return submit(*a, **kw)

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
    row.weights_sha256 = _digest(final)

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    ap.add_argument("--steps", type=int, default=400, help="train steps per setting")
    ap.add_argument("--tensor-rounds", type=int, default=32, help="1 MiB up+down rounds")
    ap.add_argument("--reset-every", type=int, default=0, help="mean frames between resets")
    ap.add_argument("--fault-seed", type=int, default=1)
    args = ap.parse_args(argv)
    steps, rounds = (40, 4) if args.quick else (args.steps, args.tensor_rounds)
    reset_every = args.reset_every or (400 if args.quick else 2000)
    settings = [*SETTINGS, ("resets", f"reset_every={reset_every}")]
    rows = [run("fault-free", BASE, steps, rounds)]
    ref = rows[0]
    for name, query in settings:
        row = run(name, f"{BASE}&{query}&fault_seed={args.fault_seed}", steps, rounds)
        if row.error:
            row.goodput = row.wire_goodput = 0.0
        else:
            if row.weights_sha256 != ref.weights_sha256:
                row.undetected_errors += 1
            row.goodput = round(
                (row.payload_bytes / row.seconds) / (ref.payload_bytes / ref.seconds), 3
            )
            row.wire_goodput = round(
                (row.payload_bytes / row.wire_bytes) / (ref.payload_bytes / ref.wire_bytes), 3
            )
        rows.append(row)
        print(f"{name}: {row.seconds} s", file=sys.stderr, flush=True)
    out = {
        "command": " ".join(["tools/fault_campaign.py", *(argv or sys.argv[1:])]),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "steps": steps,
        "tensor_rounds": rounds,
        "rows": [asdict(r) for r in rows],
    }
    print(json.dumps(out, indent=1))
    # With resets, an old device may have executed a request before dying: not a duplicate.
    bad = [
        r.setting
        for r in rows
        if r.undetected_errors or (r.duplicates_executed > 0 and "reset" not in r.url)
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
