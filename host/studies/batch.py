"""``microtrain reproduce batch``: batch size against learning rate (survey Fig. 3a).

The survey trains on CIFAR-100 at batch sizes 1..2048 over a range of learning rates and
finds (section II, Fig. 3a) that accuracy degrades significantly below batch 4 and hardly
changes above it, and that the best learning rate grows linearly with the batch size.

Here the MLP of ``host.studies.common`` is trained on the chip (``emu://hnpu-v2``, fp32 so
that only batch and learning rate vary) from the device's own initialisation, for the same
number of epochs (the same images seen) at every batch size 1..64 and every learning rate of
a log grid (SGD, momentum 0.9). Per point: held-out accuracy (on the chip), training accuracy
(the final weights on the host in fp32 numpy, the same arithmetic; first 360 training images)
and the final training loss. Per batch size: the best learning rate and its accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import host
from host.studies import common

TITLE = "Batch size against learning rate (survey Fig. 3a)"

URL = "emu://hnpu-v2"
BATCHES = (1, 2, 4, 8, 16, 32, 64)
LRS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
QUICK_BATCHES = (4, 32)
QUICK_LRS = (0.001, 0.01, 0.1)
#: Epochs of the 1,437 training images at every batch size (2 in full runs, 1 quick).
EPOCHS, QUICK_EPOCHS, MOMENTUM = 2, 1, 0.9
#: Training images whose accuracy is reported as the training accuracy.
TRAIN_EVAL = 360


def run(quick: bool, seed: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The batch x learning-rate grid (see the module docstring)."""
    cpu0 = time.process_time()
    batches = QUICK_BATCHES if quick else BATCHES
    lrs = QUICK_LRS if quick else LRS
    epochs = QUICK_EPOCHS if quick else EPOCHS
    data = common.digits(seed)
    spec = common.digits_mlp()
    n = len(data.train)
    grid: list[dict[str, Any]] = []
    with host.open(URL) as dev:
        for b in batches:
            # whole batches only: steps * b <= epochs * n (run_on_device reshuffles per epoch)
            steps = epochs * (n // b)
            cells = []
            for lr in lrs:
                r = common.run_on_device(
                    dev,
                    spec,
                    None,
                    data=data,
                    precision="fp32",
                    steps=steps,
                    lr=lr,
                    momentum=MOMENTUM,
                    batch=b,
                    seed=seed,
                )
                tail = r.losses[-max(1, n // b // 10) :]
                loss = float(np.mean(tail))
                train_acc = common.host_accuracy(
                    spec, r.weights, data.train.x[:TRAIN_EVAL], data.train.y[:TRAIN_EVAL]
                )
                grid.append(
                    {
                        "batch": b,
                        "lr": lr,
                        "steps": steps,
                        "accuracy": r.accuracy,
                        "train_accuracy": train_acc,
                        "final_loss": loss if math.isfinite(loss) else None,
                    }
                )
                cells.append(f"lr {lr:g}: {r.accuracy:.3f}")
            progress(f"batch {b}: " + ", ".join(cells))
    best: dict[str, dict[str, float]] = {}
    for b in batches:
        row = [g for g in grid if g["batch"] == b]
        top = max(row, key=lambda g: (g["accuracy"], -g["lr"]))
        best[str(b)] = {"lr": top["lr"], "accuracy": top["accuracy"]}
    logs = [(math.log(b), math.log(best[str(b)]["lr"])) for b in batches]
    slope = None
    if len(logs) > 1 and len({x for x, _ in logs}) > 1:
        xs, ys = np.array(logs).T
        slope = float(np.polyfit(xs, ys, 1)[0])
    return {
        "grid": grid,
        "best": best,
        "best_lr_loglog_slope": slope,
        "cpu_s": round(time.process_time() - cpu0, 1),
        "settings": {
            "device": URL,
            "model": "mlp (from the device's initialisation)",
            "precision": "fp32",
            "batches": list(batches),
            "lrs": list(lrs),
            "epochs": epochs,
            "momentum": MOMENTUM,
            "survey": "accuracy degrades below batch 4; best lr grows linearly with batch",
        },
    }


def summary(record: dict[str, Any]) -> str:
    lrs = record["settings"]["lrs"]
    acc = {(g["batch"], g["lr"]): g["accuracy"] for g in record["grid"]}
    lines = ["held-out accuracy % by batch (rows) and learning rate (columns)"]
    lines.append("batch " + "".join(f"{lr:>9g}" for lr in lrs) + "   best lr")
    for b in record["settings"]["batches"]:
        best = record["best"][str(b)]
        lines.append(
            f"{b:5d} "
            + "".join(f"{100 * acc[b, lr]:9.1f}" for lr in lrs)
            + f"   {best['lr']:g} ({100 * best['accuracy']:.1f}%)"
        )
    s = record["best_lr_loglog_slope"]
    if s is not None:
        lines.append(f"slope of log(best lr) against log(batch): {s:.2f} (linear scaling: 1)")
    return "\n".join(lines)


def plot(record: dict[str, Any], path: str) -> None:
    """Survey Fig. 3a's layout: accuracy against learning rate, one curve per batch size,
    the best learning rate of each marked with a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=100)
    cmap = plt.get_cmap("viridis")
    batches = record["settings"]["batches"]
    for k, (ax, key) in enumerate(zip(axes, ("train_accuracy", "accuracy"), strict=True)):
        for i, b in enumerate(batches):
            row = sorted((g["lr"], g[key]) for g in record["grid"] if g["batch"] == b)
            color = cmap(i / max(1, len(batches) - 1))
            ax.plot([r[0] for r in row], [100 * r[1] for r in row], "o-", color=color,
                    label=f"batch {b}")  # fmt: skip
            top = max(row, key=lambda r: (r[1], -r[0]))
            ax.plot(top[0], 100 * top[1], "*", color="tab:blue", ms=14, mec="k")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (SGD, momentum 0.9)")
        ax.set_ylabel(("training" if k == 0 else "held-out") + " accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"MLP trained on {record['settings']['device']} (fp32), "
        f"{record['settings']['epochs']} epoch(s) at every batch size; star = best lr",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
