"""Channel faults for the ``emu://`` port: corrupted, inserted, dropped and duplicated bytes and
frames, and device resets, each seeded so that a failing run replays exactly.

Every fault is an object with ``to_device(data) -> bytes`` and ``to_host(data) -> bytes`` (the
``emu_port.Fault`` protocol), its own random generator per direction, seeded by ``seed(n)``
from the port's ``fault_seed``, and ``stats``: how many faults it really injected. They are
streaming filters: a frame split over several writes is handled as one frame.

* ``corrupt=P`` - each byte, either way, has a bit flipped with probability P.
* ``insert=P`` - after each byte, a random garbage byte is inserted with probability P.
* ``delete=P`` - each byte, either way, is lost with probability P.
* ``drop=P`` - each frame (the bytes between two 0x00 delimiters) vanishes with probability P.
* ``dup=P`` - each frame is sent twice with probability P.
* ``reset_every=N`` - the device restarts after a random number of frames to it (geometric,
  mean N): the port replaces its firmware and link by fresh ones (new epoch); the bytes in
  flight die with the old device. Bytes pass unchanged; the port asks ``take_reset()``.

Byte-level events are drawn as geometric gaps between events, not one draw per byte, so a low
rate costs nothing on megabytes of tensor traffic.

``parse_faults`` reads the same options from a query string (``corrupt=1e-4&drop=0.01&...``,
plus ``fault_seed``) with the same parsers, and ``FaultLine`` applies them to a byte stream
between a host and a device outside this process (``microtrain serve --faults``), optionally in
one direction only.
"""

from __future__ import annotations

import math
import random
import urllib.parse
from collections.abc import Callable
from typing import Any

#: Largest per-byte probability accepted (above it the link cannot deliver a frame at all).
MAX_BYTE_P = 0.1
#: Largest per-frame probability accepted for drop and dup.
MAX_FRAME_P = 0.5
#: Range of reset_every (mean frames between device resets).
MIN_RESET_EVERY = 1
MAX_RESET_EVERY = 1 << 40
_DELIM = 0


def parse_probability(name: str, hi: float) -> Callable[[str], float]:
    """A parser of ``name=P`` with P a decimal in [0, hi]; ValueError says what is accepted."""

    def parse(text: str) -> float:
        try:
            p = float(text)
        except ValueError:
            raise ValueError(f"option {name}={text!r} is not a number; accepted 0..{hi}") from None
        if not 0.0 <= p <= hi:  # also refuses nan
            raise ValueError(f"option {name}={text} out of range; accepted 0..{hi}")
        return p

    return parse


class _Gaps:
    """Positions of Bernoulli(p) events in a stream, drawn as geometric gaps."""

    def __init__(self, p: float, rng: random.Random) -> None:
        self.p = p
        self.rng = rng
        self._log_q = math.log1p(-p) if 0.0 < p < 1.0 else 0.0
        self.left = self._draw()

    def _draw(self) -> int:
        """Trials before the next event (0: the next trial is an event)."""
        if self.p <= 0.0:
            return 1 << 62
        if self.p >= 1.0:
            return 0
        u = 1.0 - self.rng.random()  # in (0, 1]
        return int(math.log(u) / self._log_q)

    def hit(self) -> bool:
        """One trial: is it an event?"""
        if self.left == 0:
            self.left = self._draw()
            return True
        self.left -= 1
        return False

    def positions(self, n: int) -> list[int]:
        """The events among the next ``n`` trials (indices 0..n-1)."""
        out = []
        i = self.left
        while i < n:
            out.append(i)
            i += 1 + self._draw()
        self.left = i - n
        return out


class _Directional:
    """A fault with an independent, seeded generator per direction."""

    name = ""
    stat = ""

    def __init__(self, p: float) -> None:
        self.p = p
        self.stats: dict[str, int] = {self.stat: 0}
        self.seed(0)

    def seed(self, seed: int) -> None:
        """Restart both directions' generators from ``seed`` (and zero the counts)."""
        self.stats = {self.stat: 0}
        self._state = {d: self._new_state(random.Random(f"{seed}:{self.name}:{d}")) for d in "dh"}

    def _new_state(self, rng: random.Random) -> object:
        return _Gaps(self.p, rng)

    def to_device(self, data: bytes) -> bytes:
        return self._filter(data, self._state["d"]) if data else data

    def to_host(self, data: bytes) -> bytes:
        return self._filter(data, self._state["h"]) if data else data

    def _filter(self, data: bytes, state: object) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.p!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and getattr(other, "p", None) == self.p

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.p))


class _ByteFault(_Directional):
    """A fault hitting single bytes at the positions of a geometric gap process: each hit
    byte is replaced by what ``_replace`` returns (drawn in stream order, so seeded runs
    replay)."""

    def _replace(self, byte: int, rng: random.Random) -> bytes:
        raise NotImplementedError

    def _filter(self, data: bytes, state: object) -> bytes:
        assert isinstance(state, _Gaps)
        hits = state.positions(len(data))
        if not hits:
            return data
        out = bytearray()
        start = 0
        for i in hits:
            out += data[start:i]
            out += self._replace(data[i], state.rng)
            start = i + 1
        out += data[start:]
        self.stats[self.stat] += len(hits)
        return bytes(out)


class Corrupt(_ByteFault):
    """Flips one random bit of a byte, each byte with probability ``p``."""

    name = "corrupt"
    stat = "corrupted_bytes"

    def _replace(self, byte: int, rng: random.Random) -> bytes:
        return bytes((byte ^ (1 << rng.randrange(8)),))


class Insert(_ByteFault):
    """Inserts a random garbage byte after each byte with probability ``p``."""

    name = "insert"
    stat = "inserted_bytes"

    def _replace(self, byte: int, rng: random.Random) -> bytes:
        return bytes((byte, rng.randrange(256)))


class Delete(_ByteFault):
    """Loses each byte with probability ``p``."""

    name = "delete"
    stat = "deleted_bytes"

    def _replace(self, byte: int, rng: random.Random) -> bytes:
        return b""


class _FrameState:
    """Where a direction's stream is: inside a frame or not, and that frame's fate."""

    def __init__(self, rng: random.Random, p: float) -> None:
        self.rng = rng
        self.p = p
        self.in_frame = False
        self.chosen = False
        self.frame = bytearray()


class _FrameFault(_Directional):
    """A fault deciding, at the first byte of each frame, whether the frame is hit."""

    def _new_state(self, rng: random.Random) -> object:
        return _FrameState(rng, self.p)

    def _filter(self, data: bytes, state: object) -> bytes:
        assert isinstance(state, _FrameState)
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if not state.in_frame:
                # Delimiters between frames pass; the next non-zero byte opens a frame.
                j = i
                while j < n and data[j] == _DELIM:
                    j += 1
                out += data[i:j]
                i = j
                if i == n:
                    break
                state.in_frame = True
                state.chosen = state.rng.random() < self.p
                state.frame.clear()
            end = data.find(_DELIM, i)
            stop = n if end < 0 else end
            self._body(out, data[i:stop], state)
            i = stop
            if end >= 0:
                state.in_frame = False
                self._close(out, state)
        return bytes(out)

    def _body(self, out: bytearray, chunk: bytes, state: _FrameState) -> None:
        raise NotImplementedError

    def _close(self, out: bytearray, state: _FrameState) -> None:
        raise NotImplementedError


class Drop(_FrameFault):
    """Removes a whole frame (its bytes up to the closing 0x00) with probability ``p``."""

    name = "drop"
    stat = "dropped_frames"

    def _body(self, out: bytearray, chunk: bytes, state: _FrameState) -> None:
        if not state.chosen:
            out += chunk

    def _close(self, out: bytearray, state: _FrameState) -> None:
        # The closing delimiter still passes, so the next frame stays framed.
        if state.chosen:
            self.stats[self.stat] += 1


class Duplicate(_FrameFault):
    """Sends a frame a second time, right after itself, with probability ``p``."""

    name = "dup"
    stat = "duplicated_frames"

    def _body(self, out: bytearray, chunk: bytes, state: _FrameState) -> None:
        out += chunk
        if state.chosen:
            state.frame += chunk

    def _close(self, out: bytearray, state: _FrameState) -> None:
        if state.chosen:
            out += bytes([_DELIM]) + state.frame  # the original's delimiter is added after
            self.stats[self.stat] += 1
            state.frame.clear()


class Reset:
    """Device resets after a geometric number of frames to the device (mean ``every``).

    Bytes pass unchanged; the port calls ``take_reset()`` after each write and, when it returns
    a seed, restarts its device with it (firmware state and link lost, a new epoch)."""

    name = "reset_every"
    stat = "device_resets"

    def __init__(self, every: int) -> None:
        self.every = every
        self.stats: dict[str, int] = {self.stat: 0}
        self.seed(0)

    def seed(self, seed: int) -> None:
        """Restart the generator from ``seed`` (and zero the count)."""
        self.stats = {self.stat: 0}
        self._rng = random.Random(f"{seed}:{self.name}")
        self._gaps = _Gaps(1.0 / self.every, self._rng)
        self._due = False

    def to_device(self, data: bytes) -> bytes:
        # Count frame ends (a 0x00 after frame bytes); the reset falls after the chosen one.
        for _ in range(_frame_ends(data)):
            if self._gaps.hit():
                self._due = True
        return data

    def to_host(self, data: bytes) -> bytes:
        return data

    def take_reset(self) -> int | None:
        """A seed for the restarted device if a reset is due now (counted), else None."""
        if not self._due:
            return None
        self._due = False
        self.stats[self.stat] += 1
        return self._rng.getrandbits(63)

    def __repr__(self) -> str:
        return f"Reset({self.every})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reset) and other.every == self.every

    def __hash__(self) -> int:
        return hash(("Reset", self.every))


def _frame_ends(data: bytes) -> int:
    """How many 0x00 bytes in ``data`` close a non-empty frame (one opened in an earlier write
    and closed by this write's first byte is missed; the host link writes frames whole)."""
    return sum(1 for piece in data.split(b"\x00")[:-1] if piece)


def _parse_reset(text: str) -> Reset:
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError(
            f"option reset_every={text!r} is not an integer; accepted "
            f"{MIN_RESET_EVERY}..{MAX_RESET_EVERY} (mean frames between device resets)"
        ) from None
    if not MIN_RESET_EVERY <= n <= MAX_RESET_EVERY:
        raise ValueError(
            f"option reset_every={n} out of range; accepted {MIN_RESET_EVERY}..{MAX_RESET_EVERY}"
        )
    return Reset(n)


def _maker(cls: type[_Directional], hi: float) -> Callable[[str], _Directional]:
    parse = parse_probability(cls.name, hi)
    return lambda text: cls(parse(text))


#: Fault options: name -> parser of its text value returning the fault.
FAULTS: dict[str, Callable[[str], Any]] = {
    "corrupt": _maker(Corrupt, MAX_BYTE_P),
    "insert": _maker(Insert, MAX_BYTE_P),
    "delete": _maker(Delete, MAX_BYTE_P),
    "drop": _maker(Drop, MAX_FRAME_P),
    "dup": _maker(Duplicate, MAX_FRAME_P),
    "reset_every": _parse_reset,
}


#: Seeds accepted for ``fault_seed``.
MAX_FAULT_SEED = (1 << 64) - 1
#: Which bytes a FaultLine impairs: both ways, only the host's bytes to the device, or only
#: the device's bytes to the host.
DIRECTIONS = ("both", "to-device", "to-host")


def _parse_fault_seed(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise ValueError(
            f"option fault_seed={text!r} is not an integer; accepted 0..{MAX_FAULT_SEED}"
        ) from None
    if not 0 <= v <= MAX_FAULT_SEED:
        raise ValueError(f"option fault_seed={v} out of range; accepted 0..{MAX_FAULT_SEED}")
    return v


def parse_faults(text: str) -> tuple[list[Any], int | None]:
    """The faults of a query string ``name=value&...`` (the fault options of ``emu://``, in
    order, each at most once, parsed by the same parsers) and its ``fault_seed`` (None if not
    given). ValueError names the bad option and what is accepted."""
    faults: list[Any] = []
    seen: set[str] = set()
    seed: int | None = None
    accepted = ", ".join([*FAULTS, "fault_seed"])
    text = text.strip().lstrip("?")
    for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        if name in seen:
            raise ValueError(f"option {name!r} given twice")
        seen.add(name)
        if name == "fault_seed":
            seed = _parse_fault_seed(value)
        elif name in FAULTS:
            faults.append(FAULTS[name](value))
        else:
            raise ValueError(f"unknown fault option {name!r} in {text!r}; accepted: {accepted}")
    if text and not seen:
        raise ValueError(f"no fault option in {text!r}; expected name=value&..., names: {accepted}")
    return faults, seed


class FaultLine:
    """The faults of a line between a host and a device, for a server that moves the bytes
    itself (``microtrain serve``): ``to_device`` / ``to_host`` filter each direction through
    every fault in order, as ``emu://`` does, and ``take_reset`` says when the device must
    restart.

    ``direction`` limits the byte and frame faults to one way (``to-device``: the host's bytes
    are impaired, ``to-host``: the device's); ``reset_every`` counts frames to the device
    whatever the direction. All generators are seeded from ``seed``."""

    def __init__(self, faults: list[Any], seed: int = 0, direction: str = "both") -> None:
        if direction not in DIRECTIONS:
            raise ValueError(
                f"fault direction {direction!r} unknown; accepted: {', '.join(DIRECTIONS)}"
            )
        self.faults = list(faults)
        self.direction = direction
        self.seed = seed
        for f in self.faults:
            f.seed(seed)
        self._resets = [f for f in self.faults if isinstance(f, Reset)]
        both = direction == "both"
        self._down = [
            f for f in self.faults if both or direction == "to-device" or isinstance(f, Reset)
        ]
        self._up = [f for f in self.faults if both or direction == "to-host"]

    def to_device(self, data: bytes) -> bytes:
        """The host's bytes as the device receives them."""
        for f in self._down:
            data = f.to_device(data)
        return data

    def to_host(self, data: bytes) -> bytes:
        """The device's bytes as the host receives them."""
        for f in self._up:
            data = f.to_host(data)
        return data

    def take_reset(self) -> int | None:
        """A seed for the restarted device if a reset is due (after ``to_device``), else None."""
        due = None
        for r in self._resets:
            s = r.take_reset()
            if s is not None:
                due = s
        return due

    @property
    def stats(self) -> dict[str, int]:
        """Faults injected so far, by kind (both directions summed)."""
        out: dict[str, int] = {}
        for f in self.faults:
            for k, v in f.stats.items():
                out[k] = out.get(k, 0) + v
        return out

    def describe(self) -> str:
        """The options as given (for logs): ``corrupt=0.0001&drop=0.01 (both ways, seed 3)``."""
        parts = [f"{f.name}={getattr(f, 'p', getattr(f, 'every', ''))}" for f in self.faults]
        return f"{'&'.join(parts) or 'none'} ({self.direction}, fault_seed {self.seed})"
