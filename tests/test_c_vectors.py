"""The generated C header compiles warning-free, and a C program built on it alone reads the hex
vectors and computes the same CRC-32s and verdicts as the Python protocol package.

tests/c/vectors.c is compiled here with ``-std=c11 -Wall -Wextra -Werror`` (and -pedantic);
it prints ``<name> <verdict> <crc32>`` per vector. Session and authenticated frames
(session_frames.hex) go through the header's mt_frame_check_session with each vector's epochs
and mt_frame_auth_locate; the tags it locates are checked here with HMAC-SHA256 (the header
leaves HMAC to the firmware). The test is skipped only when no C compiler is installed.
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


def read_session_vectors(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(the file's key material, one dict per vector: name, expect, crc32, session, auth, tag
    and the wire bytes as hex under "hex")."""
    keys: dict[str, str] = {}
    vectors: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        if line.startswith("# name="):
            vectors.append(dict(kv.split("=", 1) for kv in line[2:].split()))
        elif line.startswith("# key=") or line.startswith("# host_link_key="):
            keys.update(kv.split("=", 1) for kv in line[2:].split())
        elif line and not line.startswith("#"):
            vectors[-1]["hex"] = line
    return keys, vectors


def test_c_checks_session_and_authenticated_frames_like_the_reference(program: Path) -> None:
    path = VECTORS / "session_frames.hex"
    if not path.is_file():
        pytest.skip("session_frames.hex is generated once protocol/link.py has sessions")
    framing = pytest.importorskip("protocol.framing")
    link = pytest.importorskip("protocol.link")
    keys, vectors = read_session_vectors(path)
    host_key, device_key = link.link_keys(
        bytes.fromhex(keys["key"]),
        bytes.fromhex(keys["challenge"]),
        bytes.fromhex(keys["host_nonce"]),
    )
    assert (host_key.hex(), device_key.hex()) == (keys["host_link_key"], keys["device_link_key"])
    got = _run(program, "session", path)
    assert set(got) == {v["name"] for v in vectors}
    tags = []
    for v in vectors:
        name, wire = v["name"], bytes.fromhex(v["hex"])
        verdict, c_crc, c_seq, c_counter, c_offset, c_tag = got[name]
        assert verdict == v["expect"], (name, verdict, v["expect"])
        assert c_crc == v["crc32"], name
        # the reference receiver in the state the vector names
        dec = framing.FrameDecoder(framing.MAX_PAYLOAD)
        if v["session"] != "-":
            sender, receiver = (int(e, 16) for e in v["session"].split(":"))
            dec.session = framing.session_crc(sender, receiver)
        dec.auth = v["auth"] == "1"
        (event,) = dec.feed(wire)
        if isinstance(event, framing.FramingError):
            assert type(event).__name__ == verdict, name
            assert c_seq == c_counter == c_tag == "-", name
            continue
        assert int(c_seq) == event.seq, name
        if not event.flags & framing.FrameFlag.AUTH:
            assert c_counter == c_offset == c_tag == "-" and v["tag"] == "-", name
            continue
        # mt_frame_auth_locate found the reference's trailer ...
        offset = framing.HEADER_SIZE + len(event.payload)
        assert int(c_offset) == offset, name
        assert int(c_counter) == int.from_bytes(event.auth[:8], "little"), name
        assert c_tag == event.auth[8:].hex(), name
        # ... and the pieces it delimits are what the tag covers: header | counter | payload
        raw = framing.cobs_decode(wire.strip(b"\x00"))
        head, payload = raw[: framing.HEADER_SIZE], raw[framing.HEADER_SIZE : offset]
        mac = framing.frame_tag(host_key, head, int(c_counter), payload)
        assert (mac.hex() == c_tag) == (v["tag"] == "ok"), name
        assert (framing.verify_frame(host_key, event) is not None) == (v["tag"] == "ok"), name
        tags.append(v["tag"])
    expects = {v["expect"] for v in vectors}
    assert {"ok", "CrcError", "ShortFrame", "LengthMismatch", "FrameTooLong"} <= expects
    assert {"ok", "bad"} <= set(tags)


def test_c_session_crc_matches_the_reference(tmp_path: Path) -> None:
    framing = pytest.importorskip("protocol.framing")
    assert CC is not None
    pairs = [(0, 0), (1, 2), (0x1234ABCD, 0x0BADF00D), (0xFFFFFFFF, 0x80000000)]
    src = tmp_path / "session_crc.c"
    src.write_text(
        '#include "microtrain_protocol.h"\n'
        "#include <stdio.h>\n"
        "int main(void) {\n"
        + "".join(
            f'    printf("%08x\\n", (unsigned)mt_session_crc({a}u, {b}u));\n' for a, b in pairs
        )
        + '    printf("%d %d %d\\n", mt_frame_is_setup(MT_FRAME_SYNC),'
        " mt_frame_is_setup(MT_FRAME_RESET), mt_frame_is_setup(MT_FRAME_DATA));\n"
        "    return 0;\n"
        "}\n"
    )
    exe = tmp_path / "session_crc"
    inc = str(ROOT / "cext" / "include")
    proc = subprocess.run(
        [CC, *FLAGS, "-I", inc, str(src), "-o", str(exe)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[: len(pairs)] == [f"{framing.session_crc(a, b):08x}" for a, b in pairs]
    assert out[len(pairs)] == "1 1 0"
