"""``microtrain demo``: on-device adaptation after a camera fault (the survey's section II-C).

The job, in order:

1. A small CNN (``digits_cnn``) is trained on the host in numpy (``pretrain``: the same
   ``host.nn`` layer definitions, Adam, fp32) on the clean pretraining split of the bundled
   digits. That is the model as it leaves the factory. For ``--algorithm dfa`` the model is
   instead trained with DFA on the device in fp32 (``pretrain_dfa_on_device``): DFA adapts
   only a model whose weights are aligned with the chip's own feedback matrices.
2. It is deployed to the device (``host.open(url)``, nothing else) with the requested precision
   and algorithm; accuracy on clean held-out frames is measured on the device.
3. A camera fault hits every frame from now on (``host.datasets.apply_fault``); accuracy on the
   held-out frames, seen through the fault, collapses.
4. The chip adapts online: each arriving frame gets a label (its true label, or the label a
   host-side teacher gives it) and triggers one training step on the device over a minibatch
   of the most recent frames (a sliding window). Held-out faulty frames are evaluated on the
   device along the way.
5. A summary: accuracy before the fault, after it and after adaptation, the chip's simulated
   latency and energy per update (from the counters of the training steps alone), the host's
   wall time per update, and the skipped-work shares.

The teacher (``--labels teacher``) is an RBF support vector machine on the host, trained on the
same clean pretraining split. It plays a healthy reference camera: it classifies the clean view
of each stream frame (the frame before the fault) and never sees a ground-truth stream label,
so its mistakes reach the chip as label noise.

The device is touched only through ``host.open``; this module never imports ``device_model``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

import host
from host import datasets, errors, nn
from host.errors import InvalidArgument

__all__ = [
    "ALGORITHMS",
    "LABELS",
    "DemoConfig",
    "DemoResult",
    "add_arguments",
    "digits_cnn",
    "format_report",
    "main",
    "pretrain",
    "run",
    "weights_sha256",
    "write_plot",
]

ALGORITHMS = ("bp", "dfa", "bias-only")
LABELS = ("true", "teacher")
DEFAULT_DEVICE = "emu://hnpu-v2"
#: Largest batch one FORWARD takes on the emulator (its LIMIT), used to chunk evaluation.
_PREDICT_CHUNK = 256
#: On-device SGD learning rate per algorithm (momentum 0.9 for all); see docs/demo.md.
LEARNING_RATES = {"bp": 0.01, "dfa": 0.0005, "bias-only": 0.05}
#: Pretraining epochs: on the host (BP, bias-only) and on the device with DFA.
PRETRAIN_EPOCHS = {"bp": 15, "dfa": 20, "bias-only": 15}

#: SGD learning rate of the on-device DFA pretraining (fp32, momentum 0.9, batch 32).
DFA_PRETRAIN_LR = 0.003

Weights = dict[str, NDArray[np.float32]]


def digits_cnn() -> nn.Sequential:
    """The deployed model: Conv2d(1,8,3,p=1)-ReLU-MaxPool(2)-Flatten-Linear(128,32)-ReLU-
    Linear(32,10) on (1, 8, 8) frames; 4,538 parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
        input_shape=(1, 8, 8),
    )


# --------------------------------------------------------------------------- host pretraining


def _windows(x: NDArray[np.float32], k: tuple[int, int], s: tuple[int, int]) -> Any:
    """Sliding windows (N, C, OH, OW, kh, kw) of an already padded batch."""
    win = np.lib.stride_tricks.sliding_window_view(x, k, axis=(2, 3))
    return win[:, :, :: s[0], :: s[1]]


def _scatter(
    dwin: Callable[[int, int], NDArray[np.float32]],
    shape: tuple[int, ...],
    k: tuple[int, int],
    s: tuple[int, int],
    out_hw: tuple[int, int],
) -> NDArray[np.float32]:
    """Sum per-window-position gradients (N, C, OH, OW) back onto a padded input of ``shape``."""
    dx = np.zeros(shape, np.float32)
    oh, ow = out_hw
    for i in range(k[0]):
        for j in range(k[1]):
            dx[:, :, i : i + s[0] * oh : s[0], j : j + s[1] * ow : s[1]] += dwin(i, j)
    return dx


def _layer_backward(
    layer: nn.LayerSpec, x: NDArray[np.float32], dy: NDArray[np.float32], p: Mapping[str, Any]
) -> tuple[NDArray[np.float32], dict[str, NDArray[np.float32]]]:
    """(dLoss/dInput, parameter gradients) of one layer, given its input and dLoss/dOutput."""
    if isinstance(layer, nn.Linear):
        grads = {"weight": dy.T @ x}
        if layer.bias:
            grads["bias"] = dy.sum(0)
        return dy @ p["weight"], grads
    if isinstance(layer, nn.ReLU):
        return dy * (x > 0), {}
    if isinstance(layer, nn.LeakyReLU):
        return np.where(x >= 0, dy, np.float32(layer.negative_slope) * dy), {}
    if isinstance(layer, nn.Flatten):
        return dy.reshape(x.shape), {}
    if isinstance(layer, nn.Conv2d):
        k, s, (ph, pw) = layer._geom()
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        win = _windows(xp, k, s)
        grads = {"weight": np.einsum("nohw,nchwij->ocij", dy, win, optimize=True)}
        if layer.bias:
            grads["bias"] = dy.sum((0, 2, 3))
        w = p["weight"]
        dxp = _scatter(
            lambda i, j: np.einsum("nohw,oc->nchw", dy, w[:, :, i, j]),
            xp.shape,
            k,
            s,
            dy.shape[2:],
        )
        return dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]], grads
    if isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
        k, s, (ph, pw) = layer._geom()
        fill = -np.inf if isinstance(layer, nn.MaxPool2d) else 0.0
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        if isinstance(layer, nn.MaxPool2d):
            win = _windows(xp, k, s)
            arg = win.reshape(*win.shape[:4], -1).argmax(-1)  # the first maximum wins
            dxp = _scatter(lambda i, j: dy * (arg == i * k[1] + j), xp.shape, k, s, dy.shape[2:])
        else:
            share = dy / np.float32(k[0] * k[1])
            dxp = _scatter(lambda i, j: share, xp.shape, k, s, dy.shape[2:])
        return dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]], {}
    raise InvalidArgument(f"host pretraining has no backward for {type(layer).__name__}")


def _gradients(
    spec: nn.Sequential, w: Weights, x: NDArray[np.float32], y: NDArray[np.int64]
) -> tuple[float, Weights]:
    """Mean softmax cross-entropy of a batch and its gradient for every parameter."""
    params = [
        {k.split(".", 1)[1]: v for k, v in w.items() if k.split(".")[0] == str(i)}
        for i in range(len(spec))
    ]
    inputs = []
    h = x
    for layer, p in zip(spec.layers, params, strict=True):
        inputs.append(h)
        h = np.asarray(layer.forward(h, p), dtype=np.float32)
    z = h - h.max(1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(1, keepdims=True)
    loss = float(-np.log(prob[np.arange(len(y)), y] + 1e-12).mean())
    dy = prob
    dy[np.arange(len(y)), y] -= 1.0
    dy = (dy / np.float32(len(y))).astype(np.float32)
    grads: Weights = {}
    for i in reversed(range(len(spec))):
        dy, g = _layer_backward(spec.layers[i], inputs[i], dy, params[i])
        dy = np.asarray(dy, dtype=np.float32)
        for name, v in g.items():
            grads[f"{i}.{name}"] = np.asarray(v, dtype=np.float32)
    return loss, grads


def pretrain(
    spec: nn.Sequential,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    seed: int = 0,
    epochs: int = 15,
    batch: int = 32,
    lr: float = 3e-3,
) -> Weights:
    """Train ``spec`` on the host (numpy, fp32, Adam, softmax cross-entropy) and return its
    state dict: the model as it is before deployment. Deterministic for a seed."""
    w = spec.init_weights(seed)
    m1 = {k: np.zeros_like(v) for k, v in w.items()}
    m2 = {k: np.zeros_like(v) for k, v in w.items()}
    b1, b2, t = 0.9, 0.999, 0
    rng = np.random.default_rng([seed, 0x9E7])
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for at in range(0, len(order), batch):
            idx = order[at : at + batch]
            _, g = _gradients(spec, w, x[idx], y[idx])
            t += 1
            for k in w:
                m1[k] = b1 * m1[k] + (1 - b1) * g[k]
                m2[k] = b2 * m2[k] + (1 - b2) * g[k] * g[k]
                step = lr * (m1[k] / (1 - b1**t)) / (np.sqrt(m2[k] / (1 - b2**t)) + 1e-8)
                w[k] = (w[k] - step).astype(np.float32)
    return w


def pretrain_dfa_on_device(
    dev: host.Device,
    spec: nn.Sequential,
    data: datasets.Split,
    *,
    seed: int = 0,
    epochs: int = 20,
    batch: int = 32,
    lr: float = DFA_PRETRAIN_LR,
) -> Weights:
    """Train ``spec`` from the device's own initialisation with DFA on the device, in fp32
    (SGD, momentum 0.9), and return its weights.

    A model that adapts with DFA must have been trained with DFA: its forward weights align
    with the chip's fixed random feedback matrices only by training through them, and those
    are drawn on the device from ``seed`` (the adaptation's deploy uses the same seed, hence
    the same matrices). A BP-trained model fed DFA errors collapses (docs/demo.md).
    """
    model = dev.deploy(
        spec,
        None,
        precision="fp32",
        algorithm="dfa",
        optimizer=host.optim.SGD(lr, momentum=0.9),
        seed=seed,
    )
    rng = np.random.default_rng([seed, 0xDFA])
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for at in range(0, len(order), batch):
            idx = order[at : at + batch]
            model.train_step(data.x[idx], data.y[idx])
    return model.get_weights()


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class DemoConfig:
    """Every setting of one demo run (the CLI's flags; see docs/demo.md for the defaults).

    ``lr`` None takes ``LEARNING_RATES[algorithm]``. ``window``: frames per update (the new
    frame and ``window - 1`` earlier ones, drawn from all frames so far when ``replay``, else
    the most recent). ``trainable``: as ``Device.deploy`` takes it. ``eval_every``: frames
    between evaluations (None: about ten points per run).
    ``heldout``: how many held-out frames to evaluate (None: all 360). ``pretrain_epochs``
    None takes ``PRETRAIN_EPOCHS[algorithm]``.
    """

    device: str = DEFAULT_DEVICE
    fault: str = "dead-columns"
    labels: str = "true"
    algorithm: str = "bp"
    precision: str = "dfxp8+sr"
    frames: int = 100
    seed: int = 0
    lr: float | None = None
    momentum: float = 0.9
    window: int = 16
    replay: bool = True
    trainable: str | int = "all"
    eval_every: int | None = None
    heldout: int | None = None
    pretrain_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.fault not in datasets.FAULTS:
            raise InvalidArgument(
                f"unknown fault {self.fault!r}; accepted: {', '.join(datasets.FAULTS)}"
            )
        if self.labels not in LABELS:
            raise InvalidArgument(f"unknown labels {self.labels!r}; accepted: {', '.join(LABELS)}")
        if self.algorithm not in ALGORITHMS:
            raise InvalidArgument(
                f"unknown algorithm {self.algorithm!r}; accepted: {', '.join(ALGORITHMS)}"
            )
        for name, lo in (("frames", 1), ("window", 1), ("pretrain_epochs", 0)):
            v = getattr(self, name)
            if name == "pretrain_epochs" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InvalidArgument(f"{name} must be an int >= {lo}, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidArgument(f"seed must be an int >= 0, got {self.seed!r}")
        if self.eval_every is not None and (
            not isinstance(self.eval_every, int) or self.eval_every < 1
        ):
            raise InvalidArgument(f"eval_every must be an int >= 1, got {self.eval_every!r}")
        if self.heldout is not None and not 1 <= self.heldout <= datasets.HELDOUT_SIZE:
            raise InvalidArgument(
                f"heldout must be in 1..{datasets.HELDOUT_SIZE}, got {self.heldout!r}"
            )
        if self.lr is not None and not self.lr > 0:
            raise InvalidArgument(f"lr must be > 0, got {self.lr!r}")
        host.Precision.parse(self.precision)  # a bad spec fails here, before any work

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else LEARNING_RATES[self.algorithm]

    @property
    def epochs(self) -> int:
        """Pretraining epochs: ``pretrain_epochs`` or ``PRETRAIN_EPOCHS[algorithm]``."""
        if self.pretrain_epochs is not None:
            return self.pretrain_epochs
        return PRETRAIN_EPOCHS[self.algorithm]

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(1, self.frames // 10)


@dataclass
class DemoResult:
    """What a run measured. ``curve`` holds (adaptation frames, held-out faulty accuracy)
    points, starting at (0, accuracy_after_fault). ``counters`` are the summed counters of the
    adaptation's training steps only (evaluation and deployment excluded); the chip figures
    are None when the device does not count them."""

    accuracy_before_fault: float
    accuracy_after_fault: float
    accuracy_after_adaptation: float
    frames: int
    chip_latency_ms_per_update: float | None
    chip_energy_uj_per_update: float | None
    host_ms_per_update: float
    weights_sha256: str
    counters: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)
    teacher_label_accuracy: float | None = None
    skipped_shares: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json-out`` document: the contract's keys first, then the extras."""
        d = asdict(self)
        d["curve"] = [[f, a] for f, a in self.curve]
        return d


def weights_sha256(weights: Mapping[str, Any]) -> str:
    """SHA-256 over the state dict: names sorted, each name (UTF-8) then its float32 bytes
    (C order, little-endian)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], dtype="<f4").tobytes())
    return h.hexdigest()


def _add_counters(a: Any, b: Any) -> Any:
    """Element-wise sum of two counters trees (None, a counter the device cannot count,
    stays None)."""
    if a is None or b is None:
        return None
    if isinstance(a, dict):
        return {k: _add_counters(a[k], b.get(k)) for k in a}
    return a + b


def skipped_shares(counters: Mapping[str, Any]) -> dict[str, float]:
    """Shares of the adaptation's work the chip skipped: per skip reason, skipped MACs over all
    MACs of the steps; ``zero_slice`` over the dense 4b x 4b slice products (see
    docs/chip-model.md: zero_slice counts slice products, not MACs)."""
    total = counters.get("total") or {}
    macs = total.get("macs_total") or 0
    skipped = total.get("skipped") or {}
    out: dict[str, float] = {}
    if macs:
        out["all_macs"] = 1.0 - float(total.get("macs_executed") or 0) / macs
        for reason, n in skipped.items():
            if reason != "zero_slice" and n is not None:
                out[reason] = float(n) / macs
    zs, ops = skipped.get("zero_slice"), total.get("slice_ops")
    if zs is not None and ops is not None and zs + ops:
        out["zero_slice"] = float(zs) / float(zs + ops)
    return out


def _accuracy(model: host.Model, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    pred = np.concatenate(
        [
            model.predict(x[i : i + _PREDICT_CHUNK]).argmax(1)
            for i in range(0, len(x), _PREDICT_CHUNK)
        ]
    )
    return float(np.mean(pred == y))


def _teacher_labels(
    pre: datasets.Split, clean_frames: NDArray[np.float32], seed: int
) -> NDArray[np.int64]:
    """Labels of ``clean_frames`` from the host teacher (an RBF SVM trained on ``pre``)."""
    from sklearn.svm import SVC

    teacher = SVC(C=10.0, gamma="scale", random_state=seed)
    teacher.fit(pre.x.reshape(len(pre), -1), pre.y)
    return np.asarray(teacher.predict(clean_frames.reshape(len(clean_frames), -1)), np.int64)


def _minibatch(t: int, size: int, replay: bool, rng: np.random.Generator) -> NDArray[np.int64]:
    """Frames the update after frame ``t`` trains on: frame ``t`` itself plus up to ``size - 1``
    earlier ones, drawn without replacement from all frames so far (``replay``) or the most
    recent ones."""
    if not replay:
        return np.arange(max(0, t + 1 - size), t + 1)
    earlier = rng.permutation(t)[: size - 1]
    return np.sort(np.append(earlier, t))


Progress = Callable[[int, int, float | None], None]


def run(config: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run the demo (see the module docstring). ``progress(frame, frames, accuracy or None)``
    is called once deployed and faulty (frame 0) and after every update."""
    cfg = config
    data = datasets.load_digits_splits(cfg.seed)
    spec = digits_cnn()
    held = data.heldout
    if cfg.heldout is not None:
        held = datasets.Split(held.x[: cfg.heldout], held.y[: cfg.heldout])
    held_faulty = datasets.apply_fault(held.x, cfg.fault, cfg.seed, draw=1)
    # The stream wraps around after its 360 frames (docs/demo.md).
    order = np.arange(cfg.frames) % len(data.stream)
    clean = data.stream.x[order]
    frames = datasets.apply_fault(clean, cfg.fault, cfg.seed, draw=2)
    truth = data.stream.y[order]
    labels = truth if cfg.labels == "true" else _teacher_labels(data.pretrain, clean, cfg.seed)

    with host.open(cfg.device) as dev:
        if cfg.algorithm == "dfa":
            weights = pretrain_dfa_on_device(
                dev, spec, data.pretrain, seed=cfg.seed, epochs=cfg.epochs
            )
        else:
            weights = pretrain(
                spec, data.pretrain.x, data.pretrain.y, seed=cfg.seed, epochs=cfg.epochs
            )
        model = dev.deploy(
            spec,
            weights,
            precision=cfg.precision,
            algorithm=cfg.algorithm,
            optimizer=host.optim.SGD(cfg.learning_rate, momentum=cfg.momentum),
            trainable=cfg.trainable,
            seed=cfg.seed,
        )
        before = _accuracy(model, held.x, held.y)
        after_fault = _accuracy(model, held_faulty, held.y)
        curve = [(0, after_fault)]
        if progress is not None:
            progress(0, cfg.frames, after_fault)
        counters: Any = None
        host_s = 0.0
        rng = np.random.default_rng([cfg.seed, 0xADA])
        for t in range(cfg.frames):
            idx = _minibatch(t, cfg.window, cfg.replay, rng)
            t0 = time.perf_counter()
            step = model.train_step(frames[idx], labels[idx])
            host_s += time.perf_counter() - t0
            counters = step.counters if counters is None else _add_counters(counters, step.counters)
            acc = None
            if (t + 1) % cfg.eval_interval == 0 or t + 1 == cfg.frames:
                acc = _accuracy(model, held_faulty, held.y)
                curve.append((t + 1, acc))
            if progress is not None:
                progress(t + 1, cfg.frames, acc)
        final = model.get_weights()

    n = cfg.frames
    total = (counters or {}).get("total") or {}
    latency = (counters or {}).get("latency_s")
    energy = total.get("energy_pj")
    return DemoResult(
        accuracy_before_fault=before,
        accuracy_after_fault=after_fault,
        accuracy_after_adaptation=curve[-1][1],
        frames=n,
        chip_latency_ms_per_update=None if latency is None else latency / n * 1e3,
        chip_energy_uj_per_update=None if energy is None else energy / n * 1e-6,
        host_ms_per_update=host_s / n * 1e3,
        weights_sha256=weights_sha256(final),
        counters=counters or {},
        curve=curve,
        teacher_label_accuracy=(None if cfg.labels == "true" else float(np.mean(labels == truth))),
        skipped_shares=skipped_shares(counters or {}),
        settings={
            **asdict(cfg),
            "lr": cfg.learning_rate,
            "eval_every": cfg.eval_interval,
            "pretrain_epochs": cfg.epochs,
        },
    )


# --------------------------------------------------------------------------- presentation


def _figure(value: float | None, fmt: str) -> str:
    return "not counted by this device" if value is None else fmt.format(value)


def format_report(result: DemoResult) -> Any:
    """A rich Table of the run's figures."""
    from rich.table import Table

    s = result.settings
    table = Table(
        title=(
            f"on-device adaptation: {s.get('fault')} fault, {s.get('algorithm')}, "
            f"{s.get('precision')}, {s.get('labels')} labels, {s.get('device')}"
        )
    )
    lat = result.chip_latency_ms_per_update
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("accuracy before the fault", f"{result.accuracy_before_fault:.3f}")
    table.add_row("accuracy after the fault", f"{result.accuracy_after_fault:.3f}")
    table.add_row(
        f"accuracy after {result.frames} adaptation frames",
        f"{result.accuracy_after_adaptation:.3f}",
    )
    if result.teacher_label_accuracy is not None:
        table.add_row("teacher label accuracy", f"{result.teacher_label_accuracy:.3f}")
    table.add_row(
        "chip latency per update (simulated)",
        _figure(None if lat is None else lat * 1e3, "{:.1f} us"),
    )
    table.add_row(
        "chip energy per update (simulated)", _figure(result.chip_energy_uj_per_update, "{:.2f} uJ")
    )
    table.add_row("host wall time per update", f"{result.host_ms_per_update:.2f} ms")
    for reason, share in result.skipped_shares.items():
        label = "skipped MACs, all reasons" if reason == "all_macs" else f"skipped: {reason}"
        table.add_row(label, f"{share:.1%}")
    table.add_row("weights sha256", result.weights_sha256[:16] + "...")
    return table


def write_plot(result: DemoResult, path: str) -> None:
    """A PNG of held-out faulty accuracy against adaptation frames, with the clean accuracy
    as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = zip(*result.curve, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(xs, ys, marker="o", label="held-out frames, faulty camera")
    ax.axhline(result.accuracy_before_fault, color="gray", ls="--", label="before the fault")
    s = result.settings
    ax.set_title(
        f"{s.get('fault')} fault: {s.get('algorithm')}, {s.get('precision')}, "
        f"{s.get('labels')} labels"
    )
    ax.set_xlabel("adaptation frames")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``microtrain demo`` flags."""
    p.add_argument("--device", default=None, help=f"device URL (default {DEFAULT_DEVICE})")
    p.add_argument(
        "--preset", default=None, help="chip preset of the embedded emulator: emu://PRESET"
    )
    p.add_argument("--fault", default="dead-columns", choices=datasets.FAULTS)
    p.add_argument("--labels", default="true", choices=LABELS)
    p.add_argument("--algorithm", default="bp", choices=ALGORITHMS)
    p.add_argument("--precision", default="dfxp8+sr", help="datapath format (default dfxp8+sr)")
    p.add_argument("--frames", type=int, default=100, help="adaptation frames (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and SR")
    p.add_argument("--lr", type=float, default=None, help="on-device SGD learning rate")
    p.add_argument("--json-out", default=None, metavar="FILE", help="write the figures as JSON")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a PNG of the curve")


def main(args: argparse.Namespace) -> int:
    """Run ``microtrain demo`` from parsed flags; returns the exit status."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console, err = Console(), Console(stderr=True)
    if args.device is not None and args.preset is not None:
        err.print("microtrain demo: give --device URL or --preset NAME, not both")
        return 2
    device = args.device or (f"emu://{args.preset}" if args.preset else DEFAULT_DEVICE)
    try:
        cfg = DemoConfig(
            device=device,
            fault=args.fault,
            labels=args.labels,
            algorithm=args.algorithm,
            precision=args.precision,
            frames=args.frames,
            seed=args.seed,
            lr=args.lr,
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames  held-out accuracy {task.fields[acc]}"),
            console=err,
        ) as bar:
            what = "DFA pretraining on the chip" if cfg.algorithm == "dfa" else "host pretraining"
            task = bar.add_task(f"{what}, deploying", total=cfg.frames, acc="-")

            def report(frame: int, total: int, acc: float | None) -> None:
                bar.update(task, completed=frame, description="adapting on the chip")
                if acc is not None:
                    bar.update(task, acc=f"{acc:.3f}")

            result = run(cfg, progress=report)
    except errors.MicrotrainError as e:
        err.print(f"microtrain demo: {e}", markup=False)
        return 1
    console.print(format_report(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result.to_json(), f, indent=2)
    if args.plot:
        write_plot(result, args.plot)
    return 0
