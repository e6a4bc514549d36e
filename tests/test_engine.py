"""The engine's interface: construction, configuration from a TRAIN_CONFIG message, bad
input (specific status, engine left usable and unchanged), selective training, pruning,
memory, and the numerics of a step in low-precision formats."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_model.config import get_preset
from device_model.engine import Engine, EngineConfig, EngineError, LayerSpec, PolicyEntry
from device_model.engine_policy import next_frac_bits
from protocol.messages import Opcode, decode_request, encode_request, zero_scale
from protocol.range_rules import update_frac_bits
from protocol.status import Status

V1, V2 = get_preset("hnpu-v1"), get_preset("hnpu-v2")
MLP = [
    LayerSpec("linear", in_features=6, out_features=8),
    LayerSpec("relu"),
    LayerSpec("linear", in_features=8, out_features=3),
]
CNN = [
    LayerSpec("conv2d", in_channels=1, out_channels=2, kernel_size=3),
    LayerSpec("relu"),
    LayerSpec("avg_pool2d", kernel_size=2),
    LayerSpec("flatten"),
    LayerSpec("linear", in_features=2 * 2 * 2, out_features=3),
]


def x_t(batch: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 6)).astype(np.float32), rng.integers(0, 3, batch)


def test_weights_are_named_like_a_state_dict_and_kaiming_uniform() -> None:
    eng = Engine((1, 6, 6), CNN, V2, init_seed=3)
    w = eng.get_weights()
    assert {n: v.shape for n, v in w.items()} == {
        "0.weight": (2, 1, 3, 3),
        "0.bias": (2,),
        "4.weight": (3, 8),
        "4.bias": (3,),
    }
    assert all(v.dtype == np.float32 for v in w.values())
    assert np.abs(w["0.weight"]).max() <= 1 / 3 and np.abs(w["4.weight"]).max() <= 8**-0.5
    same = Engine((1, 6, 6), CNN, V2, init_seed=3).get_weights()
    other = Engine((1, 6, 6), CNN, V2, init_seed=4).get_weights()
    assert all(np.array_equal(w[n], same[n]) for n in w)
    assert not np.array_equal(w["0.weight"], other["0.weight"])
    given = Engine((6,), MLP, V2, weights={"2.bias": np.array([1, 2, 3])}).get_weights()
    assert given["2.bias"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("shape", "layers", "status"),
    [
        ((6,), [LayerSpec("linear", in_features=5, out_features=2)], Status.BAD_SHAPE),
        ((6,), [LayerSpec("softmax")], Status.BAD_REQUEST),
        (
            (6,),
            [LayerSpec("linear", in_features=6, out_features=2, dilation=2)],
            Status.BAD_REQUEST,
        ),
        (
            (1, 4, 4),
            [LayerSpec("conv2d", in_channels=1, out_channels=1, kernel_size=5)],
            Status.BAD_SHAPE,
        ),
        ((1, 4, 4), [LayerSpec("linear", in_features=16, out_features=2)], Status.BAD_SHAPE),
        ((6,), [LayerSpec("max_pool2d", kernel_size=2)], Status.BAD_SHAPE),
        ((6,), [], Status.BAD_REQUEST),
    ],
)
def test_models_that_do_not_chain_are_refused(
    shape: tuple[int, ...], layers: list[LayerSpec], status: Status
) -> None:
    with pytest.raises(EngineError) as e:
        Engine(shape, layers, V2)
    assert e.value.status == status
    assert isinstance(e.value, ValueError)


def _unchanged(eng: Engine, before: dict[str, np.ndarray]) -> None:
    after = eng.get_weights()
    assert all(np.array_equal(before[n], after[n]) for n in before)


BAD_STEPS: list[tuple[Any, Any, Status]] = [
    (np.zeros((4, 5)), np.zeros(4, int), Status.BAD_SHAPE),
    (np.zeros((4, 6)), np.zeros(3, int), Status.BAD_SHAPE),
    (np.zeros((4, 6)), np.zeros(4), Status.BAD_SHAPE),  # float class indices
    (np.zeros((4, 6)), np.array([0, 1, 2, 3]), Status.BAD_REQUEST),  # class 3 of 3
    (np.zeros((300, 6)), np.zeros(300, int), Status.LIMIT),
    (np.array([["a"] * 6]), np.zeros(1, int), Status.UNSUPPORTED_FORMAT),
]


@pytest.mark.parametrize(("x", "t", "status"), BAD_STEPS)
def test_bad_steps_raise_and_leave_the_engine_usable(x: Any, t: Any, status: Status) -> None:
    eng = Engine((6,), MLP, V2)
    before = eng.get_weights()
    with pytest.raises(EngineError) as e:
        eng.train_step(x, t)
    assert e.value.status == status
    _unchanged(eng, before)
    assert eng.counters()["total"]["macs_total"] == 0
    eng.train_step(*x_t())  # still usable
    assert not np.array_equal(before["0.weight"], eng.get_weights()["0.weight"])


@pytest.mark.parametrize(
    ("cfg", "status"),
    [
        (EngineConfig(policy=[PolicyEntry("weights", "dfxp3")]), Status.UNSUPPORTED_FORMAT),
        (EngineConfig(policy=[PolicyEntry("weights", "dfxp8", layer=7)]), Status.UNKNOWN_LAYER),
        (
            EngineConfig(policy=[PolicyEntry("weights", "fp16", frac_mode="overflow")]),
            Status.UNSUPPORTED_FORMAT,
        ),
        (
            EngineConfig(
                policy=[PolicyEntry("weights", "dfxp8", frac_mode="stochastic_threshold")]
            ),
            Status.UNSUPPORTED,
        ),  # V2 has no ST unit
        (EngineConfig(laps=True), Status.UNSUPPORTED),  # V2 has no LAPS
        (EngineConfig(algorithm="backprop"), Status.UNSUPPORTED_ALGORITHM),
        (EngineConfig(loss="hinge"), Status.UNSUPPORTED_ALGORITHM),
        (EngineConfig(lr=float("nan")), Status.BAD_REQUEST),
        (EngineConfig(trainable="last_k", last_k=3), Status.BAD_REQUEST),
        (
            EngineConfig(trainable="masks", trainable_masks={"9.weight": np.ones(3)}),
            Status.UNKNOWN_LAYER,
        ),
        (
            EngineConfig(pruning="masks", pruning_masks={"0.weight": np.ones((2, 2))}),
            Status.BAD_SHAPE,
        ),
        (
            EngineConfig(pruning="masks", pruning_masks={"0.weight": np.full(8, 2)}),
            Status.BAD_REQUEST,
        ),
    ],
)
def test_bad_configs_raise_and_change_nothing(cfg: EngineConfig, status: Status) -> None:
    eng = Engine((6,), MLP, V2)
    x, t = x_t()
    ref = Engine((6,), MLP, V2)
    with pytest.raises(EngineError) as e:
        eng.configure(cfg)
    assert e.value.status == status
    assert e.value.detail in str(e.value)
    a, b = eng.train_step(x, t), ref.train_step(x, t)
    assert a.loss == b.loss


def test_dfa_needs_a_preset_with_backward_unlocking() -> None:
    with pytest.raises(EngineError) as e:
        Engine((6,), MLP, V1).configure(EngineConfig(algorithm="dfa"))
    assert e.value.status == Status.UNSUPPORTED_ALGORITHM
    assert "bp" in e.value.detail


def test_set_weights_checks_before_changing_anything() -> None:
    eng = Engine((6,), MLP, V2)
    before = eng.get_weights()
    bad = [
        ({"0.weight": np.zeros((8, 6)), "5.bias": np.zeros(3)}, Status.UNKNOWN_LAYER),
        ({"0.weight": np.zeros((8, 6)), "2.bias": np.zeros(4)}, Status.BAD_SHAPE),
    ]
    for mapping, status in bad:
        with pytest.raises(EngineError) as e:
            eng.set_weights(mapping)
        assert e.value.status == status
        _unchanged(eng, before)


def test_backward_needs_kept_activations_and_the_output_shape() -> None:
    eng = Engine((6,), MLP, V2)
    x, _ = x_t()
    with pytest.raises(EngineError) as e:
        eng.backward(np.zeros((4, 3)))
    assert e.value.status == Status.BAD_REQUEST
    eng.forward(x, keep_activations=True)
    eng.forward(x[:1])  # not kept: BACKWARD still refers to the last kept forward
    with pytest.raises(EngineError) as e:
        eng.backward(np.zeros((4, 2)))
    assert e.value.status == Status.BAD_SHAPE
    r = eng.backward(np.ones((4, 3)))  # the kept activations survived the bad call
    assert r.counters["wg"]["macs_total"] == 4 * (6 * 8 + 8 * 3)
    with pytest.raises(EngineError):  # used up: one BACKWARD per kept forward
        eng.backward(np.ones((4, 3)))
    eng.forward(x, keep_activations=True)
    eng.train_step(x, np.zeros(4, int))  # a step changes the weights: nothing kept any more
    with pytest.raises(EngineError):
        eng.backward(np.ones((4, 3)))


def test_a_model_without_parameters_runs_and_counts_nothing() -> None:
    eng = Engine((2, 4, 4), [LayerSpec("max_pool2d", kernel_size=2), LayerSpec("flatten")], V2)
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    assert eng.forward(x).tolist() == [[5, 7, 13, 15, 21, 23, 29, 31]]
    eng.configure(EngineConfig(loss="mse"))
    res = eng.train_step(x, np.zeros((1, 8), np.float32))
    assert res.counters["total"]["macs_total"] == 0 and res.loss is not None and res.loss > 0
    assert eng.get_weights() == {}


def _wire_config(**over: Any) -> dict[str, Any]:
    entry = {
        "layer": 0xFFFF,
        "tensor_class": "WEIGHTS",
        "format": "DFXP8",
        "rounding": 1,
        "frac_mode": 2,
        "saturate": 1,
        "scale": {**zero_scale(), "frac_bits": 6},
    }
    body: dict[str, Any] = {
        "precision": {"flags": 0, "sr_seed": 99, "policy": [entry]},
        "algorithm": {
            "kind": 1,
            "feedback": 2,
            "feedback_storage": 1,
            "feedback_density": 0.25,
            "feedback_seed": 4,
        },
        "loss": 1,
        "optimizer": {"kind": 0, "lr": 0.5, "momentum": 0.75, "weight_decay": 0.125},
        "trainable": {"mode": 3, "last_k": 0, "masks": [{"layer": 0, "param": 1, "tensor_id": 5}]},
        "pruning": {"mode": 3, "ratio": 0.0, "masks": [{"layer": 2, "param": 0, "tensor_id": 6}]},
    }
    body.update(over)
    return body


def test_config_from_a_decoded_train_config_message() -> None:
    wire = encode_request(Opcode.TRAIN_CONFIG, 1, _wire_config())
    body = decode_request(wire).body
    masks = {5: np.array([1, 0, 1, 0, 1, 0, 1, 0], np.uint8), 6: np.array([1, 1, 0], np.uint8)}
    cfg = EngineConfig.from_message(body, masks)
    assert (cfg.algorithm, cfg.feedback, cfg.feedback_storage) == ("dfa", "sparse", "regenerated")
    assert (cfg.loss, cfg.lr, cfg.momentum, cfg.weight_decay) == ("mse", 0.5, 0.75, 0.125)
    assert (cfg.sr_seed, cfg.feedback_seed, cfg.feedback_density) == (99, 4, 0.25)
    e = cfg.policy[0].normalized()
    assert (e.layer, e.tensor_class, e.format, e.rounding, e.frac_mode, e.frac_bits) == (
        None,
        "weights",
        "dfxp8",
        "stochastic",
        "overflow",
        6,
    )
    assert set(cfg.trainable_masks) == {"0.bias"} and set(cfg.pruning_masks) == {"2.weight"}
    eng = Engine((6,), MLP, V2)
    eng.configure(cfg)
    w0 = eng.get_weights()
    assert np.all(w0["2.weight"][2] == 0)  # channel 2 of layer 2 pruned
    x, _ = x_t()
    eng.train_step(x, np.zeros((4, 3), np.float32))
    w1 = eng.get_weights()
    changed = w0["0.bias"] != w1["0.bias"]
    assert not changed[1::2].any() and changed[0::2].any()  # per-channel trainable mask
    assert np.all(w1["2.weight"][2] == 0)
    with pytest.raises(EngineError) as err:
        EngineConfig.from_message(body, {5: masks[5]})
    assert err.value.status == Status.UNKNOWN_TENSOR


def test_bias_only_training_moves_only_biases() -> None:
    eng = Engine((1, 6, 6), CNN, V2)
    eng.configure(EngineConfig(trainable="bias_only", lr=0.5))
    w0 = eng.get_weights()
    r = eng.train_step(np.ones((2, 1, 6, 6), np.float32), np.array([0, 1]))
    w1 = eng.get_weights()
    for n in w0:
        assert np.array_equal(w0[n], w1[n]) == n.endswith(".weight"), n
    assert r.counters["wg"]["macs_total"] == 0  # no weight gradient is computed


def test_channel_pruning_zeroes_whole_channels_with_smallest_l1_norm() -> None:
    eng = Engine((6,), MLP, V2, init_seed=2)
    norms = np.abs(eng.get_weights()["0.weight"]).sum(axis=1)
    eng.configure(EngineConfig(pruning="channel", pruning_ratio=0.25))
    w = eng.get_weights()
    dead = sorted(np.argsort(norms)[:2].tolist())
    assert sorted(np.where(~w["0.weight"].any(axis=1))[0].tolist()) == dead
    assert np.all(w["0.bias"][dead] == 0)


def test_memory_grows_with_batch_momentum_and_stored_feedback() -> None:
    eng = Engine((6,), MLP, V2)
    base = eng.memory_bytes()
    params = 6 * 8 + 8 + 8 * 3 + 3
    assert base >= 2 * 4 * params  # fp32 master weights and gradients
    assert eng.memory_bytes(batch=10) > base
    eng.configure(EngineConfig(momentum=0.9))
    with_m = eng.memory_bytes()
    assert with_m == base + 4 * params
    eng.configure(EngineConfig(algorithm="dfa", feedback_storage="stored"))
    stored = eng.memory_bytes()
    eng.configure(EngineConfig(algorithm="dfa", feedback_storage="regenerated"))
    assert stored - eng.memory_bytes() == 4 * 8 * 3  # B of the hidden layer, fp32


@pytest.mark.parametrize("fmt", ["bf16", "e4m3", "hfp8", "fp8-seb", "flex16", "fgmp", "dfxp12"])
def test_low_precision_formats_train_and_stay_on_their_grid(fmt: str) -> None:
    mode = "amax" if fmt in ("fp8-seb", "flex16", "dfxp12") else "fixed"
    pol = [
        PolicyEntry(c, fmt, rounding="stochastic", frac_mode=mode)
        for c in ("activations", "weights", "errors", "gradients")
    ]
    eng = Engine((6,), MLP, V2, init_seed=1)
    eng.configure(EngineConfig(policy=pol, lr=0.1, sr_seed=2))
    x, t = x_t(8)
    losses = [float(eng.train_step(x, t).loss or np.nan) for _ in range(15)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_forward_is_deterministic_in_nearest_mode_and_sr_differs_per_pass() -> None:
    pol = [PolicyEntry("activations", "dfxp4", frac_bits=1, rounding="stochastic")]
    eng = Engine((6,), MLP, V2)
    eng.configure(EngineConfig(policy=pol))
    x, _ = x_t()
    a, b = eng.forward(x), eng.forward(x)
    assert not np.array_equal(a, b)  # a new SR stream for every pass
    eng.configure(EngineConfig(policy=[PolicyEntry("activations", "dfxp4", frac_bits=1)]))
    assert np.array_equal(eng.forward(x), eng.forward(x))


@settings(max_examples=60)
@given(
    data=st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=0, max_size=40
    ),
    bits=st.integers(4, 16),
    frac=st.integers(-64, 64),
    scale=st.integers(-20, 20),
)
def test_fast_overflow_rule_equals_the_range_rule(
    data: list[float], bits: int, frac: int, scale: int
) -> None:
    with np.errstate(over="ignore"):  # scaled beyond float32: inf, which must count
        x = np.array(data, np.float32) * np.float32(2.0**scale)
    assert next_frac_bits(x, bits, frac) == update_frac_bits(x, bits, frac)


@pytest.mark.parametrize(("fmt", "after"), [("dfxp4", 8), ("dfxp16", 12)])
def test_laps_widens_a_coarse_layer_and_narrows_a_calm_one(fmt: str, after: int) -> None:
    eng = Engine((6,), MLP, V1)
    pol = [PolicyEntry(c, fmt, frac_mode="amax") for c in ("activations", "weights")]
    eng.configure(EngineConfig(policy=pol, laps=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    slices = []
    for _ in range(8):
        slices.append(eng.train_step(x, rng.integers(0, 3, 8)).counters["ff"]["slice_ops"])
    # 4-bit: large differences from the fp32 result -> 8 bits at once; 16-bit: 8 calm
    # observations -> 12 bits. The FF work follows the width (slices per operand).
    assert {c.bits for c in eng._policy.laps.values()} == {after}
    assert slices[-1] != slices[0]
