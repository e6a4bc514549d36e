"""AMAX-scaled fixed-point tensors: the engine (one C call finds the scale and encodes, the
integer GEMMs write float32 themselves) equals its numpy reference bit for bit.

The configuration of ``microtrain bench step``'s ``dfxp8+sr`` (activations, weights, errors
and gradients in dfxp8 with stochastic rounding and AMAX scales) and a dfxp16 / flex16
variant, on an MLP, a CNN and a Linear layer wide enough for the codes-only operands and the
kernel's K blocks (K > 512): weights, outputs, loss and counters after several steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from device_model.engine import Engine, EngineConfig, PolicyEntry
from device_model.engine_reference import ReferenceEngine

from .test_engine_golden import CNN, CNN_IN, MLP, MLP_IN, V2, bit_equal, specs

WIDE: list[tuple[str, dict[str, Any]]] = [
    ("linear", {"in_features": 600, "out_features": 130}),
    ("relu", {}),
    ("linear", {"in_features": 130, "out_features": 3}),
]


def _policy(fmt: str) -> list[PolicyEntry]:
    return [
        PolicyEntry(c, fmt, rounding="stochastic", frac_mode="amax", frac_bits=6)
        for c in ("activations", "weights", "errors", "gradients")
    ]


@pytest.mark.parametrize("fmt", ["dfxp8", "dfxp16", "flex16"])
@pytest.mark.parametrize(
    ("layers", "shape", "batch"), [(MLP, MLP_IN, 5), (CNN, CNN_IN, 3), (WIDE, (600,), 130)]
)
def test_amax_engine_equals_reference_bit_for_bit(
    fmt: str, layers: list[tuple[str, dict[str, Any]]], shape: tuple[int, ...], batch: int
) -> None:
    cfg = EngineConfig(policy=_policy(fmt), sr_seed=5, lr=0.05, momentum=0.9)
    eng = Engine(shape, specs(layers), V2, init_seed=3)
    ref = ReferenceEngine(shape, specs(layers), V2, init_seed=3)
    for e in (eng, ref):
        e.configure(cfg)
    rng = np.random.default_rng(len(layers))
    classes = eng.output_shape[0]
    for _ in range(3):
        x = np.abs(rng.standard_normal((batch, *shape))).astype(np.float32)
        t = rng.integers(0, classes, batch)
        r = [e.train_step(x, t) for e in (eng, ref)]
        assert r[0].loss == r[1].loss
        assert r[0].counters == r[1].counters
        assert np.array_equal(r[0].outputs, r[1].outputs)  # type: ignore[arg-type]
    assert bit_equal(eng.get_weights(), ref.get_weights())
