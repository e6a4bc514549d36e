"""``microtrain reproduce bu``: backward unlocking, survey Table 5 (BP, DDG, FDG, DFA) plus
pipelined DFA: memory kept for training, processing time per step, accuracy on digits.

Workload: a three-layer MLP 64-128-64-10 (Table 5 is written for three layers) trained on
the digits at DFXP8 with stochastic rounding on ``emu://hnpu-v2``, batch 32.

* **BP, DFA and pipelined DFA are trained on the device** (``host.open``, the whole protocol
  path) from the same initialisation; accuracy is measured on the held-out digits, and the
  counters of the real steps give the memory kept for training (``memory_peak_bytes``), the
  step latency of each schedule and the energy. Pipelined DFA computes exactly DFA's numbers
  (only the schedule differs), which the study checks: the two runs must end with identical
  weights.
* **DDG and FDG cannot be trained by the engine** (it implements BP, DFA and pipelined DFA;
  the delayed-gradient methods need a weight or activation copy per step in flight and a
  pipeline of layer groups, which the chip model does not execute). Their memory comes from
  the chip's memory model (``device_model.memory_model.training_memory``, Table 5 generalised)
  applied to the same per-layer tensor sizes the device reports, their time from Table 5's
  formulas (``costs_schedule.table5_time``) applied to per-layer times of the cost model, and
  their accuracy is not measured.
* **Per-layer times** T_A (FF of layer l) and T_E (EP + WG of layer l) are not in the device's
  counters (those are per stage, summed over layers), so they come from the cost model's
  analytic work records (``costs_analytic.fc_stage_work`` costed by ``costs.stage_costs``,
  through ``device_model.study_costs``, which the CLI hands in) with the activation sparsity
  measured on the trained model; the study records how their per-stage sums compare with the
  device's counters of the same step.

The weight update is not in Table 5's time column; it is reported separately (it dominates
this small model's step on the chip: the fp32 master weights and momentum travel through
DRAM).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

import host
from host import datasets, demo
from host.studies._b_common import (
    Progress,
    accuracy,
    mlp,
    new_figure,
    save_figure,
    stage_figures,
    train_epochs,
)

TITLE = "backward unlocking (survey Table 5): BP, DDG, FDG, DFA, pipelined DFA"

SIZES = (64, 128, 64, 10)
BATCH = 32
PRECISION = "dfxp8+sr"
BITS = 8
PRESET = "hnpu-v2"
#: On-device SGD (momentum 0.9) learning rates: BP the demo's (host.demo.LEARNING_RATES), DFA
#: the demo's DFA training rate (host.demo.DFA_PRETRAIN_LR); a faster DFA rate (0.01) was seen
#: to oscillate in a first run at this precision.
LR = {"bp": demo.LEARNING_RATES["bp"], "dfa": demo.DFA_PRETRAIN_LR}
EPOCHS_FULL = 20
EPOCHS_QUICK = 1
#: On-device algorithm name per method.
DEVICE_ALGORITHM = {"bp": "bp", "dfa": "dfa", "pdfa": "pipelined-dfa"}
METHODS = ("bp", "ddg", "fdg", "dfa", "pdfa")
#: Survey Table 5, as printed (three layers; the approximations assume equal layers).
SURVEY_TABLE5 = {
    "bp": {"mem_ae": "A0+A1+A2+E0+E1+E2 ~ A+E", "mem_w": "W0+W1+W2 ~ W", "time": "~ T_A+T_E"},
    "ddg": {"mem_ae": "3A0+2A1+A2+E0+E1+E2 ~ 2A+E", "mem_w": "3W0+2W1+W2 ~ 2W",
            "time": "~ T_A+T_E/3"},
    "fdg": {"mem_ae": "6A0+4A1+2A2+E0+E1+E2 ~ 4A+E", "mem_w": "W0+W1+W2 ~ W",
            "time": "~ (T_A+T_E)/3"},
    "dfa": {"mem_ae": "A0+A1+A2+E_last ~ A+E_last", "mem_w": "W0+W1+W2+BW ~ W+BW",
            "time": "sum max(T_Al, T_El) ~ max(T_A, T_E)"},
}  # fmt: skip


def _weights_sha(w: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(w):
        h.update(k.encode())
        h.update(np.ascontiguousarray(w[k], np.float32).tobytes())
    return h.hexdigest()


def _hidden_sparsity(spec: host.nn.Sequential, w: dict[str, np.ndarray], x: np.ndarray) -> float:
    """Mean share of zeros in the inputs of the hidden Linear layers (the ReLU outputs), from a
    float forward pass of ``x`` on the host with the trained weights."""
    h = x
    zeros = []
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, host.nn.Linear) and i > 1:
            zeros.append(float(np.mean(h == 0)))
        p = {k.split(".", 1)[1]: v for k, v in w.items() if k.split(".")[0] == str(i)}
        h = np.asarray(layer.forward(h, p), np.float32)
    return float(np.mean(zeros))


def _train(method: str, seed: int, epochs: int, data: datasets.DigitSplits) -> dict[str, Any]:
    spec = mlp(SIZES)
    alg = DEVICE_ALGORITHM[method]
    lr = LR["bp" if method == "bp" else "dfa"]
    with host.open(f"emu://{PRESET}") as dev:
        model = dev.deploy(
            spec,
            None,
            precision=PRECISION,
            algorithm=alg,
            optimizer=host.optim.SGD(lr, momentum=0.9),
            seed=seed,
        )
        rng = np.random.default_rng([seed, 0xB0])
        _, steps = train_epochs(
            model, data.pretrain.x, data.pretrain.y, epochs=epochs, batch=BATCH, rng=rng
        )
        # One more step on a full batch: its counters are the per-step figures.
        one = model.train_step(data.pretrain.x[:BATCH], data.pretrain.y[:BATCH]).counters
        acc = accuracy(model, data.heldout.x, data.heldout.y)
        w = model.get_weights()
    return {
        "algorithm": alg,
        "lr": lr,
        "epochs": epochs,
        "steps": steps + 1,
        "accuracy": acc,
        "step": {
            "latency_cycles": round(one["latency_s"] * dev_clock(), 3),
            "latency_us": one["latency_s"] * 1e6,
            "energy_nj": one["total"]["energy_pj"] / 1e3,
            "stages": stage_figures(one),
            "memory_peak_bytes": one["memory_peak_bytes"],
        },
        "weights_sha256": _weights_sha(w),
        "_weights": w,
    }


def dev_clock() -> float:
    """The preset's clock (Hz), as the device reports it."""
    with host.open(f"emu://{PRESET}") as dev:
        return float(dev.info()["parameters"]["clock_hz"])


#: The study needs the chip's cost model (``device_model.study_costs``), handed in by the CLI.
NEEDS_COST_MODEL = True


def run(quick: bool, seed: int, progress: Progress, cost_model: Any) -> dict[str, Any]:
    cpu0 = time.process_time()

    epochs = EPOCHS_QUICK if quick else EPOCHS_FULL
    data = datasets.load_digits_splits(seed)
    trained: dict[str, dict[str, Any]] = {}
    for method in ("bp", "dfa", "pdfa"):
        trained[method] = _train(method, seed, epochs, data)
        progress(
            f"{method}: accuracy {trained[method]['accuracy']:.3f}, step latency "
            f"{trained[method]['step']['latency_us']:.2f} us"
        )
    identical = trained["dfa"]["weights_sha256"] == trained["pdfa"]["weights_sha256"]
    spec = mlp(SIZES)
    sparsity = _hidden_sparsity(spec, trained["bp"]["_weights"], data.heldout.x)
    input_zero = float(np.mean(data.heldout.x == 0))
    for t in trained.values():
        t.pop("_weights")

    # Memory: the device's counters for BP and DFA; the memory model for all four (same
    # per-layer sizes), checked against the device where both exist.
    # Widths the device uses: the datapath's DFXP width for activations, errors and feedback,
    # fp32 master weights.
    memory: dict[str, dict[str, int]] = cost_model.table5_memory(
        SIZES, BATCH, act_bits=BITS, err_bits=BITS, weight_bits=32, feedback_bits=BITS
    )
    memory["pdfa"] = dict(memory["dfa"])
    agree = {}
    for m in ("bp", "dfa", "pdfa"):
        dev_mem = trained[m]["step"]["memory_peak_bytes"]
        agree[m] = all(dev_mem[k] == memory[m][k] for k in ("activations", "errors", "weights",
                                                            "feedback"))  # fmt: skip

    # Time: Table 5 from per-layer analytic times.
    lt = cost_model.fc_layer_cycles(
        PRESET, SIZES, BATCH, bits=BITS, activation_zero=sparsity, input_zero=input_zero
    )
    table5_time = cost_model.table5_time
    t_a = lt["bp"]["ff"]
    t_e_bp = [e + g for e, g in zip(lt["bp"]["ep"], lt["bp"]["wg"], strict=True)]
    t_e_dfa = [e + g for e, g in zip(lt["dfa"]["ep"], lt["dfa"]["wg"], strict=True)]
    table5 = {
        "bp": table5_time("bp", t_a, t_e_bp),
        "ddg": table5_time("ddg", t_a, t_e_bp),
        "fdg": table5_time("fdg", t_a, t_e_bp),
        # Plain DFA: FF, then all EPs together, then the WGs (no pipelining).
        "dfa": sum(t_a) + max(lt["dfa"]["ep"]) + sum(lt["dfa"]["wg"]),
        # Table 5's DFA row is the pipelined schedule.
        "pdfa": table5_time("dfa", t_a, t_e_dfa),
    }
    # The analytic per-stage sums against the device's per-stage counters of a BP/DFA step.
    check = {}
    for m in ("bp", "dfa"):
        st = trained[m]["step"]["stages"]
        check[m] = {s: {"analytic": int(sum(lt[m][s])), "device": st[s]["cycles"]}
                    for s in ("ff", "ep", "wg")}  # fmt: skip

    methods = []
    for m in METHODS:
        row: dict[str, Any] = {
            "method": m,
            "memory_bytes": memory[m],
            "memory_source": "device counters (= memory model)" if m in trained and agree[m]
            else ("device counters" if m in trained else "memory model (Table 5), not trainable"),
            "table5_time_cycles": table5[m],
            "survey": SURVEY_TABLE5.get("dfa" if m == "pdfa" else m),
        }  # fmt: skip
        if m in trained:
            t = trained[m]
            row.update(
                accuracy=t["accuracy"],
                device_step_latency_cycles=t["step"]["latency_cycles"],
                device_step_energy_nj=t["step"]["energy_nj"],
                update_cycles=t["step"]["stages"]["update"]["cycles"],
                trained=t,
            )
        else:
            row.update(
                accuracy=None,
                accuracy_note="not measured: the engine trains BP, DFA and pipelined DFA only",
            )
        methods.append(row)
    bp = next(r for r in methods if r["method"] == "bp")
    ratios = {
        r["method"]: {
            "mem_ae": (r["memory_bytes"]["activations"] + r["memory_bytes"]["errors"])
            / (bp["memory_bytes"]["activations"] + bp["memory_bytes"]["errors"]),
            "mem_w": (r["memory_bytes"]["weights"] + r["memory_bytes"]["feedback"])
            / bp["memory_bytes"]["weights"],
            "table5_time": r["table5_time_cycles"] / bp["table5_time_cycles"],
            "device_speedup": (
                bp["device_step_latency_cycles"] / r["device_step_latency_cycles"]
                if "device_step_latency_cycles" in r
                else None
            ),
        }
        for r in methods
    }
    return {
        "study": "bu",
        "cpu_s": round(time.process_time() - cpu0, 1),
        "preset": PRESET,
        "precision": PRECISION,
        "model": {"sizes": list(SIZES), "batch": BATCH},
        "epochs": epochs,
        "hidden_activation_sparsity": sparsity,
        "input_zero_share": input_zero,
        "per_layer_cycles": {"t_a": t_a, "t_e_bp": t_e_bp, "t_e_dfa": t_e_dfa},
        "analytic_vs_device_stage_cycles": check,
        "memory_model_matches_device": agree,
        "dfa_pdfa_identical_weights": identical,
        "methods": methods,
        "ratios_to_bp": ratios,
        "sources": {
            "trained": "BP, DFA, pipelined DFA: on emu://hnpu-v2 through host.open",
            "memory": "device counters memory_peak_bytes; DDG/FDG: memory_model.training_memory",
            "time": "table5_time over per-layer cycles from costs_analytic + costs.stage_costs",
        },
    }


def summary(record: dict[str, Any]) -> str:
    lines = [f"{'method':6} {'A+E bytes':>10} {'W(+BW) bytes':>12} {'Table5 cyc':>10} "
             f"{'device cyc':>10} {'accuracy':>8}"]  # fmt: skip
    for r in record["methods"]:
        mb = r["memory_bytes"]
        dev = r.get("device_step_latency_cycles")
        acc = r.get("accuracy")
        lines.append(
            f"{r['method']:6} {mb['activations'] + mb['errors']:10d} "
            f"{mb['weights'] + mb['feedback']:12d} {r['table5_time_cycles']:10.0f} "
            f"{'-' if dev is None else f'{dev:.0f}':>10} {'-' if acc is None else f'{acc:.3f}':>8}"
        )
    lines.append(f"DFA and pipelined DFA end with identical weights: "
                 f"{record['dfa_pdfa_identical_weights']}")  # fmt: skip
    return "\n".join(lines)


def plot(record: dict[str, Any], path: str) -> None:
    fig, axes = new_figure(ncols=3, width=4.2, height=3.6)
    ms = [r["method"].upper() for r in record["methods"]]
    mem = [r["memory_bytes"] for r in record["methods"]]
    x = np.arange(len(ms))
    bottom = np.zeros(len(ms))
    for kind in ("activations", "errors", "weights", "feedback"):
        v = np.array([m[kind] / 1024 for m in mem])
        axes[0].bar(x, v, bottom=bottom, label=kind)
        bottom += v
    axes[0].set_xticks(x, ms)
    axes[0].set_ylabel("KiB kept for training")
    axes[0].set_title("memory (Table 5)")
    axes[0].legend(fontsize=7)
    t5 = [r["table5_time_cycles"] for r in record["methods"]]
    dev = [r.get("device_step_latency_cycles") or 0 for r in record["methods"]]
    axes[1].bar(x - 0.2, t5, 0.4, label="Table 5 time (FF, EP, WG)")
    axes[1].bar(x + 0.2, dev, 0.4, label="device step latency (+update)")
    axes[1].set_xticks(x, ms)
    axes[1].set_ylabel("cycles per step")
    axes[1].set_title("processing time")
    axes[1].legend(fontsize=7)
    acc = [r.get("accuracy") for r in record["methods"]]
    axes[2].bar(x, [a or 0 for a in acc], color=["C0" if a is not None else "0.8" for a in acc])
    for i, a in enumerate(acc):
        axes[2].text(i, (a or 0) + 0.01, "n/m" if a is None else f"{a:.3f}", ha="center",
                     fontsize=8)  # fmt: skip
    axes[2].set_xticks(x, ms)
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("held-out accuracy (n/m: not measured)")
    save_figure(fig, path)
