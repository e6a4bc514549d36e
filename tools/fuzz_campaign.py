#!/usr/bin/env python3
"""Fuzz campaign: the device end (bytes in, bytes out) and the host's decoder, seeded.

atheris is not installed in this environment, so the inputs come from a plain seeded random
mutator (this module), which the CI tests (tests/test_fuzz*.py) drive through hypothesis and
this script drives for ``--inputs`` inputs. Every input is a short list of *actions*, each a
(kind, bytes) pair, so that a failing input is replayed from its seed and index, or from the
actions it prints (tests/test_fuzz_regressions.py keeps those that failed once).

Targets and input kinds (``KINDS``; weights in ``MIX``):

* ``direct``: request messages straight into ``Firmware.receive`` (templates of a whole session,
  structure-aware body mutations: ids, shapes, dtypes, sizes, enums set to boundary values;
  byte mutations; random opcodes and bytes).
* ``session``: the same messages sent by a HOST ``Link`` to the device as a whole
  (``DeviceLink`` + ``Firmware``: valid frames, so the fuzzer gets past the CRC), with garbage
  bytes and crafted frames (any type, seq, ack, flags, lengths, SYNC/CONFIG epochs) injected
  between them, time advancing, and a "no-ack" mode in which the host never reads the device's
  answers (pending requests pile up).
* ``line``: random bytes and valid-CRC frames with random headers straight onto the device's
  line.
* ``host``: the host's decoder (``host.runner.Runner``: framing decoder, HOST link, message
  decode, ``check``): a scripted device link answers the runner's requests with mutated, random
  or misaddressed responses and the line carries garbage and crafted frames.

Properties checked for every input (a violation is a *finding*, reported with its actions):

* nothing escapes: the device end raises nothing; on the host side only the documented
  ``host.errors.DeviceError`` from ``check`` (an ERROR response) is accepted;
* every request message with a readable header gets exactly one answer echoing its request id
  (``direct``, and ``session`` inputs without injected line bytes);
* no answer is INTERNAL (an unexpected exception inside a handler is a bug, even if caught);
* bounded state: the frame decoder's buffer never exceeds the largest encoded frame
  (``max_encoded_size(max_payload)``), the out-of-order store a window, reassembly
  ``max_message``, the inbox ``rx_buffer`` plus a window; the device's unacknowledged answers
  ``max_pending + PENDING_RESERVE``; every input runs a bounded number of steps;
* after every burst (``--burst`` inputs on one device) the device answers HELLO to a new host
  session with its preset and schema hash, and a tensor upload and read-back work.

    python tools/fuzz_campaign.py --inputs 1000000 --seed 1 --json-out fuzz.json

Prints progress lines to stderr and a JSON summary to stdout: inputs, inputs per kind, unique
status codes answered, findings (crashes) with their inputs, peak memory (tracemalloc, sampled
every ``--mem-every`` inputs, and the largest retained link bytes seen), inputs/s.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import sys
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from device_model.firmware import MAX_REQUEST_BYTES, Firmware  # noqa: E402
from device_model.firmware_link import PENDING_RESERVE, DeviceLink  # noqa: E402
from host import errors  # noqa: E402
from host.runner import Runner, check  # noqa: E402
from protocol import messages as m  # noqa: E402
from protocol.dtypes import DType, shape_count, wire_nbytes  # noqa: E402
from protocol.framing import MAX_PAYLOAD as FRAME_MAX_PAYLOAD  # noqa: E402
from protocol.framing import (  # noqa: E402
    FrameType,
    encode_frame,
    max_encoded_size,
)
from protocol.link import (  # noqa: E402
    CONFIG_PAYLOAD,
    SACK,
    SYNC_PAYLOAD,
    Link,
    LinkConfig,
    Role,
)
from protocol.messages import (  # noqa: E402
    ALL_LAYERS,
    DEVICE_TENSOR_ID_BASE,
    NO_REQUEST_ID,
    ForwardFlags,
    LayerKind,
    Opcode,
    ParamKind,
    ResponseOpcode,
)
from protocol.status import MessageError, Status  # noqa: E402

PRESET = "hnpu-v2"
#: Input kinds and their share of a campaign.
MIX: dict[str, float] = {"direct": 0.4, "session": 0.3, "line": 0.1, "host": 0.2}
KINDS = tuple(MIX)
#: Bound on pump rounds per action (no input may need more: "no hang").
PUMP_ROUNDS = 12
#: Simulated seconds a new host session may take to be answered after a burst.
HELLO_ROUNDS = 40

Action = tuple[str, bytes]

# ----------------------------------------------------------------------------- templates


def _linear(fin: int, fout: int, bias: int = 1) -> dict[str, Any]:
    return {
        "kind": LayerKind.LINEAR,
        "params": {"in_features": fin, "out_features": fout, "bias": bias},
    }


def _conv(cin: int, cout: int, k: int) -> dict[str, Any]:
    return {
        "kind": LayerKind.CONV2D,
        "params": {
            "in_channels": cin,
            "out_channels": cout,
            "kernel_h": k,
            "kernel_w": k,
            "stride_h": 1,
            "stride_w": 1,
            "padding_h": 0,
            "padding_w": 0,
            "bias": 1,
        },
    }


def _pool(kind: LayerKind) -> dict[str, Any]:
    p = {"kernel_h": 2, "kernel_w": 2, "stride_h": 2, "stride_w": 2, "padding_h": 0}
    return {"kind": kind, "params": {**p, "padding_w": 0}}


RELU = {"kind": LayerKind.RELU, "params": {}}
FLATTEN = {"kind": LayerKind.FLATTEN, "params": {}}


def train_config(**over: Any) -> dict[str, Any]:
    """A valid TRAIN_CONFIG body (BP, SGD, cross-entropy), fields overridden by ``over``."""
    body: dict[str, Any] = {
        "precision": {"flags": 0, "sr_seed": 0, "policy": []},
        "algorithm": {
            "kind": m.Algorithm.BP,
            "feedback": m.FeedbackKind.DENSE,
            "feedback_storage": m.FeedbackStorage.STORED,
            "feedback_density": 0.5,
            "feedback_seed": 0,
        },
        "loss": m.Loss.SOFTMAX_CROSS_ENTROPY,
        "optimizer": {"kind": m.Optimizer.SGD, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
        "trainable": {"mode": m.TrainableMode.ALL, "last_k": 0, "masks": []},
        "pruning": {"mode": m.PruningMode.NONE, "ratio": 0.0, "masks": []},
    }
    body.update(over)
    return body


def _policy(fmt: str, layer: int = ALL_LAYERS) -> dict[str, Any]:
    return {
        "layer": layer,
        "tensor_class": m.TensorClass.WEIGHTS,
        "format": DType.from_name(fmt),
        "rounding": m.Rounding.STOCHASTIC,
        "frac_mode": m.FracMode.FIXED,
        "saturate": 1,
        "scale": m.zero_scale(),
    }


SCHEMA_HASH = m.schema_hash()


def _hello() -> dict[str, Any]:
    return {
        "protocol_major": m.PROTOCOL_MAJOR,
        "protocol_minor": m.PROTOCOL_MINOR,
        "schema_hash": SCHEMA_HASH,
        "client": "fuzz",
    }


def _tensor(tid: int, values: Any, dtype: DType) -> list[tuple[Opcode, dict[str, Any]]]:
    desc, data = m.tensor_message(tid, np.asarray(values), dtype)
    return [
        (Opcode.TENSOR_BEGIN, {"tensor": desc}),
        (Opcode.TENSOR_DATA, {"id": tid, "offset": 0, "data": data}),
        (Opcode.TENSOR_END, {"id": tid}),
    ]


def request_templates() -> list[tuple[Opcode, dict[str, Any] | None]]:
    """A session's requests in a working order (tensors, models, training, reads): what the
    structure-aware mutations start from. Replayed in order they all succeed but AUTH (the
    fuzzed device has no key)."""
    x = np.linspace(-1, 1, 2 * 6, dtype=np.float32).reshape(2, 6)
    img = np.linspace(-1, 1, 2 * 1 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6)
    w0 = np.full((4, 6), 0.1, np.float32)
    t: list[tuple[Opcode, dict[str, Any] | None]] = [(Opcode.HELLO, _hello())]
    t += _tensor(1, x.view(np.uint32), DType.FP32)
    t += _tensor(2, np.array([0, 2], np.int32), DType.INT32)
    t += _tensor(3, w0.view(np.uint32), DType.FP32)
    t += _tensor(4, np.ones((4, 6), np.uint8), DType.UINT8)
    t += _tensor(5, img.view(np.uint32), DType.FP32)
    t += _tensor(6, np.arange(8, dtype=np.int16), DType.INT16)
    mlp = [_linear(6, 4), RELU, _linear(4, 3)]
    ref = {"layer": 0, "param": ParamKind.WEIGHT, "tensor_id": 3}
    mask = {"layer": 0, "param": ParamKind.WEIGHT, "tensor_id": 4}
    define = {"input_shape": [6], "layers": mlp, "init_seed": 1, "weights": [ref]}
    t += [
        (Opcode.DEFINE_MODEL, define),
        (Opcode.TRAIN_CONFIG, train_config()),
        (Opcode.FORWARD, {"input_id": 1, "output_id": 7, "flags": 3}),
        (Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2}),
    ]
    if hasattr(Opcode, "TRAIN_STEP_INLINE"):  # input and target carried in the request
        xd, xb = m.tensor_message(10, x.view(np.uint32), DType.FP32)
        yd, yb = m.tensor_message(11, np.array([1, 2], np.int32), DType.INT32)
        inline = {"input": xd, "input_data": xb, "target": yd, "target_data": yb}
        t.append((Opcode.TRAIN_STEP_INLINE, inline))
    t += [
        (Opcode.FORWARD, {"input_id": 1, "output_id": 8, "flags": ForwardFlags.KEEP_ACTIVATIONS}),
    ]
    t += _tensor(9, np.full((2, 3), 0.5, np.float32).view(np.uint32), DType.FP32)
    t += [
        (Opcode.BACKWARD, {"error_id": 9}),
        (
            Opcode.TRAIN_CONFIG,
            train_config(
                precision={"flags": 0, "sr_seed": 7, "policy": [_policy("dfxp8")]},
                trainable={"mode": m.TrainableMode.MASKS, "last_k": 0, "masks": [mask]},
            ),
        ),
        (Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2}),
        (
            Opcode.TRAIN_CONFIG,
            train_config(algorithm={**train_config()["algorithm"], "kind": m.Algorithm.DFA}),
        ),
        (Opcode.TRAIN_STEP, {"input_id": 1, "target_id": 2}),
        (Opcode.GET_WEIGHTS, {"layer": ALL_LAYERS}),
        (Opcode.TENSOR_READ, {"id": DEVICE_TENSOR_ID_BASE, "offset": 0, "length": 64}),
        (Opcode.TENSOR_READ, {"id": 7, "offset": 4, "length": 1 << 20}),
        (Opcode.READ_COUNTERS, None),
        (Opcode.RESET_COUNTERS, None),
        (
            Opcode.DEFINE_MODEL,
            {
                "input_shape": [1, 6, 6],
                "layers": [
                    _conv(1, 2, 3),
                    RELU,
                    _pool(LayerKind.MAX_POOL2D),
                    FLATTEN,
                    _linear(8, 3),
                ],
                "init_seed": 2,
                "weights": [],
            },
        ),
        (Opcode.TRAIN_CONFIG, train_config()),
        (Opcode.TRAIN_STEP, {"input_id": 5, "target_id": 2}),
        (Opcode.RESET, {"scope": m.ResetScope.MODEL}),
        (
            Opcode.AUTH,
            {"host_nonce": bytes(16), "counter": 1, "tag": bytes(8)},
        ),
        (Opcode.RESET, {"scope": m.ResetScope.TENSORS}),
    ]
    return t


TEMPLATES = request_templates()
TEMPLATE_BYTES = [m.encode_request(op, i + 1, body) for i, (op, body) in enumerate(TEMPLATES)]


def response_templates() -> list[bytes]:
    """Valid response messages of every kind (request id 1), for the host decoder."""
    fw = Firmware(PRESET)
    out = []
    for i, msg in enumerate(TEMPLATE_BYTES):
        (resp,) = fw.receive(msg)
        out.append(resp)
        out.append(m.encode_error(i, Status.BAD_SHAPE, "fuzz detail " * (i % 3), msg[0]))
    return out


# ----------------------------------------------------------------------------- mutator

INTERESTING_INTS = (
    0, 1, 2, 3, 7, 8, 9, 15, 16, 255, 256, 1023, 1024, 1025, 0x7FFF, 0xFFFF, 0x10000,
    (1 << 24) + 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF, 1 << 32,
    (1 << 63) - 1, (1 << 64) - 1, -1,
)  # fmt: skip
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-45, 1e38, 3.4e38, math.inf, -math.inf, math.nan)


class Mutator:
    """Seeded input generator: every method draws only from ``self.rng``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- bytes

    def blob(self, most: int = 256) -> bytes:
        r = self.rng
        n = r.randrange(most + 1)
        if r.random() < 0.3:
            return bytes(r.choice((0, 0xFF, 0x01, 0x80)) for _ in range(n))
        return r.randbytes(n)

    def mutate_bytes(self, data: bytes) -> bytes:
        r = self.rng
        b = bytearray(data)
        for _ in range(r.randint(1, 4)):
            op = r.randrange(7)
            i = r.randrange(len(b) + 1)
            if op == 0 and b:  # flip / set a byte
                b[min(i, len(b) - 1)] = r.randrange(256)
            elif op == 1:  # truncate
                del b[i:]
            elif op == 2:  # insert
                b[i:i] = self.blob(16)
            elif op == 3 and b:  # delete a range
                del b[i : i + r.randint(1, 8)]
            elif op == 4 and len(b) >= 4:  # overwrite an aligned int with a boundary value
                j = r.randrange(len(b) - 3)
                v = r.choice(INTERESTING_INTS) & 0xFFFF_FFFF
                b[j : j + 4] = v.to_bytes(4, "little")
            elif op == 5:  # splice with another template
                other = r.choice(TEMPLATE_BYTES)
                b = b[:i] + other[r.randrange(len(other) + 1) :]
            elif op == 6 and len(b) >= 2:  # overwrite a u16 count/length
                j = r.randrange(len(b) - 1)
                b[j : j + 2] = r.choice((0, 1, 8, 9, 0xFF, 0x100, 0xFFFF)).to_bytes(2, "little")
        return bytes(b)

    # -- structure-aware

    def _leaves(self, obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from self._leaves(v, (*path, k))
        elif isinstance(obj, list):
            yield path  # the list itself (length mutations)
            for i, v in enumerate(obj):
                yield from self._leaves(v, (*path, i))
        else:
            yield path

    def _value_like(self, old: Any) -> Any:
        r = self.rng
        if isinstance(old, bool | int):
            if r.random() < 0.8:
                return r.choice(INTERESTING_INTS)
            return old + r.choice((-1, 1))
        if isinstance(old, float):
            return r.choice(INTERESTING_FLOATS)
        if isinstance(old, bytes | bytearray | memoryview):
            return r.choice((b"", self.blob(64), bytes(old) * 2, bytes(old)[:-1]))
        if isinstance(old, str):
            return r.choice(("", "x" * 300, "\udcff", old * 2))
        if isinstance(old, list):
            k = r.randrange(4)
            if k == 0:
                return []
            if k == 1 and old:
                return old * r.randint(2, 9)
            if k == 2:
                return [r.choice(INTERESTING_INTS) for _ in range(r.randint(1, 9))]
            return old[:-1]
        return None

    def mutate_body(self, body: Any) -> Any:
        """A copy of ``body`` with one to three leaves (ints, floats, blobs, lists, enums)
        replaced by boundary values."""
        if not body:
            return body
        out = _copy(body)
        paths = list(self._leaves(out))
        for _ in range(self.rng.randint(1, 3)):
            path = self.rng.choice(paths)
            if not path:
                continue
            parent = out
            try:
                for p in path[:-1]:
                    parent = parent[p]
                parent[path[-1]] = self._value_like(parent[path[-1]])
            except (KeyError, IndexError, TypeError):
                continue
        return out

    def tensor_begin(self, rid: int) -> bytes:
        """TENSOR_BEGIN with a random dtype and shape (zero, huge, many dims) and an nbytes
        that mostly matches it: the size, count and memory limits, not the parser."""
        r = self.rng
        dtype = r.choice(list(DType))
        ndim = r.choice((0, 1, 1, 2, 3, 4, 8))
        shape = [
            r.choice((0, 1, 2, 3, 255, 4096, 1 << 16, 1 << 20, (1 << 32) - 1)) for _ in range(ndim)
        ]
        try:
            nbytes = wire_nbytes(dtype, shape_count(shape))
        except ValueError:
            nbytes = r.randrange(1 << 32)
        if r.random() < 0.2 or nbytes >= 1 << 32:
            nbytes = r.choice(INTERESTING_INTS) & 0xFFFF_FFFF
        desc = {
            "id": r.choice((1, 2, 3, 40, r.randrange(1 << 31), 0x7FFF_FFFF, 0x8000_0000)),
            "dtype": dtype,
            "scale": m.zero_scale(),
            "shape": shape,
            "nbytes": nbytes,
            "crc32": r.randrange(1 << 32),
        }
        try:
            return m.encode_request(Opcode.TENSOR_BEGIN, rid, {"tensor": desc})
        except MessageError:
            return self.mutate_bytes(TEMPLATE_BYTES[r.randrange(len(TEMPLATE_BYTES))])

    def layer(self) -> dict[str, Any]:
        r = self.rng
        kind = r.choice(list(LayerKind))
        small = (0, 1, 2, 3, 6, 8, 0xFFFF)
        if kind == LayerKind.LINEAR:
            return _linear(r.choice((0, 1, 3, 4, 6, 8, 1 << 20)), r.choice((0, 1, 3, 4, 1 << 20)))
        if kind == LayerKind.CONV2D:
            c = _conv(r.choice((0, 1, 2)), r.choice((1, 2, 1 << 16)), r.choice((0, 1, 3, 7)))
            c["params"]["stride_h"] = r.choice(small)
            c["params"]["padding_w"] = r.choice(small)
            return c
        if kind in (LayerKind.MAX_POOL2D, LayerKind.AVG_POOL2D):
            p = _pool(kind)
            p["params"]["kernel_w"] = r.choice(small)
            p["params"]["padding_h"] = r.choice(small)
            return p
        if kind == LayerKind.LEAKY_RELU:
            return {"kind": kind, "params": {"negative_slope": r.choice(INTERESTING_FLOATS)}}
        return {"kind": kind, "params": {}}

    def define_model(self, rid: int) -> bytes:
        """DEFINE_MODEL with a random layer stack (up to 70 layers: past max_layers)."""
        r = self.rng
        n = r.choice((0, 1, 2, 3, 5, 64, 65, 70))
        layers = [self.layer() for _ in range(min(n, 6))]
        layers += [RELU] * (n - len(layers))
        shape = r.choice(([6], [1, 6, 6], [2, 8, 8], [], [0], [1 << 20], [3] * 8))
        refs = [
            {
                "layer": r.randrange(4),
                "param": r.choice(list(ParamKind)),
                "tensor_id": r.choice((1, 3, 4, 5, 99)),
            }
            for _ in range(r.randrange(3))
        ]
        body = {
            "input_shape": shape,
            "layers": layers,
            "init_seed": r.randrange(1 << 64),
            "weights": refs,
        }
        try:
            return m.encode_request(Opcode.DEFINE_MODEL, rid, body)
        except MessageError:
            return self.mutate_bytes(TEMPLATE_BYTES[r.randrange(len(TEMPLATE_BYTES))])

    def request(self, request_id: int | None = None) -> bytes:
        """One request message: a template, body-mutated, byte-mutated, generated (tensor
        descriptors, models) or random."""
        r = self.rng
        rid = r.randrange(1 << 32) if request_id is None else request_id
        k = r.random()
        i = r.randrange(len(TEMPLATES))
        op, body = TEMPLATES[i]
        if k < 0.2:
            return m.encode_request(op, rid, body)
        if k < 0.3:
            return self.tensor_begin(rid)
        if k < 0.37:
            return self.define_model(rid)
        if k < 0.6:
            try:
                return m.encode_request(op, rid, self.mutate_body(body))
            except (MessageError, ValueError, TypeError, OverflowError, KeyError):
                pass  # out of the schema's range: mutate the bytes instead
        if k < 0.9:
            data = self.mutate_bytes(m.encode_request(op, rid, body))
            return data
        return bytes([r.randrange(256)]) + rid.to_bytes(4, "little") + self.blob(64)

    def frame(self) -> bytes:
        """A frame with a valid CRC and random header fields and payload."""
        r = self.rng
        t = r.choice([*FrameType, 0, 7, 0xFF])
        if t == FrameType.SYNC and r.random() < 0.7:
            payload = SYNC_PAYLOAD.pack(
                r.randrange(1 << 32),
                r.choice((0, 255, 256, 4096, 16384, 65535)),
                r.choice((0, 1, 8, 64, 65, 255)),
                0,
            )
        elif t == FrameType.CONFIG and r.random() < 0.7:
            payload = CONFIG_PAYLOAD.pack(
                r.randrange(1 << 32),
                r.randrange(1 << 32),
                r.choice((256, 4096, 65535)),
                r.choice((0, 8, 255)),
                0,
            )
        elif t in (FrameType.ACK, FrameType.NAK) and r.random() < 0.7:
            payload = SACK.pack(r.randrange(1 << 64))
        elif t == FrameType.DATA and r.random() < 0.5:
            payload = self.request()[:FRAME_MAX_PAYLOAD]
        else:
            payload = self.blob(300)
        try:
            return encode_frame(
                int(t),
                payload,
                seq=r.choice((0, 1, 2, 7, 8, 0x7FFF, 0xFFFF, r.randrange(1 << 16))),
                ack=r.choice((0, 1, 0xFFFF, r.randrange(1 << 16))),
                credits=r.choice((0, 1, 8, 0xFFFF)),
                flags=r.choice((0, 1, 2, 3, 0xFF)),
                channel=r.randrange(256),
            )
        except (ValueError, struct.error):
            return b"\x00" + payload + b"\x00"

    def line(self) -> bytes:
        """Garbage for the line: random bytes with delimiters, or broken frames."""
        r = self.rng
        k = r.random()
        if k < 0.4:
            return self.blob(600)
        if k < 0.7:
            return self.mutate_bytes(self.frame())
        if k < 0.85:  # a run without a delimiter longer than any frame
            return bytes([0]) + bytes(r.randrange(1, 256) for _ in range(r.randint(1, 40))) * (
                r.randint(100, 700)
            )
        return self.frame() + self.frame()

    # -- inputs

    def device_input(self, kind: str) -> list[Action]:
        r = self.rng
        acts: list[Action] = []
        if kind == "direct":
            return [("msg", self.request()) for _ in range(r.randint(1, 12))]
        if kind == "line":
            return [
                ("line", self.line() if r.random() < 0.5 else self.frame())
                for _ in range(r.randint(1, 6))
            ]
        for _ in range(r.randint(1, 10)):
            k = r.random()
            if k < 0.7:
                acts.append(("msg", self.request()))
            elif k < 0.8:
                acts.append(("line", self.line()))
            elif k < 0.88:
                acts.append(("line", self.frame()))
            elif k < 0.95:
                acts.append(("tick", struct.pack("<d", r.choice((0.01, 0.3, 1.5, 5.0)))))
            else:
                acts.append(("noack", b""))
        return acts

    def host_input(self) -> list[Action]:
        r = self.rng
        acts: list[Action] = []
        for _ in range(r.randint(1, 8)):
            k = r.random()
            if k < 0.6:
                acts.append(("resp", self.response()))
            elif k < 0.8:
                acts.append(("line", self.line()))
            elif k < 0.9:
                acts.append(("line", self.frame()))
            else:
                acts.append(("tick", struct.pack("<d", r.choice((0.01, 0.3, 1.5)))))
        return acts

    def response(self) -> bytes:
        r = self.rng
        data = r.choice(RESPONSES)
        k = r.random()
        if k < 0.3:
            return data
        if k < 0.85:
            return self.mutate_bytes(data)
        return bytes([r.choice((0xFF, r.randrange(256)))]) + self.blob(64)


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


RESPONSES = response_templates()


# ----------------------------------------------------------------------------- findings


@dataclass
class Finding:
    """A property violation: what, the input kind and its actions (hex) for a regression."""

    what: str
    kind: str
    actions: list[Action]
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "kind": self.kind,
            "detail": self.detail[-2000:],
            "actions": [[k, d.hex()] for k, d in self.actions],
        }


@dataclass
class Stats:
    """What a campaign saw."""

    inputs: int = 0
    per_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    bursts: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Largest partial frame and receive-side bytes held, per end ("device", "host").
    decoder_peak: Counter[str] = field(default_factory=Counter)
    retained_peak: Counter[str] = field(default_factory=Counter)
    pending_peak: int = 0
    slowest_input_s: float = 0.0


def _retained(link: Link) -> int:
    """Receive-side bytes a link holds: partial frame, out-of-order frames, reassembly, inbox."""
    ooo = sum(len(f.payload) for f in link._ooo.values())
    return link._decoder.buffered + ooo + link._parts_bytes + link._inbox_bytes


def _receive_bound(cfg: LinkConfig) -> int:
    """Receive-side bytes a link may hold: a partial frame, a window of out-of-order frames,
    one message in reassembly, the inbox (rx_buffer plus a window plus two messages)."""
    w, mp, most = cfg.window, cfg.max_payload, cfg.max_message
    return max_encoded_size(mp) + w * mp + most + cfg.rx_buffer + w * mp + 2 * most


def check_link_bounds(link: Link, stats: Stats, end: str) -> str | None:
    """None, or which memory bound of ``link`` (the ``end`` of the line) is broken."""
    cfg = link.config
    buffered = link._decoder.buffered
    stats.decoder_peak[end] = max(stats.decoder_peak[end], buffered)
    stats.retained_peak[end] = max(stats.retained_peak[end], _retained(link))
    if buffered > max_encoded_size(cfg.max_payload):
        return f"decoder holds {buffered} > {max_encoded_size(cfg.max_payload)} bytes"
    if len(link._ooo) > link.window:
        return f"{len(link._ooo)} out-of-order frames > window {link.window}"
    if link._parts_bytes > cfg.max_message:
        return f"reassembly {link._parts_bytes} > max_message {cfg.max_message}"
    inbox_bound = cfg.rx_buffer + link.window * link.max_payload + 2 * cfg.max_message
    if link._inbox_bytes > inbox_bound:
        return f"inbox {link._inbox_bytes} > {inbox_bound}"
    return None


# ----------------------------------------------------------------------------- device end


def _answers(
    responses: list[bytes], request: bytes, stats: Stats, full_decode: bool = False
) -> str | None:
    """None, or what is wrong with the answers to one request message."""
    if len(responses) != 1:
        return f"{len(responses)} answers to one request"
    data = responses[0]
    want = int.from_bytes(request[1:5], "little") if len(request) >= 5 else NO_REQUEST_ID
    if len(data) >= 5 and data[0] != ResponseOpcode.ERROR and not full_decode:
        # Success answers: header checked here; their bodies come from the schema's encoder
        # (decoded in full by the host target and with ``full_decode``).
        got = int.from_bytes(data[1:5], "little")
        if got != want:
            return f"answer echoes request id {got:#x}, not {want:#x}"
        stats.statuses["OK"] += 1
        if data[0] != request[0] | 0x80:
            return f"answer opcode {data[0]:#x} to request opcode {request[0]:#x}"
        return None
    try:
        r = m.decode_response(data)
    except MessageError as e:
        return f"the device's answer does not decode: {e}"
    if r.request_id != want:
        return f"answer echoes request id {r.request_id:#x}, not {want:#x}"
    if r.is_error:
        status = Status(r.body["status"])
        stats.statuses[status.name] += 1
        if status == Status.INTERNAL:
            return f"INTERNAL answer: {r.body['detail']}"
        if not r.body["detail"]:
            return f"{status.name} answer without a detail text"
    else:
        stats.statuses["OK"] += 1
        if int(r.opcode) != request[0] | 0x80:
            return f"answer opcode {int(r.opcode):#x} to request opcode {request[0]:#x}"
    return None


class DeviceHarness:
    """One emulated device (Firmware + DeviceLink, real engine) and a scripted HOST link on a
    simulated clock. ``run`` plays one input's actions; ``hello_ok`` checks the device after a
    burst."""

    def __init__(self, seed: int) -> None:
        self.fw = Firmware(PRESET, seed=seed)
        self.dev = DeviceLink(self.fw, seed=seed)
        self.now = 0.0
        self.seed = seed
        self.sessions = 0
        self._new_host()
        # Start from a device with tensors and a model, so mutations reach deep handlers.
        for msg in TEMPLATE_BYTES[:-3]:
            self.fw.receive(msg)

    def _new_host(self) -> None:
        self.sessions += 1
        rng = random.Random(self.seed * 7919 + self.sessions)
        self.host = Link(Role.HOST, LinkConfig(), rng=rng)
        self.host_ids: list[int] = []
        self.sent: list[bytes] = []
        self.got: list[bytes] = []

    def _pump(self, rounds: int = PUMP_ROUNDS) -> None:
        for _ in range(rounds):
            out = self.host.bytes_to_send(self.now)
            back = self.dev.feed(out, self.now)
            if back:
                self.host.receive_bytes(back, self.now)
            for msg in self.host.take_messages():
                self.got.append(msg.payload)
            if not out and not back:
                self.now += 0.001
                if self.host.idle():
                    return
            self.host.poll(self.now)

    def establish(self) -> bool:
        for _ in range(HELLO_ROUNDS):
            self._pump(rounds=2)
            if self.host.established:
                return True
            self.now += 0.3
        return False

    def run(self, kind: str, actions: list[Action], stats: Stats) -> str | None:
        """Play ``actions``; None, or the property they broke."""
        if kind == "direct":
            full = len(actions) % 4 == 0  # some inputs decode every answer in full
            for _, data in actions:
                bad = _answers(self.fw.receive(data), data, stats, full)
                if bad:
                    return bad
            return None
        ack, dirty = True, False
        sent_before = len(self.sent)
        for act, data in actions:
            if act == "msg" and kind == "session":
                if len(data) > MAX_REQUEST_BYTES:
                    continue
                self.sent.append(data)
                self.host_ids.append(self.host.send_message(0, data))
                self._pump()
            elif act == "line":
                dirty = True
                back = self.dev.feed(data, self.now)
                if back:
                    self.host.receive_bytes(back, self.now)
            elif act == "tick":
                (dt,) = struct.unpack("<d", data)
                self.now += dt
                self.dev.poll(self.now)
                self._pump()
            elif act == "noack":  # from now on the host takes the device's acks, not answers
                ack = False
                self.host._on_data = lambda f: None  # type: ignore[method-assign]
            bad = check_link_bounds(self.dev.link, stats, "device")
            if bad:
                return "device link: " + bad
            pend = self.dev.link.unacked_messages
            stats.pending_peak = max(stats.pending_peak, pend)
            if pend > self.fw.max_pending + PENDING_RESERVE:
                return f"{pend} unacknowledged answers queued at the device"
        if kind == "session" and ack:
            for _ in range(4):
                self.now += 0.3
                self._pump()
            if not dirty and self.host.established:
                for req, resp in zip(self.sent[sent_before:], self.got[sent_before:], strict=False):
                    bad = _answers([resp], req, stats)
                    if bad and "TOO_MANY_PENDING" not in bad:
                        return "over the link: " + bad
        if not ack or dirty or not self.host.established:
            self._new_host()  # the next input starts from a clean host session
            if not self.establish():
                return "no link session with the device after the input"
        elif len(self.got) != len(self.sent):
            return f"{len(self.sent)} requests sent over a clean link, {len(self.got)} answers"
        return None

    def hello_ok(self) -> str | None:
        """None if a new host session gets HELLO, an upload and a read-back answered right."""
        self.now += 2.0
        self._new_host()
        if not self.establish():
            return "no link session after the burst"
        desc, data = m.tensor_message(0x7FFF_FFF0, np.arange(300, dtype=np.int32), DType.INT32)
        steps: list[tuple[Opcode, dict[str, Any]]] = [
            (Opcode.HELLO, _hello()),
            (Opcode.RESET, {"scope": m.ResetScope.TENSORS}),
            (Opcode.TENSOR_BEGIN, {"tensor": desc}),
            (Opcode.TENSOR_DATA, {"id": desc["id"], "offset": 0, "data": data}),
            (Opcode.TENSOR_END, {"id": desc["id"]}),
            (Opcode.TENSOR_READ, {"id": desc["id"], "offset": 0, "length": 4096}),
        ]
        reqs = [m.encode_request(op, 1 + i, body) for i, (op, body) in enumerate(steps)]
        for req in reqs:
            self.sent.append(req)
            self.host.send_message(0, req)
        for _ in range(HELLO_ROUNDS):
            self._pump()
            if len(self.got) >= len(reqs):
                break
            self.now += 0.3
        if len(self.got) < len(reqs):
            return f"{len(self.got)} of {len(reqs)} answers after the burst"
        hello = m.decode_response(self.got[0])
        if hello.is_error or hello.body["preset"] != PRESET:
            return f"HELLO after the burst answered {hello.body}"
        if hello.body["schema_hash"] != SCHEMA_HASH:
            return "HELLO after the burst: wrong schema hash"
        read = m.decode_response(self.got[-1])
        if read.is_error or read.body["data"] != data:
            return f"read-back after the burst: {read.body}"
        return None


# ----------------------------------------------------------------------------- host end


class _ScriptedPort:
    """A pyserial-like port whose other end is a scripted DEVICE link."""

    def __init__(self) -> None:
        self.timeout = 0.0
        self.written: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.written.append(bytes(data))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        return b""

    @property
    def in_waiting(self) -> int:
        return 0

    def close(self) -> None:
        pass


class HostHarness:
    """A ``Runner`` (framing decoder, HOST link, message decode) against a scripted device
    link that answers with what the input says."""

    OPS = (Opcode.READ_COUNTERS, Opcode.TENSOR_READ, Opcode.GET_WEIGHTS, Opcode.HELLO)

    def __init__(self, seed: int) -> None:
        self.port = _ScriptedPort()
        self.runner = Runner(self.port, config=LinkConfig(max_payload=FRAME_MAX_PAYLOAD))
        self.runner.link = Link(
            Role.HOST, LinkConfig(max_payload=FRAME_MAX_PAYLOAD), rng=random.Random(seed)
        )
        self.dev = Link(Role.DEVICE, LinkConfig(), rng=random.Random(seed + 1))
        self.now = 0.0

    def _to_host(self, data: bytes | bytearray) -> None:
        self.runner.link.receive_bytes(data, self.now)
        self.runner._collect()

    def _pump(self) -> None:
        for _ in range(PUMP_ROUNDS):
            self.runner.link.poll(self.now)
            out = self.runner.link.bytes_to_send(self.now)
            self.dev.receive_bytes(out, self.now)
            self.dev.poll(self.now)
            self.dev.take_messages()  # the script answers from the input, not from requests
            back = self.dev.bytes_to_send(self.now)
            if back:
                self._to_host(back)
            if not out and not back:
                return

    def run(self, actions: list[Action], stats: Stats) -> str | None:
        r = self.runner
        for _ in range(HELLO_ROUNDS):
            self._pump()
            if r.link.established and self.dev.established:
                break
            self.now += 0.3
        ids = {}
        for i, op in enumerate(self.OPS):
            body: dict[str, Any] | None = None
            if op == Opcode.TENSOR_READ:
                body = {"id": 1, "offset": 0, "length": 64}
            elif op == Opcode.GET_WEIGHTS:
                body = {"layer": ALL_LAYERS}
            elif op == Opcode.HELLO:
                body = _hello()
            ids[r.submit(op, body)] = op
            del i
        rid_list = list(ids)
        for act, data in actions:
            if act == "resp":
                # Aim most answers at a pending request id (the decode path that matters).
                msg = bytearray(data)
                if len(msg) >= 5 and rid_list and data[1] % 4:
                    msg[1:5] = rid_list[data[2] % len(rid_list)].to_bytes(4, "little")
                self.dev.send_message(0, bytes(msg))
                self._pump()
            elif act == "line":
                self._to_host(data)
            elif act == "tick":
                (dt,) = struct.unpack("<d", data)
                self.now += dt
                self._pump()
            bad = check_link_bounds(r.link, stats, "host")
            if bad:
                return "host link: " + bad
        for rid, op in ids.items():
            resp = r._answers.pop(rid, None)
            if resp is None:
                continue
            try:
                check(resp, op)
            except errors.DeviceError as e:
                stats.statuses["host:" + e.status.name] += 1
            else:
                stats.statuses["host:OK"] += 1
        return None


# ----------------------------------------------------------------------------- campaign


def input_for(seed: int, index: int) -> tuple[str, list[Action]]:
    """The input number ``index`` of a campaign seeded ``seed`` (kind, actions)."""
    rng = random.Random(f"{seed}:{index}")
    x = rng.random()
    acc = 0.0
    kind = KINDS[-1]
    for k, share in MIX.items():
        acc += share
        if x < acc:
            kind = k
            break
    mut = Mutator(rng)
    if kind == "host":
        return kind, mut.host_input()
    return kind, mut.device_input(kind)


def run_one(
    kind: str,
    actions: list[Action],
    stats: Stats,
    device: DeviceHarness,
    host_seed: int = 0,
) -> Finding | None:
    """Run one input on ``device`` (or a new host harness); a Finding if it broke something."""
    try:
        if kind == "host":
            bad = HostHarness(host_seed).run(actions, stats)
        else:
            bad = device.run(kind, actions, stats)
    except Exception as e:  # any escape is the finding
        return Finding("exception", kind, actions, "".join(traceback.format_exception(e)))
    if bad:
        return Finding("property", kind, actions, bad)
    return None


def summary(
    stats: Stats, seed: int, seconds: float, mem_peak: int, mem_every: int, start: int = 0
) -> dict[str, Any]:
    """The JSON summary of a campaign so far."""
    return {
        "inputs": stats.inputs,
        "seed": seed,
        "first_input": start,
        "per_kind": dict(stats.per_kind),
        "bursts_checked": stats.bursts,
        "unique_statuses": sorted(stats.statuses),
        "status_counts": dict(stats.statuses.most_common()),
        "crashes": len(stats.findings),
        "findings": [f.as_json() for f in stats.findings],
        "peak_traced_bytes": mem_peak,
        "mem_sampled_every": mem_every,
        "decoder_peak_bytes": dict(stats.decoder_peak),
        "decoder_bound_bytes": {
            "device": max_encoded_size(LinkConfig().max_payload),
            "host": max_encoded_size(FRAME_MAX_PAYLOAD),
        },
        "link_retained_peak_bytes": dict(stats.retained_peak),
        "link_retained_bound_bytes": {
            "device": _receive_bound(DeviceLink(Firmware(PRESET), seed=0).link.config),
            "host": _receive_bound(LinkConfig(max_payload=FRAME_MAX_PAYLOAD)),
        },
        "device_pending_peak": stats.pending_peak,
        "slowest_input_s": round(stats.slowest_input_s, 4),
        "seconds": round(seconds, 1),
        "inputs_per_s": round(stats.inputs / seconds, 1) if seconds else None,
    }


def campaign(
    inputs: int,
    seed: int,
    *,
    burst: int = 200,
    mem_every: int = 0,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
    progress_every: int = 10_000,
    max_findings: int = 50,
    max_seconds: float | None = None,
    start: int = 0,
) -> dict[str, Any]:
    """Run ``inputs`` inputs (fewer if ``max_seconds`` runs out: the summary says how many);
    return the summary (see the module docstring). ``progress(line, summary)`` is called every
    ``progress_every`` inputs."""
    stats = Stats()
    t_start = time.perf_counter()
    device = DeviceHarness(seed + start)
    mem_peak = 0
    for index in range(start, start + inputs):
        kind, actions = input_for(seed, index)
        traced = mem_every > 0 and index % mem_every == 0
        if traced:
            tracemalloc.start()
        t0 = time.perf_counter()
        finding = run_one(kind, actions, stats, device, host_seed=seed * 1_000_003 + index)
        dt = time.perf_counter() - t0
        if traced:
            mem_peak = max(mem_peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        stats.slowest_input_s = max(stats.slowest_input_s, dt)
        stats.inputs += 1
        stats.per_kind[kind] += 1
        if finding is not None:
            first = index - index % burst
            finding.detail = (
                f"seed {seed} input {index} (its device served inputs {first}..{index}): "
                + finding.detail
            )
            if len(stats.findings) < max_findings:
                stats.findings.append(finding)
            device = DeviceHarness(seed + index + 1)
        if (index + 1) % burst == 0:
            bad = device.hello_ok()
            stats.bursts += 1
            if bad:
                stats.findings.append(Finding("after-burst", "burst", [], bad))
            device = DeviceHarness(seed + index + 1)
        elapsed = time.perf_counter() - t_start
        if progress and stats.inputs % progress_every == 0:
            line = (
                f"{stats.inputs} inputs (to #{index}), {len(stats.findings)} findings, "
                f"{stats.inputs / elapsed:.0f} inputs/s, {elapsed:.0f} s, "
                f"statuses {len(stats.statuses)}"
            )
            progress(line, summary(stats, seed, elapsed, mem_peak, mem_every, start))
        if max_seconds is not None and elapsed > max_seconds:
            break
    bad = device.hello_ok()
    stats.bursts += 1
    if bad:
        stats.findings.append(Finding("after-burst", "burst", [], bad))
    return summary(stats, seed, time.perf_counter() - t_start, mem_peak, mem_every, start)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several shards of a campaign (same seed, disjoint input ranges, run at
    the same time): counts added, peaks and bounds the largest, seconds the longest."""
    out: dict[str, Any] = {
        "inputs": sum(p["inputs"] for p in parts),
        "seed": sorted({p["seed"] for p in parts}),
        "shards": [[p["first_input"], p["first_input"] + p["inputs"]] for p in parts],
        "per_kind": dict(sum((Counter(p["per_kind"]) for p in parts), Counter())),
        "bursts_checked": sum(p["bursts_checked"] for p in parts),
        "status_counts": dict(
            sum((Counter(p["status_counts"]) for p in parts), Counter()).most_common()
        ),
        "crashes": sum(p["crashes"] for p in parts),
        "findings": [f for p in parts for f in p["findings"]],
        "peak_traced_bytes": max(p["peak_traced_bytes"] for p in parts),
        "mem_sampled_every": parts[0]["mem_sampled_every"],
        "device_pending_peak": max(p["device_pending_peak"] for p in parts),
        "slowest_input_s": max(p["slowest_input_s"] for p in parts),
        "seconds": max(p["seconds"] for p in parts),
    }
    out["unique_statuses"] = sorted(out["status_counts"])
    for key in (
        "decoder_peak_bytes",
        "decoder_bound_bytes",
        "link_retained_peak_bytes",
        "link_retained_bound_bytes",
    ):
        ends = {e for p in parts for e in p[key]}
        out[key] = {e: max(p[key].get(e, 0) for p in parts) for e in sorted(ends)}
    out["inputs_per_s"] = round(out["inputs"] / out["seconds"], 1) if out["seconds"] else None
    return out


def replay(kind: str, actions: list[Action], seed: int = 0) -> Finding | None:
    """Run one input on a fresh device (regression tests); then the after-burst check."""
    stats = Stats()
    device = DeviceHarness(seed)
    finding = run_one(kind, actions, stats, device)
    if finding is not None:
        return finding
    if kind != "host":
        bad = device.hello_ok()
        if bad:
            return Finding("after-burst", kind, actions, bad)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=10_000, help="inputs to run (default 10000)")
    ap.add_argument("--seed", type=int, default=1, help="campaign seed (default 1)")
    ap.add_argument("--burst", type=int, default=200, help="inputs per device before HELLO check")
    ap.add_argument(
        "--mem-every", type=int, default=1000, help="trace memory of every Nth input (0: never)"
    )
    ap.add_argument("--progress-every", type=int, default=10_000)
    ap.add_argument(
        "--start", type=int, default=0, help="index of the first input (shards of one campaign)"
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="print one summary of these shard JSON files, run nothing",
    )
    ap.add_argument(
        "--max-seconds", type=float, help="stop after this long (the summary counts the inputs run)"
    )
    ap.add_argument(
        "--json-out", type=Path, help="write the summary JSON here (also at every progress line)"
    )
    args = ap.parse_args(argv)
    if args.merge:
        merged = merge([json.loads(f.read_text()) for f in args.merge])
        print(json.dumps(merged, indent=2))
        return 1 if merged["crashes"] else 0
    if args.inputs < 1 or args.burst < 1 or args.progress_every < 1:
        ap.error("--inputs, --burst and --progress-every must be >= 1")
    if args.mem_every < 0 or args.start < 0:
        ap.error("--mem-every and --start must be >= 0")

    def progress(line: str, partial: dict[str, Any]) -> None:
        print(line, file=sys.stderr, flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps({**partial, "partial": True}, indent=2) + "\n")

    result = campaign(
        args.inputs,
        args.seed,
        burst=args.burst,
        mem_every=args.mem_every,
        progress=progress,
        progress_every=args.progress_every,
        max_seconds=args.max_seconds,
        start=args.start,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 1 if result["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
