"""The protocol path's fast paths give what the plain ones give.

* ``encode_frames`` writes a large batch of frames into one bytearray: the same bytes as
  encoding each frame and joining them (C codec and Python reference).
* The frame decoder takes a bytearray holding hundreds of frames (more than one delimiter
  search call finds) without a copy and decodes what it decodes from bytes.
* A 2.4 MB message crosses a pair of links at 60 KiB frames intact, in order.
* ``tensor_message(copy=False)`` gives the same descriptor and bytes as the copy, as a view.
* An MDNet-sized training step goes as one TRAIN_STEP_INLINE request (the device's largest
  request is 8 MiB) and trains bit for bit like the upload path; the firmware keeps the
  input's bytes as a view of the request.
* ``plain_counters`` hands the engine's counters to the encoder without a copy only when the
  encoded bytes are those of the schema's copy.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest

import host
from device_model import firmware as fw_mod
from protocol import framing as fr
from protocol import messages as m
from protocol.dtypes import DType
from protocol.framing import FrameType, data_header, encode_frame, encode_frames
from protocol.link import Link, LinkConfig, Role
from protocol.messages_counters import (
    COUNTER_FIELDS,
    counters_from_tree,
    pack_counters,
    plain_counters,
)


def _frames(rng: random.Random, count: int) -> list[Any]:
    out: list[Any] = []
    for i in range(count):
        n = rng.choice([0, 1, 300, fr.MAX_PAYLOAD])
        payload = bytes(rng.getrandbits(8) if rng.random() < 0.9 else 0 for _ in range(n))
        if i % 5 == 4:  # already encoded (a control frame)
            out.append(encode_frame(FrameType.ACK, b"\x00" * 8, ack=i, session=77))
        else:
            head = data_header(n, seq=i, ack=3, credits=8, flags=i & 1, channel=2)
            out.append((head, memoryview(payload), 1234))
    return out


@pytest.mark.parametrize("codec", ["c", "python"])
def test_encode_frames_is_the_join_of_each_frame(codec: str) -> None:
    if codec == "c" and not fr.accelerated():
        pytest.skip("the C codec is not built")
    was = fr.accelerated()
    fr.use_accelerator(codec == "c")
    try:
        rng = random.Random(11)
        for count in (1, 2, 7):
            frames = _frames(rng, count)
            want = b"".join(
                f
                if isinstance(f, bytes)
                else encode_frame(
                    FrameType.DATA,
                    f[1],
                    seq=fr.HEADER.unpack(f[0])[4],
                    ack=3,
                    credits=8,
                    flags=fr.HEADER.unpack(f[0])[1],
                    channel=2,
                    session=1234,
                )
                for f in frames
            )
            assert bytes(encode_frames(frames)) == want
    finally:
        fr.use_accelerator(was)


def test_the_decoder_takes_a_bytearray_of_many_frames() -> None:
    rng = random.Random(12)
    wire = bytearray()
    want = []
    for i in range(300):  # over 256 delimiters: several delimiter searches
        payload = rng.randbytes(rng.choice([0, 5, 700]))
        want.append((i, payload))
        wire += encode_frame(FrameType.DATA, payload, seq=i)
    for data in (wire, bytes(wire)):  # a bytearray (read in place) and bytes
        dec = fr.FrameDecoder(fr.MAX_PAYLOAD)
        got = dec.feed(data[:-3]) + dec.feed(data[-3:])  # the last frame in two pieces
        assert all(isinstance(f, fr.Frame) for f in got)
        assert [(f.seq, bytes(f.payload)) for f in got if isinstance(f, fr.Frame)] == want


def test_a_large_message_crosses_links_at_60_kib_frames() -> None:
    cfg = LinkConfig(max_payload=fr.MAX_PAYLOAD, window=32)
    h = Link(Role.HOST, cfg, rng=random.Random(1))
    d = Link(Role.DEVICE, cfg, rng=random.Random(2))
    now = 0.0
    for _ in range(10):
        d.receive_bytes(h.bytes_to_send(now), now)
        h.receive_bytes(d.bytes_to_send(now), now)
        now += 0.01
    assert h.established and d.established
    msgs = [random.Random(3).randbytes(2_400_035), b"tail"]
    for msg in msgs:
        h.send_message(0, msg)
    got: list[bytes] = []
    for _ in range(20):
        out = h.bytes_to_send(now)
        d.receive_bytes(out, now)
        h.receive_bytes(d.bytes_to_send(now), now)
        got += [bytes(x.payload) for x in d.take_messages()]
        now += 0.001
    assert got == msgs
    assert h.stats["retransmits"] == 0


def test_tensor_message_view_equals_the_copy() -> None:
    x = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32)
    codes = x.view(np.uint32)
    d0, b0 = m.tensor_message(7, codes, DType.FP32)
    d1, b1 = m.tensor_message(7, codes, DType.FP32, copy=False)
    assert d0 == d1 and bytes(b1) == b0
    assert isinstance(b1, memoryview) and b1.readonly
    y = np.arange(9, dtype=np.int32)[::2]  # not contiguous: copied
    d2, b2 = m.tensor_message(8, y, DType.INT32, copy=False)
    assert isinstance(b2, bytes) and d2 == m.tensor_message(8, y, DType.INT32)[0]


def _mdnet_like() -> host.nn.Sequential:
    nn = host.nn
    return nn.Sequential(nn.Linear(4608, 16), nn.ReLU(), nn.Linear(16, 2), input_shape=(4608,))


def test_an_mdnet_sized_step_is_one_inline_request_and_trains_like_uploads() -> None:
    rng = np.random.default_rng(5)
    x = np.abs(rng.standard_normal((128, 4608))).astype(np.float32)  # 2.36 MB
    y = rng.integers(0, 2, 128)
    runs = []
    with host.open("emu://hnpu-v2") as dev:
        for inline in (True, False):
            model = dev.deploy(_mdnet_like(), optimizer=host.optim.SGD(0.01), seed=3)
            fw = dev.runner.port.firmware
            if not inline:
                dev._max_request = lambda: 1 << 20  # type: ignore[method-assign]
            try:
                executed = fw.executed
                losses = [model.train_step(x, y).loss for _ in range(2)]
                requests = fw.executed - executed
                stored = fw.tensors._tensors[dev.INPUT_ID].buf
            finally:
                dev.__dict__.pop("_max_request", None)
            if inline:
                assert requests == 2  # one TRAIN_STEP_INLINE per step
                assert isinstance(stored, memoryview) and stored.readonly
            else:
                assert requests > 2 * 4  # BEGIN, chunks (the first time), END and TRAIN_STEP
            runs.append((losses, model.get_weights()))
    (l0, w0), (l1, w1) = runs
    assert l0 == l1
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k])
    assert fw_mod.MAX_REQUEST_BYTES >= 2 * x.nbytes


def test_plain_counters_only_when_the_bytes_are_the_same() -> None:
    tree = fw_mod.zero_counters()
    assert plain_counters(tree) is tree
    assert pack_counters(tree) == pack_counters(counters_from_tree(tree))
    extra = {**tree, "backend": {"x": 1}}  # keys the schema does not name: ignored
    assert plain_counters(extra) is extra
    assert pack_counters(extra) == pack_counters(counters_from_tree(extra))
    np_leaf = copy.deepcopy(tree)  # a numpy scalar leaf needs the schema's copy
    *parents, leaf = COUNTER_FIELDS[0].split(".")
    node = np_leaf
    for p in parents:
        node = node[p]
    node[leaf] = np.int64(3) if isinstance(node[leaf], int) else np.float64(3.0)
    assert plain_counters(np_leaf) is None
    assert pack_counters(counters_from_tree(np_leaf)) is not None
    missing = dict(tree)
    missing.pop(next(iter(missing)))
    assert plain_counters(missing) is None
    assert plain_counters([1, 2]) is None
