"""Smoke tests of the studies pq, rounding, formats and batch (``--quick`` runs through the
emulated chip) and of their helpers: each checks the record's structure and a law the quick
data shows robustly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import host
from host.errors import InvalidArgument
from host.studies import batch, common, formats, pq, rounding


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def pq_record() -> dict[str, Any]:
    return pq.run(quick=True, seed=0, progress=_quiet)


@pytest.fixture(scope="module")
def rounding_record() -> dict[str, Any]:
    return rounding.run(quick=True, seed=0, progress=_quiet)


@pytest.fixture(scope="module")
def formats_record() -> dict[str, Any]:
    return formats.run(quick=True, seed=0, progress=_quiet)


@pytest.fixture(scope="module")
def batch_record() -> dict[str, Any]:
    return batch.run(quick=True, seed=0, progress=_quiet)


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- common


def test_digits_splits_are_disjoint_and_sized() -> None:
    d = common.digits(0)
    assert (len(d.train), len(d.test)) == (1437, 360)
    small = common.digits(0, train_size=100, test_size=50)
    assert (len(small.train), len(small.test)) == (100, 50)
    with pytest.raises(InvalidArgument, match="train_size"):
        common.digits(0, train_size=0)


def test_models_and_unknown_name() -> None:
    assert common.param_layers(common.digits_cnn()) == [0, 4, 6]
    assert common.param_layers(common.digits_mlp()) == [1, 3]
    with pytest.raises(InvalidArgument, match="accepted: cnn, mlp"):
        common.model("resnet")


def test_ia_sparsity_from_counters_excludes_pruned_macs() -> None:
    c = {"ff": {"macs_total": 100, "skipped": {"input_zero": 30, "pruned": 40}}}
    assert common.ia_sparsity(c) == pytest.approx(0.5)
    assert common.ia_sparsity({"ff": {"macs_total": None, "skipped": {}}}) is None


def test_mlp_first_layer_sparsity_is_the_share_of_zero_pixels() -> None:
    d = common.digits(0, test_size=64)
    w = common.digits_mlp().init_weights(0)
    layers = common.layer_ia_sparsity(common.DEFAULT_URL, common.digits_mlp(), w, d.test.x)
    assert layers[0] == pytest.approx(float((d.test.x == 0).mean()))
    assert len(layers) == 2


def test_laps_option_reaches_the_device_and_is_refused_without_the_unit() -> None:
    assert host.Precision.parse("dfxp8+sr+laps").laps
    with pytest.raises(InvalidArgument, match="dfxp4/8/12/16"):
        host.Precision.parse("dfxp6+laps")
    with host.open("emu://hnpu-v2") as dev, pytest.raises(InvalidArgument, match="no LAPS"):
        dev.deploy(common.digits_mlp(), precision="dfxp8+laps")


# ----------------------------------------------------------------------------- pq


def test_ideal_time_and_design_points() -> None:
    assert pq.ideal_time(16, 0.0, 4) == 1.0
    assert pq.ideal_time(6, 0.0, 4) == pq.ideal_time(8, 0.0, 4) == 0.25
    assert pq.ideal_time(6, 0.5, 2) == pytest.approx(0.5 * 9 / 64)
    grid = [
        {"bits": 8, "pruning": 0.5, "accuracy": 0.95, "chip_cycles_per_step": 1.0},
        {"bits": 6, "pruning": 0.3, "accuracy": 0.95, "chip_cycles_per_step": 1.0},
        {"bits": 4, "pruning": 0.0, "accuracy": 0.80, "chip_cycles_per_step": 1.0},
    ]
    best = pq.design_points(grid, 0.96)
    # coarse (4-bit slices): 6 bits costs as much as 8, so the higher pruning wins
    assert (best["blue"]["coarse"] or {})["bits"] == 8
    # fine (2-bit slices): 6 bits at 0.3 (0.7*9/64) beats 8 bits at 0.5 (0.5*16/64)
    assert (best["blue"]["fine"] or {})["bits"] == 6


def test_pq_record_structure_and_laws(pq_record: dict[str, Any], tmp_path: Path) -> None:
    rec = pq_record
    assert set(rec) >= {"fp32_accuracy", "grid", "models"}
    assert rec["fp32_accuracy"] > 0.9
    for m in rec["models"].values():
        cell = {(g["bits"], g["pruning"]): g for g in m["grid"]}
        assert set(cell) == {(b, p) for b in pq.QUICK_BITS for p in pq.QUICK_PRUNING}
        for g in m["grid"]:
            assert set(g) >= {"bits", "pruning", "accuracy", "ia_sparsity"}
            assert 0 <= g["ia_sparsity"] <= 1 and 0 <= g["accuracy"] <= 1
        for b in pq.QUICK_BITS:  # sparsity rises with pruning ...
            assert cell[b, 0.9]["ia_sparsity"] > cell[b, 0.0]["ia_sparsity"]
        # ... and with fewer bits
        assert cell[4, 0.0]["ia_sparsity"] > cell[8, 0.0]["ia_sparsity"]
        assert cell[4, 0.0]["accuracy"] < cell[8, 0.0]["accuracy"]
    cnn = rec["models"]["cnn"]
    assert rec["grid"] == cnn["grid"]
    assert cnn["findings"]["worst_row_bits"] == 4
    json.dumps(rec)
    pq.plot(rec, str(tmp_path / "pq.png"))
    assert _png(tmp_path / "pq.png")
    assert "dfxp4" in pq.summary(rec)


# ----------------------------------------------------------------------------- rounding


def test_fewest_bits_needs_every_wider_width_within_tolerance() -> None:
    acc = {4: 0.95, 6: 0.90, 8: 0.955, 16: 0.96}
    assert rounding.fewest_bits(acc, 0.96) == 8  # 4 is within, but 6 is not
    assert rounding.fewest_bits({8: 0.5}, 0.96) is None


def test_rounding_record_and_sr_beats_nearest_at_4_bits(
    rounding_record: dict[str, Any], tmp_path: Path
) -> None:
    rec = rounding_record
    acc = {(g["bits"], g["mode"]): g["accuracy"] for g in rec["grid"]}
    assert set(acc) == {(b, m) for b in rounding.QUICK_WIDTHS for m in rounding.QUICK_MODES}
    assert set(rec["fewest_bits_within_1_point"]) == set(rounding.QUICK_MODES)
    # nearest rounding loses the small errors and gradients of 4-bit training; SR keeps them
    assert acc[4, "sr"] > acc[4, "nearest"] + 0.1
    json.dumps(rec)
    rounding.plot(rec, str(tmp_path / "r.png"))
    assert _png(tmp_path / "r.png")


# ----------------------------------------------------------------------------- formats


def test_formats_record_and_narrower_formats_move_fewer_bits(
    formats_record: dict[str, Any], tmp_path: Path
) -> None:
    rows = {r["format"]: r for r in formats_record["rows"]}
    assert set(rows) == set(formats.QUICK_FORMATS)
    for r in rows.values():
        assert r["dram_bits_per_step"] > 0 and r["energy_uj_per_step"] > 0
    dram = [rows[f]["dram_bits_per_step"] for f in ("fp32", "bf16", "hfp8")]
    energy = [rows[f]["energy_uj_per_step"] for f in ("fp32", "bf16", "hfp8")]
    assert dram[0] > dram[1] > dram[2]
    assert energy[0] > energy[1] > energy[2]
    assert rows["fp32"]["energy_uj_vs_fp32"] == 1.0
    json.dumps(formats_record)
    formats.plot(formats_record, str(tmp_path / "f.png"))
    assert _png(tmp_path / "f.png")


# ----------------------------------------------------------------------------- batch


def test_batch_record_and_best_lr_grows_with_batch(
    batch_record: dict[str, Any], tmp_path: Path
) -> None:
    rec = batch_record
    assert {(g["batch"], g["lr"]) for g in rec["grid"]} == {
        (b, lr) for b in batch.QUICK_BATCHES for lr in batch.QUICK_LRS
    }
    small, large = (rec["best"][str(b)]["lr"] for b in batch.QUICK_BATCHES)
    assert large > small
    assert max(g["accuracy"] for g in rec["grid"]) > 0.8
    json.dumps(rec)
    batch.plot(rec, str(tmp_path / "b.png"))
    assert _png(tmp_path / "b.png")
