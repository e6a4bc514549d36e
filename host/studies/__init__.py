"""Design-space studies (``microtrain reproduce STUDY``) and scenarios (``microtrain scenario``).

Each study or scenario is one module of this package exposing

* ``TITLE: str`` — one line saying what it reproduces (shown by ``--help`` and in the output);
* ``run(quick: bool, seed: int, progress: Callable[[str], None]) -> dict`` — does the work and
  returns a JSON-serialisable record (numbers only from runs made now, never constants);
* ``plot(record: dict, path: str) -> None`` — writes a PNG of the record (matplotlib, Agg).

A study that also reports figures of the chip's cost model for something no device URL can
express (DDG/FDG memory and time, the analytic HNPU-V1/V2 comparison) sets
``NEEDS_COST_MODEL = True`` and takes ``run(..., cost_model=...)``: the CLI, the only module of
``host`` allowed to import ``device_model``, hands it ``device_model.study_costs``. Nothing in
this package imports ``device_model``.

This module is the registry and the common command-line driver: timing, ``--json-out``,
``--plot``, progress lines on stderr. Studies reach the chip through ``host.open`` (the whole
protocol path) for anything trained or counted, and say in their records which figures come
from the cost model.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["SCENARIOS", "STUDIES", "add_arguments", "load", "main"]

#: ``microtrain reproduce`` studies: name -> module (imported only when run).
STUDIES: dict[str, str] = {
    "pq": "host.studies.pq",
    "bu": "host.studies.bu",
    "presets": "host.studies.presets",
    "rounding": "host.studies.rounding",
    "formats": "host.studies.formats",
    "batch": "host.studies.batch",
    "selective": "host.studies.selective",
    "transpose": "host.studies.transpose",
}

#: ``microtrain scenario`` scenarios: name -> module.
SCENARIOS: dict[str, str] = {
    "new-classes": "host.studies.new_classes",
    "distill": "host.studies.distill",
}


def load(kind: str, name: str) -> ModuleType:
    """The module of study (``kind="reproduce"``) or scenario (``kind="scenario"``) ``name``."""
    table = STUDIES if kind == "reproduce" else SCENARIOS
    if name not in table:
        raise KeyError(f"unknown {kind} name {name!r}; choose one of {', '.join(table)}")
    return importlib.import_module(table[name])


def add_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    """The flags shared by ``microtrain reproduce`` and ``microtrain scenario``."""
    table = STUDIES if kind == "reproduce" else SCENARIOS
    p.add_argument("name", choices=list(table), metavar="NAME", help=", ".join(table))
    p.add_argument("--quick", action="store_true", help="a small version (CI smoke test)")
    p.add_argument("--seed", type=int, default=0, help="seed of data splits, training and SR")
    p.add_argument("--json-out", default=None, metavar="FILE", help="write the record as JSON")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a PNG of the record")


def main(args: argparse.Namespace, kind: str, cost_model: ModuleType | None = None) -> int:
    """Run one study or scenario from parsed flags; returns the exit status. ``cost_model``:
    ``device_model.study_costs``, for the studies that set ``NEEDS_COST_MODEL``."""
    from host.errors import MicrotrainError

    prog = f"microtrain {kind}"
    mod = load(kind, args.name)
    extra: dict[str, Any] = {}
    if getattr(mod, "NEEDS_COST_MODEL", False):
        if cost_model is None:
            print(
                f"{prog} {args.name}: this study needs the chip's cost model; run it as "
                f"`microtrain {kind} {args.name}` (the CLI provides it)",
                file=sys.stderr,
            )
            return 2
        extra["cost_model"] = cost_model

    def progress(msg: str) -> None:
        print(f"[{args.name}] {msg}", file=sys.stderr, flush=True)

    progress(f"{mod.TITLE}{' (quick)' if args.quick else ''}")
    t0 = time.perf_counter()
    try:
        record: dict[str, Any] = mod.run(
            quick=args.quick, seed=args.seed, progress=progress, **extra
        )
    except MicrotrainError as e:
        print(f"{prog} {args.name}: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    record.setdefault("study", args.name)
    record["quick"] = bool(args.quick)
    record["seed"] = args.seed
    record["elapsed_s"] = round(elapsed, 2)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    if args.plot:
        plot: Callable[[dict[str, Any], str], None] = mod.plot
        plot(record, args.plot)
    summary = getattr(mod, "summary", None)
    if summary is not None:
        print(summary(record))
    print(f"{prog} {args.name}: done in {elapsed:.1f} s")
    return 0
