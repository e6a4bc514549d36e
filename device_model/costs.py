"""The cost model: cycles, energy and memory traffic of one stage from the work a kernel did.

The engine calls ``stage_costs(work, preset)`` once per stage (FF, EP, WG, update) per layer
with a ``StageWork`` record of what its kernel actually did (MACs executed and skipped by
reason, 4-bit slice products executed, bytes moved per memory level, whether the weights were
read transposed) and adds the resulting ``StageCounters`` into the per-stage and ``total``
counters of protocol/messages_counters.py (``counters_dict``). The equations are written out in
docs/chip-model.md ("Cost model"); in short, per stage:

    compute  = ceil(slice_ops / (pe_slice_macs_per_cycle * pe_share))
    dram     = ceil((dram_read + dram_write) / dram_bytes_per_cycle)
    sram     = ceil((sram_read + sram_write) / sram_bytes_per_cycle)
    cycles   = setup + max(compute', dram, sram) + software_transpose     (a roofline)
    energy   = slice_ops * slice_mac_pj + sram_bytes * sram_pj + dram_bytes * dram_pj
             + static_power * cycles / clock * pe_share

where compute' includes the transposable-PE efficiency drop in EP and the transposed-read
penalty depends on the preset's ``transpose_mode`` (survey Table 2).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from device_model.config import STAGES, ChipPreset
from protocol.messages_counters import MEMORY_KINDS, SKIP_REASONS

__all__ = [
    "MAC_SKIP_REASONS",
    "StageCounters",
    "StageWork",
    "counters_dict",
    "counters_of",
    "stage_costs",
    "stage_work",
    "sum_counters",
]

#: Skip reasons counted in whole MACs; "zero_slice" is counted in slice products (see
#: ``StageCounters``).
MAC_SKIP_REASONS: tuple[str, ...] = ("input_zero", "weight_zero", "output_zero", "pruned")


def _nonneg_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"StageWork.{name} must be a non-negative int, got {v!r}")


@dataclass(frozen=True)
class StageWork:
    """What one kernel did in one stage of one layer (filled by the engine from the datapath's
    statistics, or analytically by ``device_model.costs_analytic``).

    * ``macs_total``: MACs of the dense stage (the analytic count for the shapes and batch).
    * ``macs_executed`` and the skipped MACs by reason (``input_zero``, ``weight_zero``,
      ``output_zero``, ``pruned``): each skipped MAC is counted under exactly one reason, so
      executed + skipped == total. The engine applies the preset's ``skips(stage)``: a zero the
      chip cannot skip is executed.
    * ``slice_ops``: 4b x 4b slice products executed; None means dense (every slice of every
      executed MAC: ``macs_executed * slices(a_bits) * slices(b_bits)``).
    * ``a_bits``: width of the input operand (the one whose zero slices in-slice skipping
      skips: IA in FF and WG, the output error in EP); ``b_bits``: the other operand (weights in
      FF/EP, errors in WG); ``acc_bits``: accumulator width (recorded; the PE's accumulator
      energy is part of ``slice_mac_pj``).
    * bytes read/written per memory level (DRAM, SRAM).
    * ``transposed_read``: the stage read the weights transposed (BP's EP); then
      ``transposed_bytes`` is the number of weight bytes read in transposed order.
    """

    stage: str
    macs_total: int
    macs_executed: int
    input_zero: int = 0
    weight_zero: int = 0
    output_zero: int = 0
    pruned: int = 0
    slice_ops: int | None = None
    a_bits: int = 16
    b_bits: int = 16
    acc_bits: int = 32
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    transposed_read: bool = False
    transposed_bytes: int = 0

    def __post_init__(self) -> None:
        # The common case in one expression (the engine builds about a dozen records per
        # step): every count a plain non-negative int adding up, widths in range, the
        # transposed-read pair consistent. Anything else takes the checks below, which name
        # what is wrong.
        ints = (
            self.macs_total,
            self.macs_executed,
            self.input_zero,
            self.weight_zero,
            self.output_zero,
            self.pruned,
            self.dram_read_bytes,
            self.dram_write_bytes,
            self.sram_read_bytes,
            self.sram_write_bytes,
            self.transposed_bytes,
            self.a_bits,
            self.b_bits,
            self.acc_bits,
        )
        so = self.slice_ops
        if (
            self.stage in _STAGE_SET
            and set(map(type, ints)) == _INT_ONLY
            and min(ints) >= 0
            and (so is None or (type(so) is int and so >= 0))
            and self.macs_executed
            + self.input_zero
            + self.weight_zero
            + self.output_zero
            + self.pruned
            == self.macs_total
            and 1 <= self.a_bits <= 32
            and 1 <= self.b_bits <= 32
            and 8 <= self.acc_bits <= 64
            and type(self.transposed_read) is bool
            and self.transposed_read == (self.transposed_bytes > 0)
        ):
            return
        self._validate()

    def _validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; accepted: {', '.join(STAGES)}")
        for f in (
            "macs_total",
            "macs_executed",
            *MAC_SKIP_REASONS,
            "dram_read_bytes",
            "dram_write_bytes",
            "sram_read_bytes",
            "sram_write_bytes",
            "transposed_bytes",
        ):
            _nonneg_int(f, getattr(self, f))
        if self.slice_ops is not None:
            _nonneg_int("slice_ops", self.slice_ops)
        skipped = sum(getattr(self, r) for r in MAC_SKIP_REASONS)
        if self.macs_executed + skipped != self.macs_total:
            raise ValueError(
                f"StageWork: macs_executed ({self.macs_executed}) + skipped ({skipped}) must "
                f"equal macs_total ({self.macs_total})"
            )
        for f in ("a_bits", "b_bits"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 32:
                raise ValueError(f"StageWork.{f} must be an int in 1..32, got {v!r}")
        if isinstance(self.acc_bits, bool) or not isinstance(self.acc_bits, int):
            raise ValueError(f"StageWork.acc_bits must be an int in 8..64, got {self.acc_bits!r}")
        if not 8 <= self.acc_bits <= 64:
            raise ValueError(f"StageWork.acc_bits must be an int in 8..64, got {self.acc_bits}")
        if self.transposed_bytes and not self.transposed_read:
            raise ValueError("StageWork.transposed_bytes > 0 needs transposed_read=True")
        if self.transposed_read and not self.transposed_bytes:
            raise ValueError(
                "StageWork.transposed_read=True needs transposed_bytes > 0 "
                "(the weight bytes read in transposed order)"
            )

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped MACs by reason (the MAC reasons only; zero slices need the preset)."""
        return {r: getattr(self, r) for r in MAC_SKIP_REASONS}


@dataclass(frozen=True)
class StageCounters:
    """The counters of one stage (or of the total), the fields of the counters schema.

    ``skipped_zero_slice`` counts *slice products* skipped at the slice level (zero input slices,
    and the LSB products dropped by out-slice skipping), not whole MACs: a zero slice never
    removes a whole non-zero MAC. The other skip counts are whole MACs.
    """

    macs_total: int = 0
    macs_executed: int = 0
    skipped_input_zero: int = 0
    skipped_weight_zero: int = 0
    skipped_output_zero: int = 0
    skipped_pruned: int = 0
    skipped_zero_slice: int = 0
    slice_ops: int = 0
    cycles: int = 0
    transpose_penalty_cycles: int = 0
    energy_pj: float = 0.0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0

    def __add__(self, other: StageCounters) -> StageCounters:
        if not isinstance(other, StageCounters):
            return NotImplemented
        return counters_of([getattr(self, n) + getattr(other, n) for n in _COUNTER_FIELDS])

    def as_dict(self) -> dict[str, Any]:
        """The schema's nested per-stage dict (keys in the order of STAGE_FIELDS; "skipped"
        in the order of SKIP_REASONS, checked at import)."""
        d = self.__dict__
        return {
            "macs_total": d["macs_total"],
            "macs_executed": d["macs_executed"],
            "skipped": {
                "input_zero": d["skipped_input_zero"],
                "weight_zero": d["skipped_weight_zero"],
                "output_zero": d["skipped_output_zero"],
                "pruned": d["skipped_pruned"],
                "zero_slice": d["skipped_zero_slice"],
            },
            "slice_ops": d["slice_ops"],
            "cycles": d["cycles"],
            "transpose_penalty_cycles": d["transpose_penalty_cycles"],
            "energy_pj": d["energy_pj"],
            "dram_read_bytes": d["dram_read_bytes"],
            "dram_write_bytes": d["dram_write_bytes"],
            "sram_read_bytes": d["sram_read_bytes"],
            "sram_write_bytes": d["sram_write_bytes"],
        }


if SKIP_REASONS != ("input_zero", "weight_zero", "output_zero", "pruned", "zero_slice"):
    raise ImportError("StageCounters.as_dict lists the skip reasons of SKIP_REASONS in order")


#: StageCounters' field names in order (dataclasses.fields is slow on the per-step path).
_COUNTER_FIELDS = tuple(f.name for f in dataclasses.fields(StageCounters))
_STAGE_SET = frozenset(STAGES)


def counters_of(values: Iterable[Any]) -> StageCounters:
    """StageCounters of the field values in field order, without the dataclass __init__
    (about a microsecond less per record; the engine makes a few dozen per step). The values
    are the caller's: counts as ints, energy as a float."""
    out = _new_object(StageCounters)
    out.__dict__.update(zip(_COUNTER_FIELDS, values, strict=True))
    return out


_new_object = object.__new__
_WORK_FIELDS = frozenset(f.name for f in dataclasses.fields(StageWork))
_WORK_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(StageWork) if f.default is not dataclasses.MISSING
}
_WORK_REQUIRED = _WORK_FIELDS - _WORK_DEFAULTS.keys()


def stage_work(**fields: Any) -> StageWork:
    """``StageWork(**fields)`` without ``__post_init__``'s checks of the values, for the
    engine's per-step records (a dozen a step; the checks cost ~4 us each): the caller's counts
    are plain ints it computed itself, adding up. Field names are still checked (an unknown
    or missing name raises TypeError as the constructor does). Equal to the checked record."""
    keys = fields.keys()
    if not (_WORK_REQUIRED <= keys <= _WORK_FIELDS):
        return StageWork(**fields)  # the constructor's own error
    out = _new_object(StageWork)
    d = out.__dict__
    d.update(_WORK_DEFAULTS)
    d.update(fields)
    return out


_VALUES = operator.attrgetter(*_COUNTER_FIELDS)
_ZERO_COUNTERS = StageCounters()  # frozen: one shared zero record
_ZERO_VALUES = _VALUES(_ZERO_COUNTERS)
_INT_ONLY = {int}
_add = operator.add
_ZERO_SUMS = tuple(0 + v for v in _ZERO_VALUES)  # sum()'s start 0 plus the zero counters


def _ceil_div(a: float, b: float) -> int:
    return math.ceil(a / b) if a > 0 else 0


def stage_costs(work: StageWork, preset: ChipPreset, *, pe_share: float = 1.0) -> StageCounters:
    """The counters of one stage of one layer on ``preset``.

    ``pe_share`` in (0, 1] is the share of the PE array (and of the chip's static power) the
    stage runs on: 1 for sequential schedules, less when a pipelined schedule splits the array
    between stages (``device_model.costs_schedule``). Memory bandwidth is not split (the
    pipelined schedule bounds it separately).
    """
    if not 0 < pe_share <= 1:
        raise ValueError(f"pe_share must be in (0, 1], got {pe_share!r}")
    na, nb = preset.slices(work.a_bits), preset.slices(work.b_bits)
    dense = work.macs_executed * na * nb
    slice_ops = dense if work.slice_ops is None else work.slice_ops
    if slice_ops > dense:
        raise ValueError(
            f"StageWork.slice_ops ({slice_ops}) exceeds the dense slice products of the executed "
            f"MACs ({work.macs_executed} x {na} x {nb} = {dense})"
        )
    mode = preset.transpose_mode
    rate = preset.pe_slice_macs_per_cycle * pe_share
    compute = _ceil_div(slice_ops, rate)
    dram_r, dram_w = work.dram_read_bytes, work.dram_write_bytes
    sram_r, sram_w = work.sram_read_bytes, work.sram_write_bytes
    mac_pj = preset.slice_mac_pj
    if mode == "transposable-pe":
        # Local buffers per MAC unit cost energy in every stage (survey IV-B).
        mac_pj *= 1.0 + preset.transposable_pe_energy_overhead
    extra_pj = 0.0
    sw_penalty = 0
    compute_eff = compute
    if work.transposed_read:
        tb = work.transposed_bytes
        if mode == "software":
            # Re-arrange the weights before EP: read and write every byte once, in SRAM when
            # the weights fit there, else as a DRAM round trip (survey IV-A).
            if tb <= preset.weight_sram_bytes:
                sw_penalty = _ceil_div(2 * tb, preset.sram_bytes_per_cycle)
                sram_r, sram_w = sram_r + tb, sram_w + tb
            else:
                sw_penalty = _ceil_div(2 * tb, preset.dram_bytes_per_cycle)
                dram_r, dram_w = dram_r + tb, dram_w + tb
        elif mode == "transposable-pe":
            compute_eff = _ceil_div(slice_ops, rate * preset.transposable_pe_efficiency)
        else:  # transpose-sram: no time, costlier cells (survey IV-C)
            extra_pj = (preset.transpose_sram_energy_factor - 1.0) * tb * preset.sram_pj_per_byte
    dram = _ceil_div(dram_r + dram_w, preset.dram_bytes_per_cycle)
    sram = _ceil_div(sram_r + sram_w, preset.sram_bytes_per_cycle)
    bound = max(compute, dram, sram)
    body = max(compute_eff, dram, sram)
    cycles = preset.stage_setup_cycles + body + sw_penalty
    static_pj = preset.static_power_w * cycles / preset.clock_hz * 1e12 * pe_share
    energy = (
        slice_ops * mac_pj
        + (sram_r + sram_w) * preset.sram_pj_per_byte
        + (dram_r + dram_w) * preset.dram_pj_per_byte
        + extra_pj
        + static_pj
    )
    return counters_of(
        (
            work.macs_total,
            work.macs_executed,
            work.input_zero,
            work.weight_zero,
            work.output_zero,
            work.pruned,
            dense - slice_ops,  # skipped_zero_slice
            slice_ops,
            cycles,
            (body - bound) + sw_penalty,  # transpose_penalty_cycles
            energy,
            dram_r,
            dram_w,
            sram_r,
            sram_w,
        )
    )


def sum_counters(items: Iterable[StageCounters]) -> StageCounters:
    """The sum of stage counters (layers of a stage, or stages into the total)."""
    # field by field from the zero counters, in order: the sums of ``StageCounters() + ...``,
    # i.e. sum() over (zero, *items) per field: ((0 + zero) + c0) + c1 ..., as nested maps
    # of operator.add (no Python call per field; counters_of checks the length)
    acc: Any = _ZERO_SUMS
    for c in items:
        acc = map(_add, acc, _VALUES(c))
    return counters_of(acc)


def counters_dict(
    stages: Mapping[str, StageCounters],
    preset: ChipPreset,
    *,
    memory_peak_bytes: Mapping[str, int | None] | None = None,
    latency_cycles: int | None = None,
) -> dict[str, Any]:
    """The full counters dict of protocol/messages_counters.py.

    ``stages`` maps "ff", "ep", "wg", "update" to their counters (a missing stage counts zero);
    ``total`` is their sum. ``memory_peak_bytes`` gives the kinds of MEMORY_KINDS (a missing
    kind, or no mapping, is reported as None: not counted; "total" defaults to the sum of the
    given kinds). ``latency_s`` is ``latency_cycles`` (e.g. a pipelined schedule's latency
    from ``costs_schedule``) at the preset clock, by default the sequential total cycles.
    """
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        raise ValueError(f"unknown stage(s) {', '.join(bad)}; accepted: {', '.join(STAGES)}")
    per = {s: stages.get(s, _ZERO_COUNTERS) for s in STAGES}
    total = sum_counters(per.values())
    out: dict[str, Any] = {s: per[s].as_dict() for s in STAGES}
    out["total"] = total.as_dict()
    mem: dict[str, int | None] = {k: None for k in MEMORY_KINDS}
    if memory_peak_bytes is not None:
        unknown = sorted(set(memory_peak_bytes) - set(MEMORY_KINDS))
        if unknown:
            raise ValueError(
                f"unknown memory kind(s) {', '.join(unknown)}; accepted: {', '.join(MEMORY_KINDS)}"
            )
        mem.update(memory_peak_bytes)
        if memory_peak_bytes.get("total") is None:
            mem["total"] = sum(v for k, v in mem.items() if k != "total" and v is not None)
    out["memory_peak_bytes"] = mem
    cyc = total.cycles if latency_cycles is None else latency_cycles
    if cyc < 0:
        raise ValueError(f"latency_cycles must be >= 0, got {cyc}")
    out["latency_s"] = cyc / preset.clock_hz
    return out
