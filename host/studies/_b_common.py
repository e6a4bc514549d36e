"""Helpers shared by the studies bu, presets, selective, transpose and the scenarios
new-classes and distill: model builders, on-device training and evaluation loops through
``host.open`` (the whole protocol path), counters arithmetic and plotting setup.

Nothing here imports ``device_model``: the studies that need cost-model figures get
``device_model.study_costs`` from the CLI (see ``host.studies``) and say so in their records.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

import host
from host import nn
from host.model import Precision
from host.studies.common import PREDICT_CHUNK, accuracy, add_counters, predict

__all__ = [
    "PREDICT_CHUNK",
    "ClassPrecision",
    "Progress",
    "accuracy",
    "add_counters",
    "class_accuracy",
    "mlp",
    "new_figure",
    "predict",
    "save_figure",
    "scaled",
    "stage_figures",
    "train_epochs",
]

Progress = Callable[[str], None]
STAGES = ("ff", "ep", "wg", "update", "total")


def mlp(sizes: Sequence[int], input_shape: tuple[int, ...] = (1, 8, 8)) -> nn.Sequential:
    """Flatten, then Linear layers of ``sizes`` (the first is the flattened input width) with
    a ReLU after every hidden layer."""
    if int(np.prod(input_shape)) != sizes[0]:
        raise ValueError(f"sizes[0]={sizes[0]} does not match the input shape {input_shape}")
    layers: list[nn.LayerSpec] = [nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers, input_shape=input_shape)


def class_accuracy(
    model: host.Model, x: NDArray[np.float32], y: NDArray[np.int64], classes: Sequence[int]
) -> float:
    """Accuracy on the samples whose label is in ``classes``."""
    sel = np.isin(y, list(classes))
    return accuracy(model, x[sel], y[sel])


def scaled(counters: Mapping[str, Any], factor: float) -> Any:
    """The counters tree with every number multiplied by ``factor`` (e.g. 1/steps)."""
    out: dict[str, Any] = {}
    for k, v in counters.items():
        if isinstance(v, Mapping):
            out[k] = scaled(v, factor)
        else:
            out[k] = None if v is None else v * factor
    return out


def stage_figures(counters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-stage figures the studies report: cycles, transposed-read penalty cycles,
    energy (pJ), DRAM and SRAM bytes, MACs executed / total."""
    out: dict[str, dict[str, Any]] = {}
    for s in STAGES:
        c = counters.get(s) or {}

        def both(a: str, b: str, c: Mapping[str, Any] = c) -> Any:
            x, y = c.get(a), c.get(b)
            return None if x is None or y is None else x + y

        out[s] = {
            "cycles": c.get("cycles"),
            "transpose_penalty_cycles": c.get("transpose_penalty_cycles"),
            "energy_pj": c.get("energy_pj"),
            "dram_bytes": both("dram_read_bytes", "dram_write_bytes"),
            "sram_bytes": both("sram_read_bytes", "sram_write_bytes"),
            "macs_executed": c.get("macs_executed"),
            "macs_total": c.get("macs_total"),
        }
    return out


def train_epochs(
    model: host.Model,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    epochs: int,
    batch: int,
    rng: np.random.Generator,
) -> tuple[Any, int]:
    """Train ``model`` on the device for ``epochs`` shuffled passes over (x, y) in minibatches;
    returns the summed counters of every step and the number of steps."""
    counters: Any = None
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for at in range(0, len(order), batch):
            idx = order[at : at + batch]
            r = model.train_step(x[idx], y[idx])
            counters = r.counters if counters is None else add_counters(counters, r.counters)
            steps += 1
    return counters, steps


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    """A matplotlib figure and its axes on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height))
    return fig, axes


def save_figure(fig: Any, path: str) -> None:
    """Write ``fig`` as a PNG and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class ClassPrecision(Precision):
    """A ``host.Precision`` whose tensor classes have their own formats: ``formats`` maps a
    tensor class (activations, weights, errors, gradients, master_weights, momentum) to a
    format name; classes it does not name keep the chip's fp32. Rounding and scale mode are
    shared (``format`` is the activations' format, used for the input upload)."""

    formats: tuple[tuple[str, str], ...] = ()

    def policy(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for cls, fmt in self.formats:
            out += Precision(fmt, rounding=self.rounding, scale=self.scale, classes=(cls,)).policy()
        return out

    def __str__(self) -> str:
        return ",".join(f"{c}={f}" for c, f in self.formats) + f"+{self.rounding}+{self.scale}"
