"""Golden tests of the training engine (issue 4, "Golden tests").

* fp32: several training steps of an MLP and of a small CNN give the weights of the
  independent numpy backprop in tests/golden_backprop.py (within 1e-5 of the weights' scale);
  the same for DFA with each feedback kind, for MSE and for BACKWARD with a host error.
* DFXP with stochastic rounding and OVERFLOW / STOCHASTIC_THRESHOLD range rules: the engine
  equals its numpy reference (device_model.engine_reference) bit for bit, counters included,
  for BP and DFA (each feedback kind).
* The golden model's gradients of every layer kind agree with central finite differences in
  float64.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from device_model import engine_policy
from device_model.config import get_preset
from device_model.engine import Engine, EngineConfig, LayerSpec, PolicyEntry
from device_model.engine_reference import ReferenceEngine
from tests.golden_backprop import GoldenNet, dfa_feedback

V1, V2 = get_preset("hnpu-v1"), get_preset("hnpu-v2")

MLP: list[tuple[str, dict[str, Any]]] = [
    ("linear", {"in_features": 12, "out_features": 16}),
    ("relu", {}),
    ("linear", {"in_features": 16, "out_features": 10}),
    ("leaky_relu", {"negative_slope": 0.1}),
    ("linear", {"in_features": 10, "out_features": 4}),
]
CNN: list[tuple[str, dict[str, Any]]] = [
    ("conv2d", {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1}),
    ("relu", {}),
    ("max_pool2d", {"kernel_size": 2}),
    (
        "conv2d",
        {
            "in_channels": 3,
            "out_channels": 4,
            "kernel_size": (3, 2),
            "stride": 2,
            "padding": (1, 0),
        },
    ),
    ("leaky_relu", {}),
    ("avg_pool2d", {"kernel_size": 2, "stride": 1, "padding": 1}),
    ("flatten", {}),
    ("linear", {"in_features": 4 * 3 * 3, "out_features": 3}),
]
MLP_IN, CNN_IN = (12,), (2, 8, 8)
CLASSES = {"mlp": 4, "cnn": 3}


def specs(model: list[tuple[str, dict[str, Any]]]) -> list[LayerSpec]:
    return [LayerSpec(k, **p) for k, p in model]


def data(name: str, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = MLP_IN if name == "mlp" else CNN_IN
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    return x, rng.integers(0, CLASSES[name], batch)


def model(name: str) -> tuple[list[tuple[str, dict[str, Any]]], tuple[int, ...]]:
    return (MLP, MLP_IN) if name == "mlp" else (CNN, CNN_IN)


def close(w_engine: dict[str, np.ndarray], w_gold: dict[str, np.ndarray], tol: float) -> None:
    for n, g in w_gold.items():
        err = np.max(np.abs(w_engine[n].astype(np.float64) - g))
        assert err <= tol * np.max(np.abs(g)), (n, err, np.max(np.abs(g)))


# ---------------------------------------------------------------------- fp32 vs golden


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_fp32_bp_steps_equal_golden_backprop(name: str) -> None:
    layers, shape = model(name)
    eng = Engine(shape, specs(layers), V2, init_seed=5)
    eng.configure(EngineConfig(lr=0.1, momentum=0.9, weight_decay=1e-2))
    gold = GoldenNet(layers, eng.get_weights())
    before = eng.get_weights()
    for step in range(4):
        x, t = data(name, 6, seed=step)
        res = eng.train_step(x, t)
        loss, grads, _ = gold.gradients(x, t)
        gold.sgd(grads, 0.1, 0.9, 1e-2)
        assert res.loss == pytest.approx(loss, rel=1e-5)
    close(eng.get_weights(), gold.w, 1e-5)
    # the steps moved every weight tensor (the comparison is not of initial values)
    assert all(not np.array_equal(before[n], v) for n, v in eng.get_weights().items())


@pytest.mark.parametrize("kind", ["dense", "binary", "sparse"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_fp32_dfa_equals_golden_dfa(name: str, kind: str) -> None:
    layers, shape = model(name)
    eng = Engine(shape, specs(layers), V2, init_seed=2)
    cfg = EngineConfig(
        algorithm="dfa",
        feedback=kind,
        feedback_density=0.3,
        feedback_seed=9,
        lr=0.05,
        feedback_storage="regenerated" if kind == "binary" else "stored",
    )
    eng.configure(cfg)
    gold = GoldenNet(layers, eng.get_weights())
    pls = gold.param_layers()
    n_out = CLASSES[name]
    fb = {}
    for a, b in itertools.pairwise(pls):
        x_in_size = int(np.prod(gold.forward(data(name, 1)[0])[1][b][0].shape[1:]))
        fb[a] = dfa_feedback(kind, 9, a, (x_in_size, n_out), 0.3)
    for step in range(3):
        x, t = data(name, 5, seed=10 + step)
        eng.train_step(x, t)
        _, grads = gold.dfa_gradients(x, t, fb)
        gold.sgd(grads, 0.05)
    close(eng.get_weights(), gold.w, 1e-5)
    # DFA is not BP: the hidden layers moved differently from backprop's
    bp = GoldenNet(layers, Engine(shape, specs(layers), V2, init_seed=2).get_weights())
    for step in range(3):
        x, t = data(name, 5, seed=10 + step)
        bp.sgd(bp.gradients(x, t)[1], 0.05)
    assert not np.allclose(bp.w["0.weight"], gold.w["0.weight"], rtol=1e-3, atol=1e-6)


def test_fp32_pipelined_dfa_computes_the_dfa_numbers() -> None:
    layers, shape = model("mlp")
    out = []
    for alg in ("dfa", "pipelined_dfa"):
        eng = Engine(shape, specs(layers), V2, init_seed=1)
        eng.configure(EngineConfig(algorithm=alg, lr=0.1))
        res = eng.train_step(*data("mlp", 4))
        out.append((eng.get_weights(), res))
    assert all(np.array_equal(out[0][0][n], out[1][0][n]) for n in out[0][0])
    # same work, different schedule: PDFA's step latency is not longer than DFA's
    assert out[1][1].counters["total"]["macs_total"] == out[0][1].counters["total"]["macs_total"]
    assert out[1][1].counters["latency_s"] <= out[0][1].counters["latency_s"]


def test_fp32_mse_and_host_error_backward_equal_golden() -> None:
    layers, shape = model("cnn")
    eng = Engine(shape, specs(layers), V2, init_seed=4)
    eng.configure(EngineConfig(loss="mse", lr=0.2, momentum=0.5))
    gold = GoldenNet(layers, eng.get_weights())
    x, _ = data("cnn", 3)
    t = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    res = eng.train_step(x, t)
    loss, grads, _ = gold.gradients(x, t, "mse")
    gold.sgd(grads, 0.2, 0.5)
    assert res.loss == pytest.approx(loss, rel=1e-5)
    err = np.random.default_rng(2).standard_normal((3, 3)).astype(np.float32)
    y = eng.forward(x, keep_activations=True)
    np.testing.assert_allclose(y, gold.forward(x)[0], rtol=1e-5, atol=1e-6)
    back = eng.backward(err)
    assert back.loss is None and back.counters["wg"]["macs_total"] > 0
    _, grads, _ = gold.gradients(x, t, output_error=err)
    gold.sgd(grads, 0.2, 0.5)
    close(eng.get_weights(), gold.w, 1e-5)


# ---------------------------------------------------------------------- DFXP: bit for bit


def dfxp_policy(fmt: str, mode: str) -> list[PolicyEntry]:
    fb = {"dfxp8": (4, 6, 10, 12), "dfxp16": (10, 12, 16, 18)}[fmt]
    return [
        PolicyEntry(cls, fmt, rounding="stochastic", frac_mode=mode, frac_bits=f)
        for cls, f in zip(("activations", "weights", "errors", "gradients"), fb, strict=True)
    ] + [
        PolicyEntry("momentum", "dfxp16", rounding="stochastic", frac_mode="amax"),
        PolicyEntry("master_weights", "fp32", layer=0),
    ]


def bit_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a
    )


def run_pair(name: str, cfg: EngineConfig, preset: Any, steps: int) -> tuple[Engine, Engine]:
    layers, shape = model(name)
    engines = (
        Engine(shape, specs(layers), preset, init_seed=7),
        ReferenceEngine(shape, specs(layers), preset, init_seed=7),
    )
    for e in engines:
        e.configure(cfg)
    for step in range(steps):
        x, t = data(name, 4, seed=20 + step)
        r = [e.train_step(x, t) for e in engines]
        assert r[0].loss == r[1].loss
        assert r[0].counters == r[1].counters
        assert np.array_equal(r[0].outputs, r[1].outputs)  # type: ignore[arg-type]
    return engines


@pytest.mark.parametrize("fmt", ["dfxp8", "dfxp16"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_dfxp_sr_overflow_engine_equals_reference_bit_for_bit(name: str, fmt: str) -> None:
    cfg = EngineConfig(policy=dfxp_policy(fmt, "overflow"), sr_seed=11, lr=0.05, momentum=0.9)
    eng, ref = run_pair(name, cfg, V2, steps=3)
    assert bit_equal(eng.get_weights(), ref.get_weights())
    # the range rule moved some fractional lengths, identically in both
    assert eng._policy.frac == ref._policy.frac
    moved = [k for k, f in eng._policy.frac.items() if f not in (4, 6, 10, 12, 16, 18)]
    assert moved


def test_stochastic_threshold_and_laps_on_v1_bit_for_bit() -> None:
    cfg = EngineConfig(
        policy=dfxp_policy("dfxp8", "stochastic_threshold"), sr_seed=3, laps=True, lr=0.05
    )
    eng, ref = run_pair("cnn", cfg, V1, steps=3)
    assert bit_equal(eng.get_weights(), ref.get_weights())
    assert {i: c.bits for i, c in eng._policy.laps.items()} == {
        i: c.bits for i, c in ref._policy.laps.items()
    }


def test_sr_seed_changes_the_result() -> None:
    base = {"policy": dfxp_policy("dfxp8", "overflow"), "lr": 0.05}
    a, _ = run_pair("mlp", EngineConfig(sr_seed=1, **base), V2, steps=1)  # type: ignore[arg-type]
    b, _ = run_pair("mlp", EngineConfig(sr_seed=2, **base), V2, steps=1)  # type: ignore[arg-type]
    assert not bit_equal(a.get_weights(), b.get_weights())


@pytest.mark.parametrize("kind", ["dense", "binary", "sparse"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_dfa_dfxp_engine_equals_reference(name: str, kind: str) -> None:
    cfg = EngineConfig(
        policy=dfxp_policy("dfxp8", "overflow"),
        sr_seed=5,
        algorithm="dfa",
        feedback=kind,
        feedback_density=0.25,
        feedback_seed=3,
        lr=0.05,
    )
    eng, ref = run_pair(name, cfg, V2, steps=2)
    assert bit_equal(eng.get_weights(), ref.get_weights())


# ---------------------------------------------------------------------- finite differences


GRADCHECK_MODELS: dict[str, tuple[list[tuple[str, dict[str, Any]]], tuple[int, ...]]] = {
    "linear": ([("linear", {"in_features": 5, "out_features": 3})], (5,)),
    "conv2d": (
        [
            (
                "conv2d",
                {
                    "in_channels": 2,
                    "out_channels": 2,
                    "kernel_size": (3, 2),
                    "stride": (2, 1),
                    "padding": (1, 1),
                },
            ),
            ("flatten", {}),
        ],
        (2, 5, 4),
    ),
    "relu": ([("relu", {}), ("linear", {"in_features": 6, "out_features": 2})], (6,)),
    "leaky_relu": (
        [
            ("leaky_relu", {"negative_slope": 0.2}),
            ("linear", {"in_features": 6, "out_features": 2}),
        ],
        (6,),
    ),
    "max_pool2d": (
        [("max_pool2d", {"kernel_size": 2, "stride": 1, "padding": 1}), ("flatten", {})],
        (1, 3, 3),
    ),
    "avg_pool2d": (
        [("avg_pool2d", {"kernel_size": 3, "stride": 2, "padding": 1}), ("flatten", {})],
        (2, 4, 4),
    ),
    "flatten": ([("flatten", {}), ("linear", {"in_features": 8, "out_features": 3})], (2, 2, 2)),
}


def _init(layers: list[tuple[str, dict[str, Any]]], shape: tuple[int, ...]) -> dict[str, Any]:
    return Engine(shape, specs(layers), V2, init_seed=1).get_weights()


@pytest.mark.parametrize("kind", sorted(GRADCHECK_MODELS))
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_golden_gradients_match_finite_differences(kind: str, loss: str) -> None:
    layers, shape = GRADCHECK_MODELS[kind]
    net = GoldenNet(layers, _init(layers, shape))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *shape))
    y0, _ = net.forward(x)
    t = rng.integers(0, y0.shape[1], 2) if loss != "mse" else rng.standard_normal(y0.shape)
    _, grads, dx = net.gradients(x, t, loss)
    h = 1e-6

    def f(xx: np.ndarray) -> float:
        return net.loss(net.forward(xx)[0], t, loss)[0]

    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        assert (f(xp) - f(xm)) / (2 * h) == pytest.approx(dx[idx], abs=1e-6)
    for n, g in grads.items():
        for idx in np.ndindex(g.shape):
            old = net.w[n][idx]
            net.w[n][idx] = old + h
            lp = f(x)
            net.w[n][idx] = old - h
            lm = f(x)
            net.w[n][idx] = old
            assert (lp - lm) / (2 * h) == pytest.approx(g[idx], abs=1e-6)


def test_engine_gradient_is_the_golden_float64_gradient() -> None:
    """One plain SGD step with lr = 1 exposes the engine's gradient: (w0 - w1) = g."""
    layers, shape = model("cnn")
    eng = Engine(shape, specs(layers), V2, init_seed=8)
    eng.configure(EngineConfig(lr=1.0))
    w0 = eng.get_weights()
    x, t = data("cnn", 2, seed=3)
    eng.train_step(x, t)
    _, grads, _ = GoldenNet(layers, w0).gradients(x, t)
    for n, g in grads.items():
        got = w0[n].astype(np.float64) - eng.get_weights()[n]
        assert np.max(np.abs(got - g)) <= 1e-5 * max(np.max(np.abs(g)), 1e-3), n


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "e4m3", "fgmp", "fp8-seb"])
def test_float_formats_with_sr_engine_equals_reference(fmt: str) -> None:
    mode = "amax" if fmt == "fp8-seb" else "fixed"
    pol = [
        PolicyEntry(c, fmt, rounding="stochastic", frac_mode=mode)
        for c in ("activations", "weights", "errors", "gradients", "momentum")
    ]
    cfg = EngineConfig(policy=pol, sr_seed=13, lr=0.05, momentum=0.5)
    eng, ref = run_pair("cnn", cfg, V2, steps=2)
    assert bit_equal(eng.get_weights(), ref.get_weights())


@pytest.mark.parametrize("preset", [V1, V2], ids=["hnpu-v1", "hnpu-v2"])
@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_codes_only_dfxp_operands_change_nothing(name: str, pruned: bool, preset: Any) -> None:
    """Large DFXP activations, weights and errors are quantized to codes only (values
    computed when read; zeros counted in the codes). Forcing that path on these small models
    gives the reference engine's bits and counters, and the eager path's weights, with
    unmasked and masked (pruning, hnpu-v1's output-zero skipping) counting."""
    extra: dict[str, Any] = {"pruning": "magnitude", "pruning_ratio": 0.3} if pruned else {}
    cfg = EngineConfig(
        policy=dfxp_policy("dfxp8", "overflow"), sr_seed=5, lr=0.05, momentum=0.9, **extra
    )
    eager, _ = run_pair(name, cfg, preset, steps=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_policy, "_LAZY_VALUES_MIN", 0)
        lazy, ref = run_pair(name, cfg, preset, steps=2)
    assert bit_equal(lazy.get_weights(), ref.get_weights())
    assert bit_equal(lazy.get_weights(), eager.get_weights())
    assert lazy.counters() == eager.counters()
