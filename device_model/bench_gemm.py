"""`microtrain bench gemm`: exact integer GEMM throughput against numpy baselines measured in
the same run.

Cases: square 256, 512 and 1024 and the training shape 32 x 4608 x 512, each for dfxp8
(int8 codes, 32-bit accumulator) against numpy float32 matmul of the same integers
("numpy-sgemm") and for dfxp16 (int16 codes, 48-bit accumulator) against numpy float64
matmul of the same integers ("numpy-dgemm-exact", exact since every sum stays below 2^53).
Codes are uniform over the whole code range (the worst case for the exact kernels: no zeros
and every slice in use). Each figure is the best of repeated timed calls (at least 5 and
0.5 s of them; 3 with ``quick``) after a warm-up, ours first and then the baseline (numpy's
BLAS threads keep spinning for a while after a call, so interleaving the two would slow
down whichever runs next). The datapath result is also compared with the float64 product
once per case (``"exact": true``), and the 1-minute load average is recorded: on a shared
2-core machine other processes slow both sides, and numpy's spinning BLAS worker threads
suffer most from it.
The quantizer records of ``device_model.bench_quant`` are appended.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from device_model import bench_quant, datapath

SHAPES: tuple[tuple[int, int, int], ...] = (
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (32, 4608, 512),
)
FORMATS: dict[str, tuple[type[np.signedinteger[Any]], type[np.floating[Any]], str]] = {
    "dfxp8": (np.int8, np.float32, "numpy-sgemm"),
    "dfxp16": (np.int16, np.float64, "numpy-dgemm-exact"),
}


_BLAS_SETTLE_S = 0.3  # OpenBLAS workers spin for a while after each call before sleeping


def _best(fn: Callable[[], object], quick: bool) -> float:
    """Best time of repeated calls: at least 5 of them and, unless quick, at least 0.5 s of
    them (the best of many short runs is what survives bursts of load from elsewhere)."""
    fn()  # warm-up (and, for numpy, wakes its BLAS threads)
    min_reps, min_time, max_reps = (3, 0.0, 3) if quick else (5, 0.5, 400)
    best, spent, reps = float("inf"), 0.0, 0
    while reps < max_reps and (reps < min_reps or spent < min_time):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def _case(shape: tuple[int, int, int], fmt: str, quick: bool) -> dict[str, Any]:
    m, k, n = shape
    code_t, float_t, baseline = FORMATS[fmt]
    info = np.iinfo(code_t)
    rng = np.random.default_rng(1234)
    a = rng.integers(info.min, info.max + 1, (m, k)).astype(code_t)
    b = rng.integers(info.min, info.max + 1, (k, n)).astype(code_t)
    af, bf = a.astype(float_t), b.astype(float_t)
    c, stats = datapath.gemm_int(a, b)
    exact = bool(np.array_equal(c, (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)))
    time.sleep(_BLAS_SETTLE_S)  # let numpy's BLAS threads stop spinning after the last case
    t_ours = _best(lambda: datapath.gemm_int(a, b), quick)
    t_base = _best(lambda: np.matmul(af, bf), quick)
    gmacs = m * k * n / t_ours / 1e9
    base_gmacs = m * k * n / t_base / 1e9
    return {
        "case": f"gemm {m}x{k}x{n}",
        "format": fmt,
        "shape": [m, k, n],
        "gmacs": round(gmacs, 2),
        "baseline": baseline,
        "baseline_gmacs": round(base_gmacs, 2),
        "ratio": round(gmacs / base_gmacs, 3),
        "kernel": stats.kernel,
        "threads": stats.threads,
        "exact": exact,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews both
    }


def run(quick: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Measure every (shape, format) case; with ``progress`` print each record to stderr."""
    records = []
    for shape in SHAPES:
        for fmt in FORMATS:
            rec = _case(shape, fmt, quick)
            records.append(rec)
            if progress:
                print(_row(rec), file=sys.stderr, flush=True)
    records.extend(bench_quant.run(quick=quick))
    return records


_HEADER = f"{'case':<22} {'format':<8} {'GMAC/s':>8} {'baseline':<18} {'GMAC/s':>8} {'ratio':>6}"


def _row(r: dict[str, Any]) -> str:
    if "gmacs" not in r:  # a record of another benchmark: show what it has
        return "  ".join(f"{k}={v}" for k, v in r.items())
    return (
        f"{r['case']:<22} {r['format']:<8} {r['gmacs']:>8.1f} {r['baseline']:<18} "
        f"{r['baseline_gmacs']:>8.1f} {r['ratio']:>6.2f}  [{r.get('kernel', '?')}]"
    )


def format_table(records: list[dict[str, Any]]) -> str:
    """The records as a fixed-width table for humans."""
    return "\n".join([_HEADER, *(_row(r) for r in records)])
