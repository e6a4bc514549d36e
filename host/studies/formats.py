"""``microtrain reproduce formats``: number formats for training (survey section VI, Table 4):
accuracy, bits moved and energy per training step, from the chip's counters.

The small CNN is trained from the device's own initialisation on ``emu://hnpu-v1`` (the preset
with every format and the LAPS unit) with every datapath tensor class in the format, master
weights in fp32, the same seeded SGD steps for all. Formats: fp32, fp16, bf16, tf32,
dlfloat16, hfp8 (e4m3 forward / e5m2 backward), fp8-seb (shared exponent), flex16 (shared
exponent), FGMP (e4m3 with fp16 outliers), DFXP8 and DFXP16 with stochastic rounding and
dynamic ranges, and DFXP with LAPS starting at 16 bits and at 8 bits (LAPS moves each layer's
width between 4/8/12/16 bits from the differences of high- and low-precision results).

Per format: held-out accuracy; per training step the bits moved (8 x DRAM read + write bytes,
and the SRAM traffic likewise), the energy, cycles and 4b x 4b slice products (all totals over
FF, EP, WG and update from the counters of the training steps; the cost model of
docs/chip-model.md prices each format by its width).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

import host
from host.studies import common

TITLE = "Training formats (survey VI, Table 4): accuracy, bits moved and energy per step"

URL = "emu://hnpu-v1"
#: label -> precision spec (host.Precision.parse)
FORMATS = {
    "fp32": "fp32",
    "fp16": "fp16",
    "bf16": "bf16",
    "tf32": "tf32",
    "dlfloat16": "dlfloat16",
    "hfp8": "hfp8",
    "fp8-seb": "fp8-seb+amax",
    "flex16": "flex16+amax",
    "fgmp": "fgmp",
    "dfxp8": "dfxp8+sr+overflow",
    "dfxp16": "dfxp16+sr+overflow",
    "dfxp16+laps": "dfxp16+sr+overflow+laps",
    "dfxp8+laps": "dfxp8+sr+overflow+laps",
}
QUICK_FORMATS = ("fp32", "bf16", "hfp8", "dfxp8+laps")
#: The rounding study's training settings (from the device's initialisation).
STEPS, QUICK_STEPS, LR, MOMENTUM, BATCH = 300, 60, 0.02, 0.9, 32


def _per_step(counters: dict[str, Any] | None, steps: int) -> dict[str, float | None]:
    t = (counters or {}).get("total") or {}

    def per(*keys: str, scale: float = 1.0) -> float | None:
        vals = [t.get(k) for k in keys]
        if steps == 0 or any(v is None for v in vals):
            return None
        return float(sum(vals)) * scale / steps  # type: ignore[arg-type]

    return {
        "dram_bits_per_step": per("dram_read_bytes", "dram_write_bytes", scale=8.0),
        "sram_bits_per_step": per("sram_read_bytes", "sram_write_bytes", scale=8.0),
        "energy_uj_per_step": per("energy_pj", scale=1e-6),
        "cycles_per_step": per("cycles"),
        "slice_ops_per_step": per("slice_ops"),
    }


def run(quick: bool, seed: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Train once per format and read its counters (see the module docstring)."""
    cpu0 = time.process_time()
    steps = QUICK_STEPS if quick else STEPS
    names = QUICK_FORMATS if quick else tuple(FORMATS)
    data = common.digits(seed)
    rows: list[dict[str, Any]] = []
    with host.open(URL) as dev:
        for name in names:
            run_ = common.run_on_device(
                dev,
                common.digits_cnn(),
                None,
                data=data,
                precision=FORMATS[name],
                steps=steps,
                lr=LR,
                momentum=MOMENTUM,
                batch=BATCH,
                seed=seed,
            )
            row: dict[str, Any] = {
                "format": name,
                "precision": str(host.Precision.parse(FORMATS[name])),
                "accuracy": run_.accuracy,
                "final_loss": float(np.mean(run_.losses[-10:])),
                **_per_step(run_.counters, steps),
            }
            rows.append(row)
            progress(
                f"{name}: accuracy {run_.accuracy:.3f}, "
                f"{(row['dram_bits_per_step'] or 0) / 8e3:.1f} kB DRAM/step, "
                f"{row['energy_uj_per_step'] or 0:.2f} uJ/step"
            )
    ref = next((r for r in rows if r["format"] == "fp32"), None)
    if ref is not None:
        for r in rows:
            for k in ("dram_bits_per_step", "energy_uj_per_step", "cycles_per_step"):
                if r[k] is not None and ref[k]:
                    r[k.replace("_per_step", "_vs_fp32")] = r[k] / ref[k]
            r["accuracy_vs_fp32_points"] = 100 * ((r["accuracy"] or 0) - (ref["accuracy"] or 0))
    return {
        "rows": rows,
        "cpu_s": round(time.process_time() - cpu0, 1),
        "settings": {
            "device": URL,
            "model": "cnn (from the device's initialisation)",
            "formats": {n: FORMATS[n] for n in names},
            "classes": "activations, weights, errors, gradients",
            "steps": steps,
            "lr": LR,
            "momentum": MOMENTUM,
            "batch": BATCH,
        },
    }


def summary(record: dict[str, Any]) -> str:
    lines = [f"{'format':<13s}{'acc %':>7s}{'DRAM kB/step':>14s}{'uJ/step':>9s}{'x fp32 E':>9s}"]
    for r in record["rows"]:
        lines.append(
            f"{r['format']:<13s}{100 * r['accuracy']:7.1f}"
            f"{(r['dram_bits_per_step'] or 0) / 8e3:14.1f}{r['energy_uj_per_step'] or 0:9.2f}"
            f"{r.get('energy_uj_vs_fp32', float('nan')):9.2f}"
        )
    return "\n".join(lines)


def plot(record: dict[str, Any], path: str) -> None:
    """Bars of accuracy, DRAM bits per step and energy per step per format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    names = [r["format"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), dpi=100)
    series = (
        ("held-out accuracy (%)", [100 * r["accuracy"] for r in rows]),
        ("DRAM traffic (kbit / step)", [(r["dram_bits_per_step"] or 0) / 1e3 for r in rows]),
        ("energy (uJ / step)", [r["energy_uj_per_step"] or 0 for r in rows]),
    )
    for ax, (title, vals) in zip(axes, series, strict=True):
        ax.bar(range(len(names)), vals, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if title.startswith("held-out"):
            lo = min(vals)
            ax.set_ylim(max(0.0, lo - 5), 100)
            for i, v in enumerate(vals):
                ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(
        f"CNN trained on {record['settings']['device']} from scratch, "
        f"{record['settings']['steps']} steps, every datapath class in the format",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
