"""Shared helpers of the studies: digits splits, the two study models, host pretraining and
training / evaluating on a device through ``host.open`` (the whole protocol path).

The data: scikit-learn's bundled 8x8 digits (no download) cut by ``host.datasets`` into three
seeded, disjoint splits. The studies train on ``pretrain + stream`` (1,437 images) and measure
accuracy on ``heldout`` (360 images, never trained on): ``digits(seed)``.

The models (both take (1, 8, 8) frames, about 4.5k and 4.8k parameters):

* ``digits_cnn()``: the demo's deployed CNN, Conv2d(1,8,3,p=1)-ReLU-MaxPool(2)-Flatten-
  Linear(128,32)-ReLU-Linear(32,10) (4,538 parameters);
* ``digits_mlp()``: Flatten-Linear(64,64)-ReLU-Linear(64,10) (4,810 parameters).

``pretrained(name, seed)`` trains one on the host in fp32 (``host.demo.pretrain``: Adam,
numpy), cached per process. ``run_on_device`` deploys weights (or the device's own
initialisation) with a precision, algorithm, pruning and trainable set, trains ``steps``
minibatch steps of on-device SGD and evaluates on the held-out split on the same device;
``train_on_device`` and ``evaluate`` are its two halves. Counters come from the device
(``None`` where it cannot count); ``ia_sparsity`` reads the input-activation sparsity off them.

This module is application layer (``host.studies``) but uses only the driver API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

import host
from host import datasets, nn
from host.errors import InvalidArgument

__all__ = [
    "DEFAULT_URL",
    "MODELS",
    "PREDICT_CHUNK",
    "PRETRAIN_EPOCHS",
    "DeviceRun",
    "Digits",
    "Weights",
    "accuracy",
    "add_counters",
    "digits",
    "digits_cnn",
    "digits_mlp",
    "evaluate",
    "host_accuracy",
    "ia_sparsity",
    "layer_ia_sparsity",
    "model",
    "param_layers",
    "predict",
    "pretrained",
    "run_on_device",
    "train_on_device",
]

Weights = dict[str, NDArray[np.float32]]
Progress = Callable[[str], None]

#: The device the studies use unless told otherwise (the emulated HNPU-V2).
DEFAULT_URL = "emu://hnpu-v2"
#: Largest batch one FORWARD takes on the emulator (its limit), used to chunk evaluation.
PREDICT_CHUNK = 256
#: Host pretraining epochs (Adam, lr 3e-3, batch 32): enough for both models to reach their
#: plateau on digits (about 96-98% held-out; measured, see docs/results.md).
PRETRAIN_EPOCHS = 15


@dataclass(frozen=True)
class Digits:
    """Training split (``pretrain + stream`` of ``host.datasets``) and test split (held-out)."""

    train: datasets.Split
    test: datasets.Split


def digits(seed: int = 0, *, train_size: int | None = None, test_size: int | None = None) -> Digits:
    """The digits of ``seed``: 1,437 training and 360 test images (the first ``train_size`` /
    ``test_size`` of them when given, e.g. for quick runs)."""
    d = datasets.load_digits_splits(seed)
    x = np.concatenate([d.pretrain.x, d.stream.x])
    y = np.concatenate([d.pretrain.y, d.stream.y])
    for name, v, hi in (
        ("train_size", train_size, len(y)),
        ("test_size", test_size, len(d.heldout)),
    ):
        if v is not None and (not isinstance(v, int) or not 1 <= v <= hi):
            raise InvalidArgument(f"{name} must be an int in 1..{hi}, got {v!r}")
    tr = datasets.Split(x[:train_size], y[:train_size])
    te = datasets.Split(d.heldout.x[:test_size], d.heldout.y[:test_size])
    return Digits(tr, te)


def digits_cnn() -> nn.Sequential:
    """The small CNN of the demo (4,538 parameters)."""
    from host.demo import digits_cnn as cnn

    return cnn()


def digits_mlp() -> nn.Sequential:
    """Flatten-Linear(64,64)-ReLU-Linear(64,10) on (1, 8, 8) frames (4,810 parameters)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
        input_shape=(1, 8, 8),
    )


#: Study models by name.
MODELS: dict[str, Callable[[], nn.Sequential]] = {"cnn": digits_cnn, "mlp": digits_mlp}


def model(name: str) -> nn.Sequential:
    """The study model ``name`` ("cnn" or "mlp")."""
    if name not in MODELS:
        raise InvalidArgument(f"unknown study model {name!r}; accepted: {', '.join(MODELS)}")
    return MODELS[name]()


@functools.lru_cache(maxsize=16)
def _pretrained(name: str, seed: int, epochs: int, train_size: int | None) -> Weights:
    from host.demo import pretrain

    data = digits(seed, train_size=train_size)
    return pretrain(model(name), data.train.x, data.train.y, seed=seed, epochs=epochs)


def pretrained(
    name: str, seed: int = 0, *, epochs: int = PRETRAIN_EPOCHS, train_size: int | None = None
) -> Weights:
    """Model ``name`` trained on the host in fp32 on ``digits(seed).train`` (cached; a copy)."""
    return {k: v.copy() for k, v in _pretrained(name, seed, epochs, train_size).items()}


def host_accuracy(spec: nn.Sequential, weights: Mapping[str, Any], x: Any, y: Any) -> float:
    """Accuracy of ``weights`` in fp32 numpy on the host (no device): the fp32 reference."""
    h = np.asarray(x, dtype=np.float32)
    for i, layer in enumerate(spec.layers):
        p = {k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".")[0] == str(i)}
        h = np.asarray(layer.forward(h, p), dtype=np.float32)
    return float(np.mean(h.argmax(1) == np.asarray(y)))


def add_counters(a: Any, b: Any) -> Any:
    """Counters of two calls combined: work, cycles, energy, traffic and latency add up;
    ``memory_peak_bytes`` takes the larger of the two peaks; ``a`` None returns ``b`` (so a sum
    can start from None); a counter either side cannot count (None) stays None."""
    if a is None:
        return b
    if b is None:
        return None
    if isinstance(a, dict):
        out: dict[str, Any] = {}
        for k, v in a.items():
            w = b.get(k) if isinstance(b, dict) else None
            if k == "memory_peak_bytes" and isinstance(v, dict):
                w = w or {}
                out[k] = {
                    m: None if x is None or w.get(m) is None else max(x, w[m]) for m, x in v.items()
                }
            else:
                out[k] = None if v is None else add_counters(v, w)
        return out
    return a + b


def ia_sparsity(counters: Mapping[str, Any], stage: str = "ff") -> float | None:
    """Input-activation sparsity read off the chip's counters: the share of the MACs of
    ``stage`` whose input operand is zero, among the MACs not pruned away
    (``input_zero / (macs_total - pruned)``). The chip counts each skipped MAC under one
    reason, pruned first, so pruned MACs are removed from the denominator rather than counted
    as non-zero inputs; in FF the only reason ranked before input_zero is pruned (output_zero
    is an EP reason), so this is exactly the zero-input share of the unpruned MACs. MAC-
    weighted: a layer with more MACs per input counts more. None if not counted."""
    st = counters.get(stage) or {}
    total, skipped = st.get("macs_total"), st.get("skipped") or {}
    zero, pruned = skipped.get("input_zero"), skipped.get("pruned") or 0
    if total is None or zero is None or total - pruned <= 0:
        return None
    return float(zero) / float(total - pruned)


def param_layers(spec: nn.Sequential) -> list[int]:
    """Indices of the layers with parameters (Linear, Conv2d)."""
    return [i for i, layer in enumerate(spec.layers) if layer.param_shapes(spec.shapes[i])]


def layer_ia_sparsity(
    url: str | host.Device,
    spec: nn.Sequential,
    weights: Mapping[str, Any],
    x: Any,
    *,
    precision: str | host.Precision = "fp32",
    seed: int = 0,
) -> list[float]:
    """Input-activation sparsity of each parameterised layer of ``spec`` (in order), from the
    chip's counters: the model's prefixes up to each such layer are deployed with ``weights``
    (no pruning flag: pruned weights are plain zeros, counted after input_zero) and run FORWARD
    on ``x``; layer k's FF counts are prefix k's minus prefix k-1's, and its sparsity is
    ``input_zero / macs_total``: the share of its MACs whose input operand is zero after
    quantization (for a Linear exactly the share of zero input elements; a conv also counts
    its zero padding). Scales picked per tensor (``+amax``, ``+fixed``) behave exactly as in
    the whole model; ``+overflow``/``+st`` range state restarts with each deploy."""
    xs = np.asarray(x, dtype=np.float32)
    out: list[float] = []
    prev_zero = prev_total = 0.0
    with _session(url) as dev:
        for i in param_layers(spec):
            sub = nn.Sequential(*spec.layers[: i + 1], input_shape=spec.input_shape)
            w = {k: v for k, v in weights.items() if int(k.split(".")[0]) <= i}
            m = dev.deploy(sub, w, precision=precision, seed=seed)
            dev.reset_counters()
            for at in range(0, len(xs), PREDICT_CHUNK):
                m.predict(xs[at : at + PREDICT_CHUNK])
            ff = dev.counters()["ff"]
            zero, total = float(ff["skipped"]["input_zero"]), float(ff["macs_total"])
            out.append((zero - prev_zero) / (total - prev_total))
            prev_zero, prev_total = zero, total
    return out


@dataclass
class DeviceRun:
    """What ``run_on_device`` measured: final weights, summed counters of the training steps
    (None when no step ran), held-out accuracy and the counters of that evaluation (FF only),
    the loss of every step."""

    weights: Weights
    counters: dict[str, Any] | None
    accuracy: float | None
    eval_counters: dict[str, Any] | None
    losses: list[float] = field(default_factory=list)

    @property
    def ia_sparsity(self) -> float | None:
        """Input-activation sparsity of the evaluation's forward passes (``ia_sparsity``)."""
        return None if self.eval_counters is None else ia_sparsity(self.eval_counters)


@contextmanager
def _session(url: str | host.Device) -> Iterator[host.Device]:
    if isinstance(url, host.Device):
        yield url
        return
    with host.open(url) as dev:
        yield dev


def predict(model: host.Model, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Model outputs of ``x`` computed on the device, chunked to the device's batch limit."""
    return np.concatenate(
        [model.predict(x[i : i + PREDICT_CHUNK]) for i in range(0, len(x), PREDICT_CHUNK)]
    )


def accuracy(model: host.Model, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    """Share of ``x`` the device classifies as ``y``."""
    if len(y) == 0:
        raise ValueError("accuracy of an empty set")
    return float(np.mean(predict(model, x).argmax(1) == y))


def run_on_device(
    url: str | host.Device,
    spec: nn.Sequential,
    weights: Mapping[str, Any] | None = None,
    *,
    data: Digits | None = None,
    precision: str | host.Precision = "fp32",
    algorithm: str = "bp",
    pruning: float | Mapping[str, Any] | None = None,
    trainable: str | int | Mapping[str, Any] = "all",
    steps: int = 200,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch: int = 32,
    seed: int = 0,
    evaluate: bool = True,
) -> DeviceRun:
    """Deploy ``spec`` with ``weights`` (None: the device's own initialisation from ``seed``)
    on the device at ``url`` (or an open ``host.Device``), train ``steps`` minibatches of
    ``batch`` images of ``data.train`` (seeded epochs of shuffled order) with on-device SGD,
    then, if ``evaluate``, measure accuracy on ``data.test`` on the same device and precision.

    ``precision``, ``algorithm``, ``pruning`` (deploy's ``prune``) and ``trainable`` are
    ``Device.deploy``'s. ``steps=0`` only deploys (and evaluates): no training. Counters of
    the training steps are summed; the evaluation's counters are read separately.
    """
    if not isinstance(steps, int) or steps < 0:
        raise InvalidArgument(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(batch, int) or batch < 1:
        raise InvalidArgument(f"batch must be an int >= 1, got {batch!r}")
    data = data if data is not None else digits(seed)
    n = len(data.train)
    rng = np.random.default_rng([seed, 0x57D])
    with _session(url) as dev:
        m = dev.deploy(
            spec,
            weights,
            precision=precision,
            algorithm=algorithm,
            optimizer=host.optim.SGD(lr, momentum=momentum, weight_decay=weight_decay),
            trainable=trainable,
            prune=pruning,
            seed=seed,
        )
        counters: Any = None
        losses: list[float] = []
        order = rng.permutation(n)
        at = 0
        for _ in range(steps):
            if at + batch > n:
                order, at = rng.permutation(n), 0
            idx = order[at : at + batch]
            at += batch
            r = m.train_step(data.train.x[idx], data.train.y[idx])
            losses.append(r.loss)
            counters = add_counters(counters, r.counters)
        acc = ev = None
        if evaluate:
            dev.reset_counters()
            acc = accuracy(m, data.test.x, data.test.y)
            ev = dev.counters()
        final = m.get_weights()
    return DeviceRun(final, counters, acc, ev, losses)


def train_on_device(
    url: str | host.Device,
    spec: nn.Sequential,
    weights: Mapping[str, Any] | None = None,
    **kw: Any,
) -> tuple[Weights, dict[str, Any] | None]:
    """``run_on_device`` without the evaluation: (final weights, summed training counters)."""
    r = run_on_device(url, spec, weights, evaluate=False, **kw)
    return r.weights, r.counters


def evaluate(
    url: str | host.Device,
    spec: nn.Sequential,
    weights: Mapping[str, Any],
    x: Any,
    y: Any,
    *,
    precision: str | host.Precision = "fp32",
    seed: int = 0,
) -> tuple[float, dict[str, Any]]:
    """Accuracy of ``weights`` on (x, y) computed on the device in ``precision``, and the
    counters of those forward passes."""
    xs, ys = np.asarray(x, dtype=np.float32), np.asarray(y)
    with _session(url) as dev:
        m = dev.deploy(spec, weights, precision=precision, seed=seed)
        dev.reset_counters()
        acc = accuracy(m, xs, ys)
        return acc, dev.counters()
