"""Smoke tests of the studies bu, presets, selective, transpose and the scenarios new-classes
and distill: each ``--quick`` run through the CLI driver writes its JSON record and PNG, and
each record shows a law of the chip model or of the method on the quick data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial

from host import cli, demo
from host.studies import _b_common, distill, new_classes, selective


def _run(kind: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    out, png = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    rc = cli.main([kind, name, "--quick", "--json-out", str(out), "--plot", str(png)])
    assert rc == 0
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{name}: done in" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["quick"] is True and rec["elapsed_s"] >= 0
    return rec


def test_transpose_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run("reproduce", "transpose", tmp_path, capsys)
    rows = {(r["model"], r["batch"], r["mode"]): r for r in rec["rows"]}
    assert {m for _, _, m in rows} == {"software", "transposable-pe", "transpose-sram"}
    for model, batch, _ in rows:
        sw = rows[(model, batch, "software")]
        pe = rows[(model, batch, "transposable-pe")]
        ts = rows[(model, batch, "transpose-sram")]
        # Survey Table 2: re-arranging in software costs time; a transpose SRAM costs none.
        assert ts["ep_cycles"] < sw["ep_cycles"]
        assert ts["ep_transpose_penalty_cycles"] == 0 < sw["ep_transpose_penalty_cycles"]
        assert pe["ep_cycles"] >= ts["ep_cycles"]
        # These weights fit in the weight SRAM: the re-arrangement moves no DRAM bytes.
        assert sw["ep_dram_bytes"] == ts["ep_dram_bytes"]
        # ... and it is paid once per step, so per sample it shrinks with the batch.
    by_batch = sorted(
        (b, r["ep_transpose_penalty_cycles"] / b)
        for (_, b, m), r in rows.items()
        if m == "software"
    )
    assert by_batch[-1][1] < by_batch[0][1]


def test_emu_transpose_option_rejects_unknown_modes() -> None:
    with pytest.raises(serial.SerialException, match="transpose='diagonal'; accepted: software"):
        serial.serial_for_url("emu://hnpu-v2?transpose=diagonal")


def test_presets_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run("reproduce", "presets", tmp_path, capsys)
    dev, ana = rec["device"]["v2_vs_v1"], rec["analytic"]["v2_vs_v1"]
    # HNPU-V2 (pruning, pipelined DFA, cheaper slices) beats V1 on the device and in the model.
    for g in (dev, ana):
        assert g["throughput_gain"] > 0.2
        assert g["energy_efficiency_gain"] > 0.1
    v = {r["variant"]: r for r in rec["device"]["variants"]}
    # Both chips did the same forward work; V2 pruned 30% of the hidden channels' updates.
    assert (
        v["v1-bp"]["stages"]["ff"]["macs_total"]
        == v["v2-pdfa-pruned"]["stages"]["ff"]["macs_total"]
    )
    assert v["v2-pdfa-pruned"]["skipped"]["pruned"] > 0 == v["v1-bp"]["skipped"]["pruned"]
    assert all(math.isfinite(x) for r in v.values() for x in r["losses"])


def test_bu_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run("reproduce", "bu", tmp_path, capsys)
    m = {r["method"]: r for r in rec["methods"]}
    mem = {k: r["memory_bytes"] for k, r in m.items()}
    # Table 5: DFA keeps only the last error; DDG copies weights, FDG copies activations.
    assert mem["dfa"]["errors"] < mem["bp"]["errors"]
    assert mem["dfa"]["activations"] + mem["dfa"]["errors"] < (
        mem["bp"]["activations"] + mem["bp"]["errors"]
    )
    assert mem["ddg"]["weights"] > mem["bp"]["weights"] == mem["fdg"]["weights"]
    assert mem["fdg"]["activations"] > mem["ddg"]["activations"] > mem["bp"]["activations"]
    # The memory model is the device's own figure where both exist.
    assert all(rec["memory_model_matches_device"].values())
    # Table 5's processing time: every unlocking method is faster than BP.
    t = {k: r["table5_time_cycles"] for k, r in m.items()}
    assert max(t["ddg"], t["fdg"], t["pdfa"]) < t["bp"]
    # On the device: pipelined DFA < DFA < BP per step, with identical arithmetic.
    lat = {k: m[k]["device_step_latency_cycles"] for k in ("bp", "dfa", "pdfa")}
    assert lat["pdfa"] < lat["dfa"] < lat["bp"]
    assert rec["dfa_pdfa_identical_weights"] is True
    assert m["ddg"]["accuracy"] is None and m["fdg"]["accuracy"] is None
    assert all(0.1 < m[k]["accuracy"] <= 1 for k in ("bp", "dfa", "pdfa"))


def test_selective_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run("reproduce", "selective", tmp_path, capsys)
    r = {x["method"]: x for x in rec["rows"]}
    kept = {k: x["training_memory"]["total"] for k, x in r.items()}
    # Survey VII-C: freezing layers and weights removes stored activations and errors.
    assert kept["last-1"] < kept["last-2"] < kept["full"]
    assert kept["bias-only"] < kept["full"]
    assert r["bias-only"]["training_memory"]["activations"] == 0
    assert kept["sparse-25"] < kept["full"]
    # ... and the work of frozen layers: less energy per step than training everything.
    e = {k: x["energy_uj_per_step"] for k, x in r.items()}
    assert e["last-1"] < e["full"] and e["bias-only"] < e["full"]
    # The device's counters keep what the study computes, for every method (masks aside).
    assert all(rec["training_memory_matches_device"].values())
    dev = {k: x["device_memory_bytes"]["total"] for k, x in r.items()}
    assert dev["last-1"] < dev["last-2"] < dev["full"] and dev["bias-only"] < dev["full"]
    # Adapting helps every method on this fault.
    assert all(x["accuracy_after"] > x["accuracy_before"] for x in r.values())


def test_new_classes_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run("scenario", "new-classes", tmp_path, capsys)
    r = {x["method"]: x for x in rec["rows"]}
    naive, method = r["naive"], r["rehearsal+distillation"]
    assert method["new_before"] == 0.0  # 8 and 9 were never seen before deployment
    assert method["old_before"] > 0.9
    # Without rehearsal the chip forgets 0-7 fast; with it, most of 0-7 survives.
    assert naive["old_points_lost"] > 30
    assert method["old_points_lost"] < 15
    assert method["new_after"] > 0.1  # from 0: it learns the new classes


def test_distillation_error_is_the_gradient_of_its_loss() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 10))
    y = np.array([8, 2, 9])
    z_old = rng.normal(size=(3, 8))

    def loss(zz: np.ndarray) -> float:
        ls = zz - zz.max(1, keepdims=True)
        ls = ls - np.log(np.exp(ls).sum(1, keepdims=True))
        ce = -ls[np.arange(3), y].mean()
        t = new_classes.T
        p = np.exp(z_old / t) / np.exp(z_old / t).sum(1, keepdims=True)
        q = zz[:, :8] / t
        lq = q - np.log(np.exp(q).sum(1, keepdims=True))
        kl = (p * (np.log(p) - lq)).sum(1).mean()
        return float(ce + new_classes.LAMBDA * t * t * kl)

    g = new_classes.distillation_error(z, y, z_old)
    eps = 1e-6
    num = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        d = np.zeros_like(z)
        d[i] = eps
        num[i] = (loss(z + d) - loss(z - d)) / (2 * eps)
    np.testing.assert_allclose(g, num, atol=1e-5)


def test_soft_target_error_vanishes_at_the_teacher() -> None:
    z = np.random.default_rng(2).normal(size=(4, 10))
    p = np.exp(z / distill.T) / np.exp(z / distill.T).sum(1, keepdims=True)
    np.testing.assert_allclose(distill.soft_target_error(z, p), 0.0, atol=1e-7)
    assert np.abs(distill.soft_target_error(z, np.roll(p, 1, axis=1))).max() > 1e-3


def test_distill_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run("scenario", "distill", tmp_path, capsys)
    r = {x["labels"]: x for x in rec["rows"]}
    assert rec["teachers"]["svm"]["stream_label_accuracy"] > 0.95
    # The student learns from the teacher's labels alone, nearly as well as from the truth.
    assert r["true"]["accuracy"] > 0.75
    assert r["svm"]["accuracy"] > 0.75
    assert r["svm"]["points_below_true"] < 10


def test_training_memory_counts_only_what_the_trainable_set_needs() -> None:
    spec = demo.digits_cnn()
    shapes = spec.param_shapes()
    none = selective.training_memory(spec, {k: 0 for k in shapes}, 4)
    assert none["activations"] == none["errors"] == none["gradients"] == 0
    last = selective.training_memory(spec, {k: (k.startswith("6.")) * 10 for k in shapes}, 4)
    # Only the classifier learns: it keeps its 32 inputs and 10 output errors per sample.
    assert last["activations"] == 4 * 32 and last["errors"] == 4 * 10 and last["masks"] == 0


def test_add_counters_keeps_memory_peaks() -> None:
    a = {"ff": {"cycles": 3}, "memory_peak_bytes": {"total": 10}, "latency_s": 1.0}
    b = {"ff": {"cycles": 4}, "memory_peak_bytes": {"total": 7}, "latency_s": 0.5}
    s = _b_common.add_counters(a, b)
    assert s == {"ff": {"cycles": 7}, "memory_peak_bytes": {"total": 10}, "latency_s": 1.5}
    assert _b_common.add_counters(None, b) is b


def test_a_cost_model_study_without_the_cli_says_how_to_run_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # host.studies never imports device_model: bu gets the cost model from the CLI only.
    import argparse

    from host import studies

    args = argparse.Namespace(name="bu", quick=True, seed=0, json_out=None, plot=None)
    assert studies.main(args, "reproduce") == 2
    assert "needs the chip's cost model" in capsys.readouterr().err
