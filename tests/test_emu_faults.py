"""Fault injection on the emu:// port: the option parsing, the fault filters themselves, and
exactly-once training under each fault (same final weights as a fault-free run, no command
executed twice, the faults really injected), and device resets reported as lost state."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import numpy as np
import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st
from serial import SerialException

import host
from device_model import emu_faults
from device_model.emu_faults import Corrupt, Delete, Drop, Duplicate, Insert, Reset
from device_model.emu_port import EmuSerial, parse_url
from host import errors, nn

BASE = "emu://hnpu-v2?seed=1"
STEPS = 6


# ---------------------------------------------------------------------------- options


def test_fault_options_parse_into_faults_in_url_order() -> None:
    opts = parse_url(f"{BASE}&corrupt=1e-4&drop=0.01&dup=0.001&insert=1e-5&reset_every=500")
    assert opts.faults == (Corrupt(1e-4), Drop(0.01), Duplicate(0.001), Insert(1e-5), Reset(500))
    assert opts.fault_seed is None
    assert parse_url(f"{BASE}&corrupt=0&fault_seed=9").fault_seed == 9


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("corrupt=x", r"corrupt='x' is not a number; accepted 0\.\.0\.1"),
        ("corrupt=0.5", r"corrupt=0.5 out of range; accepted 0\.\.0\.1"),
        ("insert=-1e-3", r"insert=-1e-3 out of range; accepted 0\.\.0\.1"),
        ("delete=0.2", r"delete=0.2 out of range; accepted 0\.\.0\.1"),
        ("drop=nan", r"drop=nan out of range; accepted 0\.\.0\.5"),
        ("dup=1", r"dup=1 out of range; accepted 0\.\.0\.5"),
        ("reset_every=0", r"reset_every=0 out of range; accepted 1\.\."),
        ("reset_every=1.5", r"reset_every='1.5' is not an integer"),
        ("fault_seed=-1", r"fault_seed=-1 out of range"),
        ("drop=0.1&drop=0.2", r"'drop' given twice"),
    ],
)
def test_bad_fault_options_say_what_is_accepted(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(f"{BASE}&{query}")
    with pytest.raises(SerialException, match=message):
        serial.serial_for_url(f"{BASE}&{query}")


# ---------------------------------------------------------------------------- filters

FRAMES = [bytes([0]) + bytes(range(1 + i, 40 + i)) + bytes([0]) for i in range(50)]
STREAM = b"".join(FRAMES)


def _frames(data: bytes) -> list[bytes]:
    return [f for f in data.split(b"\x00") if f]


def test_drop_everything_keeps_only_delimiters_and_counts_each_frame() -> None:
    d = Drop(0.5)
    d.p = 1.0
    d.seed(0)
    assert d.to_device(STREAM) == b"\x00" * (2 * len(FRAMES))
    assert d.stats == {"dropped_frames": len(FRAMES)}


def test_drop_and_dup_remove_and_repeat_whole_frames_only() -> None:
    drop, dup = Drop(0.3), Duplicate(0.3)
    drop.seed(5)
    dup.seed(5)
    originals = _frames(STREAM)
    kept = _frames(drop.to_host(STREAM))
    doubled = _frames(dup.to_host(STREAM))
    assert set(kept) <= set(originals)
    assert len(originals) - len(kept) == drop.stats["dropped_frames"] > 0
    assert sorted(set(doubled)) == sorted(originals)  # nothing altered, nothing lost
    assert len(doubled) - len(originals) == dup.stats["duplicated_frames"] > 0


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=8), seed=st.integers(0, 2**32))
def test_frame_faults_do_not_depend_on_how_the_stream_is_split(cuts: list[int], seed: int) -> None:
    for cls in (Drop, Duplicate):
        whole, split = cls(0.3), cls(0.3)
        whole.seed(seed)
        split.seed(seed)
        bounds = [0, *sorted(cuts), len(STREAM)]
        pieces = [split.to_device(STREAM[a:b]) for a, b in itertools.pairwise(bounds)]
        assert b"".join(pieces) == whole.to_device(STREAM)
        assert split.stats == whole.stats


def test_corrupt_flips_one_bit_per_counted_byte() -> None:
    c = Corrupt(0.01)
    c.seed(3)
    out = c.to_host(STREAM)
    assert len(out) == len(STREAM)
    diffs = [a ^ b for a, b in zip(STREAM, out, strict=True) if a != b]
    assert len(diffs) == c.stats["corrupted_bytes"] > 0
    assert all(bin(x).count("1") == 1 for x in diffs)


def test_insert_adds_counted_bytes_and_keeps_the_original_in_order() -> None:
    ins = Insert(0.01)
    ins.seed(3)
    out = ins.to_device(STREAM)
    assert len(out) - len(STREAM) == ins.stats["inserted_bytes"] > 0
    it = iter(out)
    assert all(b in it for b in STREAM)  # STREAM is a subsequence of out


def test_delete_loses_counted_bytes_and_keeps_the_rest_in_order() -> None:
    d = Delete(0.01)
    d.seed(3)
    out = d.to_host(STREAM)
    assert len(STREAM) - len(out) == d.stats["deleted_bytes"] > 0
    it = iter(STREAM)
    assert all(b in it for b in out)  # out is a subsequence of STREAM


def test_a_fault_seed_replays_the_same_faults_and_another_differs() -> None:
    def run(seed: int) -> bytes:
        c = Corrupt(0.01)
        c.seed(seed)
        return c.to_device(STREAM)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_zero_probability_changes_nothing() -> None:
    for f in (Corrupt(0.0), Insert(0.0), Delete(0.0), Drop(0.0), Duplicate(0.0)):
        assert f.to_device(STREAM) == STREAM and f.to_host(STREAM) == STREAM


def test_reset_comes_after_about_every_n_frames() -> None:
    r = Reset(10)
    r.seed(1)
    seeds = []
    for frame in FRAMES * 20:
        r.to_device(frame)
        s = r.take_reset()
        if s is not None:
            seeds.append(s)
    assert 40 <= len(seeds) <= 200  # 1000 frames, mean 10 per reset
    assert r.stats == {"device_resets": len(seeds)} and len(set(seeds)) == len(seeds)


def test_parsers_registered_for_every_fault() -> None:
    assert set(emu_faults.FAULTS) == {"corrupt", "insert", "delete", "drop", "dup", "reset_every"}


# ---------------------------------------------------------------------------- training


def _train(url: str) -> tuple[str, dict[str, Any], EmuSerial, host.Device]:
    """A seeded run: deploy, STEPS train steps, get_weights; the weights' SHA-256."""
    dev = host.open(url, timeout=30.0)  # generous: a loaded CI machine must not fail it
    model = dev.deploy(
        nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4)),
        optimizer=host.optim.SGD(0.05),
    )
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        x = rng.standard_normal((8, 16)).astype(np.float32)
        model.train_step(x, rng.integers(0, 4, 8))
    w = model.get_weights()
    digest = hashlib.sha256(b"".join(k.encode() + w[k].tobytes() for k in sorted(w))).hexdigest()
    port = dev.runner.port
    assert isinstance(port, EmuSerial)
    return digest, dict(port.fault_stats), port, dev


@pytest.fixture(scope="module")
def clean() -> tuple[str, int, int]:
    digest, stats, port, dev = _train(BASE)
    assert stats == {}
    out = digest, port.firmware.executed, port.firmware.step
    dev.close()
    return out


@pytest.mark.parametrize(
    ("query", "stat"),
    [
        ("corrupt=2e-3", "corrupted_bytes"),
        ("insert=2e-3", "inserted_bytes"),
        ("delete=2e-3", "deleted_bytes"),
        ("drop=0.05", "dropped_frames"),
        ("dup=0.05", "duplicated_frames"),
        ("corrupt=1e-3&insert=1e-3&drop=0.02&dup=0.02&fault_seed=7", "corrupted_bytes"),
    ],
)
def test_training_under_faults_is_exactly_once_and_bit_identical(
    clean: tuple[str, int, int], query: str, stat: str
) -> None:
    digest, stats, port, dev = _train(f"{BASE}&{query}")
    assert stats[stat] > 0  # the faults happened
    assert digest == clean[0]
    # The device executed exactly the fault-free run's commands: none lost, none twice.
    assert (port.firmware.executed, port.firmware.step) == clean[1:]
    dev.close()


def test_a_device_reset_during_training_is_state_lost_not_garbage() -> None:
    # reset_every=40: the device restarts (state lost) well within the run; the host must say
    # so instead of training on a device that holds no model.
    with pytest.raises(errors.StateLost, match="deploy it again"):
        _train(f"{BASE}&reset_every=40")


def test_requests_without_device_state_complete_across_resets_by_replay() -> None:
    dev = host.open(f"{BASE}&reset_every=6", timeout=5.0)
    port = dev.runner.port
    assert isinstance(port, EmuSerial)
    while port.fault_stats["device_resets"] < 2:
        assert dev.counters()["ff"]["macs_total"] == 0
    # Every reset the port made was seen by the host as a new link session.
    assert dev.runner.resets >= 1
    assert dev.counters()["ff"]["macs_total"] == 0
    dev.close()


@pytest.mark.parametrize("seed", range(3))
def test_a_restart_while_weights_are_read_is_state_lost_not_an_unknown_tensor(seed: int) -> None:
    """Weight snapshots vanish with a restarted device: the host must say the model is lost
    (StateLost), never surface the device's UNKNOWN_TENSOR for what is really a restart."""
    dev = host.open(f"emu://hnpu-v2?seed={seed}&reset_every=60", timeout=3)
    try:
        net = host.nn.Sequential(host.nn.Linear(256, 256), host.nn.ReLU(), host.nn.Linear(256, 10))
        with pytest.raises(host.errors.StateLost):
            model = dev.deploy(net, precision="fp32", seed=0)
            for _ in range(6):
                model.get_weights()
    finally:
        dev.close()


# ---------------------------------------------------------------------------- fault lines


def test_parse_faults_reads_the_emu_options_in_order_with_their_seed() -> None:
    faults, seed = emu_faults.parse_faults("corrupt=1e-4&drop=0.01&reset_every=500&fault_seed=9")
    assert faults == [Corrupt(1e-4), Drop(0.01), Reset(500)] and seed == 9
    assert emu_faults.parse_faults("dup=0.1") == ([Duplicate(0.1)], None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("corrupt=x", r"corrupt='x' is not a number; accepted 0\.\.0\.1"),
        ("drop=0.9", r"drop=0.9 out of range; accepted 0\.\.0\.5"),
        ("seed=1", r"unknown fault option 'seed'.*accepted: corrupt, .*fault_seed"),
        ("dup=0.1&dup=0.2", r"'dup' given twice"),
        ("fault_seed=x", r"fault_seed='x' is not an integer"),
        ("&&", r"no fault option"),
    ],
)
def test_parse_faults_says_what_is_accepted(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        emu_faults.parse_faults(text)


def test_a_fault_line_hits_only_its_direction_and_counts_resets_whatever_the_direction() -> None:
    def line(direction: str) -> emu_faults.FaultLine:
        return emu_faults.FaultLine([Corrupt(0.05), Reset(3)], seed=4, direction=direction)

    both, down, up = line("both"), line("to-device"), line("to-host")
    assert down.to_host(STREAM) == STREAM and down.to_device(STREAM) != STREAM
    assert up.to_device(STREAM) == STREAM and up.to_host(STREAM) != STREAM
    # The same seed gives each direction the same faults as a two-way line.
    assert both.to_device(STREAM) == line("to-device").to_device(STREAM)
    assert both.to_host(STREAM) == line("to-host").to_host(STREAM)
    for ln in (down, up):
        assert ln.take_reset() is not None  # 50 frames to the device, a reset every 3
        assert ln.stats["device_resets"] == 1
    assert "corrupt=0.05&reset_every=3 (to-host, fault_seed 4)" == up.describe()
    with pytest.raises(ValueError, match="accepted: both, to-device, to-host"):
        emu_faults.FaultLine([], direction="up")


def test_a_fault_line_replays_the_emu_port_faults_for_the_same_seed() -> None:
    """The served path and emu:// draw the same faults from the same options and seed."""
    faults, _ = emu_faults.parse_faults("corrupt=0.01&insert=0.01&drop=0.1")
    line = emu_faults.FaultLine(faults, seed=5)
    port_faults = parse_url(f"{BASE}&corrupt=0.01&insert=0.01&drop=0.1").faults
    for f in port_faults:
        f.seed(5)  # type: ignore[attr-defined]
    data = STREAM
    for f in port_faults:
        data = f.to_device(data)
    assert line.to_device(STREAM) == data


# ---------------------------------------------------------------------------- the campaign


def _campaign() -> Any:
    """tools/fault_campaign.py as a module (tools/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    if "fault_campaign" in sys.modules:
        return sys.modules["fault_campaign"]
    path = Path(__file__).resolve().parent.parent / "tools" / "fault_campaign.py"
    spec = importlib.util.spec_from_file_location("fault_campaign", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fault_campaign"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_campaigns_request_id_check_counts_duplicates_losses_and_replays() -> None:
    import collections
    import dataclasses
    import types

    fc = _campaign()
    row = fc.Row("x", "u")
    meter = types.SimpleNamespace(
        logs=[collections.Counter({1: 1, 2: 2}), collections.Counter({2: 1, 3: 1})],
        reconnect=[0.5],
    )
    fc.Meter.check(meter, row, {1, 2, 3, 4})
    assert (row.device_executed, row.duplicates_executed, row.lost) == (5, 1, 1)
    assert row.replayed_after_reset == 1 and row.reconnect_s == [0.5]
    assert fc.failures({"rows": [dataclasses.asdict(row)]}) == ["x"]


def test_a_campaign_run_under_resets_is_exactly_once_with_the_fault_free_hash() -> None:
    fc = _campaign()
    clean = fc.run("fault-free", fc.BASE, 3, 0)
    row = fc.run("resets", f"{fc.BASE}&reset_every=12&fault_seed=2", 3, 0)
    assert not row.error and row.faults["device_resets"] >= 1
    assert row.weights_sha256 == clean.weights_sha256
    assert (row.duplicates_executed, row.lost) == (0, 0)
    assert clean.device_executed == clean.commands > 0 and clean.lost == 0
    # Each reset that the host saw through has a reconnect time (ready -> next answer).
    assert 1 <= len(row.reconnect_s) <= row.faults["device_resets"]
