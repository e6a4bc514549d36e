"""``microtrain reproduce presets``: HNPU-V1 against HNPU-V2 on the online-tuning workload
(survey IX-D: V2 has 56.1% higher throughput and 66.5% higher energy efficiency).

The workload is the one of docs/chip-model.md "Survey figures": the fully connected head of
an MDNet-style tracker, fc 4608-512-512-2, batch 128, the conv features frozen (the full run;
``--quick`` uses a scaled-down head, fc 1152-256-256-2 at batch 32). Both chips run it through
``host.open`` as real training steps, and the figures are the counters of those steps:

* **V1** (``emu://hnpu-v1``): BP; DFXP8 activations, weights and errors with stochastic
  rounding and stochastic thresholding, gradients and momentum at DFXP16, weights stored at
  DFXP8 (the precisions of the analytic comparison); no pruning (V1 is not pruning-aware).
  LAPS is not switched on: the host API has no flag for it, and the analytic comparison also
  takes LAPS as settled at 8 bits.
* **V2** (``emu://hnpu-v2``): pipelined DFA, the same static precisions without ST, 30% of the
  hidden layers' output channels pruned (L1 norm of the deployed weights; the analytic
  comparison's ``V2_PRUNING``).

Inputs are generated frozen features: ReLU of a normal draw shifted so that 59% are zero (Fig.
10's IA sparsity at DFXP8, unpruned, averaged over its three ResNets: the analytic model's
assumption), with random target/background labels. Throughput = steps per second (the
reciprocal of the counters' latency per step); energy efficiency = steps per joule. The chip
model costs both paths alike: one PE array (split between the forward and the backward engine
under pipelined DFA), static power over the step's schedule, pruned channels not fetched by the
pruning-aware V2 (docs/chip-model.md).

The same workload is also costed by ``device_model.costs_figures`` (the analytic comparison,
through ``device_model.study_costs``, which the CLI hands in) and the two are set side by side,
stage by stage, with the V2 variants that attribute the gain (V2 under BP, V2 without
pruning).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import host
from host.studies._b_common import (
    ClassPrecision,
    Progress,
    mlp,
    new_figure,
    save_figure,
    scaled,
    stage_figures,
)

TITLE = "HNPU-V1 vs HNPU-V2 in online tuning (survey IX-D: +56.1% throughput, +66.5% efficiency)"

SURVEY = {"throughput_gain": 0.561, "energy_efficiency_gain": 0.665}
FULL: dict[str, Any] = {"sizes": (4608, 512, 512, 2), "batch": 128, "steps": 3}
QUICK: dict[str, Any] = {"sizes": (1152, 256, 256, 2), "batch": 32, "steps": 2}
#: Share of zero features: Fig. 10 at DFXP8, pruning 0 (costs_analytic.fig10_ia_sparsity).
FEATURE_ZEROS = 0.587
V2_PRUNING = 0.3
LR = 0.01


def _precision(st: bool) -> ClassPrecision:
    formats = (
        ("activations", "dfxp8"),
        ("weights", "dfxp8"),
        ("errors", "dfxp8"),
        ("gradients", "dfxp16"),
        ("master_weights", "dfxp8"),
        ("momentum", "dfxp16"),
    )
    return ClassPrecision(
        "dfxp8", rounding="stochastic", scale="st" if st else "overflow", formats=formats
    )


#: (name, preset, algorithm, pruned, stochastic thresholding)
VARIANTS: tuple[tuple[str, str, str, bool, bool], ...] = (
    ("v1-bp", "hnpu-v1", "bp", False, True),
    ("v2-pdfa-pruned", "hnpu-v2", "pipelined-dfa", True, False),
    ("v2-bp-pruned", "hnpu-v2", "bp", True, False),
    ("v2-pdfa-unpruned", "hnpu-v2", "pipelined-dfa", False, False),
    ("v2-bp-unpruned", "hnpu-v2", "bp", False, False),
)


def _features(n: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from statistics import NormalDist

    rng = np.random.default_rng([seed, 0x7AC])
    shift = NormalDist().inv_cdf(FEATURE_ZEROS)  # P(N(-shift, 1) < 0) = FEATURE_ZEROS
    x = np.maximum(rng.normal(-shift, 1.0, (n, width)), 0.0).astype(np.float32)
    return x, rng.integers(0, 2, n).astype(np.int64)


def _channel_masks(weights: dict[str, np.ndarray], ratio: float) -> dict[str, np.ndarray]:
    """Prune ``ratio`` of the output channels of every hidden Linear layer (smallest L1 norm);
    masks per output channel for the weight and the bias."""
    names = sorted({k.split(".")[0] for k in weights}, key=int)
    out = {}
    for n in names[:-1]:  # not the class outputs
        w = weights[f"{n}.weight"]
        k = int(ratio * w.shape[0])
        keep = np.ones(w.shape[0], np.uint8)
        keep[np.argsort(np.abs(w).sum(1), kind="stable")[:k]] = 0
        out[f"{n}.weight"] = keep
        out[f"{n}.bias"] = keep
    return out


def _run_variant(
    variant: tuple[str, str, str, bool, bool], cfg: dict[str, Any], seed: int
) -> dict[str, Any]:
    name, preset, alg, pruned, st = variant
    spec = mlp(cfg["sizes"], (cfg["sizes"][0],))
    weights = spec.init_weights(seed)
    x, y = _features(cfg["batch"] * cfg["steps"], cfg["sizes"][0], seed)
    with host.open(f"emu://{preset}") as dev:
        model = dev.deploy(
            spec,
            weights,
            precision=_precision(st),
            algorithm=alg,
            optimizer=host.optim.SGD(LR, momentum=0.9),
            prune=_channel_masks(weights, V2_PRUNING) if pruned else None,
            seed=seed,
        )
        dev.reset_counters()
        losses = []
        for s in range(cfg["steps"]):
            sl = slice(s * cfg["batch"], (s + 1) * cfg["batch"])
            losses.append(model.train_step(x[sl], y[sl]).loss)
        c = scaled(dev.counters(), 1.0 / cfg["steps"])
    return {
        "variant": name,
        "preset": preset,
        "algorithm": alg,
        "pruning": V2_PRUNING if pruned else 0.0,
        "precision": str(_precision(st)),
        "latency_ms": c["latency_s"] * 1e3,
        "energy_uj": c["total"]["energy_pj"] / 1e6,
        "stages": stage_figures(c),
        "memory_peak_bytes": c["memory_peak_bytes"],
        "skipped": c["total"]["skipped"],
        "losses": losses,
    }


def _gains(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {
        "throughput_gain": a["latency_ms"] / b["latency_ms"] - 1.0,
        "energy_efficiency_gain": a["energy_uj"] / b["energy_uj"] - 1.0,
    }


#: The study needs the chip's cost model (``device_model.study_costs``), handed in by the CLI.
NEEDS_COST_MODEL = True


def run(quick: bool, seed: int, progress: Progress, cost_model: Any) -> dict[str, Any]:
    cpu0 = time.process_time()
    cfg = QUICK if quick else FULL
    variants = VARIANTS[:2] if quick else VARIANTS
    rows = []
    for v in variants:
        rows.append(_run_variant(v, cfg, seed))
        r = rows[-1]
        progress(f"{r['variant']}: {r['latency_ms']:.3f} ms, {r['energy_uj']:.1f} uJ per step")
    by = {r["variant"]: r for r in rows}
    base = by["v1-bp"]
    device_gains = {r["variant"]: _gains(base, r) for r in rows if r is not base}
    analytic = cost_model.presets_comparison(cfg["sizes"], cfg["batch"])
    analytic_gains = {k: _gains(analytic["v1-bp"], v) for k, v in analytic.items() if k != "v1-bp"}
    return {
        "study": "presets",
        "cpu_s": round(time.process_time() - cpu0, 1),
        "workload": {
            "layers": list(cfg["sizes"]),
            "batch": cfg["batch"],
            "steps_per_variant": cfg["steps"],
            "feature_zero_share": FEATURE_ZEROS,
            "v2_pruning": V2_PRUNING,
        },
        "survey": SURVEY,
        "device": {
            "variants": rows,
            "v2_vs_v1": device_gains["v2-pdfa-pruned"],
            "gains_vs_v1": device_gains,
        },
        "analytic": {
            "variants": analytic,
            "v2_vs_v1": analytic_gains["v2-pdfa-pruned"],
            "gains_vs_v1": analytic_gains,
            "source": (
                "device_model.study_costs.presets_comparison (costs_figures.step_costs) "
                "on the same layers and batch"
            ),
        },
    }


def summary(record: dict[str, Any]) -> str:
    d, a, s = record["device"]["v2_vs_v1"], record["analytic"]["v2_vs_v1"], record["survey"]
    lines = [f"{'variant':18} {'ms/step':>8} {'uJ/step':>8}"]
    for r in record["device"]["variants"]:
        lines.append(f"{r['variant']:18} {r['latency_ms']:8.3f} {r['energy_uj']:8.1f}")
    for k in ("throughput_gain", "energy_efficiency_gain"):
        lines.append(f"V2 vs V1 {k}: device {d[k]:+.1%}, analytic {a[k]:+.1%}, survey {s[k]:+.1%}")
    return "\n".join(lines)


def plot(record: dict[str, Any], path: str) -> None:
    fig, axes = new_figure(ncols=2, width=5.0, height=3.8)
    labels = ["throughput", "energy efficiency"]
    keys = ("throughput_gain", "energy_efficiency_gain")
    x = np.arange(2)
    for i, (name, g) in enumerate(
        (
            ("survey", record["survey"]),
            ("device (counters)", record["device"]["v2_vs_v1"]),
            ("cost model (analytic)", record["analytic"]["v2_vs_v1"]),
        )
    ):
        axes[0].bar(x + (i - 1) * 0.27, [100 * g[k] for k in keys], 0.27, label=name)
    axes[0].set_xticks(x, labels)
    axes[0].set_ylabel("V2 over V1 (%)")
    axes[0].set_title("HNPU-V2 vs HNPU-V1, online tuning")
    axes[0].legend(fontsize=7)
    rows = record["device"]["variants"]
    stages = ("ff", "ep", "wg", "update")
    bottom = np.zeros(len(rows))
    xs = np.arange(len(rows))
    for s in stages:
        v = np.array([r["stages"][s]["cycles"] for r in rows], float)
        axes[1].bar(xs, v, bottom=bottom, label=s)
        bottom += v
    axes[1].plot(xs, [r["latency_ms"] * 250e3 for r in rows], "k_", markersize=20,
                 label="step latency (schedule)")  # fmt: skip
    axes[1].set_xticks(xs, [r["variant"] for r in rows], rotation=20, fontsize=7)
    axes[1].set_ylabel("cycles per step (device counters)")
    axes[1].legend(fontsize=7)
    save_figure(fig, path)
