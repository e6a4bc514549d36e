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
  memory system sets.

Table 5's processing-time column for the delayed-gradient methods (DDG, FDG) is in
``table5_time``. docs/chip-model.md ("Schedules") has the derivation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from device_model.config import ChipPreset
from device_model.costs import StageCounters

__all__ = [
    "TABLE5_METHODS",
    "LayerCycles",
    "bp_latency",
    "dfa_latency",
    "pdfa_period",
    "pdfa_shared_period",
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
