"""``microtrain reproduce transpose``: the three transposed-read solutions of survey Table 2.

EP reads the weights transposed (error x W^T). Survey section IV and Table 2 name three ways
a training chip does it; the chip model has each as a preset parameter
(``transpose_mode``, docs/chip-model.md "Cost model"), selected here per device with the
``emu://PRESET?transpose=MODE`` option:

* ``software``: re-arrange the weights before EP (survey IV-A, [22,29]): every weight byte read
  and written once more, in SRAM when the weights fit there, else as a DRAM round trip; costs
  time once per re-arrangement, which a training step needs every time the weights change;
* ``transposable-pe``: a transposable PE array (IV-B, [20]): EP runs at a lower utilization and
  the local buffers cost energy in every stage;
* ``transpose-sram``: a custom transpose SRAM (IV-C, [5,25]): no time, costlier cells.

Every figure comes from the counters of real BP training steps on ``emu://hnpu-v2`` with the
mode set by the URL: EP cycles, the transposed-read penalty cycles, DRAM traffic and energy,
for two models (weights that fit in the 256 KiB weight SRAM and weights that do not) and a
range of batch sizes (the number of samples that reuse one re-arrangement).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

import host
from host import datasets
from host.studies._b_common import Progress, mlp, new_figure, save_figure, stage_figures

TITLE = "transposed-read solutions (survey Table 2): EP cycles and DRAM traffic per mode"

MODES = ("software", "transposable-pe", "transpose-sram")
PRESET = "hnpu-v2"
PRECISION = "dfxp8+sr"
#: (name, layer widths, input shape): one whose transposed weights fit in the weight SRAM
#: (256 KiB: 256 x 256 at 8 bits is 64 KiB), one whose middle layer does not (1024 x 512 at 8
#: bits is 512 KiB). EP of the first layer is never needed (nothing before it learns).
MODELS: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("digits-mlp-256", (64, 256, 256, 10), (1, 8, 8)),
    ("wide-mlp-1024", (1024, 1024, 512, 10), (1, 32, 32)),
)
BATCHES_QUICK = (1, 32)
BATCHES_FULL = (1, 4, 16, 64, 256)


def _inputs(name: str, shape: tuple[int, ...], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs: the digits for the digits model; generated ReLU-like features (half of
    them zero, like the post-ReLU features of Fig. 10) and random labels for the wide one."""
    if name.startswith("digits"):
        d = datasets.load_digits_splits(seed).pretrain
        reps = -(-n // len(d))
        return np.tile(d.x, (reps, 1, 1, 1))[:n], np.tile(d.y, reps)[:n]
    rng = np.random.default_rng([seed, 0x7A5])
    x = np.maximum(rng.normal(0.0, 1.0, (n, *shape)), 0.0).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


def run(quick: bool, seed: int, progress: Progress) -> dict[str, Any]:
    cpu0 = time.process_time()
    batches = BATCHES_QUICK if quick else BATCHES_FULL
    steps = 2 if quick else 3
    models = MODELS[:1] if quick else MODELS
    rows: list[dict[str, Any]] = []
    for name, sizes, shape in models:
        spec = mlp(sizes, shape)
        weights = spec.init_weights(seed)
        for batch in batches:
            x, y = _inputs(name, shape, batch * steps, seed)
            for mode in MODES:
                with host.open(f"emu://{PRESET}?transpose={mode}") as dev:
                    model = dev.deploy(
                        spec,
                        weights,
                        precision=PRECISION,
                        optimizer=host.optim.SGD(0.01, momentum=0.9),
                        seed=seed,
                    )
                    total: dict[str, Any] | None = None
                    for s in range(steps):
                        sl = slice(s * batch, (s + 1) * batch)
                        model.train_step(x[sl], y[sl])
                    total = dev.counters()
                figs = stage_figures(total)
                ep, tot = figs["ep"], figs["total"]
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "mode": mode,
                        "steps": steps,
                        "ep_cycles": ep["cycles"] / steps,
                        "ep_transpose_penalty_cycles": ep["transpose_penalty_cycles"] / steps,
                        "ep_dram_bytes": ep["dram_bytes"] / steps,
                        "ep_energy_pj": ep["energy_pj"] / steps,
                        "step_cycles": tot["cycles"] / steps,
                        "step_dram_bytes": tot["dram_bytes"] / steps,
                        "step_energy_pj": tot["energy_pj"] / steps,
                    }
                )
            progress(f"{name} batch {batch}: " + ", ".join(
                f"{r['mode']} EP {r['ep_cycles']:.0f} cyc"
                for r in rows[-len(MODES):]
            ))  # fmt: skip
    return {
        "study": "transpose",
        "cpu_s": round(time.process_time() - cpu0, 1),
        "preset": PRESET,
        "precision": PRECISION,
        "source": (
            "counters of BP training steps on emu://hnpu-v2?transpose=MODE (the whole protocol "
            "path); per-step means over the steps of each point"
        ),
        "models": [
            {"name": n, "sizes": list(s), "transposed_weight_bytes": _ep_weight_bytes(s)}
            for n, s, _ in models
        ],
        "weight_sram_bytes": _param(PRESET, "weight_sram_bytes"),
        "rows": rows,
        "findings": _findings(rows),
    }


def _param(preset: str, name: str) -> float:
    with host.open(f"emu://{preset}") as dev:
        return float(dev.info()["parameters"][name])


def _ep_weight_bytes(sizes: tuple[int, ...]) -> list[int]:
    """Weight bytes EP reads transposed per layer at 8 bits (layers after the first)."""
    return [a * b for a, b in itertools.pairwise(sizes[1:])]


def _findings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Laws checked on the rows: which mode is fastest in EP at each point, the software mode's
    extra DRAM traffic, and the batch from which software re-arrangement beats the
    transposable PE array in EP cycles (None: not within the batches run; the engine takes at
    most 256 samples per step)."""
    out: dict[str, Any] = {
        "fastest_ep": {},
        "software_extra_dram_bytes": {},
        "software_penalty_cycles_per_sample": {},
        "transposable_pe_penalty_cycles": {},
        "crossover": {},
    }
    keys = sorted({(r["model"], r["batch"]) for r in rows})
    by = {(r["model"], r["batch"], r["mode"]): r for r in rows}
    for m, b in keys:
        ep = {mode: by[(m, b, mode)]["ep_cycles"] for mode in MODES}
        best = min(ep.values())
        out["fastest_ep"][f"{m}@{b}"] = [k for k in MODES if ep[k] == best]
        out["software_penalty_cycles_per_sample"][f"{m}@{b}"] = (
            by[(m, b, "software")]["ep_transpose_penalty_cycles"] / b
        )
        out["transposable_pe_penalty_cycles"][f"{m}@{b}"] = by[(m, b, "transposable-pe")][
            "ep_transpose_penalty_cycles"
        ]
        out["software_extra_dram_bytes"][f"{m}@{b}"] = (
            by[(m, b, "software")]["ep_dram_bytes"] - by[(m, b, "transpose-sram")]["ep_dram_bytes"]
        )
    for m in sorted({r["model"] for r in rows}):
        cross = None
        for b in sorted({r["batch"] for r in rows if r["model"] == m}):
            if by[(m, b, "software")]["ep_cycles"] <= by[(m, b, "transposable-pe")]["ep_cycles"]:
                cross = b
                break
        out["crossover"][m] = cross
    return out


def summary(record: dict[str, Any]) -> str:
    lines = [f"{'model':16} {'batch':>5} {'mode':16} {'EP cycles':>10} {'penalty':>8} "
             f"{'EP DRAM B':>10} {'EP energy nJ':>12}"]  # fmt: skip
    for r in record["rows"]:
        lines.append(
            f"{r['model']:16} {r['batch']:5d} {r['mode']:16} {r['ep_cycles']:10.0f} "
            f"{r['ep_transpose_penalty_cycles']:8.0f} {r['ep_dram_bytes']:10.0f} "
            f"{r['ep_energy_pj'] / 1e3:12.1f}"
        )
    return "\n".join(lines)


def plot(record: dict[str, Any], path: str) -> None:
    models = [m["name"] for m in record["models"]]
    fig, axes = new_figure(ncols=2 * len(models), width=4.2, height=3.6)
    axes = np.atleast_1d(axes)
    for i, m in enumerate(models):
        rows = [r for r in record["rows"] if r["model"] == m]
        for mode, style in zip(MODES, ("o-", "s--", "^:"), strict=True):
            rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["batch"])
            b = [r["batch"] for r in rs]
            axes[2 * i].plot(b, [r["ep_cycles"] / r["batch"] for r in rs], style, label=mode)
            axes[2 * i + 1].plot(b, [r["ep_dram_bytes"] / r["batch"] for r in rs], style,
                                 label=mode)  # fmt: skip
        axes[2 * i].set_title(f"{m}: EP cycles / sample")
        axes[2 * i + 1].set_title(f"{m}: EP DRAM bytes / sample")
        for ax in axes[2 * i : 2 * i + 2]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch (samples per re-arrangement)")
            ax.legend(fontsize=7)
    save_figure(fig, path)
