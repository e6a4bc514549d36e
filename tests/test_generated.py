"""The generated protocol files are up to date and say what the definitions say.

docs/protocol.md, cext/include/microtrain_protocol.h and tests/vectors/*.hex are regenerated in
memory by tools/gen_protocol.py and compared with the committed files; the vectors are then
checked against the Python codec (every ``ok`` vector decodes, every other one fails with the
error it names).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest

from protocol import messages as m
from protocol.messages_types import layout_rows
from protocol.status import MessageError, Status

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "vectors"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_protocol", ROOT / "tools" / "gen_protocol.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protocol", mod)
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()
RENDERED: dict[Path, str] = gen.render_all()


def read_vectors(path: Path) -> list[tuple[str, str, int | None, bytes]]:
    """(name, expect, crc32 or None, bytes) of every vector in a .hex file."""
    out = []
    pending: tuple[str, str, int | None] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("# name="):
            fields = dict(kv.split("=", 1) for kv in line[2:].split())
            crc = None if fields["crc32"] == "-" else int(fields["crc32"], 16)
            pending = (fields["name"], fields["expect"], crc)
        elif line and not line.startswith("#"):
            assert pending is not None, f"hex line without a comment line in {path.name}"
            out.append((*pending, bytes.fromhex(line)))
            pending = None
    return out


@pytest.mark.parametrize("path", sorted(RENDERED), ids=str)
def test_generated_file_is_up_to_date(path: Path) -> None:
    fresh = RENDERED[path]
    committed = ROOT / path
    assert committed.is_file(), f"{path} is missing: run python tools/gen_protocol.py"
    assert committed.read_text() == fresh, f"{path} is stale: run python tools/gen_protocol.py"


def test_check_mode_reports_stale_files(tmp_path: Path) -> None:
    for path, text in RENDERED.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert gen.stale_files(tmp_path) == []
    (tmp_path / gen.DOC_PATH).write_text("edited by hand\n")
    assert gen.stale_files(tmp_path) == [gen.DOC_PATH]


def test_docs_cover_every_message_status_and_the_schema_hash() -> None:
    doc = (ROOT / gen.DOC_PATH).read_text()
    assert m.schema_hash().hex() in doc
    for op in m.Opcode:
        assert f"#### {op.name}\n\n{m.MESSAGE_DOCS[op]}\n" in doc
        for row in layout_rows(m.REQUEST_BODIES[op]):
            assert f"`{row.name}`" in doc
    for status in Status:
        assert f"| `{status.name}` | {int(status):#06x} |" in doc


def test_pending_sections_are_filled_once_their_modules_exist() -> None:
    doc = (ROOT / gen.DOC_PATH).read_text()
    header = (ROOT / gen.HEADER_PATH).read_text()
    for module in ("framing", "link"):
        present = importlib.util.find_spec(f"protocol.{module}") is not None
        pending = f"protocol/{module}.py does not exist yet"
        assert (pending in doc) == (not present)
        assert (pending in header) == (not present)


def test_header_carries_the_schema_hash_and_every_opcode() -> None:
    header = (ROOT / gen.HEADER_PATH).read_text()
    init = re.search(r"#define MT_SCHEMA_HASH_INIT \{ (.*) \}", header)
    assert init is not None
    assert bytes(int(x, 16) for x in init.group(1).split(", ")) == m.schema_hash()
    for op in m.Opcode:
        assert f"MT_OP_{op.name} = {int(op):#x}," in header
    for status in Status:
        assert f"MT_STATUS_{status.name} = {int(status):#x}," in header


def test_message_vectors_decode_as_they_say() -> None:
    vectors = read_vectors(VECTORS / "messages.hex")
    names = {v[0] for v in vectors}
    for op in m.Opcode:
        assert f"request_{op.name.lower()}" in names and f"response_{op.name.lower()}" in names
    invalid = 0
    for name, expect, crc, data in vectors:
        assert crc == zlib.crc32(data), name
        decode = m.decode_response if name.startswith("response_") else m.decode_request
        if expect == "ok":
            decode(data)
            continue
        invalid += 1
        with pytest.raises(MessageError) as err:
            decode(data)
        assert err.value.status.name == expect, name
    assert invalid >= 5


def test_frame_vectors_decode_as_they_say() -> None:
    framing = pytest.importorskip("protocol.framing", reason="protocol.framing not there yet")
    vectors = read_vectors(VECTORS / "frames.hex")
    expects = {v[1] for v in vectors}
    # every framing error class of the reference decoder has a vector
    assert {"CrcError", "CobsError", "ShortFrame", "BadVersion", "LengthMismatch"} <= expects
    assert {"FrameTooLong", "UNKNOWN_OPCODE", "BAD_REQUEST", "ok"} <= expects
    for name, expect, crc, wire in vectors:
        (event,) = framing.FrameDecoder(framing.MAX_PAYLOAD).feed(wire)
        if isinstance(event, framing.FramingError):
            assert type(event).__name__ == expect, name
            continue
        assert crc == zlib.crc32(framing.cobs_decode(wire.strip(b"\x00"))[:-4]), name
        decode = m.decode_response if "response_" in name else m.decode_request
        if expect == "ok":
            decode(event.payload)
        else:
            with pytest.raises(MessageError) as err:
                decode(event.payload)
            assert err.value.status.name == expect, name
