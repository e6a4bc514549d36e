"""``microtrain reproduce selective``: selective training (survey VII-C): full, bias-only,
last-k and sparse update, accuracy against training memory and energy.

Workload: the demo's job (survey II-C). The demo's CNN (``host.demo.digits_cnn``: conv 1->8,
ReLU, max-pool, fc 128->32, ReLU, fc 32->10) is trained on the host on the clean digits, then
deployed to ``emu://hnpu-v2`` at DFXP8 with stochastic rounding; a camera fault hits every
frame (``host.datasets.apply_fault``) and the chip adapts on the faulty stream split (its 360
frames, true labels) with each method:

* ``full``: every parameter (BP);
* ``bias-only``: the biases only (Cai et al. [83]);
* ``last-1`` / ``last-2``: the last one / two parameterised layers (selective layer training
  [32]);
* ``sparse-25``: sparse update in the spirit of Lin et al. [84]: in every parameterised layer
  but the classifier, the 25% of output channels with the largest L1 weight norm (weight and
  bias of those channels); the classifier whole.

Accuracy: held-out frames seen through the same fault, measured on the device. Energy: the
counters of the adaptation's training steps. Memory kept for training: the device's counters
report ``memory_peak_bytes`` for the trainable set (the chip model keeps no gradient, momentum,
WG input or error below the lowest trained layer for frozen parameters: recorded as
``device_memory_bytes``); the study also computes what each method must keep
(``training_memory``, below) from the layer shapes and the datapath widths, which adds the
backward masks of the parameter-free layers (ReLU, max-pool argmax) that the device's memory
kinds do not list, and checks that the rest equals the device's figure for every method.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

import host
from host import datasets, demo, nn
from host.studies._b_common import (
    Progress,
    accuracy,
    new_figure,
    save_figure,
    train_epochs,
)

TITLE = "selective training (survey VII-C): full, bias-only, last-k, sparse update"

PRESET = "hnpu-v2"
PRECISION = "dfxp8+sr"
#: Datapath widths of PRECISION on the device (host.Precision keeps master weights and
#: momentum in fp32).
BITS = {"act": 8, "err": 8, "grad": 8, "master": 32, "momentum": 32}
BATCH = 16
#: On-device SGD learning rates (momentum 0.9): the demo's for BP and bias-only
#: (host.demo.LEARNING_RATES); the BP rate for last-k and sparse update.
LR = {
    "full": demo.LEARNING_RATES["bp"],
    "bias-only": demo.LEARNING_RATES["bias-only"],
    "last-1": demo.LEARNING_RATES["bp"],
    "last-2": demo.LEARNING_RATES["bp"],
    "sparse-25": demo.LEARNING_RATES["bp"],
}
METHODS = tuple(LR)
SPARSE_SHARE = 0.25
FAULTS_FULL = ("dead-columns", "shift")
FAULTS_QUICK = ("dead-columns",)
EPOCHS_FULL = 6
EPOCHS_QUICK = 1
PRETRAIN_EPOCHS_FULL = demo.PRETRAIN_EPOCHS["bp"]
PRETRAIN_EPOCHS_QUICK = 3


def _sparse_masks(spec: nn.Sequential, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Trainable masks of ``sparse-25``: per output channel, 1 for the top SPARSE_SHARE of the
    channels by L1 weight norm in each layer but the last, every channel in the last."""
    names = [k[: -len(".weight")] for k in spec.param_shapes() if k.endswith(".weight")]
    out = {}
    for n in names:
        wt = w[f"{n}.weight"]
        ch = wt.shape[0]
        keep = np.ones(ch, np.uint8)
        if n != names[-1]:
            k = max(1, math.ceil(SPARSE_SHARE * ch))
            keep[:] = 0
            keep[np.argsort(-np.abs(wt).reshape(ch, -1).sum(1), kind="stable")[:k]] = 1
        out[f"{n}.weight"] = keep
        out[f"{n}.bias"] = keep
    return out


def _trainable(method: str, spec: nn.Sequential, w: dict[str, np.ndarray]) -> Any:
    """The ``trainable`` argument of ``Device.deploy`` for ``method``."""
    if method == "full":
        return "all"
    if method == "bias-only":
        return "bias-only"
    if method.startswith("last-"):
        return int(method.split("-")[1])
    return _sparse_masks(spec, w)


def _trainable_elements(method: str, spec: nn.Sequential, w: dict[str, np.ndarray]) -> dict:
    """Parameter name -> number of trainable elements under ``method``."""
    shapes = spec.param_shapes()
    layers = sorted({k.split(".")[0] for k in shapes}, key=int)
    out = {k: 0 for k in shapes}
    if method == "full":
        out = {k: int(np.prod(s)) for k, s in shapes.items()}
    elif method == "bias-only":
        out.update({k: int(np.prod(s)) for k, s in shapes.items() if k.endswith(".bias")})
    elif method.startswith("last-"):
        k = int(method.split("-")[1])
        for n in layers[len(layers) - k :]:
            out.update({p: int(np.prod(s)) for p, s in shapes.items() if p.split(".")[0] == n})
    else:
        for p, m in _sparse_masks(spec, w).items():
            per_ch = int(np.prod(shapes[p])) // len(m)
            out[p] = int(m.sum()) * per_ch
    return out


def training_memory(spec: nn.Sequential, trainable: dict[str, int], batch: int) -> dict[str, int]:
    """Bytes a training step must keep under a trainable set (survey VII-C's argument):

    * weights: every parameter, as master copies (BITS["master"]);
    * activations: the input of each layer whose *weight* has a trainable element (its WG needs
      the whole input); a bias gradient needs only the error;
    * errors: the output error of every parameterised layer from the lowest trainable one up
      (EP must reach it; Table 5's E_l);
    * masks: what the backward pass needs from the parameter-free layers it crosses: 1 bit per
      ReLU input element, log2(window) bits per max-pool output (the argmax);
    * gradients and optimizer (momentum): the trainable elements only.
    """
    shapes = spec.shapes
    pshapes = spec.param_shapes()
    plays = [i for i, layer in enumerate(spec.layers) if layer.param_shapes(shapes[i])]
    lo = min(
        (i for i in plays if any(v for k, v in trainable.items() if k.split(".")[0] == str(i))),
        default=None,
    )
    out = {"weights": 0, "activations": 0, "errors": 0, "masks": 0, "gradients": 0,
           "optimizer": 0}  # fmt: skip

    def b(n: int, bits: int) -> int:
        return math.ceil(n * bits / 8)

    out["weights"] = b(sum(int(np.prod(s)) for s in pshapes.values()), BITS["master"])
    n_train = sum(trainable.values())
    out["gradients"] = b(n_train, BITS["grad"])
    out["optimizer"] = b(n_train, BITS["momentum"])
    if lo is not None:
        for i in plays:
            if trainable.get(f"{i}.weight", 0):
                out["activations"] += b(batch * int(np.prod(shapes[i])), BITS["act"])
            if i >= lo:
                out["errors"] += b(batch * int(np.prod(shapes[i + 1])), BITS["err"])
        for j, layer in enumerate(spec.layers):
            if j <= lo:
                continue
            if isinstance(layer, nn.ReLU | nn.LeakyReLU):
                out["masks"] += b(batch * int(np.prod(shapes[j])), 1)
            elif isinstance(layer, nn.MaxPool2d):
                k = layer.kernel_size if isinstance(layer.kernel_size, int) else 0
                window = k * k if k else int(np.prod(layer.kernel_size))
                out["masks"] += b(batch * int(np.prod(shapes[j + 1])), math.ceil(math.log2(window)))
    out["total"] = sum(out.values())
    return out


def _adapt(
    method: str,
    spec: nn.Sequential,
    w: dict[str, np.ndarray],
    stream: datasets.Split,
    held: datasets.Split,
    seed: int,
    epochs: int,
) -> dict[str, Any]:
    with host.open(f"emu://{PRESET}") as dev:
        model = dev.deploy(
            spec,
            w,
            precision=PRECISION,
            optimizer=host.optim.SGD(LR[method], momentum=0.9),
            trainable=_trainable(method, spec, w),
            seed=seed,
        )
        before = accuracy(model, held.x, held.y)
        rng = np.random.default_rng([seed, 0x5E1])
        counters, steps = train_epochs(
            model, stream.x, stream.y, epochs=epochs, batch=BATCH, rng=rng
        )
        after = accuracy(model, held.x, held.y)
    total = counters["total"]
    return {
        "method": method,
        "lr": LR[method],
        "accuracy_before": before,
        "accuracy_after": after,
        "steps": steps,
        "energy_uj_per_step": total["energy_pj"] / steps / 1e6,
        "energy_uj_by_stage_per_step": {
            s: counters[s]["energy_pj"] / steps / 1e6 for s in ("ff", "ep", "wg", "update")
        },
        "cycles_per_step": total["cycles"] / steps,
        "dram_bytes_per_step": (total["dram_read_bytes"] + total["dram_write_bytes"]) / steps,
        "device_memory_bytes": counters["memory_peak_bytes"],
    }


def run(quick: bool, seed: int, progress: Progress) -> dict[str, Any]:
    cpu0 = time.process_time()
    data = datasets.load_digits_splits(seed)
    spec = demo.digits_cnn()
    pre_epochs = PRETRAIN_EPOCHS_QUICK if quick else PRETRAIN_EPOCHS_FULL
    w = demo.pretrain(spec, data.pretrain.x, data.pretrain.y, seed=seed, epochs=pre_epochs)
    progress(f"pretrained on the host ({pre_epochs} epochs)")
    epochs = EPOCHS_QUICK if quick else EPOCHS_FULL
    rows = []
    for fault in FAULTS_QUICK if quick else FAULTS_FULL:
        stream = datasets.Split(
            datasets.apply_fault(data.stream.x, fault, seed, draw=2), data.stream.y
        )
        held = datasets.Split(
            datasets.apply_fault(data.heldout.x, fault, seed, draw=1), data.heldout.y
        )
        for method in METHODS:
            r = _adapt(method, spec, w, stream, held, seed, epochs)
            te = _trainable_elements(method, spec, w)
            r.update(
                fault=fault,
                trainable_elements=sum(te.values()),
                training_memory=training_memory(spec, te, BATCH),
            )
            rows.append(r)
            progress(
                f"{fault} {method}: {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}, "
                f"{r['training_memory']['total']} B kept, {r['energy_uj_per_step']:.2f} uJ/step"
            )
    # Each method's memory is the device's own figure plus the backward masks (which the
    # device's memory kinds do not list): a check of training_memory against the device.
    matches = {
        m: all(
            r["training_memory"]["total"] - r["training_memory"]["masks"]
            == r["device_memory_bytes"]["total"]
            for r in rows
            if r["method"] == m
        )
        for m in METHODS
    }
    return {
        "study": "selective",
        "cpu_s": round(time.process_time() - cpu0, 1),
        "training_memory_matches_device": matches,
        "preset": PRESET,
        "precision": PRECISION,
        "model": "host.demo.digits_cnn",
        "batch": BATCH,
        "adaptation_epochs": epochs,
        "pretrain_epochs": pre_epochs,
        "stream_frames": len(data.stream),
        "heldout_frames": len(data.heldout),
        "rows": rows,
        "notes": {
            "device_memory": (
                "memory_peak_bytes of the device counters: what the trainable set keeps "
                "(weights; gradients and momentum of trainable elements; WG inputs of trained "
                "weights; errors from the lowest trained layer up)"
            ),
            "training_memory": "selective.training_memory: from layer shapes and widths",
        },
    }


def summary(record: dict[str, Any]) -> str:
    lines = [f"{'fault':13} {'method':10} {'acc before':>10} {'acc after':>9} "
             f"{'kept B':>8} {'uJ/step':>8} {'trainable':>9}"]  # fmt: skip
    for r in record["rows"]:
        lines.append(
            f"{r['fault']:13} {r['method']:10} {r['accuracy_before']:10.3f} "
            f"{r['accuracy_after']:9.3f} {r['training_memory']['total']:8d} "
            f"{r['energy_uj_per_step']:8.2f} {r['trainable_elements']:9d}"
        )
    return "\n".join(lines)


def plot(record: dict[str, Any], path: str) -> None:
    faults = sorted({r["fault"] for r in record["rows"]})
    fig, axes = new_figure(ncols=2, width=5.0, height=3.8)
    marks = dict(zip(faults, "os^", strict=False))
    for r in record["rows"]:
        c = f"C{METHODS.index(r['method'])}"
        kw = {"color": c, "marker": marks[r["fault"]]}
        axes[0].plot(r["training_memory"]["total"] / 1024, 100 * r["accuracy_after"], **kw)
        axes[1].plot(r["energy_uj_per_step"], 100 * r["accuracy_after"], **kw)
    for i, m in enumerate(METHODS):
        axes[0].plot([], [], "s", color=f"C{i}", label=m)
    for f in faults:
        axes[0].plot([], [], marks[f], color="k", label=f"fault: {f}")
    axes[0].set_xlabel("memory kept for training (KiB)")
    axes[1].set_xlabel("energy per training step (uJ, counters)")
    for ax in axes:
        ax.set_ylabel("held-out accuracy after adaptation (%)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("accuracy vs training memory")
    axes[1].set_title("accuracy vs energy")
    save_figure(fig, path)
