"""Cost-model figures the design-space studies need and no device URL can express.

``microtrain reproduce bu`` reports DDG and FDG (which the engine does not train) from the
memory model and Table 5's time formulas over per-layer analytic times; ``microtrain reproduce
presets`` sets the analytic HNPU-V1/V2 comparison beside the one measured through the device.
The studies live in ``host`` and never import ``device_model``: the CLI (the application
layer) hands them this module. Everything here returns plain numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from device_model.config import get_preset
from device_model.costs import stage_costs
from device_model.costs_analytic import FcLayer, Precision, Sparsity, fc_stage_work, slice_density
from device_model.costs_figures import scenario_v1, scenario_v2, step_costs
from device_model.costs_schedule import table5_time
from device_model.memory_model import LayerMemory, training_memory

__all__ = ["fc_layer_cycles", "presets_comparison", "table5_memory", "table5_time"]


def _fc_layers(sizes: Sequence[int]) -> list[FcLayer]:
    """An MLP's layers: ReLU and prunable on every layer but the last."""
    last = len(sizes) - 2
    return [
        FcLayer(a, b, relu=i < last, prunable=i < last)
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    ]


def table5_memory(
    sizes: Sequence[int],
    batch: int,
    *,
    act_bits: int,
    err_bits: int,
    weight_bits: int,
    feedback_bits: int,
    methods: Sequence[str] = ("bp", "ddg", "fdg", "dfa"),
) -> dict[str, dict[str, int]]:
    """Bytes kept for training per tensor kind (survey Table 5, ``memory_model``) of an MLP
    with the given layer widths, for each method."""
    n_cls = sizes[-1]
    last = len(sizes) - 2
    layers = [
        LayerMemory(
            activations=batch * a * act_bits // 8,
            errors=batch * b * err_bits // 8,
            weights=(a * b + b) * weight_bits // 8,
            feedback=0 if i == last else b * n_cls * feedback_bits // 8,
        )
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    ]
    return {m: training_memory(layers, m) for m in methods}


def fc_layer_cycles(
    preset: str,
    sizes: Sequence[int],
    batch: int,
    *,
    bits: int,
    activation_zero: float,
    input_zero: float,
) -> dict[str, dict[str, list[int]]]:
    """Per-layer FF, EP and WG cycles of an MLP under BP and DFA from the analytic work
    records (``costs_analytic.fc_stage_work`` costed by ``costs.stage_costs``), with DFXP
    operands of ``bits`` and the given zero shares."""
    p = get_preset(preset)
    prec = Precision(
        act_bits=bits, weight_bits=bits, error_bits=bits, grad_bits=bits, feedback_bits=bits
    )
    sp = Sparsity(
        activation_zero=min(activation_zero, 0.99),
        input_zero_first=min(input_zero, 0.99),
        slice_density=slice_density(bits),
    )
    out: dict[str, dict[str, list[int]]] = {}
    for alg in ("bp", "dfa"):
        per: dict[str, list[int]] = {"ff": [], "ep": [], "wg": []}
        for i, layer in enumerate(_fc_layers(sizes)):
            for s, cycles in per.items():
                w = fc_stage_work(
                    p, s, layer, batch=batch, precision=prec, sparsity=sp, first=i == 0,
                    algorithm=alg, n_classes=sizes[-1],
                )  # fmt: skip
                cycles.append(stage_costs(w, p).cycles if w is not None else 0)
        out[alg] = per
    return out


def presets_comparison(sizes: Sequence[int], batch: int) -> dict[str, dict[str, Any]]:
    """The analytic online-tuning comparison (``costs_figures``) on an MLP: HNPU-V1 with BP,
    HNPU-V2 with pipelined DFA and pruning, and HNPU-V2 with BP and pruning."""
    layers = tuple(_fc_layers(sizes))
    out = {}
    for name, sc in (
        ("v1-bp", scenario_v1()),
        ("v2-pdfa-pruned", scenario_v2()),
        ("v2-bp-pruned", scenario_v2(algorithm="bp")),
    ):
        costs = step_costs(sc, layers, batch)
        totals = costs.stage_totals()
        out[name] = {
            "latency_ms": costs.latency_s * 1e3,
            "energy_uj": costs.energy_pj * 1e-6,
            "stage_cycles": {s: c.cycles for s, c in totals.items()},
            "stage_energy_uj": {s: c.energy_pj * 1e-6 for s, c in totals.items()},
        }
    return out
