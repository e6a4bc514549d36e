"""The counters schema of READ_COUNTERS (issue 4), identical on every backend, and its wire form.

As a Python value the counters are a nested dict::

    {"ff": {"macs_total": int, "macs_executed": int,
            "skipped": {"input_zero": int, "weight_zero": int, "output_zero": int,
                        "pruned": int, "zero_slice": int},
            "slice_ops": int, "cycles": int, "transpose_penalty_cycles": int,
            "energy_pj": float, "dram_read_bytes": int, "dram_write_bytes": int,
            "sram_read_bytes": int, "sram_write_bytes": int},
     "ep": {...}, "wg": {...}, "update": {...}, "total": {...},
     "memory_peak_bytes": {"weights": int, "activations": int, "errors": int,
                           "gradients": int, "optimizer": int, "feedback": int, "total": int},
     "latency_s": float}

Any leaf may be None: the backend cannot count it ("a board that cannot count a field reports
null for it"). On the wire every leaf has a fixed slot, in the order of ``COUNTER_FIELDS``:
a 16-byte ``valid`` bitmap (bit i of byte i//8 set iff field i is present) followed by one
8-byte little-endian value per field (u64, or f64 for the float fields). An absent field's slot
must be zero and bits past the last field must be zero, so the encoding is canonical.
"""

from __future__ import annotations

import struct as _struct
from typing import Any

from construct import Adapter, Bytes, Float64l, Int64ul, Struct, ValidationError

from protocol.messages_types import record

STAGES: tuple[str, ...] = ("ff", "ep", "wg", "update", "total")
SKIP_REASONS: tuple[str, ...] = ("input_zero", "weight_zero", "output_zero", "pruned", "zero_slice")
#: Per-stage leaves in slot order; "skipped.<reason>" are the skipped-MAC counts by reason.
STAGE_FIELDS: tuple[str, ...] = (
    "macs_total",
    "macs_executed",
    *(f"skipped.{r}" for r in SKIP_REASONS),
    "slice_ops",
    "cycles",
    "transpose_penalty_cycles",
    "energy_pj",
    "dram_read_bytes",
    "dram_write_bytes",
    "sram_read_bytes",
    "sram_write_bytes",
)
MEMORY_KINDS: tuple[str, ...] = (
    "weights",
    "activations",
    "errors",
    "gradients",
    "optimizer",
    "feedback",
    "total",
)
#: Leaves carried as f64 (everything else is u64).
FLOAT_LEAVES: frozenset[str] = frozenset({"energy_pj", "latency_s"})

#: Every counter leaf as a dotted path, in wire slot order (slot i <-> valid bit i).
COUNTER_FIELDS: tuple[str, ...] = (
    *(f"{s}.{f}" for s in STAGES for f in STAGE_FIELDS),
    *(f"memory_peak_bytes.{k}" for k in MEMORY_KINDS),
    "latency_s",
)
VALID_BYTES = 16
assert len(COUNTER_FIELDS) <= VALID_BYTES * 8


def _is_float(path: str) -> bool:
    return path.rsplit(".", 1)[-1] in FLOAT_LEAVES


def empty_counters() -> dict[str, Any]:
    """The counters dict with every leaf None (nothing counted)."""
    out: dict[str, Any] = {}
    for path in COUNTER_FIELDS:
        _set(out, path, None)
    return out


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: Any, path: str) -> Any:
    for p in path.split("."):
        if not isinstance(tree, dict) or p not in tree:
            raise KeyError(path)
        tree = tree[p]
    return tree


#: The wire layout: valid bitmap, then one 8-byte slot per field, named by its dotted path
#: with "." replaced by "__" (construct field names).
CountersWire = Struct(
    "valid" / Bytes(VALID_BYTES) * "bit i set iff counter i is present (LSB-first per byte)",
    *(
        (p.replace(".", "__") / (Float64l if _is_float(p) else Int64ul))
        * ("f64" if _is_float(p) else "u64")
        for p in COUNTER_FIELDS
    ),
)


class CountersAdapter(Adapter):
    """Maps ``CountersWire`` to the nested counters dict (None for absent leaves)."""

    def _decode(self, obj: Any, context: Any, path: str) -> dict[str, Any]:
        valid = int.from_bytes(obj.valid, "little")
        if valid >> len(COUNTER_FIELDS):
            raise ValidationError("counters: valid bits beyond the last field are set", path=path)
        out: dict[str, Any] = {}
        for i, p in enumerate(COUNTER_FIELDS):
            value = obj[p.replace(".", "__")]
            if valid >> i & 1:
                _set(out, p, value)
            elif value != 0 or (_is_float(p) and _struct.pack("<d", value) != bytes(8)):
                raise ValidationError(f"counters: absent field {p} has a nonzero slot", path=path)
            else:
                _set(out, p, None)
        return out

    def _encode(self, obj: Any, context: Any, path: str) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        valid = 0
        for i, p in enumerate(COUNTER_FIELDS):
            try:
                value = _get(obj, p)
            except KeyError:
                raise ValidationError(f"counters: field {p} is missing", path=path) from None
            if value is None:
                wire[p.replace(".", "__")] = 0.0 if _is_float(p) else 0
            else:
                valid |= 1 << i
                wire[p.replace(".", "__")] = float(value) if _is_float(p) else int(value)
        wire["valid"] = valid.to_bytes(VALID_BYTES, "little")
        return wire


#: The counters field: a named record on the wire, the nested dict in Python.
Counters = CountersAdapter(record("Counters", CountersWire))


# ----------------------------------------------------------------------------- fast path
# A training step's response carries the counters, so their construct codec (a field object
# per leaf) was a large part of a small step's protocol cost. These functions produce and read
# the same bytes as ``Counters`` with one precompiled struct, walking the tree once per parent
# dict (runs of consecutive slots under the same parent); where the construct codec would
# raise (a missing leaf, a value out of range, a noncanonical encoding) they return None and the
# caller falls back to ``Counters``, which raises the documented error.


def _runs() -> tuple[tuple[tuple[str, ...], tuple[str, ...], bool], ...]:
    """(parent keys, leaves, is_float) for each run of consecutive slots sharing a parent and
    a value type, in slot order."""
    out: list[tuple[tuple[str, ...], list[str], bool]] = []
    for path in COUNTER_FIELDS:
        *parents, leaf = path.split(".")
        key = (tuple(parents), _is_float(path))
        if out and (out[-1][0], out[-1][2]) == key:
            out[-1][1].append(leaf)
        else:
            out.append((key[0], [leaf], key[1]))
    return tuple((p, tuple(leaves), f) for p, leaves, f in out)


_RUNS = _runs()
#: The wire layout as one struct: the valid bitmap, then every slot.
_FAST = _struct.Struct(
    f"<{VALID_BYTES}s" + "".join(("d" if f else "Q") * len(leaves) for _, leaves, f in _RUNS)
)
#: Bytes of the counters on the wire.
COUNTERS_SIZE = _FAST.size
_N = len(COUNTER_FIELDS)


#: (parent keys, leaf, is_float) of every slot, in slot order.
_SLOTS: tuple[tuple[tuple[str, ...], str, bool], ...] = tuple(
    (tuple(p.split(".")[:-1]), p.rsplit(".", 1)[-1], _is_float(p)) for p in COUNTER_FIELDS
)


def _straight_line() -> tuple[Any, Any, Any, tuple[type, ...]]:
    """Functions written out from the schema (no loop, no per-slot tuple unpacking): the leaf
    values of a tree in slot order (KeyError / TypeError where one is missing); the same
    for a tree whose every node on the way is a plain dict (TypeError otherwise); the tree
    of a slot tuple whose slots are all valid (``raw[0]`` is the bitmap, skipped); and the
    exact type of each slot's value (int or float)."""
    lines_get = ["def get(t):"]
    names: dict[tuple[str, ...], str] = {(): "t"}
    for parents in dict.fromkeys(tuple(p.split(".")[:-1]) for p in COUNTER_FIELDS):
        for k in range(1, len(parents) + 1):
            key = parents[:k]
            if key not in names:
                names[key] = f"n{len(names)}"
                lines_get.append(f"    {names[key]} = {names[key[:-1]]}[{key[-1]!r}]")
    leaves = [
        f"{names[tuple(p.split('.')[:-1])]}[{p.rsplit('.', 1)[-1]!r}]" for p in COUNTER_FIELDS
    ]
    # get_dicts: the same for a tree of plain dicts only (counters_from_tree's fast path)
    lines_dicts = [ln.replace("def get(", "def get_dicts(") for ln in lines_get]
    every_dict = " and ".join(f"type({n}) is dict" for n in names.values())
    lines_dicts.append(f"    if not ({every_dict}):")
    lines_dicts.append("        raise TypeError('not a tree of dicts')")
    lines_get.append(f"    return [{', '.join(leaves)}]")
    lines_dicts.append(lines_get[-1])
    lines_get += ["", *lines_dicts]

    def build(node: dict[str, Any]) -> str:
        return "{" + ", ".join(f"{k!r}: {build(v) if isinstance(v, dict) else v}"
                               for k, v in node.items()) + "}"  # fmt: skip

    tree: dict[str, Any] = {}
    for i, path in enumerate(COUNTER_FIELDS):
        *ps, leaf = path.split(".")
        node = tree
        for q in ps:
            node = node.setdefault(q, {})
        node[leaf] = f"r[{i + 1}]"
    src = "\n".join(lines_get) + f"\n\ndef make(r):\n    return {build(tree)}\n"
    ns: dict[str, Any] = {}
    exec(compile(src, "<counters schema>", "exec"), ns)  # the schema's constants only
    types = tuple(float if _is_float(p) else int for p in COUNTER_FIELDS)
    return ns["get"], ns["get_dicts"], ns["make"], types


_GET_LEAVES, _GET_DICT_LEAVES, _MAKE_TREE, _SLOT_TYPES = _straight_line()
_ALL_VALID = ((1 << _N) - 1).to_bytes(VALID_BYTES, "little")


def pack_counters(tree: Any) -> bytes | None:
    """The wire bytes of the counters dict ``tree``, or None where ``Counters`` must decide."""
    try:
        leaves = _GET_LEAVES(tree)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if tuple(map(type, leaves)) == _SLOT_TYPES:  # every leaf present, already int or float
        try:
            return _FAST.pack(_ALL_VALID, *leaves)
        except _struct.error:
            return None
    values: list[Any] = []
    valid = 0
    try:
        for i, (v, is_float) in enumerate(zip(leaves, _FLOAT_SLOTS, strict=True)):
            if v is None:
                values.append(0.0 if is_float else 0)
            else:
                valid |= 1 << i
                values.append(float(v) if is_float else int(v))
        return _FAST.pack(valid.to_bytes(VALID_BYTES, "little"), *values)
    except (KeyError, TypeError, ValueError, OverflowError, _struct.error):
        return None


_FLOAT_SLOTS = tuple(f for _, _, f in _SLOTS)


def unpack_counters(data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any] | None:
    """The counters dict of the ``COUNTERS_SIZE`` bytes at ``offset``, or None where
    ``Counters`` must decide (noncanonical bytes, which it reports as an error)."""
    raw = _FAST.unpack_from(data, offset)
    if raw[0] == _ALL_VALID:
        out: dict[str, Any] = _MAKE_TREE(raw)
        return out
    valid = int.from_bytes(raw[0], "little")
    if valid >> _N:
        return None
    out = {}
    for i, (parents, leaf, is_float) in enumerate(_SLOTS):
        v = raw[i + 1]
        if not valid >> i & 1:
            if v != 0 or (is_float and _struct.pack("<d", v) != bytes(8)):
                return None
            v = None
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def plain_counters(tree: Any) -> dict[str, Any] | None:
    """``tree`` itself when it is already what ``counters_from_tree`` would copy it into (plain
    dicts, every schema leaf a plain int or float; other keys are ignored by the encoder),
    else None: the copy is then needed."""
    try:
        every = _GET_DICT_LEAVES(tree)
    except (KeyError, TypeError):
        return None
    return tree if tuple(map(type, every)) == _SLOT_TYPES else None


def counters_from_tree(tree: Any) -> dict[str, Any]:
    """The counters dict of any nested mapping of numbers (a backend's own counters): every
    schema leaf copied as a plain int or float, a leaf the tree lacks (or holds None) as None,
    keys the schema does not name ignored."""
    try:
        every = _GET_DICT_LEAVES(tree)
    except (KeyError, TypeError):
        every = None
    if every is not None and tuple(map(type, every)) == _SLOT_TYPES:
        made: dict[str, Any] = _MAKE_TREE((None, *every))  # plain ints and floats already
        return made
    out: dict[str, Any] = {}
    for parents, leaves, is_float in _RUNS:
        node = tree
        dst = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            dst = dst.setdefault(p, {})
        if not isinstance(node, dict):
            dst.update(dict.fromkeys(leaves))
            continue
        conv = float if is_float else int
        for leaf in leaves:
            v = node.get(leaf)
            dst[leaf] = None if v is None else conv(v)
    return out
