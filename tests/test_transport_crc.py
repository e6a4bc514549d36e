"""The C codec's CRC-32 on the lengths where its folding changes: the 128-bit code (64 bytes a
step), the 512-bit VPCLMULQDQ code (256 bytes a step, from 256 bytes on, where the CPU has it)
and the tails of each, against zlib, at every alignment of the start."""

from __future__ import annotations

import random
import zlib

import pytest

from protocol import framing as fr

pytestmark = pytest.mark.skipif(not fr.accelerated(), reason="the C codec is not built")


def test_crc32_every_length_up_to_1100_and_every_alignment() -> None:
    d = random.Random(7).randbytes(1200)
    for n in range(1100):
        assert fr._crc32_c(d[:n], 0x89ABCDEF) == zlib.crc32(d[:n], 0x89ABCDEF), n
    view = memoryview(d)
    for start in range(64):
        piece = view[start : start + 777]
        assert fr._crc32_c(piece) == zlib.crc32(piece), start


def test_crc32_long_buffers_and_continuation() -> None:
    rng = random.Random(8)
    for n in (61440, 61440 + 16 + 12, 2_400_000 + 35, 1 << 20):
        d = rng.randbytes(n)
        assert fr._crc32_c(d) == zlib.crc32(d), n
        cut = rng.randrange(n)
        assert fr._crc32_c(d[cut:], fr._crc32_c(d[:cut])) == zlib.crc32(d), n
    assert fr.crc32(b"123456789") == 0xCBF43926
