"""`microtrain bench link`: frame-layer speed, wire efficiency and link goodput over a pty.

* ``framing_mb_s``: payload bytes per second of encode_frame plus FrameDecoder.feed of the
  same frames (COBS + CRC-32 both ways, one core), for DATA frames of 4 KiB random payload
  (the default max payload; random bytes are what quantised tensors look like to COBS).
  ``framing_encode_mb_s`` / ``framing_decode_mb_s`` give the two halves alone, and
  ``framing_by_kind`` the round trip for zeros and 0xC0 bytes too.
* ``wire_efficiency``: payload bytes / wire bytes of one DATA frame (header, CRC, COBS
  overhead and both delimiters counted) for 1 KiB and 4 KiB of zeros, random bytes and 0xC0.
* ``pty_goodput_mb_s``: a tensor stream (64 KiB messages, 64 MiB in total; 16 MiB with
  ``quick``) from a HOST link end to a DEVICE end in a child process, over an ``os.openpty``
  pair in raw mode, timed from the first byte to the ack of the last frame.
  ``raw_pty_mb_s``: the same number of bytes written with os.write and read with os.read on a
  pty pair of the same kind in the same run, timed to the reader's one-byte reply.
  ``pty_goodput_ratio`` = goodput / raw.

Uses only the public protocol API (protocol.framing, protocol.link).
"""

from __future__ import annotations

import os
import random
import select
import sys
import time
import tty
from typing import Any

from protocol.framing import DEFAULT_PAYLOAD, FrameDecoder, FrameType, encode_frame
from protocol.link import Link, LinkConfig, Role

CHUNK = 1 << 16
READ_SIZE = 1 << 16
REPEATS = 3
#: The link settings of the pty transfer: default max payload; a window of 32 frames because
#: a pty moves ~100 MB/s with ~1 ms scheduling round trips (bandwidth-delay product ~100 KiB),
#: which the default window of 8 x 4 KiB cannot cover. A UART needs far less.
BENCH_CONFIG = LinkConfig(window=32)


def _kinds(n: int) -> dict[str, bytes]:
    rnd = random.Random(n)
    return {"zeros": bytes(n), "random": rnd.randbytes(n), "c0": b"\xc0" * n}


def wire_efficiency() -> dict[str, dict[str, float]]:
    """Payload / wire bytes of one DATA frame, per payload size and data kind."""
    out: dict[str, dict[str, float]] = {}
    for label, n in (("1k", 1024), ("4k", 4096)):
        out[label] = {
            kind: round(n / len(encode_frame(FrameType.DATA, p, seq=1, ack=1, credits=8)), 4)
            for kind, p in _kinds(n).items()
        }
    return out


def _framing(payload: bytes, rounds: int) -> tuple[float, float]:
    """Best seconds per frame to encode, and to decode, frames carrying ``payload``: the
    minimum over ``rounds`` rounds of 32 frames (the least disturbed by other processes)."""
    frames = [encode_frame(FrameType.DATA, payload, seq=i) for i in range(32)]
    dec = FrameDecoder(max(DEFAULT_PAYLOAD, len(payload)))
    best_enc = best_dec = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(32):
            encode_frame(FrameType.DATA, payload, seq=i)
        t1 = time.perf_counter()
        for f in frames:
            dec.feed(f)
        t2 = time.perf_counter()
        best_enc = min(best_enc, (t1 - t0) / 32)
        best_dec = min(best_dec, (t2 - t1) / 32)
    return best_enc, best_dec


def framing(quick: bool = False) -> dict[str, Any]:
    """Frame encode/decode throughput on one core (MB/s of payload)."""
    rounds = 50 if quick else 300
    res: dict[str, Any] = {}
    by_kind: dict[str, float] = {}
    for kind, p in _kinds(DEFAULT_PAYLOAD).items():
        enc, dec = _framing(p, rounds if kind == "random" else max(3, rounds // 30))
        by_kind[kind] = round(len(p) / (enc + dec) / 1e6, 1)
        if kind == "random":
            res["framing_mb_s"] = by_kind[kind]
            res["framing_encode_mb_s"] = round(len(p) / enc / 1e6, 1)
            res["framing_decode_mb_s"] = round(len(p) / dec / 1e6, 1)
    res["framing_by_kind"] = by_kind
    return res


def _raw_pair() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave


def _child_raw(fd: int, total: int) -> None:
    got = 0
    while got < total:
        got += len(os.read(fd, READ_SIZE))
    os.write(fd, b"!")


def _child_link(fd: int, total: int, cfg: LinkConfig) -> None:
    dev = Link(Role.DEVICE, cfg, rng=random.Random(2))
    got = 0
    pending = b""
    os.set_blocking(fd, False)
    while True:
        wl = [fd] if pending else []
        timeout = dev.next_deadline()
        wait = None if timeout is None else max(0.0, timeout - time.monotonic())
        r, w, _ = select.select([fd], wl, [], wait)
        now = time.monotonic()
        if r:
            try:
                dev.receive_bytes(os.read(fd, READ_SIZE), now)
            except BlockingIOError:
                pass
            for m in dev.take_messages():
                got += len(m.payload)
        dev.poll(now)
        pending += dev.bytes_to_send(now)
        if pending and (w or not wl):
            try:
                pending = pending[os.write(fd, pending) :]
            except BlockingIOError:
                pass
        if got >= total and dev.idle() and not pending:
            # Stay a moment to answer retransmissions of frames whose ack was lost.
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                r, _, _ = select.select([fd], [], [], 0.05)
                if r:
                    try:
                        dev.receive_bytes(os.read(fd, READ_SIZE), time.monotonic())
                    except BlockingIOError:
                        continue
                    out = dev.bytes_to_send(time.monotonic())
                    if out:
                        os.set_blocking(fd, True)
                        os.write(fd, out)
                        os.set_blocking(fd, False)
            return


def _spawn(target: Any, *args: Any) -> tuple[int, int]:
    """Fork a child running target(slave_fd, *args) on a fresh raw pty; return (pid, master)."""
    master, slave = _raw_pair()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(master)
            target(slave, *args)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(slave)
    return pid, master


def raw_pty(total: int) -> float:
    """MB/s of a plain os.write / os.read transfer of ``total`` bytes over a raw pty."""
    pid, fd = _spawn(_child_raw, total)
    block = random.Random(3).randbytes(CHUNK)
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        sent += os.write(fd, block[: min(CHUNK, total - sent)])
    while os.read(fd, 1) != b"!":
        pass
    dt = time.perf_counter() - t0
    os.waitpid(pid, 0)
    os.close(fd)
    return total / dt / 1e6


def link_pty(total: int, cfg: LinkConfig) -> tuple[float, dict[str, int]]:
    """MB/s of ``total`` payload bytes as 64 KiB messages through two link ends over a pty."""
    pid, fd = _spawn(_child_link, total, cfg)
    host = Link(Role.HOST, cfg, rng=random.Random(1))
    block = random.Random(4).randbytes(CHUNK)
    os.set_blocking(fd, False)
    queued = 0
    pending = b""
    t0 = time.perf_counter()
    while True:
        # Keep a few messages queued ahead of the window (a tensor stream producer).
        while queued < total and len(host.unanswered) < 4:
            n = min(CHUNK, total - queued)
            host.send_message(1, block[:n])
            queued += n
        now = time.monotonic()
        host.poll(now)
        pending += host.bytes_to_send(now)
        if queued >= total and host.idle() and not pending:
            break
        timeout = host.next_deadline()
        wait = 0.05 if timeout is None else min(0.05, max(0.0, timeout - now))
        r, w, _ = select.select([fd], [fd] if pending else [], [], wait)
        if r:
            try:
                host.receive_bytes(os.read(fd, READ_SIZE), time.monotonic())
            except BlockingIOError:
                pass
        if w and pending:
            try:
                pending = pending[os.write(fd, pending) :]
            except BlockingIOError:
                pass
        # The bench has no request layer above the link: a message is done once acked.
        for msg_id in host.unanswered:
            if host.acked(msg_id):
                host.mark_answered(msg_id)
    dt = time.perf_counter() - t0
    os.waitpid(pid, 0)
    os.close(fd)
    return total / dt / 1e6, dict(host.stats)


def run(quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """All link figures as one JSON-ready dict. The pty transfers run raw, link, raw, link...
    (``REPEATS`` times each, once with ``quick``) and the best of each is kept."""

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    total = (16 if quick else 64) << 20
    say("framing ...")
    res: dict[str, Any] = framing(quick)
    res["wire_efficiency"] = wire_efficiency()
    cfg = BENCH_CONFIG
    raw = goodput = 0.0
    stats: dict[str, int] = {}
    for i in range(1 if quick else REPEATS):
        say(f"pty transfer {i + 1}: raw ...")
        raw = max(raw, raw_pty(total))
        say(f"pty transfer {i + 1}: link ...")
        g, st = link_pty(total, cfg)
        if g > goodput:
            goodput, stats = g, st
    res["pty_goodput_mb_s"] = round(goodput, 1)
    res["raw_pty_mb_s"] = round(raw, 1)
    res["pty_goodput_ratio"] = round(goodput / raw, 3)
    res["pty_transfer_bytes"] = total
    res["pty_link"] = {
        "max_payload": cfg.max_payload,
        "window": cfg.window,
        "message_bytes": CHUNK,
        "retransmits": stats["retransmits"],
        "frame_errors": stats["frame_errors"],
    }
    return res


def format_table(res: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s result."""
    lines = [
        f"framing (4 KiB random, encode+decode): {res['framing_mb_s']:8.1f} MB/s"
        f"  (encode {res['framing_encode_mb_s']:.1f}, decode {res['framing_decode_mb_s']:.1f})",
        "framing by kind: "
        + ", ".join(f"{k} {v:.1f} MB/s" for k, v in res["framing_by_kind"].items()),
    ]
    for size, kinds in res["wire_efficiency"].items():
        lines.append(
            f"wire efficiency {size}: " + ", ".join(f"{k} {v:.4f}" for k, v in kinds.items())
        )
    lines.append(
        f"pty goodput {res['pty_goodput_mb_s']:.1f} MB/s vs raw {res['raw_pty_mb_s']:.1f} MB/s"
        f" -> ratio {res['pty_goodput_ratio']:.3f}"
    )
    return "\n".join(lines)
