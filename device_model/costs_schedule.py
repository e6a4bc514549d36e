"""Training schedules: the latency of one training step from per-layer stage cycles.

Given each layer's stage cycles (from ``device_model.costs.stage_costs``), the step latency of

* BP: FF of every layer, then EP and WG layer by layer from the last one (backward locking,
  survey III-B-5): every stage waits for the previous one, ``sum(ff + ep + wg + update)``;
* DFA: the output error reaches every layer at once (survey VIII-B, Fig. 5), so the EP of all
  layers is issued together: ``sum(ff) + max(ep) + sum(wg + update)`` when each layer's EP runs
  on its own unit (DF-LNPU's direct error propagation core), ``sum(ep)`` in place of
  ``max(ep)`` when they share one array (``ep_parallel=False``);
* pipelined DFA (PDFA): the FF of the next step overlaps the backward work (EP, WG, update) of
  this one, layer by layer: the steady-state step period is the survey's Table 5 DFA row,
  ``sum_l max(ff_l, ep_l + wg_l + update_l)``. Overlap needs two engines; when forward and
  backward share one PE array, the caller costs each stage on its share of the array
  (``stage_costs(..., pe_share=...)``) and ``pdfa_shared_period`` adds the bounds the shared
  memory system sets. ``pdfa_split_costs`` does all of it from the stages' work records (the
  engine and the analytic figures both use it): the array split in proportion to the forward
  and backward slice products, each stage costed on its share, the period, and static power
  charged over the period (not over the sum of the overlapped stages' times).

Table 5's processing-time column for the delayed-gradient methods (DDG, FDG) is in
``table5_time``. docs/chip-model.md ("Schedules") has the derivation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from device_model.config import ChipPreset
from device_model.costs import StageCounters, StageWork, stage_costs, sum_counters

__all__ = [
    "TABLE5_METHODS",
    "LayerCycles",
    "bp_latency",
    "dfa_latency",
    "pdfa_period",
    "pdfa_shared_period",
    "pdfa_split_costs",
    "static_pj",
    "table5_time",
]

TABLE5_METHODS: tuple[str, ...] = ("bp", "ddg", "fdg", "dfa")


@dataclass(frozen=True)
class LayerCycles:
    """The stage cycles of one layer for one training step."""

    ff: int
    ep: int = 0
    wg: int = 0
    update: int = 0

    def __post_init__(self) -> None:
        for name in ("ff", "ep", "wg", "update"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"LayerCycles.{name} must be a non-negative int, got {v!r}")

    @property
    def backward(self) -> int:
        """EP + WG + update: the work after the output error is known."""
        return self.ep + self.wg + self.update


def _check(layers: Sequence[LayerCycles]) -> None:
    if not layers:
        raise ValueError("a schedule needs at least one layer")
    for x in layers:
        if not isinstance(x, LayerCycles):
            raise ValueError(f"layers must be LayerCycles, got {type(x).__name__}")


def bp_latency(layers: Sequence[LayerCycles]) -> int:
    """Backpropagation: every stage of every layer in sequence."""
    _check(layers)
    return sum(x.ff + x.backward for x in layers)


def dfa_latency(layers: Sequence[LayerCycles], *, ep_parallel: bool = True) -> int:
    """DFA without pipelining: FF, then the EP of all layers together, then WG and update."""
    _check(layers)
    ep = max(x.ep for x in layers) if ep_parallel else sum(x.ep for x in layers)
    return sum(x.ff for x in layers) + ep + sum(x.wg + x.update for x in layers)


def pdfa_period(layers: Sequence[LayerCycles]) -> int:
    """Pipelined DFA, steady state: cycles per step with FF of step n+1 overlapping the
    backward work of step n layer by layer (Table 5's DFA row)."""
    _check(layers)
    return sum(max(x.ff, x.backward) for x in layers)


def pdfa_shared_period(
    forward: Sequence[StageCounters],
    backward: Sequence[StageCounters],
    preset: ChipPreset,
) -> int:
    """Pipelined DFA on one chip whose PE array is split between the forward and the backward
    engine: ``forward[l]`` is layer l's FF counters and ``backward[l]`` the sum of its EP, WG
    and update counters, each costed on its share of the array. The period is the Table 5 DFA
    row over those cycles, and at least the time the shared DRAM and SRAM need for all the
    bytes of the step (the two engines do not get two memory systems)."""
    if len(forward) != len(backward):
        raise ValueError("forward and backward need one entry per layer")
    layers = [LayerCycles(ff=f.cycles, ep=b.cycles) for f, b in zip(forward, backward, strict=True)]
    period = pdfa_period(layers)
    dram = sum(c.dram_read_bytes + c.dram_write_bytes for c in (*forward, *backward))
    sram = sum(c.sram_read_bytes + c.sram_write_bytes for c in (*forward, *backward))
    return max(
        period,
        math.ceil(dram / preset.dram_bytes_per_cycle),
        math.ceil(sram / preset.sram_bytes_per_cycle),
    )


def static_pj(preset: ChipPreset, cycles: float) -> float:
    """Static energy (pJ) of the whole chip over ``cycles``."""
    return preset.static_power_w * cycles / preset.clock_hz * 1e12


#: Bounds of the forward engine's share of a split array (neither engine gets nothing).
_SHARE_BOUNDS = (0.05, 0.95)


def pdfa_split_costs(
    works: Sequence[Mapping[str, Sequence[StageWork]]],
    preset: ChipPreset,
    *,
    dedicated_engines: bool = False,
) -> tuple[list[dict[str, StageCounters]], int, float]:
    """Pipelined DFA on ``preset``: per layer, the counters of each stage, the steady-state
    period in cycles and the forward engine's share of the PE array.

    ``works[l][stage]`` lists the work records of layer l's stage ("ff", "ep", "wg",
    "update"). One PE array (the survey's HNPU-V2: the same hardware as V1) is split between a
    forward engine (FF) and a backward engine (EP, WG, update) in proportion to their slice
    products over the step (bounded to 5..95%); each stage is costed on its engine's share;
    the period is ``pdfa_shared_period``. ``dedicated_engines=True`` gives each engine a
    full-size array (DF-LNPU-style heterogeneous cores: twice the PEs and twice the static
    power). Static energy: the chip's static power over the period (times the number of
    arrays), attributed to the stages in proportion to their cycles x share; each stage's
    dynamic energy is unchanged, so the stages' energies add up to dynamic + static over the
    period."""
    if not works:
        raise ValueError("a schedule needs at least one layer")
    full = [{s: [stage_costs(w, preset) for w in ws] for s, ws in lw.items()} for lw in works]
    share = {"ff": 1.0, "back": 1.0}
    if not dedicated_engines:
        fwd_ops = sum(c.slice_ops for lw in full for c in lw.get("ff", ()))
        tot_ops = sum(c.slice_ops for lw in full for cs in lw.values() for c in cs)
        lo, hi = _SHARE_BOUNDS
        share["ff"] = min(max(fwd_ops / tot_ops, lo), hi) if tot_ops else 0.5
        share["back"] = 1.0 - share["ff"]

    def sh(stage: str) -> float:
        return share["ff" if stage == "ff" else "back"]

    costed = [
        {
            s: sum_counters(stage_costs(w, preset, pe_share=sh(s)) for w in ws)
            for s, ws in lw.items()
            if ws
        }
        for lw in works
    ]
    fwd = [lw.get("ff", StageCounters()) for lw in costed]
    bwd = [sum_counters(c for s, c in lw.items() if s != "ff") for lw in costed]
    period = pdfa_shared_period(fwd, bwd, preset)
    weight = {(i, s): c.cycles * sh(s) for i, lw in enumerate(costed) for s, c in lw.items()}
    total_w = sum(weight.values())
    static_total = static_pj(preset, period) * (2 if dedicated_engines else 1)
    out = []
    for i, lw in enumerate(costed):
        d = {}
        for s, c in lw.items():
            own = static_pj(preset, c.cycles) * sh(s)
            part = static_total * weight[(i, s)] / total_w if total_w else 0.0
            d[s] = dataclasses.replace(c, energy_pj=c.energy_pj - own + part)
        out.append(d)
    return out, period, share["ff"]


def table5_time(method: str, t_a: Sequence[float], t_e: Sequence[float]) -> float:
    """Survey Table 5, "Proc. Time": per-layer forward times ``t_a`` and backward times
    ``t_e`` (EP + WG of the layer) combined as BP ``sum(T_A) + sum(T_E)``, DDG
    ``sum(T_A) + max(T_E)``, FDG ``max(T_A) + max(T_E)``, DFA ``sum_l max(T_Al, T_El)``."""
    if len(t_a) != len(t_e) or not t_a:
        raise ValueError("t_a and t_e need one entry per layer (at least one)")
    if method == "bp":
        return sum(t_a) + sum(t_e)
    if method == "ddg":
        return sum(t_a) + max(t_e)
    if method == "fdg":
        return max(t_a) + max(t_e)
    if method == "dfa":
        return sum(max(a, e) for a, e in zip(t_a, t_e, strict=True))
    raise ValueError(f"unknown method {method!r}; accepted: {', '.join(TABLE5_METHODS)}")
