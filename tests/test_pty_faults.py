"""The emu:// fault options on the pty path: ``microtrain serve --pty --faults ...``.

A seeded training run over a faulty served pty ends with the fault-free run's weights, the
served device executed exactly the fault-free run's requests (none lost, none twice: the
server's closing log line counts them) and the faults really happened; a ``reset_every`` fault
restarts the served device as a board would, which the host reports as lost state.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

import host
from device_model.emu_port import EmuSerial
from host import errors, nn
from tests.test_serve import _stop, served

STEPS = 4


def _run(url: str) -> tuple[str, int]:
    """Deploy, STEPS seeded dfxp8+sr steps, get_weights: (SHA-256 of the weights, requests
    the device executed if it is in this process, else -1)."""
    rng = np.random.default_rng(0)
    with host.open(url, timeout=10) as dev:
        model = dev.deploy(
            nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4)),
            precision="dfxp8+sr",
            optimizer=host.optim.SGD(0.05),
            seed=3,
        )
        for _ in range(STEPS):
            x = rng.standard_normal((8, 16)).astype(np.float32)
            model.train_step(x, rng.integers(0, 4, 8))
        w = model.get_weights()
        port = dev.runner.port
        executed = port.firmware.executed if isinstance(port, EmuSerial) else -1
    digest = hashlib.sha256(b"".join(k.encode() + w[k].tobytes() for k in sorted(w))).hexdigest()
    return digest, executed


def _summary(err: str) -> tuple[int, int, dict[str, int]]:
    """(requests executed, device restarts, faults injected) from the server's closing log."""
    m = re.search(r"(\d+) requests executed, (\d+) device restarts(?:; faults .*?\): (.*))?", err)
    assert m, err
    stats = {}
    for part in (m.group(3) or "").split(", "):
        name, _, count = part.rpartition(" ")
        if count.isdigit():
            stats[name] = int(count)
    return int(m.group(1)), int(m.group(2)), stats


@pytest.fixture(scope="module")
def clean() -> tuple[str, int]:
    return _run("emu://hnpu-v2?seed=1")


@pytest.mark.parametrize(
    ("faults", "direction", "stat"),
    [
        ("corrupt=1e-3&insert=1e-3&drop=0.02&dup=0.02&fault_seed=1", None, "corrupted_bytes"),
        ("corrupt=2e-3&delete=1e-3&fault_seed=2", "to-host", "corrupted_bytes"),
        ("drop=0.05&dup=0.05&fault_seed=3", "to-device", "dropped_frames"),
    ],
)
def test_training_over_a_faulty_pty_is_exactly_once_and_bit_identical(
    clean: tuple[str, int], faults: str, direction: str | None, stat: str
) -> None:
    args = ["--pty", "--seed", "1", "--faults", faults]
    if direction:
        args += ["--fault-direction", direction]
    with served(*args) as (proc, path):
        digest, _ = _run(path)
        code, err = _stop(proc)
    assert code == 0, err
    executed, restarts, stats = _summary(err)
    assert stats[stat] > 0, err  # the faults happened
    assert digest == clean[0]
    # The served device executed exactly the fault-free run's requests: none lost, none twice.
    assert (executed, restarts) == (clean[1], 0)


def test_a_reset_fault_restarts_the_served_device_and_the_host_says_state_lost() -> None:
    x = np.ones((8, 16), np.float32)
    y = np.zeros(8, np.int64)
    net = nn.Sequential(nn.Linear(16, 4))
    with served("--pty", "--seed", "1", "--faults", "reset_every=20&fault_seed=1") as (proc, path):
        with host.open(path, timeout=10) as dev:
            with pytest.raises(errors.StateLost, match="deploy"):
                model = dev.deploy(net, optimizer=host.optim.SGD(0.1))
                for _ in range(200):
                    model.train_step(x, y)
            assert dev.runner.resets >= 1
            # The restarted device is a fresh one: deploying again works on it (unless it
            # restarts again meanwhile, which is StateLost again, never a wrong answer).
            for _ in range(20):
                try:
                    model = dev.deploy(net, optimizer=host.optim.SGD(0.1))
                    assert model.predict(x).shape == (8, 4)
                    break
                except errors.StateLost:
                    continue
            else:
                pytest.fail("no deploy got through 20 restarts")
        code, err = _stop(proc)
    assert code == 0, err
    _, restarts, stats = _summary(err)
    assert restarts == stats["device_resets"] >= 1
    assert "device restart 1 (reset_every fault)" in err
