"""The few construct building blocks the message definitions are written in, and their
layout renderer.

Only these constructs appear in ``protocol.messages``: construct's little-endian
``FormatField`` integers and floats, ``Bytes(n)``, ``Struct``, ``Switch``, and the classes
below (strict enums, bit flags, ranged integers, length-prefixed bytes, UTF-8 text and counted
lists). Keeping the vocabulary this small is what lets ``layout_rows`` render every message as a
table of (field, type, size) — the same rows feed the schema hash and docs/protocol.md — and
lets a firmware writer implement the wire format without reading construct.

Named records (``record(name, Struct(...))``) render as their name where used and get their own
table; everything else is expanded in place with dotted field names. ``referenced`` walks
definitions to find the records and enums they use (the schema hash covers exactly those).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from construct import (
    Adapter,
    Bytes,
    Construct,
    FormatField,
    MappingError,
    Renamed,
    SizeofError,
    Struct,
    Switch,
    ValidationError,
)
from construct.core import stream_read, stream_write

_FMT_LABEL = {
    "<B": "u8",
    "<H": "u16",
    "<I": "u32",
    "<L": "u32",
    "<l": "i32",
    "<Q": "u64",
    "<b": "i8",
    "<h": "i16",
    "<i": "i32",
    "<q": "i64",
    "<f": "f32",
    "<d": "f64",
}

#: Records registered by name: id(struct) -> name. Filled by ``record``.
_RECORD_NAMES: dict[int, str] = {}
#: Records in registration order (name, struct), for documentation and the schema hash.
RECORDS: dict[str, Struct] = {}


def record(name: str, struct: Struct) -> Struct:
    """Register ``struct`` as a named record (rendered by name, defined once)."""
    if name in RECORDS and RECORDS[name] is not struct:
        raise ValueError(f"record {name!r} is defined twice")
    RECORDS[name] = struct
    _RECORD_NAMES[id(struct)] = name
    return struct


class Code(Adapter):
    """An integer field holding a value of an IntEnum; unknown values fail to parse and build.

    Parses to the enum member; builds from a member, an int or a member name.
    """

    def __init__(self, subcon: Construct, enumcls: type[enum.IntEnum]) -> None:
        super().__init__(subcon)
        self.enumcls = enumcls

    def _decode(self, obj: int, context: Any, path: str) -> enum.IntEnum:
        try:
            return self.enumcls(obj)
        except ValueError:
            raise MappingError(
                f"{obj} is not a {self.enumcls.__name__}; accepted: {_enum_values(self.enumcls)}",
                path=path,
            ) from None

    def _encode(self, obj: Any, context: Any, path: str) -> int:
        try:
            if isinstance(obj, str):
                return int(self.enumcls[obj])
            return int(self.enumcls(obj))
        except (KeyError, ValueError, TypeError):
            raise MappingError(
                f"{obj!r} is not a {self.enumcls.__name__}; accepted: {_enum_values(self.enumcls)}",
                path=path,
            ) from None


class Flags(Adapter):
    """An unsigned integer of feature bits (an IntFlag). Undefined bits are kept, not refused:
    a newer minor version may define them."""

    def __init__(self, subcon: Construct, flagcls: type[enum.IntFlag]) -> None:
        super().__init__(subcon)
        self.flagcls = flagcls

    def _decode(self, obj: int, context: Any, path: str) -> enum.IntFlag:
        return self.flagcls(obj)

    def _encode(self, obj: Any, context: Any, path: str) -> int:
        return int(obj)


class Ranged(Adapter):
    """A number field whose value must lie in [lo, hi] (checked on parse and on build)."""

    def __init__(self, subcon: Construct, lo: int, hi: int) -> None:
        super().__init__(subcon)
        self.lo, self.hi = lo, hi

    def _check(self, obj: Any, path: str) -> Any:
        if not self.lo <= obj <= self.hi:
            raise ValidationError(f"{obj} is outside [{self.lo}, {self.hi}]", path=path)
        return obj

    def _decode(self, obj: Any, context: Any, path: str) -> Any:
        return self._check(obj, path)

    def _encode(self, obj: Any, context: Any, path: str) -> Any:
        return self._check(obj, path)


class Blob(Construct):
    """Length-prefixed bytes: ``lenfield`` then that many raw bytes (tensor data, MACs...).

    Parsing reads at most what the input holds (a forged length fails, it does not allocate).
    """

    def __init__(self, lenfield: Construct, max_len: int | None = None) -> None:
        super().__init__()
        self.lenfield = lenfield
        self.max_len = max_len

    def _parse(self, stream: Any, context: Any, path: str) -> bytes:
        n = self.lenfield._parsereport(stream, context, path)
        if self.max_len is not None and n > self.max_len:
            raise ValidationError(f"length {n} exceeds the limit {self.max_len}", path=path)
        return bytes(stream_read(stream, n, path))

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> bytes:
        data = bytes(obj)
        if self.max_len is not None and len(data) > self.max_len:
            raise ValidationError(f"length {len(data)} exceeds the limit {self.max_len}", path=path)
        self.lenfield._build(len(data), stream, context, path)
        stream_write(stream, data, len(data), path)
        return data

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("variable length", path=path)


class Text(Adapter):
    """Length-prefixed UTF-8 text (invalid UTF-8 fails to parse)."""

    def __init__(self, lenfield: Construct, max_len: int | None = None) -> None:
        super().__init__(Blob(lenfield, max_len))
        self.lenfield = lenfield

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValidationError(f"text is not valid UTF-8: {e}", path=path) from None

    def _encode(self, obj: Any, context: Any, path: str) -> bytes:
        if not isinstance(obj, str):
            raise ValidationError(f"text field takes a str, got {type(obj).__name__}", path=path)
        return obj.encode("utf-8")


class List(Construct):
    """A counted list: ``countfield`` then that many ``subcon`` items; parses to a list."""

    def __init__(self, countfield: Construct, subcon: Construct, max_count: int | None = None):
        super().__init__()
        self.countfield = countfield
        self.subcon = subcon
        self.max_count = max_count

    def _parse(self, stream: Any, context: Any, path: str) -> list[Any]:
        n = self.countfield._parsereport(stream, context, path)
        if self.max_count is not None and n > self.max_count:
            raise ValidationError(f"count {n} exceeds the limit {self.max_count}", path=path)
        return [self.subcon._parsereport(stream, context, f"{path} -> [{i}]") for i in range(n)]

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> list[Any]:
        items = list(obj)
        if self.max_count is not None and len(items) > self.max_count:
            raise ValidationError(
                f"count {len(items)} exceeds the limit {self.max_count}", path=path
            )
        self.countfield._build(len(items), stream, context, path)
        return [
            self.subcon._build(item, stream, context, f"{path} -> [{i}]")
            for i, item in enumerate(items)
        ]

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("variable length", path=path)


def _enum_values(cls: type[enum.IntEnum]) -> str:
    return ", ".join(f"{m.name}={int(m)}" for m in cls)


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Row:
    """One field of a layout table: dotted name, type label, byte size (None: variable)."""

    name: str
    type: str
    size: int | None
    doc: str = ""


def fixed_size(con: Construct) -> int | None:
    """Byte size of a construct if it is fixed, else None."""
    try:
        return int(con.sizeof())
    except SizeofError:
        return None


def type_label(con: Construct) -> str:
    """A short, canonical type label of a non-struct construct ("u16", "u8 enum DType", ...)."""
    name = _RECORD_NAMES.get(id(con))
    if name is not None:
        return name
    if isinstance(con, FormatField):
        if con.fmtstr not in _FMT_LABEL:
            raise TypeError(f"unsupported numeric format {con.fmtstr!r}")
        return _FMT_LABEL[con.fmtstr]
    if isinstance(con, Bytes):
        if not isinstance(con.length, int):
            raise TypeError("Bytes with a computed length: use Blob")
        return f"bytes[{con.length}]"
    if isinstance(con, Code):
        return f"{type_label(con.subcon)} enum {con.enumcls.__name__}"
    if isinstance(con, Flags):
        return f"{type_label(con.subcon)} flags {con.flagcls.__name__}"
    if isinstance(con, Ranged):
        return f"{type_label(con.subcon)} in [{con.lo}, {con.hi}]"
    if isinstance(con, Text):
        lim = f" (max {con.subcon.max_len} bytes)" if con.subcon.max_len is not None else ""
        return f"{type_label(con.lenfield)} length + UTF-8 bytes{lim}"
    if isinstance(con, Blob):
        lim = f" (max {con.max_len})" if con.max_len is not None else ""
        return f"{type_label(con.lenfield)} length + bytes{lim}"
    if isinstance(con, List):
        lim = f" (max {con.max_count})" if con.max_count is not None else ""
        return f"{type_label(con.countfield)} count + count x {type_label(con.subcon)}{lim}"
    if isinstance(con, Adapter) and id(con.subcon) in _RECORD_NAMES:
        return _RECORD_NAMES[id(con.subcon)]  # a record seen through a value mapping
    if isinstance(con, Struct) and not con.subcons:
        return "(empty)"
    raise TypeError(f"construct {con!r} is outside the message vocabulary")


def layout_rows(con: Construct, prefix: str = "") -> list[Row]:
    """Rows of a struct's fields in wire order (anonymous nested structs are expanded)."""
    if not isinstance(con, Struct):
        raise TypeError(f"layout_rows takes a Struct, got {con!r}")
    rows: list[Row] = []
    for sc in con.subcons:
        if not isinstance(sc, Renamed) or not sc.name:
            raise TypeError(f"every field must be named: {sc!r} in {prefix or 'struct'}")
        name = prefix + sc.name
        doc = sc.docs or ""
        inner = sc.subcon
        while isinstance(inner, Renamed):  # "name" / X * "doc" nests two Renamed
            doc = doc or inner.docs or ""
            inner = inner.subcon
        if isinstance(inner, Struct) and id(inner) not in _RECORD_NAMES:
            rows.extend(layout_rows(inner, name + "."))
        elif isinstance(inner, Switch):
            key = _switch_key(inner)
            for value, case in inner.cases.items():
                label = type_label(case)
                rows.append(
                    Row(f"{name} ({key}={_case_name(value)})", label, fixed_size(case), doc)
                )
        else:
            rows.append(Row(name, type_label(inner), fixed_size(inner), doc))
    return rows


def _switch_key(sw: Switch) -> str:
    # Switch keys in this protocol are always ``this.<field>``; render the field name.
    text = repr(sw.keyfunc)
    return text.replace("this['", "").replace("']", "").replace("this.", "")


def _case_name(value: Any) -> str:
    return value.name if isinstance(value, enum.Enum) else str(value)


EnumClass = type[enum.IntEnum] | type[enum.IntFlag]


def referenced(cons: list[Construct]) -> tuple[dict[str, Struct], dict[str, EnumClass]]:
    """Named records and enum/flag classes used by ``cons`` (recursively), by name."""
    records: dict[str, Struct] = {}
    enums: dict[str, EnumClass] = {}

    def walk(con: Construct) -> None:
        name = _RECORD_NAMES.get(id(con))
        if name is not None:
            if name in records:
                return
            records[name] = con
        if isinstance(con, Code):
            enums[con.enumcls.__name__] = con.enumcls
        elif isinstance(con, Flags):
            enums[con.flagcls.__name__] = con.flagcls
        if isinstance(con, Struct):
            for sc in con.subcons:
                walk(sc)
        elif isinstance(con, Switch):
            for case in con.cases.values():
                walk(case)
        elif isinstance(con, List):
            walk(con.countfield)
            walk(con.subcon)
        elif isinstance(con, Blob):
            walk(con.lenfield)
        elif hasattr(con, "subcon"):
            walk(con.subcon)

    for c in cons:
        walk(c)
    return records, enums
