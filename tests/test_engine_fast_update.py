"""The update that also counts the new weights' zeros (datapath.sgd_update_zc) against
sgd_update followed by zero_counts, and the engine's use of those counts in the next FF and
EP: counters and weights equal to an engine that counts them again, and to the reference
engine, with weights that stay exactly zero."""

from __future__ import annotations

import numpy as np
import pytest

from device_model import datapath as dp
from device_model.config import get_preset
from device_model.engine import Engine, EngineConfig, LayerSpec
from device_model.engine_reference import ReferenceEngine


@pytest.mark.parametrize("kernel", ["auto", "portable"])
@pytest.mark.parametrize("shape", [(512, 300), (8, 1, 3, 3), (5,), (33, 17), (0, 4), (3, 0)])
def test_sgd_update_zc_equals_update_then_zero_counts(
    kernel: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICROTRAIN_KERNEL", kernel)
    rng = np.random.default_rng(sum(shape))
    for momentum, wd, threads in ((False, 0.0, 1), (True, 1e-3, 2), (True, 0.0, None)):
        w = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        m = rng.standard_normal(shape).astype(np.float32)
        still = rng.random(shape) < 0.3  # elements that stay exactly zero
        w[still], g[still], m[still] = 0.0, 0.0, 0.0
        w[rng.random(shape) < 0.05] = -0.0
        w2, m2 = w.copy(), m.copy()
        mu = 0.9 if momentum else 0.0
        dp.sgd_update(
            w2, g, lr=0.05, momentum=m2 if momentum else None, mu=mu, weight_decay=wd,
            threads=threads,
        )  # fmt: skip
        rows, cols = dp.sgd_update_zc(
            w, g, lr=0.05, momentum=m if momentum else None, mu=mu, weight_decay=wd,
            threads=threads,
        )  # fmt: skip
        assert np.array_equal(w.view(np.uint32), w2.view(np.uint32))
        assert np.array_equal(m.view(np.uint32), m2.view(np.uint32))
        mat = w2.reshape(shape[0], int(np.prod(shape[1:])))
        want_r, want_c = (mat == 0).sum(axis=1), (mat == 0).sum(axis=0)
        assert np.array_equal(rows, want_r) and np.array_equal(cols, want_c)


def _engines() -> list[Engine]:
    layers = [
        LayerSpec("conv2d", in_channels=1, out_channels=4, kernel_size=3, padding=1),
        LayerSpec("relu"),
        LayerSpec("flatten"),
        LayerSpec("linear", in_features=4 * 6 * 6, out_features=12),
        LayerSpec("relu"),
        LayerSpec("linear", in_features=12, out_features=3),
    ]
    preset = get_preset("hnpu-v2")
    out = [Engine((1, 6, 6), layers, preset, init_seed=2) for _ in range(2)]
    out.append(ReferenceEngine((1, 6, 6), layers, preset, init_seed=2))
    for e in out:
        w = e.get_weights()
        # conv channel 1 is zero after its ReLU (zero weights, bias -100): its weights get no
        # gradient, nor do the Linear weights reading it, so both stay exactly zero
        w["0.weight"][1] = 0.0
        w["0.bias"][1] = -100.0
        w["3.weight"][:, 36:72] = 0.0
        e.set_weights(w)
        e.configure(EngineConfig(lr=0.1, momentum=0.5))
    return out


def test_engine_reuses_update_zero_counts_bit_for_bit() -> None:
    fast, recount, ref = _engines()
    rng = np.random.default_rng(4)
    for _ in range(4):
        x = rng.standard_normal((5, 1, 6, 6)).astype(np.float32)
        t = rng.integers(0, 3, 5)
        recount._wz.clear()  # counts the weights' zeros again in FF
        results = [e.train_step(x, t) for e in (fast, recount, ref)]
        assert results[0].counters == results[1].counters == results[2].counters
        assert set(fast._wz) == {"0.weight", "3.weight", "5.weight"}  # counted by the update
    ws = [e.get_weights() for e in (fast, recount, ref)]
    for n in ws[0]:
        assert np.array_equal(ws[0][n].view(np.uint32), ws[1][n].view(np.uint32))
        assert np.array_equal(ws[0][n].view(np.uint32), ws[2][n].view(np.uint32))
    # the zero channel of the first layer is still zero and counted as weight zeros
    w = fast.get_weights()
    assert not w["0.weight"][1].any() and not w["3.weight"][:, 36:72].any()
    assert results[0].counters["ff"]["skipped"]["weight_zero"] > 0
