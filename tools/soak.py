#!/usr/bin/env python3
"""Soak run: training over a faulty pty for ``--minutes``, sampling memory and throughput.

Starts ``microtrain serve --pty --seed S --faults F`` (the emu:// fault options on the bytes both
ways, device resets included), opens the printed pty like a board and trains an MLP
(64-32-10, SGD, batch 32) on the bundled digits (scikit-learn, no download) in a loop until the
time is up. With ``reset_every`` in the faults the served device restarts now and then; the host
reports StateLost and this script recovers from its checkpoint (the weights after the last
completed step, read after every step) as a user would.

Every ``--interval`` seconds it samples: resident memory (VmRSS) of the host process (this one)
and of the server, steps/s and wire bytes/s (both directions, counted at the host's port) over
the interval, and the running totals of the host link's retransmissions, frame errors and NAKs,
link resets seen by the host, and device restarts logged by the server.

At the end: the server's closing count of executed requests (against the requests the host
sent), the faults injected, held-out accuracy, and a check that the final weights equal those
of the same number of steps on a fault-free in-process ``emu://`` device (same hash). Memory is
called flat when neither process grew by more than ``--rss-tolerance`` MiB from the first
sample after the warm-up (the first 10% of the run) to the end. JSON goes to ``--json-out``
and a plot (matplotlib, Agg) to ``--plot``.

    python tools/soak.py --minutes 10 --json-out soak.json --plot docs/reliability-soak.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import device_model.emu_port  # noqa: F401  (registers emu:// for the fault-free reference)
import host
from host import errors, nn
from host.datasets import load_digits_splits
from protocol.messages import Status

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_campaign import EpochClock, ServedDevice, count_wire_bytes, digest  # a sibling tool

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FAULTS = "corrupt=1e-4&drop=0.01&dup=0.001&insert=1e-5&delete=1e-5&reset_every=5000"
BATCH = 32
_LOST = {Status.UNKNOWN_TENSOR, Status.NO_MODEL}


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size of ``pid`` in MiB (Linux /proc; nan where unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class Trainer:
    """The seeded training loop with checkpoint recovery (see the module docstring)."""

    def __init__(self, dev: host.Device, checkpoint: bool) -> None:
        self.dev = dev
        self.checkpoint = checkpoint
        data = load_digits_splits(0)
        self.x = data.pretrain.x.reshape(len(data.pretrain), -1)
        self.y = data.pretrain.y
        self.heldout = data.heldout
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.steps = 0
        self.state_lost = 0
        self.model: Any = None
        self.ckpt: dict[str, np.ndarray] | None = None
        self._retry(lambda: self._deploy(None))
        if checkpoint:
            self.ckpt = self.weights()

    def _deploy(self, weights: dict[str, np.ndarray] | None) -> None:
        self.model = self.dev.deploy(self.net, optimizer=host.optim.SGD(0.05), seed=0)
        if weights is not None:
            self.model.set_weights(weights)

    def _retry(self, fn: Any) -> Any:
        lost = False
        for _ in range(1000):
            resets = self.dev.runner.resets
            try:
                if lost:
                    self._deploy(self.ckpt)
                return fn()
            except errors.StateLost:
                pass
            except errors.DeviceError as e:
                if self.dev.runner.resets == resets or e.status not in _LOST:
                    raise
            self.state_lost += 1
            lost = True
        raise RuntimeError("1000 state losses in a row")

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        i = (k * BATCH) % (len(self.y) - BATCH)
        return self.x[i : i + BATCH], self.y[i : i + BATCH]

    def step(self) -> None:
        x, y = self.batch(self.steps)

        def one() -> dict[str, np.ndarray] | None:
            self.model.train_step(x, y)
            return dict(self.model.get_weights()) if self.checkpoint else None

        got = self._retry(one)
        if got is not None:
            self.ckpt = got
        self.steps += 1

    def weights(self) -> dict[str, np.ndarray]:
        return dict(self._retry(lambda: self.model.get_weights()))

    def accuracy(self) -> float:
        x = self.heldout.x.reshape(len(self.heldout), -1)
        pred = [
            np.asarray(self._retry(lambda i=i: self.model.predict(x[i : i + 128])))
            for i in range(0, len(x), 128)
        ]
        return float((np.concatenate(pred).argmax(1) == self.heldout.y).mean())


def reference(steps: int) -> str:
    """The weight hash after ``steps`` steps on a fault-free in-process device."""
    with host.open("emu://hnpu-v2?seed=1", timeout=30) as dev:
        t = Trainer(dev, checkpoint=False)
        for _ in range(steps):
            t.step()
        return digest(t.weights())


def soak(args: argparse.Namespace) -> dict[str, Any]:
    faults = args.faults
    if "fault_seed" not in faults:
        faults += f"&fault_seed={args.fault_seed}"
    server = ServedDevice(faults, args.seed)
    samples: list[dict[str, Any]] = []
    try:
        dev = host.open(server.path, timeout=10)
        wire = count_wire_bytes(dev)
        commands = [0]
        submit = dev.runner.submit

        def counted_submit(*a: Any, **kw: Any) -> int:
            commands[0] += 1
            rid: int = submit(*a, **kw)
            return rid

        dev.runner.submit = counted_submit  # type: ignore[method-assign]
        clock = EpochClock(dev)
        trainer = Trainer(dev, checkpoint="reset_every" in faults)
        t0 = time.monotonic()
        end = t0 + 60.0 * args.minutes
        last = (t0, trainer.steps, wire[0])
        next_sample = t0
        while True:
            now = time.monotonic()
            if now >= next_sample or now >= end:
                t_last, steps_last, wire_last = last
                dt = now - t_last or float("inf")  # the first sample: no rate yet
                stats = dev.runner.link.stats
                samples.append(
                    {
                        "t": round(now - t0, 2),
                        "steps": trainer.steps,
                        "steps_per_s": round((trainer.steps - steps_last) / dt, 2),
                        "wire_bytes_per_s": round((wire[0] - wire_last) / dt),
                        "host_rss_mib": round(rss_mib(), 2),
                        "server_rss_mib": round(rss_mib(server.proc.pid), 2),
                        "retransmits": stats.get("retransmits", 0),
                        "frame_errors": stats.get("frame_errors", 0),
                        "naks_sent": stats.get("naks_sent", 0),
                        "link_resets": dev.runner.resets,
                        "device_restarts": server.restarts,
                        "state_lost": trainer.state_lost,
                    }
                )
                last = (now, trainer.steps, wire[0])
                next_sample = now + args.interval
                if args.verbose:
                    print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
            if now >= end:
                break
            trainer.step()
        final = digest(trainer.weights())
        accuracy = trainer.accuracy()
        dev.close()
    finally:
        closing = server.stop()
    try:
        ref = reference(trainer.steps)
    except (errors.MicrotrainError, RuntimeError) as e:  # the soak's samples still count
        ref = f"reference run failed: {type(e).__name__}: {e}"
    # Reconnect: from a restarted device being ready to the host's first answer of the new
    # link session (both on the system's monotonic clock).
    reconnect = clock.reconnect(server.ready_at)
    warm = [s for s in samples if s["t"] >= 0.1 * 60.0 * args.minutes] or samples
    growth = {k: round(warm[-1][k] - warm[0][k], 2) for k in ("host_rss_mib", "server_rss_mib")}
    return {
        "command": " ".join(["tools/soak.py", *args.argv]),
        "faults": faults,
        "minutes": args.minutes,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "steps": trainer.steps,
        "commands": commands[0],
        "server": closing,
        "heldout_accuracy": round(accuracy, 4),
        "weights_sha256": final,
        "reference_sha256": ref,
        "same_weights_as_fault_free": final == ref,
        "rss_growth_after_warmup_mib": growth,
        "memory_flat": all(abs(v) <= args.rss_tolerance for v in growth.values()),
        "reconnect_s": sorted(reconnect),
        "samples": samples,
    }


def plot(out: dict[str, Any], path: str) -> None:
    """Four panels against minutes: RSS, steps/s, wire kB/s, retransmissions and restarts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = out["samples"]
    t = [x["t"] / 60.0 for x in s]
    fig, ax = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    ax[0, 0].plot(t, [x["host_rss_mib"] for x in s], label="host")
    ax[0, 0].plot(t, [x["server_rss_mib"] for x in s], label="server (device)")
    ax[0, 0].set_ylabel("RSS (MiB)")
    ax[0, 0].set_ylim(bottom=0)
    ax[0, 0].legend()
    ax[0, 1].plot(t[1:], [x["steps_per_s"] for x in s[1:]])
    ax[0, 1].set_ylabel("training steps / s")
    ax[0, 1].set_ylim(bottom=0)
    ax[1, 0].plot(t[1:], [x["wire_bytes_per_s"] / 1e3 for x in s[1:]])
    ax[1, 0].set_ylabel("wire kB/s (both ways)")
    ax[1, 0].set_ylim(bottom=0)
    ax[1, 1].plot(t, [x["retransmits"] for x in s], label="host retransmissions")
    ax[1, 1].plot(t, [x["frame_errors"] for x in s], label="host frame errors")
    ax[1, 1].set_ylabel("count (cumulative)")
    ax2 = ax[1, 1].twinx()
    ax2.plot(t, [x["device_restarts"] for x in s], "k--", label="device restarts")
    ax2.set_ylabel("device restarts")
    lines = ax[1, 1].get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax[1, 1].legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    for a in ax[1]:
        a.set_xlabel("minutes")
    fig.suptitle(f"soak over serve --pty --faults '{out['faults']}'", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to train")
    ap.add_argument("--faults", default=DEFAULT_FAULTS, help="serve --faults options")
    ap.add_argument("--fault-seed", type=int, default=1, help="unless the faults give one")
    ap.add_argument("--seed", type=int, default=1, help="serve --seed (link epochs)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--rss-tolerance", type=float, default=5.0, help="MiB of growth called flat")
    ap.add_argument("--json-out", default="", help="write the JSON here too")
    ap.add_argument("--plot", default="", help="write a PNG plot here")
    ap.add_argument("--verbose", action="store_true", help="print each sample to stderr")
    args = ap.parse_args(argv)
    if not args.minutes > 0 or not args.interval > 0:
        ap.error("--minutes and --interval must be > 0")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    out = soak(args)
    text = json.dumps(out, indent=1)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    if args.plot:
        plot(out, args.plot)
    summary = {k: v for k, v in out.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return 0 if out["same_weights_as_fault_free"] and out["memory_flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
