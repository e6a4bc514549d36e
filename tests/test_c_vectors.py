"""The generated C header compiles warning-free, and a C program built on it alone reads the hex
vectors and computes the same CRC-32s and verdicts as the Python protocol package.

tests/c/vectors.c is compiled here with ``-std=c11 -Wall -Wextra -Werror`` (and -pedantic);
it prints ``<name> <verdict> <crc32>`` per vector. The test is skipped only when no C compiler
is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.test_generated import read_vectors

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "vectors"
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"]

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (gcc, cc or clang) found")

#: verdicts of the C program for bare messages, by the Status a vector expects
MESSAGE_VERDICTS = {"ok": {"size_ok", "unchecked"}}


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert CC is not None
    exe = tmp_path_factory.mktemp("c") / "vectors"
    cmd = [CC, *FLAGS, "-I", str(ROOT / "cext" / "include"), str(ROOT / "tests/c/vectors.c")]
    proc = subprocess.run([*cmd, "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, f"compile failed:\n{' '.join(cmd)}\n{proc.stderr}"
    return exe


def _run(exe: Path, mode: str, path: Path) -> dict[str, list[str]]:
    """name -> [verdict, crc, fields read through the packed structs...]"""
    proc = subprocess.run([str(exe), mode, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        name, *rest = line.split()
        out[name] = rest
    return out


def test_header_compiles_alone_and_its_crc_matches_zlib(tmp_path: Path) -> None:
    assert CC is not None
    src = tmp_path / "only_header.c"
    src.write_text(
        '#include "microtrain_protocol.h"\n'
        "#include <stdio.h>\n"
        "int main(void) {\n"
        "    static const unsigned char h[8] = MT_SCHEMA_HASH_INIT;\n"
        '    printf("%08x %02x %u\\n", (unsigned)mt_crc32(0, (const uint8_t *)"123456789", 9),'
        " h[0], (unsigned)sizeof(struct mt_msg_header));\n"
        "    return 0;\n"
        "}\n"
    )
    exe = tmp_path / "only_header"
    inc = str(ROOT / "cext" / "include")
    proc = subprocess.run(
        [CC, *FLAGS, "-I", inc, str(src), "-o", str(exe)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    from protocol.messages import HEADER_SIZE, schema_hash

    assert out == [f"{zlib.crc32(b'123456789'):08x}", f"{schema_hash()[0]:02x}", str(HEADER_SIZE)]


def test_c_reads_message_vectors_with_identical_crcs_and_verdicts(program: Path) -> None:
    vectors = read_vectors(VECTORS / "messages.hex")
    got = _run(program, "message", VECTORS / "messages.hex")
    assert set(got) == {v[0] for v in vectors}
    caught = set()
    for name, expect, crc, data in vectors:
        verdict, c_crc, c_opcode, c_request_id = got[name]
        assert c_crc == f"{zlib.crc32(data):08x}" == f"{crc:08x}", name
        if len(data) >= 5:  # mt_msg_header reads the same opcode and request id
            assert c_opcode == f"{data[0]:02x}", name
            assert int(c_request_id) == int.from_bytes(data[1:5], "little"), name
        if expect == "ok":
            assert verdict in MESSAGE_VERDICTS["ok"], (name, verdict)
        elif verdict not in ("size_ok", "unchecked"):
            assert verdict == expect, (name, verdict, expect)
            caught.add(name)
    # the C checks that exist must fire on the vectors made for them
    assert {"unknown_opcode", "short_header", "trailing_bytes", "data_length_past_end"} <= caught


def test_c_reads_frame_vectors_like_the_reference_decoder(program: Path) -> None:
    path = VECTORS / "frames.hex"
    if not path.is_file():
        pytest.skip("frames.hex is generated once protocol/framing.py exists")
    vectors = read_vectors(path)
    got = _run(program, "frame", path)
    assert set(got) == {v[0] for v in vectors}
    framing = pytest.importorskip("protocol.framing")
    for name, expect, crc, data in vectors:
        verdict, c_crc, c_seq = got[name]
        assert c_crc == ("-" if crc is None else f"{crc:08x}"), name
        (event,) = framing.FrameDecoder(framing.MAX_PAYLOAD).feed(data)
        if not isinstance(event, framing.FramingError):
            assert int(c_seq) == event.seq, name  # mt_link_header reads the same seq
        # the C program checks every framing error and the message header; deeper body
        # errors it reports as ok (it does not parse every field)
        if expect in ("ok", "BAD_REQUEST") and verdict == "ok":
            continue
        assert verdict == expect, (name, verdict, expect)
    assert sum(1 for v in vectors if v[1] != "ok") >= 8
