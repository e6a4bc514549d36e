"""Chip presets: the parameters of an emulated training processor, sourced or assumed.

A ``ChipPreset`` holds everything the cost model (``device_model.costs``), the memory model and
the firmware need to know about one chip: clock, precisions, peak throughput and power range
(sourced from the survey's Fig. 12), the features it has (LAPS, ST, SR generator, pruning-aware
training, backward unlocking, which sparsity each stage skips), the transposed-read solution
(survey Table 2 / section IV) and every other constant, each stated as an assumption with its
reasoning next to it (and in the table of docs/chip-model.md).

Survey = Han et al., "Energy-Efficient DNN Training Processors on Micro-AI Systems", IEEE OJSSCS
2022 (reference/training-processors-survey.md). How each Fig. 12 number was read from the OCR
text is written in docs/chip-model.md ("Reading Fig. 12").

Presets are immutable; ``with_overrides(**kw)`` makes a validated copy for design-space studies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from protocol.messages_counters import SKIP_REASONS

__all__ = [
    "ALGORITHMS",
    "PRESETS",
    "SKIP_REASONS",
    "STAGES",
    "TRANSPOSE_MODES",
    "ChipPreset",
    "get_preset",
    "preset_names",
]

#: The training stages a preset describes (the counters' stages without "total").
STAGES: tuple[str, ...] = ("ff", "ep", "wg", "update")
#: Transposed-read solutions of survey Table 2 / section IV, as a preset parameter:
#: "software" = channel re-arrangement of the weights before EP (IV-A), "transposable-pe" =
#: transposable PE array (IV-B, [20]), "transpose-sram" = custom transpose SRAM (IV-C, [5,25]).
TRANSPOSE_MODES: tuple[str, ...] = ("software", "transposable-pe", "transpose-sram")
#: Training algorithms a chip may run (DESIGN.md "Backward unlocking").
ALGORITHMS: tuple[str, ...] = ("bp", "dfa", "pdfa")
#: Slice-level skip kinds beyond the counters' MAC reasons: "out_slice" = skipping the LSB slice
#: products of outputs the ReLU will zero (HNPU-V1's out-slice skipping, survey V-D).
_STAGE_SKIPS: frozenset[str] = frozenset(SKIP_REASONS) | {"out_slice"}
_ALL_PRECISIONS: tuple[tuple[int, int], ...] = tuple(
    (a, b) for a in (4, 8, 12, 16) for b in (4, 8, 12, 16)
)


def _slice_rate(peak_tops: float, clock_hz: float) -> int:
    """4-bit x 4-bit slice products per cycle implied by a peak figure: one slice product is a
    4b x 4b MAC = 2 ops, so rate = peak_ops / (2 * clock). (Assumption: the peak is quoted at the
    lowest precision, 4b x 4b, dense, at the maximum clock.)"""
    return round(peak_tops * 1e12 / (2.0 * clock_hz))


def _slice_mac_pj(power_max_w: float, static_w: float, rate: int, clock_hz: float) -> float:
    """Dynamic energy of one slice product: all dynamic power at the top of the power range
    (power_max - static) spent by the PE array running at its full slice rate."""
    return (power_max_w - static_w) / (rate * clock_hz) * 1e12


@dataclass(frozen=True)
class ChipPreset:
    """One emulated chip. Sourced fields come first; assumed constants follow, each with its
    reasoning. Energies in pJ, powers in W, sizes in bytes, rates per cycle of ``clock_hz``."""

    name: str
    reference: str
    # ---- sourced: survey Fig. 12 (section IX-D) --------------------------------------------
    technology: str  # "Samsung 28nm 1P8M CMOS" (both chips)
    die_area_mm2: float  # 3.6 mm x 3.6 mm (both chips)
    clock_hz: float  # top of the operating range: 250 MHz (both chips)
    min_clock_hz: float  # bottom of the operating range: 2 MHz (V1), 10 MHz (V2)
    voltage_range_v: tuple[float, float]  # 0.58-1.04 V (V1), 0.63-1.0 V (V2)
    data_type: str  # "DFXP+SR+ST" (V1), "DFXP+SR" (V2)
    precisions: tuple[tuple[int, int], ...]  # (4/8/12/16)-bit x (4/8/12/16)-bit (both)
    peak_tops: float  # 4.53 (V1), 7.07 (V2)
    power_range_w: tuple[float, float]  # 0.955-1.162 W (V1), 0.850-1.032 W (V2)
    laps: bool  # layerwise adaptive precision scaling (V1 "Advanced feature: LAPS")
    stochastic_thresholding: bool  # ST: V1 yes ("DFXP+SR+ST"), V2 removed ST circuits
    sr_rng: str  # "standard" (V1: not described) / "low-cost" (V2 "Low-cost SR")
    pruning_aware_training: bool  # V1 X, V2 O (channel pruning)
    pruning_granularity: str | None  # "channel" for V2, None when not pruning-aware
    backward_unlocking: bool  # V1 X, V2 O (DFA-based BU, section IX-D text)
    algorithms: tuple[str, ...]  # BP always; DFA and pipelined DFA with backward unlocking
    #: What each stage skips (Fig. 12 "Sparsity exploitation", Table 3 row [29]). Keys of the
    #: counters' skip reasons plus "out_slice". A zero input element is all-zero slices, so
    #: in-slice skipping also skips whole MACs with a zero input ("input_zero").
    skip_ff: frozenset[str]
    skip_ep: frozenset[str]
    skip_wg: frozenset[str]
    skip_update: frozenset[str]
    # ---- the transposed-read solution: a design parameter (survey Table 2) -----------------
    #: Neither chip's solution is named in the survey; both default to the transposable PE
    #: array of [20] (assumption), and design-space studies override it.
    transpose_mode: str = "transposable-pe"
    # ---- assumed constants (reasoning next to each; table in docs/chip-model.md) -----------
    #: Slice width of the bit-scalable PE: 4 bits (survey V-D: "bit-slice (4 bit) level
    #: sparsity"; the 4/8/12/16-bit precisions are 1..4 slices).
    slice_bits: int = 4
    #: 4b x 4b slice products per cycle of the whole PE array. Derived from V1's 4.53 TOPS at
    #: 250 MHz (``_slice_rate``: 9060). V2 gets the same value: the survey says both chips
    #: "utilized the same amount of hardware resources", so we read V2's higher 7.07 TOPS as an
    #: effective peak that counts skipped (pruned) work, not as a larger array.
    pe_slice_macs_per_cycle: int = 9060
    #: On-chip SRAM for weights and for activations/errors (bytes). Not in the survey. 256 KiB
    #: each: a 3.6 mm x 3.6 mm 28 nm die with ~9k slice MACs typically has ~0.5 MB of SRAM.
    weight_sram_bytes: int = 256 * 1024
    act_sram_bytes: int = 256 * 1024
    #: SRAM bandwidth to the PE array, bytes per cycle: 32 banks x 8 bytes (assumption; wide
    #: enough that SRAM is a bound only for update-like streaming stages).
    sram_bytes_per_cycle: int = 256
    #: External DRAM bandwidth, bytes per second: one LPDDR4-3200 x32 channel = 12.8 GB/s, the
    #: usual mobile memory of a micro-AI system (assumption; not in the survey).
    dram_bytes_per_s: float = 12.8e9
    #: DRAM energy per byte: ~5 pJ/bit for LPDDR4 interface + core = 40 pJ/byte (assumption,
    #: from published LPDDR4 energy figures; Horowitz ISSCC 2014 gives 20-40 pJ/bit for DDR3).
    dram_pj_per_byte: float = 40.0
    #: SRAM energy per byte: Horowitz (ISSCC 2014, 45 nm) 32 KB SRAM = 20 pJ per 64-bit read =
    #: 2.5 pJ/byte, scaled by ~0.5 to 28 nm = 1.25 pJ/byte (assumption).
    sram_pj_per_byte: float = 1.25
    #: Static (leakage + clock tree + control) power as a share of the bottom of the power range:
    #: 0.3 (assumption: 20-40% is typical for 28 nm logic at ~1 V; the bottom of the measured
    #: range is the lightest workload at 250 MHz, so static power lies below it).
    static_share: float = 0.3
    #: Dynamic energy of one 4b x 4b slice product, pJ: the top of the power range minus static
    #: power, spent by the full array at its slice rate (``_slice_mac_pj``). Includes operand
    #: registers and accumulation inside the PE; SRAM and DRAM bytes are costed separately.
    #: 0.0 (the default) means "derive it"; any positive value is taken as given.
    slice_mac_pj: float = 0.0
    #: Device memory the firmware may allocate (models, tensors, optimizer state): 64 MiB
    #: (assumption: a DRAM carve-out for the accelerator on a mobile SoC).
    device_memory_bytes: int = 64 * 1024 * 1024
    #: Layers one deployed model may have (assumption: size of the layer descriptor table).
    max_layers: int = 64
    #: Fixed cycles to configure the array and DMA for one stage of one layer (assumption: a
    #: top controller issuing per-layer instructions, ~128 cycles).
    stage_setup_cycles: int = 128
    #: Output neurons computed per pass of the input over the array: the input tile is re-read
    #: from SRAM once per this many outputs (assumption: a 128-wide output dimension).
    pe_output_tile: int = 128
    #: Transposable PE array: utilization in the EP stage (weight reuse over the batch through
    #: per-MAC local buffers) 0.9, and +10% energy per slice product in every stage for those
    #: buffers (assumption; survey IV-B: "efficiency drop of PE array", no number given).
    transposable_pe_efficiency: float = 0.9
    transposable_pe_energy_overhead: float = 0.10
    #: Transpose SRAM: energy per transposed byte read x1.3 (assumption; survey IV-C: double
    #: BL/WL or > 6T cells, i.e. longer wires and larger cells).
    transpose_sram_energy_factor: float = 1.3
    #: Static power in W, derived: static_share x bottom of the power range.
    static_power_w: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "static_power_w", self.static_share * self.power_range_w[0])
        if self.slice_mac_pj == 0.0:
            object.__setattr__(
                self,
                "slice_mac_pj",
                _slice_mac_pj(
                    self.power_range_w[1],
                    self.static_power_w,
                    self.pe_slice_macs_per_cycle,
                    self.clock_hz,
                ),
            )
        self._validate()

    # ---- derived quantities -------------------------------------------------------------
    @property
    def dram_bytes_per_cycle(self) -> float:
        """DRAM bandwidth in bytes per cycle of the chip clock."""
        return self.dram_bytes_per_s / self.clock_hz

    def skips(self, stage: str) -> frozenset[str]:
        """What the chip skips in ``stage`` ("ff", "ep", "wg", "update")."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; accepted: {', '.join(STAGES)}")
        skips: frozenset[str] = getattr(self, f"skip_{stage}")
        return skips

    def slices(self, bits: int) -> int:
        """Number of slices of a ``bits``-wide operand: ceil(bits / slice_bits)."""
        return math.ceil(bits / self.slice_bits)

    def with_overrides(self, **kw: Any) -> ChipPreset:
        """A validated copy with some fields replaced (design-space studies). Derived fields
        (static power, slice energy unless given) are recomputed from the new values."""
        names = {f.name for f in dataclasses.fields(self) if f.init}
        bad = sorted(set(kw) - names)
        if bad:
            raise ValueError(
                f"unknown preset field(s) {', '.join(bad)}; accepted: {', '.join(sorted(names))}"
            )
        derive = {"power_range_w", "static_share", "pe_slice_macs_per_cycle", "clock_hz"}
        if derive & set(kw) and "slice_mac_pj" not in kw:
            kw["slice_mac_pj"] = 0.0
        return dataclasses.replace(self, **kw)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (for HELLO / info and the docs table)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, frozenset):
                out[k] = sorted(v)
        return out

    # ---- validation -----------------------------------------------------------------------
    def _validate(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"preset field {name} must be a positive number, got {v!r}")

        for n in (
            "die_area_mm2",
            "clock_hz",
            "min_clock_hz",
            "peak_tops",
            "slice_bits",
            "pe_slice_macs_per_cycle",
            "weight_sram_bytes",
            "act_sram_bytes",
            "sram_bytes_per_cycle",
            "dram_bytes_per_s",
            "dram_pj_per_byte",
            "sram_pj_per_byte",
            "slice_mac_pj",
            "device_memory_bytes",
            "max_layers",
            "pe_output_tile",
            "transpose_sram_energy_factor",
        ):
            positive(n)
        for n in (
            "slice_bits",
            "pe_slice_macs_per_cycle",
            "weight_sram_bytes",
            "act_sram_bytes",
            "sram_bytes_per_cycle",
            "device_memory_bytes",
            "max_layers",
            "pe_output_tile",
            "stage_setup_cycles",
        ):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"preset field {n} must be a non-negative int, got {v!r}")
        if self.min_clock_hz > self.clock_hz:
            raise ValueError(
                f"min_clock_hz {self.min_clock_hz} must not exceed clock_hz {self.clock_hz}"
            )
        lo, hi = self.power_range_w
        if not 0 < lo <= hi:
            raise ValueError(
                f"power_range_w must be (low, high) with 0 < low <= high, got {lo, hi}"
            )
        vlo, vhi = self.voltage_range_v
        if not 0 < vlo <= vhi:
            raise ValueError(f"voltage_range_v must be (low, high), 0 < low <= high: {vlo, vhi}")
        if not 0 <= self.static_share < 1:
            raise ValueError(f"static_share must be in [0, 1), got {self.static_share}")
        if self.static_power_w >= hi:
            raise ValueError("static power must be below the top of the power range")
        if not 0 < self.transposable_pe_efficiency <= 1:
            raise ValueError(
                "transposable_pe_efficiency must be in (0, 1], "
                f"got {self.transposable_pe_efficiency}"
            )
        if self.transposable_pe_energy_overhead < 0:
            raise ValueError("transposable_pe_energy_overhead must be >= 0")
        if self.transpose_mode not in TRANSPOSE_MODES:
            raise ValueError(
                f"unknown transpose_mode {self.transpose_mode!r}; "
                f"accepted: {', '.join(TRANSPOSE_MODES)}"
            )
        if not self.precisions:
            raise ValueError("precisions must list at least one (a_bits, b_bits) pair")
        for p in self.precisions:
            if len(p) != 2 or not all(isinstance(b, int) and 1 <= b <= 32 for b in p):
                raise ValueError(f"precision {p!r} must be a pair of ints in 1..32")
        for stage in STAGES:
            s = getattr(self, f"skip_{stage}")
            if not isinstance(s, frozenset) or not s <= _STAGE_SKIPS:
                raise ValueError(
                    f"skip_{stage} must be a frozenset of {', '.join(sorted(_STAGE_SKIPS))}; "
                    f"got {s!r}"
                )
        bad = [a for a in self.algorithms if a not in ALGORITHMS]
        if bad or "bp" not in self.algorithms:
            raise ValueError(
                f"algorithms must include 'bp' and only {', '.join(ALGORITHMS)}; "
                f"got {self.algorithms!r}"
            )
        if not self.backward_unlocking and set(self.algorithms) - {"bp"}:
            raise ValueError("DFA/PDFA need backward_unlocking=True")
        if self.pruning_aware_training != (self.pruning_granularity is not None):
            raise ValueError("pruning_granularity is given iff pruning_aware_training is True")


# ---- the presets ----------------------------------------------------------------------------
_V1_RATE = _slice_rate(4.53, 250e6)  # 9060 slice products per cycle

HNPU_V1 = ChipPreset(
    name="hnpu-v1",
    reference="survey Fig. 12 / IX-D; HNPU, Han et al., JSSC 2021 [29]",
    technology="Samsung 28nm 1P8M CMOS",
    die_area_mm2=3.6 * 3.6,
    clock_hz=250e6,
    min_clock_hz=2e6,
    voltage_range_v=(0.58, 1.04),
    data_type="DFXP+SR+ST",
    precisions=_ALL_PRECISIONS,
    peak_tops=4.53,
    power_range_w=(0.955, 1.162),
    laps=True,
    stochastic_thresholding=True,
    sr_rng="standard",
    pruning_aware_training=False,
    pruning_granularity=None,
    backward_unlocking=False,
    algorithms=("bp",),
    # Fig. 12: FF "In-out Slice Skip", EP "In-out Slice Skip", WG "In-slice Skip". Table 3 row
    # [29]: FF skips IA and OA, EP skips OE and IE (the ReLU-masked input errors, known from
    # FF: whole MACs), WG skips IA.
    skip_ff=frozenset({"input_zero", "zero_slice", "out_slice"}),
    skip_ep=frozenset({"input_zero", "zero_slice", "output_zero"}),
    skip_wg=frozenset({"input_zero", "zero_slice"}),
    skip_update=frozenset(),
    pe_slice_macs_per_cycle=_V1_RATE,
)

HNPU_V2 = ChipPreset(
    name="hnpu-v2",
    reference="survey Fig. 12 / IX-D; Han et al., AICAS 2022 [80]",
    technology="Samsung 28nm 1P8M CMOS",
    die_area_mm2=3.6 * 3.6,
    clock_hz=250e6,
    min_clock_hz=10e6,
    voltage_range_v=(0.63, 1.0),
    data_type="DFXP+SR",
    precisions=_ALL_PRECISIONS,
    peak_tops=7.07,
    power_range_w=(0.850, 1.032),
    laps=False,
    stochastic_thresholding=False,
    sr_rng="low-cost",
    pruning_aware_training=True,
    pruning_granularity="channel",
    backward_unlocking=True,
    algorithms=("bp", "dfa", "pdfa"),
    # Fig. 12: FF "In-slice Skip + FW Skip", EP "In-slice Skip + BW Skip", WG "In-slice Skip +
    # G Skip" (gradients of pruned weights are neither computed nor applied in the update).
    skip_ff=frozenset({"input_zero", "zero_slice", "weight_zero"}),
    skip_ep=frozenset({"input_zero", "zero_slice", "weight_zero"}),
    skip_wg=frozenset({"input_zero", "zero_slice", "pruned"}),
    skip_update=frozenset({"pruned"}),
    # Same hardware resources as V1 (survey IX-D), see the field's comment.
    pe_slice_macs_per_cycle=_V1_RATE,
)

#: Every preset by name.
PRESETS: Mapping[str, ChipPreset] = MappingProxyType({p.name: p for p in (HNPU_V1, HNPU_V2)})


def preset_names() -> tuple[str, ...]:
    """The accepted preset names, sorted."""
    return tuple(sorted(PRESETS))


def get_preset(name: str) -> ChipPreset:
    """The preset called ``name``; ValueError listing the accepted names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown chip preset {name!r}; accepted: {', '.join(preset_names())}"
        ) from None
