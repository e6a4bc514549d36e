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
