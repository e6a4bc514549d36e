"""`microtrain bench link`: frame-layer speed, wire efficiency and link goodput over a pty.

* ``framing_mb_s``: payload bytes per second one core frames a stream at, for DATA frames of
  4 KiB random payload (the default max payload; random bytes are what quantised tensors look
  like to COBS): the slower of encode_frame (COBS + CRC-32 out) and FrameDecoder.feed (CRC-32
  + COBS in), since a stream's sender encodes and its receiver decodes, each on its own core.
  ``framing_encode_mb_s`` / ``framing_decode_mb_s`` give the two alone,
  ``framing_roundtrip_mb_s`` both on the same core one after the other, and
  ``framing_by_kind`` the slower of the two for zeros and 0xC0 bytes too. ``framing_codec``
  says which codec did the work: ``c`` (protocol._framing_c, the default when built) or
  ``python``; with the C codec, ``framing_python_mb_s`` is ``framing_mb_s`` of the pure-Python
  reference in the same run and ``framing_16k_mb_s`` both for 16 KiB frames (a bulk tensor
  stream's payload on a serial line; emu:// offers up to 60 KiB).
* ``wire_efficiency``: payload bytes / wire bytes of one DATA frame (header, CRC, COBS
  overhead and both delimiters counted) for 1 KiB and 4 KiB of zeros, random bytes and 0xC0.
* ``pty_goodput_mb_s``: a tensor stream (64 KiB messages, 64 MiB in total; 16 MiB with
  ``quick``) from a HOST link end to a DEVICE end in a child process, over an ``os.openpty``
  pair in raw mode, timed from the first byte to the ack of the last frame, with
  ``BENCH_CONFIG`` (16 KiB payloads, window 16); ``pty_link`` also gives the goodput with the
  default settings (4 KiB, window 8).
  ``raw_pty_mb_s``: the same number of bytes written with os.write and read with os.read on a
  pty pair of the same kind in the same run, timed to the reader's one-byte reply.
  ``pty_goodput_ratio`` = goodput / raw.

Uses only the public protocol API (protocol.framing, protocol.link).
"""

from __future__ import annotations

import os
import queue
import random
import signal
import sys
import threading
import time
import tty
from typing import Any

from protocol.framing import (
    DEFAULT_PAYLOAD,
    MAX_PAYLOAD,
    FrameDecoder,
    FrameType,
    accelerated,
    encode_frame,
    use_accelerator,
)
from protocol.link import Link, LinkConfig, Role

CHUNK = 1 << 16
READ_SIZE = 1 << 16
REPEATS = 5
#: A transfer that receives nothing for this long is a failure (the child is killed).
STALL_SECONDS = 10.0
#: The link settings of the pty transfer, as HELLO would negotiate them for bulk tensor
#: streams: 16 KiB payloads (a quarter of the per-frame work of 4 KiB frames; protocol 1.2 allows
#: up to 60 KiB, kept at 16 KiB so the figures compare with earlier runs) and
#: a window of 16 frames (256 KiB), because a pty moves ~100 MB/s with ~1 ms scheduling round
#: trips, a bandwidth-delay product the default 8 x 4 KiB cannot cover. A UART needs far less.
BENCH_CONFIG = LinkConfig(max_payload=16384, window=16)
#: The defaults (4 KiB, window 8), measured too for comparison.
DEFAULT_CONFIG = LinkConfig()


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
        by_kind[kind] = round(len(p) / max(enc, dec) / 1e6, 1)
        if kind == "random":
            res["framing_mb_s"] = by_kind[kind]
            res["framing_encode_mb_s"] = round(len(p) / enc / 1e6, 1)
            res["framing_decode_mb_s"] = round(len(p) / dec / 1e6, 1)
            res["framing_roundtrip_mb_s"] = round(len(p) / (enc + dec) / 1e6, 1)
    res["framing_by_kind"] = by_kind
    res["framing_codec"] = "c" if accelerated() else "python"
    if accelerated():  # the pure-Python reference, and both at 16 KiB, in the same run
        big = _kinds(MAX_PAYLOAD)["random"]
        c16 = max(_framing(big, max(3, rounds // 4)))
        try:
            use_accelerator(False)
            res["framing_python_mb_s"] = round(
                DEFAULT_PAYLOAD / max(_framing(_kinds(DEFAULT_PAYLOAD)["random"], rounds)) / 1e6, 1
            )
            py16 = max(_framing(big, max(3, rounds // 4)))
        finally:
            use_accelerator(True)
        res["framing_16k_mb_s"] = {
            "c": round(MAX_PAYLOAD / c16 / 1e6, 1),
            "python": round(MAX_PAYLOAD / py16 / 1e6, 1),
        }
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


class _Pump:
    """Moves bytes between a Link and a pty fd with a reader and a writer thread (blocking
    os.read / os.write release the GIL), so the kernel's copies overlap with framing work in
    the link's thread, as a serial driver's DMA would. ``step`` runs the link: timers, hand
    frames to the writer, wait for received chunks no longer than the next deadline."""

    def __init__(self, fd: int, link: Link) -> None:
        os.set_blocking(fd, True)
        self.fd = fd
        self.link = link
        self.inq: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.outq: queue.SimpleQueue[bytes | bytearray | None] = queue.SimpleQueue()
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=self._writer, daemon=True).start()

    def _reader(self) -> None:
        while True:
            try:
                got = os.read(self.fd, READ_SIZE)
            except OSError:  # EIO: the other end closed
                got = b""
            self.inq.put(got)
            if not got:
                return

    def _writer(self) -> None:
        while True:
            data = self.outq.get()
            if data is None:
                return
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                return

    def close(self) -> None:
        self.outq.put(None)

    def step(self, max_wait: float | None) -> bytes:
        """Run timers, send what is due, wait for the line (at most max_wait), receive."""
        link = self.link
        now = time.monotonic()
        link.poll(now)
        data = link.bytes_to_send(now)
        if data:
            self.outq.put(data)
        deadline = link.next_deadline()
        wait = max_wait
        if deadline is not None:
            left = max(0.0, deadline - now)
            wait = left if wait is None else min(wait, left)
        try:
            got = self.inq.get(timeout=wait)
        except queue.Empty:
            return b""
        chunks = [got]
        while got:
            try:
                got = self.inq.get_nowait()
            except queue.Empty:
                break
            chunks.append(got)
        data = b"".join(chunks)
        if data:
            link.receive_bytes(data, time.monotonic())
        if not chunks[-1]:
            raise EOFError("the other end of the pty closed")
        return data


def _child_link(fd: int, total: int, cfg: LinkConfig) -> None:
    """The receiving end: takes ``total`` bytes of messages, then serves the link a little
    longer (acks of retransmissions, should its last ack be lost) and exits."""
    pump = _Pump(fd, Link(Role.DEVICE, cfg, rng=random.Random(2)))
    got = 0
    try:
        while got < total or not pump.link.idle():
            pump.step(None if got < total else 0.05)
            got += sum(len(m.payload) for m in pump.link.take_messages())
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pump.step(0.05)
    except EOFError:
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
    try:
        while True:
            got = os.read(fd, 1)
            if got == b"!":
                break
            if not got:
                raise EOFError("raw pty reader ended early")
        dt = time.perf_counter() - t0
    finally:
        _reap(pid)
        os.close(fd)
    return total / dt / 1e6


def link_pty(total: int, cfg: LinkConfig) -> tuple[float, dict[str, int]]:
    """MB/s of ``total`` payload bytes as 64 KiB messages through two link ends over a pty."""
    pid, fd = _spawn(_child_link, total, cfg)
    host = Link(Role.HOST, cfg, rng=random.Random(1))
    pump = _Pump(fd, host)
    block = random.Random(4).randbytes(CHUNK)
    queued = 0
    t0 = time.perf_counter()
    progress_at = t0
    try:
        while True:
            # Keep a few messages queued ahead of the window (a tensor stream producer).
            while queued < total and len(host.unanswered) < 4:
                n = min(CHUNK, total - queued)
                host.send_message(1, block[:n])
                queued += n
            if queued >= total and host.idle():
                break
            if pump.step(0.05):
                progress_at = time.perf_counter()
            elif time.perf_counter() - progress_at > STALL_SECONDS:
                raise RuntimeError(f"link transfer stalled: nothing received for {STALL_SECONDS} s")
            # No request layer above the link here: a message is done once acked.
            for msg_id in host.unanswered:
                if host.acked(msg_id):
                    host.mark_answered(msg_id)
        dt = time.perf_counter() - t0
    finally:
        pump.close()
        _reap(pid)  # the child ends by itself; its exit ends our reader thread
        os.close(fd)
    return total / dt / 1e6, dict(host.stats)


def _reap(pid: int) -> None:
    """Wait for a child briefly, then kill it: a benchmark never leaves a process behind."""
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


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
    raw = goodput = default_goodput = 0.0
    stats: dict[str, int] = {}
    for i in range(1 if quick else REPEATS):
        say(f"pty transfer {i + 1}: raw ...")
        raw = max(raw, raw_pty(total))
        say(f"pty transfer {i + 1}: link ...")
        g, st = link_pty(total, cfg)
        if g > goodput:
            goodput, stats = g, st
        say(f"pty transfer {i + 1}: link with default settings ...")
        default_goodput = max(default_goodput, link_pty(total, DEFAULT_CONFIG)[0])
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
        "default_settings_goodput_mb_s": round(default_goodput, 1),
        "default_settings_ratio": round(default_goodput / raw, 3),
    }
    return res


def format_table(res: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s result."""
    lines = [
        f"framing (4 KiB random, slower of encode/decode): {res['framing_mb_s']:8.1f} MB/s"
        f"  (encode {res['framing_encode_mb_s']:.1f}, decode {res['framing_decode_mb_s']:.1f},"
        f" both on one core {res['framing_roundtrip_mb_s']:.1f})",
        f"framing codec: {res['framing_codec']}"
        + (
            f" (pure Python {res['framing_python_mb_s']:.1f} MB/s; 16 KiB frames: C "
            f"{res['framing_16k_mb_s']['c']:.1f}, Python {res['framing_16k_mb_s']['python']:.1f})"
            if "framing_python_mb_s" in res
            else ""
        ),
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
