"""``microtrain federate`` (issue 8): partitions, one client's round on a device, and one
federation on Flower's simulation engine with an ``emu://`` client, a client on a
``microtrain serve --pty`` process and a client whose device restarts mid-round.

The engine test starts Ray once (about 10-20 s on a loaded 2-core machine, most of it Ray and
its worker processes starting); everything else runs without the engine.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from host import cli, errors, federated
from host.federated import FederationConfig

pytest.importorskip("flwr", reason="the 'federated' extra (flwr) is not installed")

ROOT = Path(__file__).resolve().parent.parent
#: Mean frames between restarts of the failing device: a round (deploy, steps, counters,
#: weights) sends far more frames than this, so the device restarts during every round.
RESETS = "emu://hnpu-v2?reset_every=30&fault_seed=3"


# ---------------------------------------------------------------------- partitions


@given(
    n=st.integers(20, 400),
    clients=st.integers(1, 10),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32 - 1),
    classes=st.integers(1, 10),
)
def test_dirichlet_covers_every_sample_exactly_once(
    n: int, clients: int, alpha: float, seed: int, classes: int
) -> None:
    labels = (np.arange(n) % classes).astype(np.int64)
    try:
        parts = federated.dirichlet_partition(labels, clients, alpha, seed)
    except errors.InvalidArgument as e:  # allowed only when a client cannot get its minimum
        assert "use a larger alpha or fewer clients" in str(e)
        return
    assert len(parts) == clients
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(n))  # each sample once, none lost
    assert min(len(p) for p in parts) >= min(federated.MIN_PARTITION, n // clients)
    again = federated.dirichlet_partition(labels, clients, alpha, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@given(n=st.integers(1, 2000), clients=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_iid_sizes_are_balanced_and_cover_everything(n: int, clients: int, seed: int) -> None:
    if clients > n:
        with pytest.raises(errors.InvalidArgument, match="cannot split"):
            federated.iid_partition(n, clients, seed)
        return
    parts = federated.iid_partition(n, clients, seed)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def test_dirichlet_is_label_skewed_and_iid_is_not() -> None:
    """The digits pool cut for 8 clients: alpha 0.5 gives clients far from the pool's class
    mix, iid keeps every client near it (total variation distance)."""
    cfg_d = FederationConfig(partition="dirichlet:0.5")
    cfg_i = FederationConfig(partition="iid")

    def tv(cfg: FederationConfig) -> float:
        pool = np.concatenate([federated.client_split(cfg, c).y for c in range(cfg.clients)])
        mix = np.bincount(pool, minlength=10) / len(pool)
        dists = []
        for c in range(cfg.clients):
            y = federated.client_split(cfg, c).y
            dists.append(0.5 * np.abs(np.bincount(y, minlength=10) / len(y) - mix).sum())
        return float(np.mean(dists))

    assert len(np.concatenate([federated.client_split(cfg_d, c).y for c in range(8)])) == 1437
    assert tv(cfg_d) > 0.3
    assert tv(cfg_i) < 0.1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("dirichlet:0", "must be a number > 0"),
        ("dirichlet:x", "must be a number > 0"),
        ("dirichlet:nan", "must be a number > 0"),
        ("shards", "accepted: iid, dirichlet:ALPHA"),
    ],
)
def test_bad_partition_specs_say_what_is_accepted(spec: str, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        FederationConfig(partition=spec)


def test_dirichlet_that_cannot_feed_every_client_is_refused() -> None:
    labels = np.zeros(40, np.int64)  # one class, tiny alpha: some client nearly always empty
    with pytest.raises(errors.InvalidArgument, match="larger alpha or fewer clients"):
        federated.dirichlet_partition(labels, 8, 0.001, 0)


def test_config_checks() -> None:
    with pytest.raises(errors.InvalidArgument, match="at most one --device per client"):
        FederationConfig(clients=1, devices=("emu://hnpu-v2", "emu://hnpu-v1"))
    with pytest.raises(errors.InvalidArgument, match="accepted: fedavg"):
        FederationConfig(strategy="fedsgd")
    with pytest.raises(errors.InvalidArgument, match="precision"):
        FederationConfig(precision="dfxp99")
    cfg = FederationConfig(clients=3, devices=("/dev/ttyUSB0",), steps=5, lr=0.1)
    assert [cfg.device_of(i) for i in range(3)] == ["/dev/ttyUSB0", *["emu://hnpu-v2"] * 2]
    record = {**cfg.to_record(), "server-round": 4}
    assert FederationConfig.from_record(record) == FederationConfig(
        clients=3, devices=("/dev/ttyUSB0", "emu://hnpu-v2", "emu://hnpu-v2"), steps=5, lr=0.1
    )
    # a deployment engine run config: strings and dashes
    run_config = {"clients": "3", "steps": "5", "lr": "0.1", "devices": "/dev/ttyUSB0"}
    assert FederationConfig.from_record(run_config).devices == ("/dev/ttyUSB0",)
    with pytest.raises(errors.InvalidArgument, match="steps='many' is not an int"):
        FederationConfig.from_record({"steps": "many"})


def test_bad_cli_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["federate", "--clients", "2", "--partition", "dirichlet:-1"]) == 2
    assert "Dirichlet concentration" in capsys.readouterr().err


# ---------------------------------------------------------------------- one client's round


def test_local_round_trains_on_the_chip_and_reports_its_counters() -> None:
    cfg = FederationConfig(clients=4, steps=6)
    w0 = federated.model_spec().init_weights(0)
    w1, m = federated.train_local("emu://hnpu-v2", w0, cfg, client=1, rnd=1)
    assert set(w1) == set(w0)
    assert all(not np.array_equal(w1[k], w0[k]) for k in ("0.weight", "4.weight", "6.bias"))
    assert m["num-examples"] == len(federated.client_split(cfg, 1))
    assert m["steps"] == 6 and m["counted"] == 1
    assert m["energy_uj"] > 0 and m["cycles"] > 0 and m["dram_bytes"] > 0
    again, _ = federated.train_local("emu://hnpu-v2", w0, cfg, client=1, rnd=1)
    assert all(np.array_equal(w1[k], again[k]) for k in w1)  # seeded: replays exactly


def test_a_device_that_restarts_mid_round_raises_state_lost() -> None:
    cfg = FederationConfig(clients=2, steps=20)
    with pytest.raises(errors.StateLost, match="deploy"):
        federated.train_local(RESETS, federated.model_spec().init_weights(0), cfg, 0, 1)


def test_federated_modules_never_import_device_model() -> None:
    code = (
        "import sys, host.federated, host.federated_app; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'device_model'); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", federated.STRATEGIES)
def test_every_strategy_is_a_flower_strategy_that_asks_every_client(name: str) -> None:
    from flwr.serverapp import strategy as flwr_strategies

    from host import federated_app

    cfg = FederationConfig(clients=5, strategy=name)
    s = federated_app.make_strategy(cfg, federated_app._Recorder(cfg, None))
    flower_name = {
        "fedavg": "FedAvg",
        "fedavgm": "FedAvgM",
        "fedadam": "FedAdam",
        "fedmedian": "FedMedian",
        "fedtrimmedavg": "FedTrimmedAvg",
    }[name]
    assert isinstance(s, getattr(flwr_strategies, flower_name))
    assert (s.min_train_nodes, s.min_available_nodes, s.fraction_train) == (5, 5, 1.0)
    assert s.fraction_evaluate == 0.0


# ---------------------------------------------------------------------- the engine


@contextlib.contextmanager
def served_pty() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``microtrain serve --pty`` as a subprocess: (process, pty path)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "serve", "--pty"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        end = time.monotonic() + 30
        line = ""
        while time.monotonic() < end and not line and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                line = proc.stdout.readline().strip()
        assert line.startswith("PTY "), f"serve did not start: {line!r}"
        yield proc, line.split(" ", 1)[1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_federation_of_emu_pty_and_failing_clients(tmp_path: Path) -> None:
    """2 rounds: client 0 on emu://, client 1 on a served pty, client 2 on a device that
    restarts mid-round. Every round completes with clients 0 and 1; client 2 is reported."""
    out = tmp_path / "fed.json"
    png = tmp_path / "fed.png"
    with served_pty() as (_, pty):
        rc = cli.main(
            [
                "federate",
                "--clients", "3",
                "--rounds", "2",
                "--device", "emu://hnpu-v2",
                "--device", pty,
                "--device", RESETS,
                "--partition", "iid",
                "--steps", "20",
                "--json-out", str(out),
                "--plot", str(png),
            ]
        )  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert "flwr" in doc["engine"] and "simulation" in doc["engine"]
    assert [c["device"] for c in doc["clients"]] == ["emu://hnpu-v2", pty, RESETS]
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert r["clients_ok"] == 2, r["failed"]
        assert [c["client"] for c in r["per_client"]] == [0, 1]
        assert r["energy_uj"] == pytest.approx(sum(c["energy_uj"] for c in r["per_client"]))
        assert r["energy_uj"] > 0
        (fail,) = r["failed"]
        assert fail["client"] == 2 and fail["device"] == RESETS
        assert fail["error"].startswith("StateLost")
    assert rounds[0]["energy_uj"] == 0.0
    assert rounds[2]["accuracy"] > rounds[0]["accuracy"] + 0.3
    assert png.stat().st_size > 0


@pytest.mark.slow
def test_a_served_device_killed_mid_round_is_reported() -> None:
    """The ``microtrain serve`` process behind client 1 is killed while round 2 runs: the
    round completes with client 0 and reports client 1's failure."""
    with served_pty() as (proc, pty):
        timers: list[threading.Timer] = []

        def progress(line: str) -> None:
            if line.startswith("round   1/"):  # round 2 starts now: kill during its work
                timers.append(threading.Timer(1.5, proc.kill))
                timers[-1].start()

        cfg = FederationConfig(
            clients=2, rounds=2, devices=("emu://hnpu-v2", pty), steps=150, partition="iid"
        )
        result = federated.run(cfg, progress=progress)
        for t in timers:
            t.join()
    first, second = result.rounds[1:]
    assert first["clients_ok"] == 2, first["failed"]
    assert second["clients_ok"] == 1
    (fail,) = second["failed"]
    print("killed mid-round:", fail["error"])
    assert fail["client"] == 1 and fail["device"] == pty
    assert fail["error"].split(":")[0] in ("LinkLost", "Timeout", "StateLost"), fail
