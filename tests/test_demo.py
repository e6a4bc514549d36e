"""``microtrain demo``: the camera faults, the host pretraining's gradients, and short runs of
the job on the in-process emulator (JSON schema, determinism, the fault's effect, every fault
and labels mode, bad settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from host import cli, datasets, demo, errors, nn

#: A short run: few frames, a small held-out set, a brief pretraining.
FAST = {"frames": 4, "heldout": 90, "pretrain_epochs": 4, "eval_every": 2}

CONTRACT_KEYS = {
    "accuracy_before_fault",
    "accuracy_after_fault",
    "accuracy_after_adaptation",
    "frames",
    "chip_latency_ms_per_update",
    "chip_energy_uj_per_update",
    "host_ms_per_update",
    "weights_sha256",
    "counters",
}


@pytest.fixture(scope="module")
def splits() -> datasets.DigitSplits:
    return datasets.load_digits_splits(0)


def test_splits_are_disjoint_and_cover_the_bundled_digits(splits: datasets.DigitSplits) -> None:
    parts = (splits.pretrain, splits.stream, splits.heldout)
    assert sum(len(p) for p in parts) == 1797
    assert len(splits.heldout) == datasets.HELDOUT_SIZE
    flat = np.concatenate([p.x.reshape(len(p), -1) for p in parts])
    assert flat.min() == 0.0 and flat.max() == 1.0
    # No frame of one split reappears in another (the digits hold a few exact duplicates, so
    # compare the shuffled indices instead of the pixels).
    again = datasets.load_digits_splits(0)
    np.testing.assert_array_equal(again.stream.x, splits.stream.x)
    other = datasets.load_digits_splits(1)
    assert not np.array_equal(other.stream.y, splits.stream.y)


def test_each_fault_corrupts_frames_as_documented(splits: datasets.DigitSplits) -> None:
    x = splits.heldout.x[:50]
    dead = datasets.apply_fault(x, "dead-columns")
    for col, value in datasets.DEAD_COLUMNS.items():
        assert (dead[..., col] == value).all()
    others = [c for c in range(8) if c not in datasets.DEAD_COLUMNS]
    np.testing.assert_array_equal(dead[..., others], x[..., others])
    shifted = datasets.apply_fault(x, "shift")
    down, right = datasets.SHIFT
    np.testing.assert_array_equal(shifted[..., down:, right:], x[..., : 8 - down, : 8 - right])
    assert (shifted[..., :down, :] == 0).all() and (shifted[..., :, :right] == 0).all()
    noisy = datasets.apply_fault(x, "noise", seed=3)
    np.testing.assert_array_equal(noisy, datasets.apply_fault(x, "noise", seed=3))
    assert not np.array_equal(noisy, datasets.apply_fault(x, "noise", seed=3, draw=1))
    low = datasets.apply_fault(x, "contrast")
    gain, offset = datasets.CONTRAST
    np.testing.assert_allclose(low, np.clip(gain * x + offset, 0, 1), rtol=1e-6)
    for f in datasets.FAULTS:
        out = datasets.apply_fault(x, f)
        assert out.dtype == np.float32 and out.shape == x.shape
        assert 0.0 <= out.min() and out.max() <= 1.0
    assert x.max() == 1.0  # the input is never modified in place


def test_apply_fault_refuses_unknown_faults_and_shapes() -> None:
    with pytest.raises(errors.InvalidArgument, match="accepted: dead-columns"):
        datasets.apply_fault(np.zeros((1, 1, 8, 8), np.float32), "smudge")
    with pytest.raises(errors.InvalidArgument, match=r"\(N, 1, 8, 8\)"):
        datasets.apply_fault(np.zeros((1, 8, 8), np.float32), "shift")


def test_host_pretraining_gradients_equal_finite_differences() -> None:
    spec = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
        input_shape=(1, 4, 4),
    )
    rng = np.random.default_rng(5)
    w = {k: v.astype(np.float64) for k, v in spec.init_weights(5).items()}
    x = rng.random((3, 1, 4, 4))
    y = np.array([0, 2, 1])
    _, grads = demo._gradients(spec, w, x, y)  # type: ignore[arg-type]
    eps = 1e-3  # the forward runs in float32
    for name, value in w.items():
        for idx in list(np.ndindex(value.shape))[:6]:
            plus = {k: v.copy() for k, v in w.items()}
            minus = {k: v.copy() for k, v in w.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            lp, _ = demo._gradients(spec, plus, x, y)  # type: ignore[arg-type]
            lm, _ = demo._gradients(spec, minus, x, y)  # type: ignore[arg-type]
            assert grads[name][idx] == pytest.approx((lp - lm) / (2 * eps), abs=2e-3)


def test_the_cli_writes_the_json_contract_and_a_png(tmp_path: Path) -> None:
    out, png = tmp_path / "demo.json", tmp_path / "curve.png"
    rc = cli.main(["demo", "--frames", "3", "--json-out", str(out), "--plot", str(png)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert CONTRACT_KEYS <= doc.keys()
    assert doc["frames"] == 3
    for k in ("accuracy_before_fault", "accuracy_after_fault", "accuracy_after_adaptation"):
        assert 0.0 <= doc[k] <= 1.0
    assert doc["chip_latency_ms_per_update"] > 0 and doc["chip_energy_uj_per_update"] > 0
    assert doc["host_ms_per_update"] > 0
    assert len(doc["weights_sha256"]) == 64
    assert doc["counters"]["total"]["macs_total"] > 0
    assert doc["curve"][0] == [0, doc["accuracy_after_fault"]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_weights_and_the_fault_lowers_accuracy() -> None:
    a = demo.run(demo.DemoConfig(**FAST))  # type: ignore[arg-type]
    b = demo.run(demo.DemoConfig(**FAST))  # type: ignore[arg-type]
    c = demo.run(demo.DemoConfig(**FAST, seed=1))  # type: ignore[arg-type]
    assert a.weights_sha256 == b.weights_sha256 and a.curve == b.curve
    assert c.weights_sha256 != a.weights_sha256
    assert a.accuracy_after_fault < a.accuracy_before_fault - 0.2
    # Per-update figures are the steps' summed counters over the frames.
    assert a.chip_energy_uj_per_update == pytest.approx(
        a.counters["total"]["energy_pj"] / a.frames * 1e-6
    )
    assert 0.0 <= a.skipped_shares["all_macs"] < 1.0


@pytest.mark.parametrize("fault", datasets.FAULTS)
def test_every_fault_breaks_the_deployed_model(fault: str) -> None:
    r = demo.run(demo.DemoConfig(**{**FAST, "frames": 2}, fault=fault))  # type: ignore[arg-type]
    assert r.accuracy_after_fault < r.accuracy_before_fault - 0.2
    assert len(r.curve) == 2


@pytest.mark.parametrize("algorithm", demo.ALGORITHMS)
def test_teacher_labels_and_every_algorithm_run(algorithm: str) -> None:
    r = demo.run(
        demo.DemoConfig(**{**FAST, "frames": 3}, labels="teacher", algorithm=algorithm)  # type: ignore[arg-type]
    )
    assert r.teacher_label_accuracy is not None and r.teacher_label_accuracy > 0.6
    assert r.settings["algorithm"] == algorithm and r.frames == 3


def test_bad_settings_get_specific_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, match in (
        ({"fault": "smudge"}, "accepted: dead-columns"),
        ({"labels": "oracle"}, "accepted: true, teacher"),
        ({"algorithm": "sgd"}, "accepted: bp, dfa, bias-only"),
        ({"frames": 0}, "frames must be an int >= 1"),
        ({"heldout": 999}, "heldout must be in 1..360"),
    ):
        with pytest.raises(errors.InvalidArgument, match=match):
            demo.DemoConfig(**bad)
    assert cli.main(["demo", "--device", "emu://hnpu-v2", "--preset", "hnpu-v1"]) == 2
    assert "not both" in capsys.readouterr().err
