"""``microtrain reproduce pq``: the pruning-quantization (PQ) plot of the survey (Fig. 8, 10, 11).

The survey pretrains ResNet-9/18/34 in fp32 on CIFAR-100, then retrains each after weight
pruning and DFXP quantization of weights, input activations (IA) and output errors (OE),
"maintaining high accumulation bit width" (section VIII-C). Here, for the small CNN and the MLP
of ``host.studies.common`` on digits:

1. the model is pretrained on the host in fp32 (``common.pretrained``);
2. for every DFXP width in 4/6/.../16 bits and every pruning ratio 0.0..0.9 it is deployed on
   the chip (``emu://hnpu-v2``, the pruning-aware preset) with per-layer magnitude pruning at
   that ratio and ``dfxpN`` with stochastic rounding for activations, weights and errors
   (weight gradients, master weights and accumulators stay at full precision, as in the
   survey), and retrained on the chip for a fixed number of SGD steps;
3. held-out accuracy is measured on the chip in the same precision; input-activation
   sparsity is read off the chip's FF counters per parameterised layer
   (``common.layer_ia_sparsity``: ``input_zero / macs_total`` of each layer on the held-out
   images) and averaged over the layers, as the survey's Fig. 10 ("layerwise average IA
   sparsity"). The MAC-weighted whole-model figure (``ia_sparsity_macs``) is kept as well.

An fp32 row (same retraining, no quantization) gives the reference ``fp32_accuracy`` (its
unpruned point). Acceptance boxes follow the survey's two thresholds, which sit about 1.5 and
5.5 points under its unpruned fp32 ResNet-18/34 accuracy (blue > 77.0%, green > 73.0% against
about 78.5%): here ``fp32_accuracy - 1.5`` and ``- 5.5`` points.

Fig. 11's comparison: two ideal accelerators that skip pruned weights and scale with bit width,
coarse-grained (4-bit slices: 4/8/12/16-bit precisions, like HNPU) and fine-grained (2-bit
slices: every width of the grid). Ideal time of a training step relative to dense 16 bit:
``(1 - pruning) * ceil(bits / g)^2 / ceil(16 / g)^2`` with slice width g (assumption: the
survey gives no formula; FF, EP and WG all scale with the unpruned MACs and the
slice products per MAC). The best design point of each chip is the fastest grid point inside a
box. The chip's own cycles per training step (hnpu-v2 cost model, which also skips zero
inputs and zero slices) are recorded beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import host
from host.studies import common

TITLE = "PQ plot (survey Fig. 8/10/11): accuracy and IA sparsity over DFXP bits x pruning"

URL = "emu://hnpu-v2"
BITS = (16, 14, 12, 10, 8, 6, 4)
PRUNING = tuple(round(0.1 * i, 1) for i in range(10))
QUICK_BITS = (8, 4)
QUICK_PRUNING = (0.0, 0.9)
#: Retraining on the chip: SGD steps of batch 32 (150 steps = 3.3 epochs of 1,437 images),
#: lr 0.01, momentum 0.9 (the demo's fine-tuning settings).
STEPS, QUICK_STEPS, LR, MOMENTUM, BATCH = 150, 40, 0.01, 0.9, 32
#: Quantized tensor classes (the survey: weight, IA and OE).
CLASSES = ("activations", "weights", "errors")
#: Acceptance boxes: points under fp32_accuracy (survey: blue 77.0 / green 73.0 vs ~78.5).
BOXES = {"blue": 1.5, "green": 5.5}
#: Bit granularity of Fig. 11's two ideal accelerators.
CHIPS = {"coarse": 4, "fine": 2}


def precision(bits: int) -> host.Precision:
    """The datapath of a grid point: dfxpN, stochastic rounding, scale from each tensor's
    largest magnitude, for weights, activations and errors."""
    return host.Precision(f"dfxp{bits}", rounding="stochastic", scale="amax", classes=CLASSES)


def ideal_time(bits: int | None, pruning: float, granularity: int) -> float:
    """Ideal step time relative to dense 16 bit on a chip of ``granularity``-bit slices."""
    b = 16 if bits is None else bits
    return (1.0 - pruning) * math.ceil(b / granularity) ** 2 / math.ceil(16 / granularity) ** 2


def _point(
    dev: host.Device,
    name: str,
    weights: common.Weights,
    data: common.Digits,
    bits: int | None,
    pruning: float,
    steps: int,
    seed: int,
) -> dict[str, Any]:
    spec = common.model(name)
    prec: str | host.Precision = "fp32" if bits is None else precision(bits)
    r = common.run_on_device(
        dev,
        spec,
        weights,
        data=data,
        precision=prec,
        pruning=pruning or None,
        steps=steps,
        lr=LR,
        momentum=MOMENTUM,
        batch=BATCH,
        seed=seed,
    )
    layers = common.layer_ia_sparsity(dev, spec, r.weights, data.test.x, precision=prec, seed=seed)
    total = (r.counters or {}).get("total") or {}
    cyc, energy = total.get("cycles"), total.get("energy_pj")
    return {
        "bits": bits,
        "pruning": pruning,
        "accuracy": r.accuracy,
        "ia_sparsity": float(np.mean(layers)),
        "ia_sparsity_layers": layers,
        "ia_sparsity_macs": r.ia_sparsity,
        "final_loss": float(np.mean(r.losses[-10:])) if r.losses else None,
        "chip_cycles_per_step": None if cyc is None else cyc / steps,
        "chip_energy_uj_per_step": None if energy is None else energy / steps * 1e-6,
    }


def design_points(
    grid: list[dict[str, Any]], fp32_accuracy: float
) -> dict[str, dict[str, dict[str, Any] | None]]:
    """Fig. 11: per box and per chip granularity, the fastest grid point inside the box (ties:
    the more accurate), with its ideal relative time."""
    out: dict[str, dict[str, dict[str, Any] | None]] = {}
    for box, pts in BOXES.items():
        floor = fp32_accuracy - pts / 100
        inside = [g for g in grid if g["accuracy"] >= floor - 1e-9]
        out[box] = {}
        for chip, gran in CHIPS.items():
            if not inside:
                out[box][chip] = None
                continue
            best = min(
                inside, key=lambda g: (ideal_time(g["bits"], g["pruning"], gran), -g["accuracy"])
            )
            out[box][chip] = {
                "bits": best["bits"],
                "pruning": best["pruning"],
                "accuracy": best["accuracy"],
                "ideal_time": ideal_time(best["bits"], best["pruning"], gran),
                "chip_cycles_per_step": best["chip_cycles_per_step"],
            }
    return out


def findings(grid: list[dict[str, Any]], fp32_accuracy: float) -> dict[str, Any]:
    """The survey's qualitative laws measured on this grid (numbers, not verdicts only)."""
    acc = {(g["bits"], g["pruning"]): g["accuracy"] for g in grid}
    bits = sorted({g["bits"] for g in grid})
    prs = sorted({g["pruning"] for g in grid})
    row_mean = {b: float(np.mean([acc[b, p] for p in prs])) for b in bits}
    worst = min(row_mean, key=lambda b: row_mean[b])
    others = [row_mean[b] for b in bits if b != worst]
    wide = [b for b in bits if b >= 6] or bits
    by_p = {p: float(np.mean([acc[b, p] for b in wide])) for p in prs}
    # the largest ratio whose mean accuracy (rows >= 6 bits) stays within 1 point of ratio 0
    knee = max(p for p in prs if by_p[p] >= by_p[prs[0]] - 0.01)
    ia = {(g["bits"], g["pruning"]): g["ia_sparsity"] for g in grid}
    ia_by_p = {p: float(np.mean([ia[b, p] for b in bits])) for p in prs}
    ia_by_b = {b: float(np.mean([ia[b, p] for p in prs])) for b in bits}
    out: dict[str, Any] = {
        "row_mean_accuracy": {str(b): row_mean[b] for b in bits},
        "worst_row_bits": worst,
        "worst_row_margin_points": 100 * (min(others) - row_mean[worst]) if others else None,
        "mean_accuracy_by_pruning": {str(p): by_p[p] for p in prs},
        "pruning_knee": knee,
        "ia_sparsity_by_pruning": {str(p): ia_by_p[p] for p in prs},
        "ia_sparsity_by_bits": {str(b): ia_by_b[b] for b in bits},
    }
    for b in (8, 4):
        if (b, 0.0) in acc:
            out[f"dfxp{b}_loss_points"] = 100 * (fp32_accuracy - acc[b, 0.0])
    return out


def _model_record(
    dev: host.Device, name: str, quick: bool, seed: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    spec = common.model(name)
    data = common.digits(seed)
    weights = common.pretrained(name, seed)
    steps = QUICK_STEPS if quick else STEPS
    bits_rows = QUICK_BITS if quick else BITS
    prs = QUICK_PRUNING if quick else PRUNING
    # quick runs keep only the unpruned fp32 reference point
    fp32_prs = prs[:1] if quick else prs
    fp32_row = [_point(dev, name, weights, data, None, p, steps, seed) for p in fp32_prs]
    fp32_accuracy = float(fp32_row[0]["accuracy"])
    progress(f"{name}: fp32 row done, unpruned {fp32_accuracy:.3f}")
    grid = []
    for b in bits_rows:
        row = [_point(dev, name, weights, data, b, p, steps, seed) for p in prs]
        grid += row
        progress(f"{name}: dfxp{b:<2d} " + " ".join(f"{g['accuracy']:.3f}" for g in row))
    return {
        "model": name,
        "parameters": int(sum(np.prod(s) for s in spec.param_shapes().values())),
        "host_fp32_accuracy": common.host_accuracy(spec, weights, data.test.x, data.test.y),
        "fp32_accuracy": fp32_accuracy,
        "fp32_row": fp32_row,
        "grid": grid,
        "boxes": {k: fp32_accuracy - v / 100 for k, v in BOXES.items()},
        "design_points": design_points(grid, fp32_accuracy),
        "findings": findings(grid, fp32_accuracy),
    }


def run(quick: bool, seed: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The PQ grid for the CNN and the MLP (see the module docstring)."""
    cpu0 = time.process_time()
    models: dict[str, Any] = {}
    with host.open(URL) as dev:
        for name in ("cnn", "mlp"):
            models[name] = _model_record(dev, name, quick, seed, progress)
    cnn = models["cnn"]
    return {
        "fp32_accuracy": cnn["fp32_accuracy"],
        "grid": cnn["grid"],
        "models": models,
        "cpu_s": round(time.process_time() - cpu0, 1),
        "settings": {
            "device": URL,
            "bits": list(QUICK_BITS if quick else BITS),
            "pruning": list(QUICK_PRUNING if quick else PRUNING),
            "retrain_steps": QUICK_STEPS if quick else STEPS,
            "lr": LR,
            "momentum": MOMENTUM,
            "batch": BATCH,
            "precision": "dfxpN+stochastic+amax on " + ", ".join(CLASSES),
            "pruning_mode": "per-layer weight magnitude (deploy prune=ratio)",
            "ia_sparsity": "layerwise mean of FF input_zero / macs_total from the chip counters",
            "boxes_points_below_fp32": BOXES,
            "chip_slice_bits": CHIPS,
            "train_images": 1437,
            "test_images": 360,
        },
    }


def summary(record: dict[str, Any]) -> str:
    """Text tables of accuracy and IA sparsity per model, the findings and design points."""
    lines = []
    for name, m in record["models"].items():
        grid = m["grid"]
        prs = sorted({g["pruning"] for g in grid})
        bits = sorted({g["bits"] for g in grid}, reverse=True)
        acc = {(g["bits"], g["pruning"]): g for g in grid}
        lines.append(
            f"{name}: fp32 {100 * m['fp32_accuracy']:.1f}% (host pretrained "
            f"{100 * m['host_fp32_accuracy']:.1f}%); accuracy % / IA sparsity by pruning ratio"
        )
        lines.append("        " + " ".join(f"{p:>10.1f}" for p in prs))
        for b in bits:
            cells = " ".join(
                f"{100 * acc[b, p]['accuracy']:5.1f}/{acc[b, p]['ia_sparsity']:.2f}" for p in prs
            )
            lines.append(f"dfxp{b:<3d} {cells}")
        f = m["findings"]
        lines.append(
            f"  dfxp8 loses {f.get('dfxp8_loss_points', float('nan')):.1f} points, dfxp4 "
            f"{f.get('dfxp4_loss_points', float('nan')):.1f}; worst row dfxp{f['worst_row_bits']}"
            f" by {f['worst_row_margin_points']:.1f} points; accuracy within 1 point up to "
            f"pruning {f['pruning_knee']}"
        )
        for box, chips in m["design_points"].items():
            for chip, d in chips.items():
                if d is not None:
                    lines.append(
                        f"  {box} box, {chip}-grained chip: dfxp{d['bits']} at pruning "
                        f"{d['pruning']} ({100 * d['accuracy']:.1f}%, ideal time "
                        f"{d['ideal_time']:.3f} of dense 16 bit)"
                    )
    return "\n".join(lines)


def plot(record: dict[str, Any], path: str) -> None:
    """Per model: the accuracy PQ plot with its boxes and Fig. 11's design points, and the
    IA-sparsity plot (survey Fig. 8 and 10 layout: bits down, pruning across)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    models = record["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 4.2 * len(models)), dpi=100)
    axes = np.atleast_2d(axes)
    for row, (name, m) in enumerate(models.items()):
        grid = m["grid"]
        prs = sorted({g["pruning"] for g in grid})
        bits = sorted({g["bits"] for g in grid}, reverse=True)
        cell = {(g["bits"], g["pruning"]): g for g in grid}
        for col, key in enumerate(("accuracy", "ia_sparsity")):
            ax = axes[row, col]
            z = np.array([[cell[b, p][key] for p in prs] for b in bits])
            scale = 100 if key == "accuracy" else 1
            cmap = "RdYlGn" if key == "accuracy" else "YlOrBr"
            im = ax.imshow(z * scale, cmap=cmap, aspect="auto")
            fig.colorbar(im, ax=ax, fraction=0.04)
            for i, b in enumerate(bits):
                for j, p in enumerate(prs):
                    v = z[i, j] * scale
                    ax.text(
                        j, i, f"{v:.1f}" if key == "accuracy" else f"{v:.2f}",
                        ha="center", va="center", fontsize=7, color="k",
                    )  # fmt: skip
                    if key != "accuracy":
                        continue
                    for box, color in (("green", "limegreen"), ("blue", "deepskyblue")):
                        if cell[b, p]["accuracy"] >= m["boxes"][box] - 1e-9:
                            lw = 2.5 if box == "blue" else 1.2
                            ax.add_patch(
                                Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=color, lw=lw)
                            )
            if key == "accuracy":
                for chip, mark, dx in (("coarse", "s", -0.32), ("fine", "^", 0.32)):
                    d = m["design_points"]["blue"][chip]
                    if d is not None:
                        ax.plot(
                            prs.index(d["pruning"]) + dx, bits.index(d["bits"]) - 0.25, mark,
                            mfc="red", mec="k", ms=7,
                        )  # fmt: skip
            ax.set_xticks(range(len(prs)), [f"{p:.1f}" for p in prs])
            ax.set_yticks(range(len(bits)), [f"DFXP{b}" for b in bits])
            ax.set_xlabel("pruning ratio")
            title = (
                "test accuracy (%)\nbest in the blue box: square = coarse-, triangle = "
                "fine-grained chip"
                if key == "accuracy"
                else "IA sparsity (layer mean)"
            )
            ax.set_title(f"{name}, fp32 {100 * m['fp32_accuracy']:.1f}%: {title}", fontsize=8)
    fig.suptitle(
        "PQ plot on digits, retrained on emu://hnpu-v2 (boxes: blue >= fp32-1.5, "
        "green >= fp32-5.5 points)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
