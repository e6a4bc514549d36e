#!/usr/bin/env python3
"""Process CPU time of one training step through the whole protocol path, against numpy.

``microtrain bench step`` times wall clock, which on a shared machine mostly measures the
other processes. This tool runs the same cases (``host.bench_step.CASES``, default the digits
CNN) through ``emu://hnpu-v2`` (host driver, link, frame codec, firmware and engine in this
process) and times ``Model.train_step`` and ``host.bench_step.numpy_step`` alternately, batch
by batch, in process CPU time (``time.process_time``). With ``MICROTRAIN_THREADS=1
OPENBLAS_NUM_THREADS=1`` both sides use one core and the ratio depends little on the load.
Figures per case and precision: the mean over ``--steps`` steps after ``--warm`` and the best
mean over blocks of ``--block`` steps (what the code costs with the fewest interruptions).

    MICROTRAIN_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python tools/bench_step_cpu.py
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import host
from host.bench_step import CASES, LR, PRECISIONS, _batches, numpy_step


def run(cases: list[str], steps: int, warm: int, block: int) -> list[dict[str, Any]]:
    records = []
    with host.open("emu://hnpu-v2") as dev:
        for case in CASES:
            if case.name not in cases:
                continue
            batches = _batches(case, 50, seed=len(case.name))
            for prec in PRECISIONS:
                model = dev.deploy(case.build(), precision=prec, optimizer=host.optim.SGD(LR))
                base = numpy_step(case.build(), model.get_weights())
                td: list[float] = []
                tn: list[float] = []
                for j in range(warm + steps):
                    x, y = batches[j % len(batches)]
                    t0 = time.process_time()
                    model.train_step(x, y)
                    t1 = time.process_time()
                    base(x, y)
                    t2 = time.process_time()
                    if j >= warm:
                        td.append(t1 - t0)
                        tn.append(t2 - t1)
                blocks = [
                    (sum(td[i : i + block]), sum(tn[i : i + block]))
                    for i in range(0, len(td) - block + 1, block)
                ] or [(sum(td), sum(tn))]
                size = block if len(td) >= block else len(td)
                best_d = min(d for d, _ in blocks) / size
                best_n = min(n for _, n in blocks) / size
                records.append(
                    {
                        "case": case.name,
                        "precision": prec,
                        "cpu_ms": round(sum(td) / len(td) * 1e3, 3),
                        "numpy_cpu_ms": round(sum(tn) / len(tn) * 1e3, 3),
                        "ratio": round(sum(td) / sum(tn), 3),
                        "best_block_cpu_ms": round(best_d * 1e3, 3),
                        "best_block_numpy_cpu_ms": round(best_n * 1e3, 3),
                        "best_block_ratio": round(best_d / best_n, 3),
                        "steps": len(td),
                        "clock": "process_cpu",
                    }
                )
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", choices=[c.name for c in CASES])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--block", type=int, default=25)
    ap.add_argument("--json", action="store_true", help="one JSON record per line")
    a = ap.parse_args()
    if a.steps < 1 or a.warm < 0 or a.block < 1:
        ap.error("--steps and --block must be at least 1, --warm at least 0")
    for r in run(a.case or ["digits-cnn"], a.steps, a.warm, a.block):
        if a.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['case']:10s} {r['precision']:9s} device {r['cpu_ms']:7.3f} ms  numpy "
                f"{r['numpy_cpu_ms']:7.3f} ms  ratio {r['ratio']:5.2f}  (best block "
                f"{r['best_block_cpu_ms']:.3f} / {r['best_block_numpy_cpu_ms']:.3f} = "
                f"{r['best_block_ratio']:.2f}; process CPU, {r['steps']} steps)"
            )


if __name__ == "__main__":
    main()
