"""``microtrain bench step``: the record schema and the numpy baseline's arithmetic, on tiny
models (no timing is asserted: speed is measured by the benchmark, not by tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from host import bench_step, cli, nn


def tiny_cases() -> tuple[bench_step.Case, ...]:
    def cnn() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8, 3),
            input_shape=(1, 4, 4),
        )

    def mlp() -> nn.Sequential:
        return bench_step.mdnet_fc(width=8, features=12)

    return (bench_step.Case("cnn", cnn, 4, 3), bench_step.Case("mlp", mlp, 5, 2))


def test_records_have_the_issue_schema() -> None:
    records = bench_step.run(cases=tiny_cases(), steps=1)
    assert [(r["case"], r["precision"]) for r in records] == [
        (c, p) for c in ("cnn", "mlp") for p in bench_step.PRECISIONS
    ]
    for r in records:
        assert {"case", "precision", "ms", "baseline_ms", "ratio"} <= r.keys()
        assert r["ms"] > 0 and r["baseline_ms"] > 0
        # ms figures are rounded to 1 us, so a tiny baseline bends the quotient a little
        assert r["ratio"] == pytest.approx(r["ms"] / r["baseline_ms"], rel=0.05)
        assert r["target"] == bench_step.TARGETS[r["precision"]]
        # dfxp8+sr inputs travel as fp32 too: the device's SR of the input is not reproducible
        case = {c.name: c for c in tiny_cases()}[r["case"]]
        assert r["input_format"] == "fp32"
        assert r["wire_bytes_per_step"] > 4 * r["batch"] * np.prod(case.build().input_shape)
    json.dumps(records)  # serialisable as printed by --json
    table = bench_step.format_table(records)
    assert len(table.splitlines()) == 1 + len(records)


def test_numpy_baseline_matches_the_model_definition_and_descends() -> None:
    """The baseline's forward pass is the host.nn definition, and its SGD step is a descent
    step: on a fixed batch the loss falls (a wrong gradient sign or scale would not)."""
    case = tiny_cases()[0]
    spec = case.build()
    rng = np.random.default_rng(3)
    weights = {
        k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in spec.param_shapes().items()
    }
    x = rng.random((6, 1, 4, 4), dtype=np.float32)
    y = rng.integers(0, 3, 6)
    step = bench_step.numpy_step(spec, weights)
    logits = spec.forward(x, weights)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = float(-np.log(p[np.arange(6), y]).mean())
    first = step(x, y)
    assert first == pytest.approx(want, rel=1e-5)
    losses = [step(x, y) for _ in range(30)]
    assert losses[-1] < first


def test_cli_accepts_bench_step() -> None:
    args = cli.build_parser().parse_args(["bench", "step", "--json", "--quick"])
    assert (args.what, args.json, args.quick) == ("step", True, True)


@pytest.mark.parametrize(("n", "warm", "rounds"), [(12, 2, 4), (7, 1, 3), (1, 2, 4), (5, 0, 2)])
def test_blocks_alternate_and_time_every_batch_after_warmup(n: int, warm: int, rounds: int) -> None:
    calls: list[tuple[str, int]] = []

    def fn(tag: str) -> Callable[[Any, Any], None]:
        return lambda x, y: calls.append((tag, int(x[0])))

    batches = [(np.full(1, i, np.float32), None) for i in range(warm + n)]
    times = bench_step._times([fn("dev"), fn("np")], batches, warm, rounds)
    # Each side sees every batch once, in order, and times all but the warm-up batches.
    for tag, t in zip(("dev", "np"), times, strict=True):
        assert [i for g, i in calls if g == tag] == list(range(warm + n))
        assert len(t) == n
    # Blocks: for each batch, which side ran it first; that side changes from block to block
    # (at most one block per round), and within a block it ran all the block's batches before
    # the other side started any.
    pos = {c: k for k, c in enumerate(calls)}
    first = ["dev" if pos[("dev", i)] < pos[("np", i)] else "np" for i in range(warm + n)]
    pieces: list[list[int]] = [[0]]
    for i in range(1, warm + n):
        (pieces[-1].append(i) if first[i] == first[i - 1] else pieces.append([i]))
    assert first[0] == "dev" and len(pieces) <= rounds
    if n >= 2 * rounds:
        assert len(pieces) == rounds
    for piece in pieces:
        a = first[piece[0]]
        b = "np" if a == "dev" else "dev"
        assert max(pos[(a, i)] for i in piece) < min(pos[(b, i)] for i in piece)
