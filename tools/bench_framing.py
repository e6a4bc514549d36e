#!/usr/bin/env python3
"""The frame codec in C (protocol._framing_c) against its pure-Python reference, same run.

* ``codec``: per 16 KiB DATA frame of random bytes (the MDNet input's fp32 bytes look random
  to COBS: about one zero in 256), the time to encode (``encode_frame``: header, CRC-32,
  COBS, delimiters), to decode (``decode_frame``) and to receive (``FrameDecoder.feed`` of 8
  frames at once, as a port read delivers them), each codec's best of ``--repeats`` rounds;
  MB/s of payload and the ratio Python / C.
* ``mdnet-step``: the same for the 2.37 MB of one MDNet tracker step (Linear 4608-512-512-2,
  batch 128, fp32 input: 147 frames of 16 KiB): encode all, feed all, per codec.
* ``step`` (``--step``): whole training steps of ``host.bench_step``'s MDNet case through
  ``emu://hnpu-v2`` (host, link, firmware, engine in this process), the codec switched with
  ``framing.use_accelerator`` step by step (both see the same load), best and median.

* ``protocol_path`` (``--protocol-path``): what one training step costs besides the engine, for
  each case and precision of ``host.bench_step``: the time of ``Model.train_step`` through
  ``emu://hnpu-v2`` minus that of ``Engine.train_step`` inside it, same process, same steps
  (host driver, messages, link, frame codec, emulated port, firmware); best and median over
  ``--blocks`` blocks of steps (the MDNet case 5 steps a block, the CNN 100).

``--cpu`` measures process CPU time instead of wall time (with ``MICROTRAIN_THREADS=1
OPENBLAS_NUM_THREADS=1`` one core's work, much less dependent on other processes):

    MICROTRAIN_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python tools/bench_framing.py --cpu --step
    MICROTRAIN_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python tools/bench_framing.py --cpu \
        --protocol-path
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from protocol import framing as fr

FRAME = 16384
#: Payload bytes of one MDNet step's input upload: 128 x 4608 fp32 (host.bench_step).
MDNET_BYTES = 128 * 4608 * 4


def _best(fn: Callable[[], Any], rounds: int, clock: Callable[[], float]) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def codec(repeats: int, clock: Callable[[], float]) -> dict[str, Any]:
    """Seconds per 16 KiB frame to encode, decode and feed, per codec, and the ratios."""
    payload = random.Random(1).randbytes(FRAME)
    frames = [fr.encode_frame(fr.FrameType.DATA, payload, seq=i) for i in range(8)]
    stream = b"".join(frames)
    dec = fr.FrameDecoder(FRAME)
    out: dict[str, Any] = {}
    ops: dict[str, Callable[[], Any]] = {
        "encode": lambda: [fr.encode_frame(fr.FrameType.DATA, payload, seq=i) for i in range(8)],
        "decode": lambda: [fr.decode_frame(f[1:-1]) for f in frames],
        "feed": lambda: dec.feed(stream),
    }
    for name, op in ops.items():
        per: dict[str, float] = {}
        for _ in range(repeats):  # the codecs alternate round by round
            for label, on in (("python", False), ("c", True)):
                fr.use_accelerator(on)
                per[label] = min(per.get(label, float("inf")), _best(op, 5, clock) / 8)
        out[name] = {
            "python_us": round(per["python"] * 1e6, 2),
            "c_us": round(per["c"] * 1e6, 2),
            "python_mb_s": round(FRAME / per["python"] / 1e6),
            "c_mb_s": round(FRAME / per["c"] / 1e6),
            "ratio": round(per["python"] / per["c"], 2),
        }
    fr.use_accelerator(True)
    return out


def mdnet_codec(repeats: int, clock: Callable[[], float]) -> dict[str, Any]:
    """Milliseconds to encode and to receive one MDNet step's input, per codec."""
    import numpy as np

    x = np.abs(np.random.default_rng(7).standard_normal(MDNET_BYTES // 4)).astype(np.float32)
    data = x.tobytes()
    chunks = [data[i : i + FRAME] for i in range(0, len(data), FRAME)]
    wire = b"".join(fr.encode_frame(fr.FrameType.DATA, c, seq=i) for i, c in enumerate(chunks))
    out: dict[str, Any] = {"frames": len(chunks), "payload_bytes": len(data)}

    def encode_all() -> None:
        for i, c in enumerate(chunks):
            fr.encode_frame(fr.FrameType.DATA, c, seq=i)

    def receive_all() -> None:
        dec = fr.FrameDecoder(FRAME)
        for i in range(0, len(wire), 65536):  # a port read's worth at a time
            dec.feed(wire[i : i + 65536])

    best: dict[str, list[float]] = {"python": [1e9, 1e9], "c": [1e9, 1e9]}
    for _ in range(repeats):  # the codecs alternate round by round
        for label, on in (("python", False), ("c", True)):
            fr.use_accelerator(on)
            b = best[label]
            b[0] = min(b[0], _best(encode_all, 1, clock))
            b[1] = min(b[1], _best(receive_all, 1, clock))
    for label, (e, r) in best.items():
        out[label] = {"encode_ms": round(e * 1e3, 3), "receive_ms": round(r * 1e3, 3)}
    fr.use_accelerator(True)
    return out


def step(steps: int, clock: Callable[[], float]) -> dict[str, Any]:
    """Whole MDNet fp32 training steps through emu://, codec alternating step by step."""
    import host
    from host.bench_step import CASES, LR, _batches

    case = next(c for c in CASES if c.name == "mdnet-fc")
    batches = _batches(case, 2 + 2 * steps, seed=3)
    times: dict[str, list[float]] = {"python": [], "c": []}
    with host.open("emu://hnpu-v2") as dev:
        model = dev.deploy(case.build(), precision="fp32", optimizer=host.optim.SGD(LR))
        for j, (x, y) in enumerate(batches):
            label = "c" if j % 2 else "python"
            fr.use_accelerator(label == "c")
            t0 = clock()
            model.train_step(x, y)
            if j >= 2:
                times[label].append(clock() - t0)
    fr.use_accelerator(True)
    return {
        label: {
            "best_ms": round(min(t) * 1e3, 2),
            "median_ms": round(statistics.median(t) * 1e3, 2),
            "steps": len(t),
        }
        for label, t in times.items()
    }


def protocol_path(blocks: int, clock: Callable[[], float]) -> dict[str, Any]:
    """Per case and precision: step time minus engine time (ms per step), best and median
    block."""
    import host
    from device_model import engine as engine_mod
    from host.bench_step import CASES, LR, PRECISIONS, _batches

    inside = [0.0]
    real = engine_mod.Engine.train_step

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        try:
            return real(self, *args, **kwargs)
        finally:
            inside[0] += clock() - t0

    out: dict[str, Any] = {}
    engine_mod.Engine.train_step = timed  # type: ignore[method-assign]
    try:
        with host.open("emu://hnpu-v2") as dev:
            for case in CASES:
                per_block = 5 if case.name == "mdnet-fc" else 100
                batches = _batches(case, 50, seed=len(case.name))
                for prec in PRECISIONS:
                    model = dev.deploy(case.build(), precision=prec, optimizer=host.optim.SGD(LR))
                    for j in range(5):
                        model.train_step(*batches[j])
                    paths = []
                    for b in range(blocks):
                        inside[0] = 0.0
                        t0 = clock()
                        for j in range(per_block):
                            model.train_step(*batches[(b * per_block + j) % len(batches)])
                        paths.append((clock() - t0 - inside[0]) / per_block)
                    out[f"{case.name} {prec}"] = {
                        "best_ms": round(min(paths) * 1e3, 3),
                        "median_ms": round(statistics.median(paths) * 1e3, 3),
                        "steps_per_block": per_block,
                    }
    finally:
        engine_mod.Engine.train_step = real  # type: ignore[method-assign]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--cpu", action="store_true", help="process CPU time instead of wall time")
    ap.add_argument("--repeats", type=int, default=20, help="rounds per codec (best is kept)")
    ap.add_argument("--step", action="store_true", help="also time whole MDNet steps")
    ap.add_argument("--steps", type=int, default=6, help="MDNet steps per codec with --step")
    ap.add_argument(
        "--protocol-path",
        action="store_true",
        help="only the per-step time of everything but the engine, per bench-step case",
    )
    ap.add_argument("--blocks", type=int, default=10, help="blocks of steps with --protocol-path")
    args = ap.parse_args()
    if args.repeats < 1 or args.steps < 1:
        ap.error("--repeats and --steps must be at least 1")
    if not fr.use_accelerator(True):
        ap.error("protocol._framing_c is not built: run tools/build_ext.sh")
    clock = time.process_time if args.cpu else time.perf_counter
    if args.protocol_path:
        if args.blocks < 1:
            ap.error("--blocks must be at least 1")
        rec0 = {"clock": "process_time" if args.cpu else "perf_counter"}
        print(json.dumps({**rec0, "protocol_path": protocol_path(args.blocks, clock)}, indent=2))
        return
    rec: dict[str, Any] = {
        "clock": "process_time" if args.cpu else "perf_counter",
        "crc32_simd": bool(fr._lib.mt_codec_crc32_simd()),
        "codec_16k": codec(args.repeats, clock),
        "mdnet_step_codec": mdnet_codec(max(3, args.repeats // 4), clock),
    }
    if args.step:
        rec["mdnet_step_fp32"] = step(args.steps, clock)
    print(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
