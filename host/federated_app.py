"""The Flower apps of ``microtrain federate``: a ClientApp wrapping a device, a ServerApp.

* ``client_app``: on each TRAIN message it takes the global weights (an ArrayRecord) and the
  federation's settings (the ConfigRecord the server sends), runs ``host.federated.
  train_local`` on its device and replies with the weights read back from the chip and the
  chip's metrics. The client's index is the node's ``partition-id``; its device URL is the
  node's ``device`` (node config of a SuperNode, with its ``baud``) or else the settings'
  ``devices`` list. A device failure (``host.errors.MicrotrainError``) becomes an error
  reply naming the client, the device and the error; the strategy aggregates without it.
* ``server_app``: the deployment engine's entry (``flwr run``): settings from the run config
  (the keys of ``FederationConfig``, dashes or underscores), JSON written to ``json-out`` if
  given. ``simulate`` runs the same server logic on the simulation engine (Ray backend).

The weights travel between server and clients as Flower messages and between each client and
its chip only over the device protocol (``host.open``); nothing here imports device_model.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Strategy,
)

from host import errors
from host.federated import (
    Evaluator,
    FederationConfig,
    Progress,
    clients_info,
    format_round,
    model_spec,
    train_local,
)

__all__ = ["DEVICE_FAILED", "client_app", "flwr_version", "make_server_app", "server_app"]

#: Error code of a client's reply when its device failed (Flower's own codes are 0..8).
DEVICE_FAILED = 100
_SUMMED = ("energy_uj", "cycles", "dram_bytes", "sram_bytes", "latency_s", "wall_s")
_INTS = ("client", "num-examples", "steps", "cycles", "dram_bytes", "sram_bytes", "counted")


def flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def _to_arrays(weights: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()}
    )


def _from_arrays(record: ArrayRecord) -> dict[str, Any]:
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in record.items()}


# --------------------------------------------------------------------------- client

client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """One round of one client on its device (see the module docstring)."""
    config = dict(msg.content.config_records["config"])
    cfg = FederationConfig.from_record(config)
    rnd = int(str(config.get("server-round", 0)))
    client = int(context.node_config["partition-id"])
    url = str(context.node_config.get("device") or cfg.device_of(client))
    baud = context.node_config.get("baud")
    try:
        weights, metrics = train_local(
            url,
            _from_arrays(msg.content.array_records["arrays"]),
            cfg,
            client,
            rnd,
            baud=int(baud) if isinstance(baud, int | float | str) and baud else None,
        )
    except errors.MicrotrainError as e:
        reason = json.dumps({"client": client, "device": url, "error": f"{type(e).__name__}: {e}"})
        return Message(Error(code=DEVICE_FAILED, reason=reason), reply_to=msg)
    content = RecordDict({"arrays": _to_arrays(weights), "metrics": MetricRecord(dict(metrics))})
    return Message(content, reply_to=msg)


# --------------------------------------------------------------------------- server


def _metrics(content: RecordDict) -> dict[str, float]:
    """The (single) MetricRecord of a client's reply as plain floats."""
    record = next(iter(content.metric_records.values()))
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def _fleet(ms: list[dict[str, float]]) -> dict[str, Any]:
    """Fleet figures of a round from the metrics of the clients that finished it: counters
    summed, loss averaged with the clients' sample counts as weights."""
    n = sum(m["num-examples"] for m in ms)
    out: dict[str, Any] = {k: float(sum(m[k] for m in ms)) for k in _SUMMED}
    out["loss"] = sum(m["loss"] * m["num-examples"] for m in ms) / n if ms else None
    out["clients_ok"] = len(ms)
    out["num-examples"] = int(n)
    return out


def _sum_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Flower's train_metrics_aggr_fn: ``_fleet`` of the replies."""
    fleet = {k: v for k, v in _fleet([_metrics(c) for c in contents]).items() if v is not None}
    return MetricRecord(fleet)


def _failure(error: Error) -> dict[str, Any]:
    """client, device, error of an error reply (ours carry them as JSON; Flower's own errors,
    e.g. a ClientApp that crashed, are reported with their code)."""
    try:
        out = json.loads(error.reason or "")
        if isinstance(out, dict) and {"client", "device", "error"} <= set(out):
            return out
    except ValueError:
        pass
    return {"client": None, "device": None, "error": f"Flower error {error.code}: {error.reason}"}


def _round_record(ok: list[dict[str, float]], failed: list[dict[str, Any]]) -> dict[str, Any]:
    fleet = _fleet(ok)
    return {
        "energy_uj": fleet["energy_uj"],
        "clients_ok": len(ok),
        "failed": failed,
        "loss": fleet["loss"],
        "cycles": int(fleet["cycles"]),
        "dram_bytes": int(fleet["dram_bytes"]),
        "sram_bytes": int(fleet["sram_bytes"]),
        "per_client": [{k: (int(v) if k in _INTS else v) for k, v in m.items()} for m in ok],
    }


class _Recorder:
    """Collects the per-round records of a run (the JSON's ``rounds``)."""

    def __init__(self, cfg: FederationConfig, progress: Progress | None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.rounds: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, Any]] = {}
        self.t0 = time.perf_counter()

    def train_replies(self, rnd: int, replies: list[Message]) -> None:
        ok: list[dict[str, float]] = []
        failed: list[dict[str, Any]] = []
        for msg in replies:
            if msg.has_error():
                failed.append(_failure(msg.error))
            else:
                ok.append(_metrics(msg.content))
        ok.sort(key=lambda m: m["client"])
        failed.sort(key=lambda f: -1 if f["client"] is None else int(f["client"]))
        self._pending[rnd] = _round_record(ok, failed)

    def evaluated(self, rnd: int, acc: dict[str, float]) -> None:
        rec: dict[str, Any] = {"round": rnd, **acc}
        pending = self._pending.pop(rnd, None)
        rec.update(pending if pending is not None else _round_record([], []))
        rec["wall_s"] = time.perf_counter() - self.t0
        self.rounds.append(rec)
        if self.progress is not None:
            self.progress(format_round(rec, self.cfg.rounds))


def _client_of(msg: Message) -> int:
    """Client index of a reply (error replies, which are not aggregated, sort last)."""
    if msg.has_error():
        return 1 << 30
    return int(_metrics(msg.content).get("client", 1 << 30))


def _recording(base: type[Strategy], recorder: _Recorder) -> type[Strategy]:
    """``base`` with its train replies shown to ``recorder`` before aggregation."""

    class Recording(base):  # type: ignore[valid-type,misc]
        def aggregate_train(
            self, server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            # in client order, not arrival order: float sums then do not depend on which
            # Ray actor finished first, and a seeded federation replays bit for bit
            replies = sorted(replies, key=_client_of)
            recorder.train_replies(server_round, replies)
            result: tuple[ArrayRecord | None, MetricRecord | None] = super().aggregate_train(
                server_round, replies
            )
            return result

    Recording.__name__ = base.__name__
    return Recording


def make_strategy(cfg: FederationConfig, recorder: _Recorder) -> Strategy:
    """The server strategy ``cfg.strategy``: every client trains every round, no client-side
    evaluation (the server evaluates the global model on its evaluation chip)."""
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": cfg.clients,
        "min_available_nodes": cfg.clients,
        "train_metrics_aggr_fn": _sum_metrics,
    }
    bases: dict[str, tuple[type[Strategy], dict[str, Any]]] = {
        "fedavg": (FedAvg, {}),
        # server momentum 0.9 with server learning rate 1 (Hsu et al. 2019's FedAvgM)
        "fedavgm": (FedAvgM, {"server_learning_rate": 1.0, "server_momentum": 0.9}),
        # Flower's defaults (server step eta 0.1, tau 1e-3): of 0.01, 0.03 and 0.1 tried, only
        # 0.1 reached 0.9 in 10 rounds (docs/federated.md)
        "fedadam": (FedAdam, {"eta": 0.1, "eta_l": cfg.lr, "tau": 1e-3}),
        "fedmedian": (FedMedian, {}),
        "fedtrimmedavg": (FedTrimmedAvg, {"beta": 0.2}),
    }
    base, extra = bases[cfg.strategy]
    return _recording(base, recorder)(**common, **extra)


def run_server(grid: Grid, cfg: FederationConfig, recorder: _Recorder) -> None:
    """The federation, server side: initial weights (seeded random init on the host), the
    strategy's rounds, evaluation of the global model after each round."""
    initial = model_spec().init_weights(cfg.seed)
    strategy = make_strategy(cfg, recorder)
    with Evaluator(cfg) as evaluator:

        def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            acc = evaluator(_from_arrays(arrays))
            recorder.evaluated(rnd, acc)
            return MetricRecord(dict(acc))

        strategy.start(
            grid=grid,
            initial_arrays=_to_arrays(initial),
            num_rounds=cfg.rounds,
            train_config=ConfigRecord(cfg.to_record()),
            evaluate_fn=evaluate,
        )


def make_server_app(cfg: FederationConfig, recorder: _Recorder) -> ServerApp:
    """A ServerApp running ``cfg`` and recording into ``recorder`` (simulation)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, recorder)

    return app


server_app = ServerApp()


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    """Deployment engine: settings from the run config; JSON to its ``json-out``."""
    run_config = dict(context.run_config)
    out = run_config.pop("json-out", None)
    cfg = FederationConfig.from_record(run_config)
    recorder = _Recorder(cfg, progress=lambda line: logging.getLogger("flwr").info(line))
    run_server(grid, cfg, recorder)
    if out:
        doc = {
            "rounds": recorder.rounds,
            "engine": f"flwr {flwr_version()} deployment engine",
            # the devices are the SuperNodes' (node config "device"), unknown to the server
            "clients": clients_info(cfg),
            "strategy": cfg.strategy,
            "settings": cfg.to_record(),
        }
        with open(str(out), "w") as f:
            json.dump(doc, f, indent=2)


# --------------------------------------------------------------------------- simulation


_QUIET_LOGGERS = ("flwr", "ray")


def simulate(
    cfg: FederationConfig, progress: Progress | None = None, *, verbose: bool = False
) -> list[dict[str, Any]]:
    """Run the federation on Flower's simulation engine: ``cfg.clients`` virtual SuperNodes
    (one ClientApp each, ``cfg.workers`` Ray actors of one CPU at a time) and the ServerApp in
    this process. Returns the round records. ``verbose``: keep Flower's and Ray's logs."""
    from flwr.simulation import run_simulation

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # offline: no usage pings
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    recorder = _Recorder(cfg, progress)
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cfg.workers,
            "num_gpus": 0,
            "include_dashboard": False,
            "log_to_driver": verbose,
            "logging_level": "INFO" if verbose else "ERROR",
        },
    }
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    if not verbose:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            run_simulation(
                server_app=make_server_app(cfg, recorder),
                client_app=client_app,
                num_supernodes=cfg.clients,
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    if len(recorder.rounds) != cfg.rounds + 1:
        raise errors.MicrotrainError(
            f"the simulation ended after {max(0, len(recorder.rounds) - 1)} of {cfg.rounds} "
            "rounds; rerun with --verbose to see Flower's log"
        )
    return recorder.rounds
