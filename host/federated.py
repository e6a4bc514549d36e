"""``microtrain federate``: federated learning across a fleet of training chips, on Flower.

Each client of the federation drives one device given by URL (``emu://PRESET`` in its own
process, the pty of ``microtrain serve --pty``, a board on a serial port). In every round it

1. opens its device (``host.open``) and loads the global weights onto the chip
   (``Device.deploy`` with those weights: DEFINE_MODEL over the device protocol),
2. trains ``steps`` minibatch steps on its own partition of the digits, on the chip, in the
   configured precision (default ``dfxp8+sr``) and algorithm (default ``bp``), with SGD,
3. reads the weights back from the chip (``Model.get_weights``: TENSOR_READ) and the chip's
   counters of those steps (cycles, energy, DRAM/SRAM traffic, simulated latency),

and Flower's server aggregates the returned weights with the chosen strategy (FedAvg by
default). A client whose device fails (``host.errors.MicrotrainError``: the device restarted
and lost the model, the link died, a timeout) answers the round with an error message; the
strategy aggregates the others and the round is reported with that client's failure.

The global model is evaluated after every round on an *evaluation chip* of the server
(``eval_device``, default ``emu://hnpu-v2``, in the same precision as the clients) on the
360 held-out digits no client trains on; the host's float32 forward of the same weights is
reported next to it. Round 0 is the seeded random initial model.

This module holds the settings, the data partitions, one client's round on its device, the
evaluation and the command line; ``host.federated_app`` holds the Flower apps (it imports
``flwr``, which this module imports only when a federation runs). Devices are reached only
through ``host.open``: this module never imports ``device_model``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

import host
from host import datasets, errors, nn
from host.errors import InvalidArgument

__all__ = [
    "ALGORITHMS",
    "DEFAULT_DEVICE",
    "STRATEGIES",
    "FederationConfig",
    "FederationResult",
    "client_split",
    "clients_info",
    "dirichlet_partition",
    "evaluate",
    "iid_partition",
    "main",
    "model_spec",
    "parse_partition",
    "partition",
    "run",
    "train_local",
    "write_plot",
]

DEFAULT_DEVICE = "emu://hnpu-v2"
ALGORITHMS = ("bp", "dfa", "bias-only")
#: Server strategies offered (Flower's message-API strategies; see docs/federated.md).
STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedmedian", "fedtrimmedavg")
#: Largest batch one FORWARD takes on the emulator (its LIMIT), used to chunk evaluation.
_PREDICT_CHUNK = 256
#: A Dirichlet partition is drawn again until every client holds at least this many samples
#: (or ``len(data) // clients`` when that is smaller); see ``dirichlet_partition``.
MIN_PARTITION = 8
_DIRICHLET_TRIES = 200

Weights = dict[str, NDArray[np.float32]]
Progress = Callable[[str], None]


def model_spec() -> nn.Sequential:
    """The federated model: the demo's digits CNN (Conv2d(1,8,3,p=1)-ReLU-MaxPool(2)-Flatten-
    Linear(128,32)-ReLU-Linear(32,10) on (1, 8, 8) digits; 4,538 parameters)."""
    from host.demo import digits_cnn

    return digits_cnn()


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FederationConfig:
    """Every setting of one federation (the CLI's flags; docs/federated.md gives the reasons
    for the defaults).

    ``devices``: device URLs of the first clients, in client order; the other clients use
    ``DEFAULT_DEVICE``. ``steps``: local SGD steps per round and client, minibatches of
    ``batch`` drawn without replacement from the client's partition (epoch after epoch).
    ``parallel``: clients trained at the same time (Ray actors; None: the number of CPUs, at
    most ``clients``). ``timeout``: seconds a device may think per call (None: host default).
    ``baud``: line rate of the clients' serial ports (a board on a USB serial adapter; None
    for ``emu://`` and ptys); a SuperNode's node config ``baud`` wins for its client.
    """

    clients: int = 8
    rounds: int = 10
    devices: tuple[str, ...] = ()
    partition: str = "dirichlet:0.5"
    seed: int = 0
    strategy: str = "fedavg"
    steps: int = 40
    batch: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    precision: str = "dfxp8+sr"
    algorithm: str = "bp"
    eval_device: str = DEFAULT_DEVICE
    parallel: int | None = None
    timeout: float | None = None
    baud: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        for name, lo in (("clients", 1), ("rounds", 1), ("steps", 1), ("batch", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InvalidArgument(f"{name} must be an int >= {lo}, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InvalidArgument(f"seed must be an int >= 0, got {self.seed!r}")
        if len(self.devices) > self.clients:
            raise InvalidArgument(
                f"{len(self.devices)} device URLs for {self.clients} clients: give at most one "
                "--device per client, or raise --clients"
            )
        for url in (*self.devices, self.eval_device):
            if not isinstance(url, str) or not url:
                raise InvalidArgument(f"device URLs must be non-empty strings, got {url!r}")
        if self.strategy not in STRATEGIES:
            raise InvalidArgument(
                f"unknown strategy {self.strategy!r}; accepted: {', '.join(STRATEGIES)}"
            )
        if self.algorithm not in ALGORITHMS:
            raise InvalidArgument(
                f"unknown algorithm {self.algorithm!r}; accepted: {', '.join(ALGORITHMS)}"
            )
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgument(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.momentum, int | float) and 0 <= self.momentum < 1):
            raise InvalidArgument(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.parallel is not None and (
            not isinstance(self.parallel, int)
            or isinstance(self.parallel, bool)
            or self.parallel < 1
        ):
            raise InvalidArgument(f"parallel must be an int >= 1 or None, got {self.parallel!r}")
        if self.baud is not None and (
            not isinstance(self.baud, int) or isinstance(self.baud, bool) or self.baud < 1
        ):
            raise InvalidArgument(f"baud must be an int >= 1 or None, got {self.baud!r}")
        if self.timeout is not None and not (
            isinstance(self.timeout, int | float) and self.timeout > 0
        ):
            raise InvalidArgument(f"timeout must be > 0 seconds or None, got {self.timeout!r}")
        parse_partition(self.partition)
        host.Precision.parse(self.precision)  # a bad spec fails here, before any work

    def device_of(self, client: int) -> str:
        """Device URL of client ``client`` (0-based)."""
        return self.devices[client] if client < len(self.devices) else DEFAULT_DEVICE

    @property
    def workers(self) -> int:
        """Clients trained at the same time."""
        if self.parallel is not None:
            return min(self.parallel, self.clients)
        return max(1, min(os.cpu_count() or 1, self.clients))

    def to_record(self) -> dict[str, Any]:
        """The settings as Flower ConfigRecord values (str, int, float, bool, list[str]):
        what the server sends to every client each round."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "devices":
                d["devices"] = [self.device_of(i) for i in range(self.clients)]
            elif v is not None:
                d[f.name] = v
        return d

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> FederationConfig:
        """The inverse of ``to_record`` (unknown keys, e.g. Flower's "server-round", ignored;
        the strings of a Flower run config are converted)."""
        kinds = {f.name: f.type for f in fields(cls)}
        kw: dict[str, Any] = {}
        for name, v in record.items():
            key = name.replace("-", "_")
            if key not in kinds:
                continue
            if key == "devices":
                kw[key] = tuple(str(u) for u in (v.split(",") if isinstance(v, str) else v) if u)
            elif key in ("clients", "rounds", "seed", "steps", "batch", "parallel", "lr",
                         "momentum", "timeout", "baud"):  # fmt: skip
                kind = float if key in ("lr", "momentum", "timeout") else int
                try:
                    kw[key] = kind(v)
                except (TypeError, ValueError):
                    raise InvalidArgument(
                        f"setting {name}={v!r} is not {'a number' if kind is float else 'an int'}"
                    ) from None
            else:
                kw[key] = str(v)
        return cls(**kw)


# --------------------------------------------------------------------------- partitions


def parse_partition(spec: str) -> tuple[str, float | None]:
    """``"iid"`` -> ("iid", None); ``"dirichlet:ALPHA"`` -> ("dirichlet", ALPHA), ALPHA > 0."""
    if not isinstance(spec, str):
        raise InvalidArgument(f"partition must be a string, got {spec!r}")
    if spec == "iid":
        return "iid", None
    kind, _, arg = spec.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = float("nan")
        if math.isfinite(alpha) and alpha > 0:
            return "dirichlet", alpha
        raise InvalidArgument(
            f"partition {spec!r}: the Dirichlet concentration must be a number > 0, e.g. "
            "dirichlet:0.5 (smaller is less IID)"
        )
    raise InvalidArgument(f"unknown partition {spec!r}; accepted: iid, dirichlet:ALPHA")


def iid_partition(n: int, clients: int, seed: int) -> list[NDArray[np.int64]]:
    """Indices 0..n-1 shuffled by ``seed`` and cut into ``clients`` parts whose sizes differ by
    at most one."""
    if not 1 <= clients <= n:
        raise InvalidArgument(f"cannot split {n} samples among {clients} clients")
    order = np.random.default_rng([seed, 0x11D]).permutation(n).astype(np.int64)
    return [np.sort(p) for p in np.array_split(order, clients)]


def dirichlet_partition(
    labels: NDArray[np.int64], clients: int, alpha: float, seed: int
) -> list[NDArray[np.int64]]:
    """Label-skewed parts: for each class, the shares of the clients are drawn from
    Dirichlet(alpha, ..., alpha) and the class's samples (shuffled) are cut by those shares.
    Every sample lands in exactly one part. The draw is repeated (same seed stream) until
    every client holds at least ``min(MIN_PARTITION, n // clients)`` samples."""
    y = np.asarray(labels)
    n = len(y)
    if not 1 <= clients <= n:
        raise InvalidArgument(f"cannot split {n} samples among {clients} clients")
    if not (math.isfinite(alpha) and alpha > 0):
        raise InvalidArgument(f"Dirichlet alpha must be > 0, got {alpha!r}")
    need = min(MIN_PARTITION, n // clients)
    rng = np.random.default_rng([seed, 0xD1C])
    classes = np.unique(y)
    for _ in range(_DIRICHLET_TRIES):
        parts: list[list[NDArray[np.int64]]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c)).astype(np.int64)
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= need:
            return out
    raise InvalidArgument(
        f"dirichlet:{alpha} left a client with fewer than {need} samples in {_DIRICHLET_TRIES} "
        f"draws ({n} samples, {clients} clients): use a larger alpha or fewer clients"
    )


def partition(
    labels: NDArray[np.int64], clients: int, spec: str, seed: int
) -> list[NDArray[np.int64]]:
    """Indices of each client's samples for a partition ``spec`` (see ``parse_partition``)."""
    kind, alpha = parse_partition(spec)
    if kind == "iid":
        return iid_partition(len(labels), clients, seed)
    assert alpha is not None
    return dirichlet_partition(labels, clients, alpha, seed)


_SPLITS: dict[tuple[int, int, str], tuple[datasets.Split, list[NDArray[np.int64]]]] = {}


def _training_pool(seed: int) -> datasets.Split:
    """Every digit not held out (pretrain + stream splits of ``host.datasets``: 1437)."""
    s = datasets.load_digits_splits(seed)
    return datasets.Split(
        np.concatenate([s.pretrain.x, s.stream.x]), np.concatenate([s.pretrain.y, s.stream.y])
    )


def client_split(cfg: FederationConfig, client: int) -> datasets.Split:
    """The samples of client ``client`` (its part of the training pool)."""
    if not 0 <= client < cfg.clients:
        raise InvalidArgument(f"client must be in 0..{cfg.clients - 1}, got {client!r}")
    key = (cfg.seed, cfg.clients, cfg.partition)
    if key not in _SPLITS:
        pool = _training_pool(cfg.seed)
        _SPLITS[key] = (pool, partition(pool.y, cfg.clients, cfg.partition, cfg.seed))
    pool, parts = _SPLITS[key]
    idx = parts[client]
    return datasets.Split(pool.x[idx], pool.y[idx])


# --------------------------------------------------------------------------- one client's round


def _deploy_seed(cfg: FederationConfig, client: int, rnd: int) -> int:
    """Seed of a client's deploy: stochastic rounding streams differ per client and round.
    DFA keeps the federation seed: every chip must hold the same feedback matrices."""
    if cfg.algorithm == "dfa":
        return cfg.seed
    return int(np.random.SeedSequence([cfg.seed, client, rnd, 0xFED]).generate_state(1)[0])


def _batches(n: int, batch: int, steps: int, rng: np.random.Generator) -> list[NDArray[np.int64]]:
    """``steps`` minibatches of min(batch, n) indices, without replacement within an epoch."""
    b = min(batch, n)
    per_epoch = n // b
    out: list[NDArray[np.int64]] = []
    while len(out) < steps:
        order = rng.permutation(n)
        out += [order[i * b : (i + 1) * b] for i in range(per_epoch)]
    return out[:steps]


def _metric(v: Any) -> float:
    return 0.0 if v is None else float(v)


def train_local(
    url: str,
    weights: Mapping[str, Any],
    cfg: FederationConfig,
    client: int,
    rnd: int,
    *,
    baud: int | None = None,
) -> tuple[Weights, dict[str, float | int]]:
    """One client's round on its device (see the module docstring): (weights read back from
    the chip, metrics). Metrics: ``num-examples`` (partition size, FedAvg's weight),
    ``client``, ``steps``, ``loss`` (mean of the round's steps), the chip's ``cycles``,
    ``energy_uj``, ``latency_s`` (simulated), ``dram_bytes`` and ``sram_bytes`` (read +
    written) of the training steps, and ``wall_s`` (host). A counter the device cannot
    count is reported as 0 and ``counted`` is 0. Raises ``host.errors.MicrotrainError`` when
    the device fails."""
    data = client_split(cfg, client)
    spec = model_spec()
    rng = np.random.default_rng([cfg.seed, client, rnd, 0xBA7])
    t0 = time.perf_counter()
    with host.open(url, baudrate=baud or cfg.baud, timeout=cfg.timeout) as dev:
        model = dev.deploy(
            spec,
            weights,
            precision=cfg.precision,
            algorithm=cfg.algorithm,
            optimizer=host.optim.SGD(cfg.lr, momentum=cfg.momentum),
            seed=_deploy_seed(cfg, client, rnd),
        )
        losses = [
            model.train_step(data.x[idx], data.y[idx]).loss
            for idx in _batches(len(data), cfg.batch, cfg.steps, rng)
        ]
        counters = dev.counters()
        new = model.get_weights()
    total = counters.get("total") or {}
    counted = all(
        total.get(k) is not None
        for k in ("cycles", "energy_pj", "dram_read_bytes", "dram_write_bytes")
    )
    metrics: dict[str, float | int] = {
        "num-examples": len(data),
        "client": client,
        "steps": cfg.steps,
        "loss": float(np.mean(losses)),
        "cycles": int(_metric(total.get("cycles"))),
        "energy_uj": _metric(total.get("energy_pj")) * 1e-6,
        "latency_s": _metric(counters.get("latency_s")),
        "dram_bytes": int(
            _metric(total.get("dram_read_bytes")) + _metric(total.get("dram_write_bytes"))
        ),
        "sram_bytes": int(
            _metric(total.get("sram_read_bytes")) + _metric(total.get("sram_write_bytes"))
        ),
        "counted": int(counted),
        "wall_s": time.perf_counter() - t0,
    }
    return new, metrics


# --------------------------------------------------------------------------- evaluation


class Evaluator:
    """Accuracy of global weights on the held-out digits: on an evaluation chip (opened once,
    the weights loaded by deploy, the configured precision) and on the host in float32."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self.heldout = datasets.load_digits_splits(cfg.seed).heldout
        self.spec = model_spec()
        self._dev: host.Device | None = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None

    def __call__(self, weights: Mapping[str, Any]) -> dict[str, float]:
        """{"accuracy": on the evaluation chip, "accuracy_host_fp32": host forward}."""
        x, y = self.heldout.x, self.heldout.y
        host_pred = self.spec.forward(x, weights).argmax(1)
        if self._dev is None:
            self._dev = host.open(self.cfg.eval_device, timeout=self.cfg.timeout)
        model = self._dev.deploy(
            self.spec,
            weights,
            precision=self.cfg.precision,
            algorithm=self.cfg.algorithm,
            seed=self.cfg.seed,
        )
        chip_pred = np.concatenate(
            [
                model.predict(x[i : i + _PREDICT_CHUNK]).argmax(1)
                for i in range(0, len(x), _PREDICT_CHUNK)
            ]
        )
        return {
            "accuracy": float(np.mean(chip_pred == y)),
            "accuracy_host_fp32": float(np.mean(host_pred == y)),
        }


def evaluate(cfg: FederationConfig, weights: Mapping[str, Any]) -> dict[str, float]:
    """One evaluation of ``weights`` (see ``Evaluator``)."""
    with Evaluator(cfg) as ev:
        return ev(weights)


# --------------------------------------------------------------------------- the run


@dataclass
class FederationResult:
    """What a federation measured. ``rounds``: one record per round, round 0 being the
    initial model: ``round``, ``accuracy`` (evaluation chip), ``accuracy_host_fp32``,
    ``energy_uj`` (sum over the clients that finished the round), ``clients_ok``,
    ``failed`` (client, device, error), ``loss`` (mean over clients), ``cycles``,
    ``dram_bytes``, ``wall_s`` (since the engine started)."""

    rounds: list[dict[str, Any]]
    engine: str
    clients: list[dict[str, Any]]
    strategy: str
    wall_s: float
    load_average: dict[str, list[float]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def final_accuracy(self) -> float:
        return float(self.rounds[-1]["accuracy"])

    @property
    def energy_uj(self) -> float:
        return float(sum(r["energy_uj"] for r in self.rounds))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("flwr", "ray", "numpy", "microtrain"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def clients_info(cfg: FederationConfig) -> list[dict[str, Any]]:
    """Per client: index, device URL, partition size and class counts (the JSON's
    ``clients``)."""
    out = []
    for c in range(cfg.clients):
        part = client_split(cfg, c)
        out.append(
            {
                "client": c,
                "device": cfg.device_of(c),
                "samples": len(part),
                "classes": np.bincount(part.y, minlength=10).tolist(),
            }
        )
    return out


def run(
    cfg: FederationConfig, progress: Progress | None = None, *, verbose: bool = False
) -> FederationResult:
    """Run the federation on Flower's simulation engine (Ray backend); see docs/federated.md.
    ``progress`` gets one line per round; ``verbose`` keeps Flower's and Ray's logs."""
    try:
        from host import federated_app
    except ImportError as e:
        raise InvalidArgument(
            f"federated learning needs Flower ({e.name or e}): install the project's "
            "'federated' extra (pip install -e '.[federated]'; make setup does)"
        ) from None
    clients = clients_info(cfg)  # partitions first: a bad one fails before any engine work
    load_start = _load()
    t0 = time.perf_counter()
    rounds = federated_app.simulate(cfg, progress=progress, verbose=verbose)
    wall = time.perf_counter() - t0
    return FederationResult(
        rounds=rounds,
        engine=f"flwr {federated_app.flwr_version()} simulation engine (ray backend)",
        clients=clients,
        strategy=cfg.strategy,
        wall_s=wall,
        load_average={"start": load_start, "end": _load()},
        versions=_versions(),
        settings={**asdict(cfg), "devices": [cfg.device_of(i) for i in range(cfg.clients)]},
    )


# --------------------------------------------------------------------------- presentation


def format_round(r: Mapping[str, Any], rounds: int) -> str:
    """One progress line of a round record."""
    failed = "".join(
        f"\n    client {f['client']} ({f['device']}) failed: {f['error']}" for f in r["failed"]
    )
    return (
        f"round {r['round']:>3}/{rounds}  accuracy {r['accuracy']:.3f} (host fp32 "
        f"{r['accuracy_host_fp32']:.3f})  clients {r['clients_ok']}  energy "
        f"{r['energy_uj']:.1f} uJ  t {r['wall_s']:.1f} s{failed}"
    )


def write_plot(result: FederationResult, path: str) -> None:
    """A PNG of global held-out accuracy and the fleet's cumulative energy against rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in result.rounds]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(xs, [r["accuracy"] for r in result.rounds], marker="o", label="evaluation chip")
    ax.plot(
        xs,
        [r["accuracy_host_fp32"] for r in result.rounds],
        ls="--",
        color="gray",
        label="host fp32 forward",
    )
    s = result.settings
    ax.set_title(
        f"{len(result.clients)} clients, {s.get('partition')}, {result.strategy}, "
        f"{s.get('precision')}, {s.get('steps')} steps/round"
    )
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    energy = np.cumsum([r["energy_uj"] for r in result.rounds]) * 1e-3
    ax2 = ax.twinx()
    ax2.plot(xs, energy, color="tab:red", alpha=0.5, label="fleet energy (mJ, cumulative)")
    ax2.set_ylabel("fleet energy, cumulative (mJ)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``microtrain federate`` beyond those host/cli.py defines."""
    d = FederationConfig()
    p.add_argument(
        "--strategy", default=d.strategy, choices=STRATEGIES, help="server strategy (fedavg)"
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"local steps per round ({d.steps})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"local batch size ({d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"on-chip SGD learning rate ({d.lr})")
    p.add_argument(
        "--precision", default=d.precision, help=f"datapath format of the chips ({d.precision})"
    )
    p.add_argument(
        "--algorithm", default=d.algorithm, choices=ALGORITHMS, help="on-chip training (bp)"
    )
    p.add_argument(
        "--eval-device",
        default=d.eval_device,
        metavar="URL",
        help=f"chip the server evaluates the global model on ({d.eval_device})",
    )
    p.add_argument(
        "--parallel", type=int, default=None, help="clients trained at once (default: CPUs)"
    )
    p.add_argument("--baud", type=int, default=None, help="line rate of the clients' serial ports")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def config_from_args(args: argparse.Namespace) -> FederationConfig:
    d = FederationConfig()
    return FederationConfig(
        clients=args.clients,
        rounds=args.rounds,
        devices=tuple(args.device or ()),
        partition=args.partition,
        seed=args.seed,
        strategy=getattr(args, "strategy", d.strategy),
        steps=getattr(args, "steps", d.steps),
        batch=getattr(args, "batch", d.batch),
        lr=getattr(args, "lr", d.lr),
        precision=getattr(args, "precision", d.precision),
        algorithm=getattr(args, "algorithm", d.algorithm),
        eval_device=getattr(args, "eval_device", d.eval_device),
        parallel=getattr(args, "parallel", None),
        baud=getattr(args, "baud", None),
    )


def main(args: argparse.Namespace) -> int:
    """Run ``microtrain federate`` from parsed flags; returns the exit status."""
    try:
        cfg = config_from_args(args)
    except errors.MicrotrainError as e:
        print(f"microtrain federate: {e}", file=sys.stderr)
        return 2
    print(
        f"microtrain federate: {cfg.clients} clients x {cfg.rounds} rounds, {cfg.partition}, "
        f"{cfg.strategy}, {cfg.precision} {cfg.algorithm}, {cfg.steps} steps/round; "
        f"starting Flower's simulation engine",
        file=sys.stderr,
    )

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = run(cfg, progress=report, verbose=bool(getattr(args, "verbose", False)))
    except errors.MicrotrainError as e:
        print(f"microtrain federate: {e}", file=sys.stderr)
        return 1
    for r in result.rounds:
        print(f"round {r['round']}: accuracy {r['accuracy']:.4f} energy {r['energy_uj']:.1f} uJ")
    print(
        f"final accuracy {result.final_accuracy:.4f}, fleet energy {result.energy_uj:.1f} uJ, "
        f"wall {result.wall_s:.1f} s ({result.engine})"
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result.to_json(), f, indent=2)
    if args.plot:
        write_plot(result, args.plot)
    return 0
