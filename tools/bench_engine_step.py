#!/usr/bin/env python3
"""The compute side of ``microtrain bench step``: one training step of the engine alone.

Builds ``device_model.engine.Engine`` for the cases of ``host.bench_step`` (digits CNN batch
32, MDNet-style fc 4608-512-512-2 batch 128) on the hnpu-v2 preset, configured as the host's
precision strings configure the device (``fp32``; ``dfxp8+sr``: activations, weights, errors
and gradients in dfxp8 with stochastic rounding and AMAX scales, master weights and momentum
fp32; SGD lr 0.01), and times ``Engine.train_step`` against ``host.bench_step.numpy_step`` on
the same batches, interleaved step by step (best and median of ``--steps`` after 2 warm-up
steps). No link, no firmware: what is left of a step when the protocol path costs nothing.

``--cpu`` measures process CPU time instead of wall time; with ``MICROTRAIN_THREADS=1
OPENBLAS_NUM_THREADS=1`` that compares one core's work on each side and depends much less on
other processes sharing the machine than wall time does.

    MICROTRAIN_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python tools/bench_engine_step.py --cpu

``--blocks N`` times in blocks instead: ``--steps`` engine steps in a row, then as many numpy
steps, N rounds alternating (the first step of each block untimed); best step per side. The
baseline's OpenBLAS threads, which spin for a while after each numpy call, then no longer
steal a core from the engine step that follows, so the wall time with two threads is the
engine's own.

    .venv/bin/python tools/bench_engine_step.py --blocks 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np

from device_model.config import get_preset
from device_model.engine import Engine, EngineConfig, LayerSpec, PolicyEntry
from host import nn
from host.bench_step import CASES, LR, PRECISIONS, _batches, numpy_step

DATAPATH_CLASSES = ("activations", "weights", "errors", "gradients")


def layer_specs(model: nn.Sequential) -> list[LayerSpec]:
    """The engine's layer specs of a host model (the layer kinds the bench cases use)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            out.append(
                LayerSpec(
                    "linear",
                    in_features=layer.in_features,
                    out_features=layer.out_features,
                    bias=layer.bias,
                )
            )
        elif isinstance(layer, nn.Conv2d):
            (kh, kw), (sh, sw), (ph, pw) = layer._geom()
            out.append(
                LayerSpec(
                    "conv2d",
                    in_channels=layer.in_channels,
                    out_channels=layer.out_channels,
                    kernel_size=(kh, kw),
                    stride=(sh, sw),
                    padding=(ph, pw),
                    bias=layer.bias,
                )
            )
        elif isinstance(layer, nn.MaxPool2d):
            k, st, pad = layer._geom()
            out.append(LayerSpec("max_pool2d", kernel_size=k, stride=st, padding=pad))
        elif isinstance(layer, nn.ReLU):
            out.append(LayerSpec("relu"))
        elif isinstance(layer, nn.Flatten):
            out.append(LayerSpec("flatten"))
        else:
            raise ValueError(f"no engine spec for {type(layer).__name__}")
    return out


def config(precision: str) -> EngineConfig:
    """The TRAIN_CONFIG the host sends for ``precision`` (fp32 or dfxpN+sr), as EngineConfig."""
    if precision == "fp32":
        return EngineConfig(lr=LR)
    fmt = precision.split("+")[0]
    bits = int(fmt[4:])
    policy = [
        PolicyEntry(c, fmt, rounding="stochastic", frac_mode="amax", frac_bits=bits - 2)
        for c in DATAPATH_CLASSES
    ]
    return EngineConfig(policy=policy, lr=LR)


def _block_times(
    eng: Engine, base: Any, batches: list[Any], rounds: int, clock: Any
) -> tuple[list[float], list[float]]:
    """Seconds per step of the engine and of numpy, timed in blocks: all batches through
    the engine, then all through numpy, ``rounds`` times; the first step of a block is a
    warm-up and not timed."""
    te: list[float] = []
    tn: list[float] = []
    for _ in range(rounds):
        for fn, times in ((eng.train_step, te), (base, tn)):
            for j, (x, y) in enumerate(batches):
                t0 = clock()
                fn(x, y)
                if j >= 1:
                    times.append(clock() - t0)
    return te, tn


def run(steps: int, cpu: bool, blocks: int = 0) -> list[dict[str, Any]]:
    clock = time.process_time if cpu else time.perf_counter
    preset = get_preset("hnpu-v2")
    records = []
    for case in CASES:
        model = case.build()
        batches = _batches(case, steps + 2, seed=len(case.name))
        for prec in PRECISIONS:
            eng = Engine(model.input_shape, layer_specs(model), preset, init_seed=0)
            eng.configure(config(prec))
            base = numpy_step(model, eng.get_weights())
            te: list[float] = []
            tn: list[float] = []
            if blocks:
                te, tn = _block_times(eng, base, batches[1:], blocks, clock)
            for j, (x, y) in enumerate([] if blocks else batches):
                t0 = clock()
                eng.train_step(x, y)
                t1 = clock()
                base(x, y)
                t2 = clock()
                if j >= 2:
                    te.append(t1 - t0)
                    tn.append(t2 - t1)
            records.append(
                {
                    "case": case.name,
                    "precision": prec,
                    "engine_ms": round(min(te) * 1e3, 3),
                    "numpy_ms": round(min(tn) * 1e3, 3),
                    "ratio": round(min(te) / min(tn), 3),
                    "engine_median_ms": round(statistics.median(te) * 1e3, 3),
                    "numpy_median_ms": round(statistics.median(tn) * 1e3, 3),
                    "clock": "process_cpu" if cpu else "wall",
                    "timing": f"blocks x{blocks}" if blocks else "interleaved",
                }
            )
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=9, help="timed steps per case (default 9)")
    p.add_argument("--cpu", action="store_true", help="process CPU time instead of wall time")
    p.add_argument(
        "--blocks",
        type=int,
        default=0,
        metavar="N",
        help="time in N alternating blocks of --steps steps per side (default: interleaved)",
    )
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    a = p.parse_args()
    if a.steps < 1:
        p.error("--steps must be at least 1")
    if a.blocks < 0:
        p.error("--blocks must be at least 0")
    recs = run(a.steps, a.cpu, a.blocks)
    load = os.getloadavg()[0]
    if a.json:
        for r in recs:
            r["loadavg_1m"] = round(load, 2)
        print(json.dumps(recs, indent=1))
        return
    for r in recs:
        print(
            f"{r['case']:10s} {r['precision']:9s} engine {r['engine_ms']:8.2f} ms  "
            f"numpy {r['numpy_ms']:7.2f} ms  ratio {r['ratio']:5.2f}  ({r['clock']}, "
            f"{r['timing']}; medians {r['engine_median_ms']:.2f} / {r['numpy_median_ms']:.2f})"
        )
    print(f"load average (1 min) {load:.2f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
