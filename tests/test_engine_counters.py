"""Counters of the training engine (issue 4, "Counters"): the MACs of every stage equal the
analytic count for the layer shapes and batch, and the skipped MACs by reason equal the zeros
numpy counts in the same tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_model.config import get_preset
from device_model.engine import Engine, EngineConfig, LayerSpec, PolicyEntry
from device_model.engine_counts import count_macs
from device_model.gemm_reference import gemm_stats_ref
from protocol.numerics import encode

V1, V2 = get_preset("hnpu-v1"), get_preset("hnpu-v2")


def mlp(n_in: int = 10, hidden: int = 12, n_out: int = 4) -> list[LayerSpec]:
    return [
        LayerSpec("linear", in_features=n_in, out_features=hidden),
        LayerSpec("relu"),
        LayerSpec("linear", in_features=hidden, out_features=hidden),
        LayerSpec("relu"),
        LayerSpec("linear", in_features=hidden, out_features=n_out),
    ]


CNN = [
    LayerSpec("conv2d", in_channels=2, out_channels=3, kernel_size=3, padding=1),
    LayerSpec("relu"),
    LayerSpec("max_pool2d", kernel_size=2),
    LayerSpec(
        "conv2d", in_channels=3, out_channels=5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2)
    ),
    LayerSpec("relu"),
    LayerSpec("flatten"),
    LayerSpec("linear", in_features=5 * 2 * 7, out_features=3),
]


def conv_macs(
    n: int,
    c: int,
    o: int,
    hw: tuple[int, int],
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int],
) -> tuple[int, int]:
    """(FF/WG MACs, EP MACs) of a convolution: EP counts only the MACs whose input position
    is inside the (unpadded) input (the others produce nothing)."""
    out = [(hw[d] + 2 * p[d] - k[d]) // s[d] + 1 for d in range(2)]
    ff = n * o * c * out[0] * out[1] * k[0] * k[1]
    inside = [
        sum(1 for a in range(out[d]) for i in range(k[d]) if 0 <= a * s[d] + i - p[d] < hw[d])
        for d in range(2)
    ]
    return ff, n * o * c * inside[0] * inside[1]


@pytest.mark.parametrize("batch", [1, 7])
def test_mlp_macs_total_is_the_analytic_count(batch: int) -> None:
    eng = Engine((10,), mlp(), V2)
    eng.configure(EngineConfig(momentum=0.9))
    rng = np.random.default_rng(0)
    c = eng.train_step(rng.standard_normal((batch, 10)), rng.integers(0, 4, batch)).counters
    sizes = [(10, 12), (12, 12), (12, 4)]
    ff = sum(batch * a * b for a, b in sizes)
    params = sum(a * b + b for a, b in sizes)
    assert c["ff"]["macs_total"] == ff
    assert c["wg"]["macs_total"] == ff
    assert c["ep"]["macs_total"] == ff - batch * 10 * 12  # no error into the input
    assert c["update"]["macs_total"] == 2 * params
    stages = ("ff", "ep", "wg", "update")
    assert c["total"]["macs_total"] == sum(c[s]["macs_total"] for s in stages)
    for s in stages:
        st = c[s]
        assert (
            st["macs_executed"] + sum(v for r, v in st["skipped"].items() if r != "zero_slice")
            == st["macs_total"]
        )


def test_cnn_macs_total_is_the_analytic_count() -> None:
    batch = 3
    eng = Engine((2, 8, 8), CNN, V2)
    rng = np.random.default_rng(1)
    c = eng.train_step(rng.standard_normal((batch, 2, 8, 8)), rng.integers(0, 3, batch)).counters
    ff1, _ = conv_macs(batch, 2, 3, (8, 8), (3, 3), (1, 1), (1, 1))
    ff2, ep2 = conv_macs(batch, 3, 5, (4, 4), (3, 2), (2, 1), (1, 2))
    fc = batch * 70 * 3
    assert c["ff"]["macs_total"] == ff1 + ff2 + fc
    assert c["wg"]["macs_total"] == ff1 + ff2 + fc
    assert c["ep"]["macs_total"] == ep2 + fc
    assert ep2 < ff2  # padding: some FF MACs have no EP counterpart
    params = 3 * 2 * 9 + 3 + 5 * 3 * 6 + 5 + 70 * 3 + 3
    assert c["update"]["macs_total"] == 2 * params


def test_dfa_ep_macs_are_feedback_products() -> None:
    batch = 4
    eng = Engine((10,), mlp(), V2)
    eng.configure(EngineConfig(algorithm="dfa"))
    rng = np.random.default_rng(2)
    c = eng.train_step(rng.standard_normal((batch, 10)), rng.integers(0, 4, batch)).counters
    # hidden layers 0 and 2 get e_out (4 outputs) through B of shape (12, 4)
    assert c["ep"]["macs_total"] == 2 * batch * 12 * 4
    assert c["ep"]["transpose_penalty_cycles"] == 0
    # BP reads W transposed in EP: with software re-arrangement that costs cycles
    sw = V2.with_overrides(transpose_mode="software")
    bp = Engine((10,), mlp(), sw).train_step(rng.standard_normal((batch, 10)), np.zeros(batch, int))
    assert bp.counters["ep"]["transpose_penalty_cycles"] > 0
    assert bp.counters["ff"]["transpose_penalty_cycles"] == 0


def numpy_layers(eng: Engine, x: np.ndarray) -> list[np.ndarray]:
    """Inputs of the three linear layers, computed in float32 numpy."""
    w = eng.get_weights()
    h0 = x.astype(np.float32)
    h1 = np.maximum(h0 @ w["0.weight"].T + w["0.bias"], 0)
    h2 = np.maximum(h1 @ w["2.weight"].T + w["2.bias"], 0)
    return [h0, h1, h2]


def test_ff_and_wg_input_and_weight_zeros_equal_numpy_counts() -> None:
    rng = np.random.default_rng(3)
    eng = Engine((10,), mlp(), V2, init_seed=3)
    w = eng.get_weights()
    w["2.weight"][rng.random(w["2.weight"].shape) < 0.3] = 0.0
    eng.set_weights(w)
    x = rng.standard_normal((6, 10)).astype(np.float32)
    x[x < -0.5] = 0.0
    ins = numpy_layers(eng, x)
    ws = [w["0.weight"], w["2.weight"], w["4.weight"]]
    c = eng.train_step(x, rng.integers(0, 4, 6)).counters
    in_zero = sum(int((h == 0).sum()) * wm.shape[0] for h, wm in zip(ins, ws, strict=True))
    w_zero = sum(
        int(((h != 0)[:, None, :] & (wm == 0)[None, :, :]).sum())
        for h, wm in zip(ins, ws, strict=True)
    )
    assert c["ff"]["skipped"]["input_zero"] == in_zero > 0
    assert c["ff"]["skipped"]["weight_zero"] == w_zero > 0
    # V2's WG skips zero inputs (IA) too: the same zeros, one MAC per output neuron
    assert c["wg"]["skipped"]["input_zero"] == in_zero


def test_v1_ep_skips_outputs_masked_by_relu() -> None:
    rng = np.random.default_rng(4)
    eng = Engine((10,), mlp(), V1, init_seed=4)
    x = rng.standard_normal((5, 10)).astype(np.float32)
    ins = numpy_layers(eng, x)
    c = eng.train_step(x, rng.integers(0, 4, 5)).counters
    # EP of layers 2 and 4 writes the errors of h1 and h2; a zero of ReLU needs no MACs
    masked = int((ins[1] == 0).sum()) * 12 + int((ins[2] == 0).sum()) * 4
    assert c["ep"]["skipped"]["output_zero"] == masked > 0
    assert c["ep"]["skipped"]["weight_zero"] == 0  # V1 does not skip zero weights


def test_pruned_work_is_counted_in_every_stage() -> None:
    rng = np.random.default_rng(5)
    eng = Engine((10,), mlp(), V2, init_seed=5)
    eng.configure(EngineConfig(pruning="magnitude", pruning_ratio=0.5, momentum=0.9))
    w = eng.get_weights()
    pruned = {n: int((w[n] == 0).sum()) for n in ("0.weight", "2.weight", "4.weight")}
    assert pruned == {"0.weight": 60, "2.weight": 72, "4.weight": 24}
    c = eng.train_step(rng.standard_normal((3, 10)), rng.integers(0, 4, 3)).counters
    total = sum(pruned.values())
    assert c["ff"]["skipped"]["pruned"] == 3 * total
    assert c["ep"]["skipped"]["pruned"] == 3 * (72 + 24)
    assert c["wg"]["skipped"]["pruned"] == 3 * total
    assert c["update"]["skipped"]["pruned"] == 2 * total
    after = eng.get_weights()
    assert all(int((after[n] == 0).sum()) >= pruned[n] for n in pruned)
    assert all(np.all(after[n][w[n] == 0] == 0) for n in pruned)  # pruned weights stay zero


def test_zero_slices_of_dfxp_codes_equal_numpy_slice_counts() -> None:
    eng = Engine((10,), [LayerSpec("linear", in_features=10, out_features=6)], V2)
    pol = [
        PolicyEntry("activations", "dfxp8", frac_bits=5),
        PolicyEntry("weights", "dfxp8", frac_bits=7),
    ]
    eng.configure(EngineConfig(policy=pol, trainable="bias_only"))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 10)).astype(np.float32)
    ca = encode(x, "dfxp8", frac_bits=5)
    cw = encode(eng.get_weights()["0.weight"], "dfxp8", frac_bits=7)
    st = gemm_stats_ref(ca, cw, trans_b=True)
    eng.forward(x)
    c = eng.counters()["ff"]
    assert c["skipped"]["input_zero"] == st["macs_a_zero"]
    assert c["skipped"]["weight_zero"] == st["macs_b_zero"] - st["macs_both_zero"]
    assert c["macs_executed"] == st["macs_executed"]
    assert c["slice_ops"] == st["slice_ops"]
    assert c["skipped"]["zero_slice"] == 4 * st["macs_executed"] - st["slice_ops"] > 0


def test_counters_accumulate_and_reset() -> None:
    eng = Engine((10,), mlp(), V2)
    x, t = np.ones((2, 10), np.float32), np.array([1, 2])
    a = eng.train_step(x, t).counters
    b = eng.train_step(x, t).counters
    tot = eng.counters()
    assert tot["ff"]["macs_total"] == a["ff"]["macs_total"] + b["ff"]["macs_total"]
    assert tot["total"]["cycles"] == a["total"]["cycles"] + b["total"]["cycles"]
    assert tot["latency_s"] == pytest.approx(a["latency_s"] + b["latency_s"])
    assert tot["memory_peak_bytes"]["total"] >= a["memory_peak_bytes"]["total"] > 0
    eng.reset_counters()
    z: dict[str, Any] = eng.counters()
    assert z["total"]["macs_total"] == 0 and z["latency_s"] == 0


def test_frozen_layers_do_no_wg_and_no_ep_below_them() -> None:
    eng = Engine((10,), mlp(), V2)
    eng.configure(EngineConfig(trainable="last_k", last_k=1))
    w0 = eng.get_weights()
    c = eng.train_step(np.ones((2, 10), np.float32), np.array([0, 3])).counters
    assert c["wg"]["macs_total"] == 2 * 12 * 4
    assert c["ep"]["macs_total"] == 0  # nothing trainable below the last layer
    assert c["update"]["macs_total"] == 2 * (12 * 4 + 4)
    w1 = eng.get_weights()
    assert np.array_equal(w0["0.weight"], w1["0.weight"])
    assert not np.array_equal(w0["4.weight"], w1["4.weight"])


def test_conv_input_zeros_include_the_padding() -> None:
    layers = [LayerSpec("conv2d", in_channels=2, out_channels=4, kernel_size=3, padding=1)]
    eng = Engine((2, 5, 5), layers, V2)
    x = np.random.default_rng(7).standard_normal((3, 2, 5, 5)).astype(np.float32)
    x[x < 0] = 0.0
    eng.forward(x)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    # every (output position, input channel, kernel offset) reads one padded input value
    zeros = sum(
        int((xp[:, :, i : i + 5, j : j + 5] == 0).sum()) for i in range(3) for j in range(3)
    )
    ff = eng.counters()["ff"]
    assert ff["skipped"]["input_zero"] == 4 * zeros
    assert ff["macs_total"] == 3 * 4 * 2 * 25 * 9


def test_counters_have_every_field_of_the_wire_schema() -> None:
    from protocol.messages_counters import COUNTER_FIELDS, Counters

    eng = Engine((2, 8, 8), CNN, V2)
    c = eng.train_step(np.ones((2, 2, 8, 8), np.float32), np.array([0, 1])).counters
    for path in COUNTER_FIELDS:
        node: Any = c
        for p in path.split("."):
            node = node[p]
        assert node is not None and node >= 0, path
    assert Counters.parse(Counters.build(c)) == c
    assert c["total"]["cycles"] > 0 and c["total"]["energy_pj"] > 0 and c["latency_s"] > 0


def brute_force(
    p: np.ndarray,
    q: np.ndarray,
    a_is_p: bool,
    skips: frozenset[str],
    counted: Any,
    out_skip: Any,
    reason: str,
    pruned_b: Any,
) -> dict[str, int]:
    """Every MAC visited, one reason each, in the documented precedence."""
    out = dict.fromkeys(("input_zero", "weight_zero", "output_zero", "pruned", "executed"), 0)
    total = 0
    for i in range(p.shape[0]):
        for k in range(p.shape[1]):
            for j in range(q.shape[1]):
                if counted is not None and not counted[i, j]:
                    continue
                total += 1
                a, b = (p[i, k], q[k, j]) if a_is_p else (q[k, j], p[i, k])
                pb = pruned_b is not None and (pruned_b[k, j] if a_is_p else pruned_b[i, k])
                if pb and ("pruned" in skips or "weight_zero" in skips):
                    out["pruned"] += 1
                elif out_skip is not None and out_skip[i, j] and reason in skips:
                    out[reason] += 1
                elif a == 0 and "input_zero" in skips:
                    out["input_zero"] += 1
                elif b == 0 and "weight_zero" in skips:
                    out["weight_zero"] += 1
                else:
                    out["executed"] += 1
    return {"macs_total": total, "macs_executed": out.pop("executed"), **out}


@settings(max_examples=80)
@given(
    dims=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    seed=st.integers(0, 2**32 - 1),
    a_is_p=st.booleans(),
    skips=st.sets(st.sampled_from(["input_zero", "weight_zero", "output_zero", "pruned"])),
    use=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    reason=st.sampled_from(["output_zero", "pruned"]),
)
def test_mac_accounting_equals_visiting_every_mac(
    dims: tuple[int, int, int],
    seed: int,
    a_is_p: bool,
    skips: set[str],
    use: tuple[bool, bool, bool],
    reason: str,
) -> None:
    ni, nk, nj = dims
    rng = np.random.default_rng(seed)
    p = rng.integers(-1, 2, (ni, nk))
    q = rng.integers(-1, 2, (nk, nj))
    counted = rng.random((ni, nj)) < 0.7 if use[0] else None
    out_skip = rng.random((ni, nj)) < 0.4 if use[1] else None
    b_shape = q.shape if a_is_p else p.shape
    pruned_b = rng.random(b_shape) < 0.3 if use[2] else None
    if pruned_b is not None:  # pruned weights are zeros
        if a_is_p:
            q = np.where(pruned_b, 0, q)
        else:
            p = np.where(pruned_b, 0, p)
    fs = frozenset(skips)
    got = count_macs(
        p,
        q,
        a_is_p=a_is_p,
        skips=fs,
        stage="ep",
        counted=counted,
        out_skip=out_skip,
        out_reason=reason,
        pruned_b=pruned_b,
    )
    assert got == brute_force(p, q, a_is_p, fs, counted, out_skip, reason, pruned_b)


# ---- cost-model corrections (the design-space studies' findings) -----------------------------


def _mem(eng: Engine, batch: int = 2) -> dict[str, Any]:
    x = np.ones((batch, 10), np.float32)
    return dict(eng.train_step(x, np.arange(batch) % 4).counters["memory_peak_bytes"])


@pytest.mark.parametrize(
    ("trainable", "last_k", "acts", "errs", "params"),
    [
        # mlp(): 10 -> 12 -> 12 -> 4, fp32 (4 bytes), batch 2
        ("all", 0, 2 * (10 + 12 + 12), 2 * (12 + 12 + 4), 132 + 156 + 52),
        ("last_k", 1, 2 * 12, 2 * 4, 52),  # only the last layer's input and output error
        ("last_k", 2, 2 * (12 + 12), 2 * (12 + 4), 156 + 52),
        ("bias_only", 0, 0, 2 * (12 + 12 + 4), 12 + 12 + 4),  # no WG input, errors down to 0
    ],
)
def test_frozen_parameters_shrink_the_memory_kept_for_training(
    trainable: str, last_k: int, acts: int, errs: int, params: int
) -> None:
    eng = Engine((10,), mlp(), V2)
    eng.configure(EngineConfig(trainable=trainable, last_k=last_k, momentum=0.9))
    m = _mem(eng)
    assert m["weights"] == 4 * (132 + 156 + 52)  # FF needs every weight
    assert m["activations"] == 4 * acts and m["errors"] == 4 * errs
    assert m["gradients"] == m["optimizer"] == 4 * params  # trainable elements only
    assert m["total"] == sum(v for k, v in m.items() if k != "total")


def test_frozen_dfa_layers_keep_no_feedback() -> None:
    full = Engine((10,), mlp(), V2)
    full.configure(EngineConfig(algorithm="dfa"))
    last = Engine((10,), mlp(), V2)
    last.configure(EngineConfig(algorithm="dfa", trainable="last_k", last_k=2))
    fa, la = _mem(full), _mem(last)
    # B_0 (12 x 4) and B_1 (12 x 4) for a full DFA; last-2 trains layers 1 and 2: B_1 only
    assert fa["feedback"] == 4 * (48 + 48) and la["feedback"] == 4 * 48
    assert fa["errors"] == la["errors"] == 4 * 2 * 4  # the output error only
    assert la["activations"] == 4 * 2 * (12 + 12)


def test_pruning_aware_chip_does_not_fetch_pruned_channels() -> None:
    x = np.ones((3, 10), np.float32)
    dense = Engine((10,), mlp(), V2, init_seed=2)
    pruned = Engine((10,), mlp(), V2, init_seed=2)
    pruned.configure(EngineConfig(pruning="channel", pruning_ratio=0.5))
    d = dense.train_step(x, np.array([0, 1, 2])).counters
    p = pruned.train_step(x, np.array([0, 1, 2])).counters
    # fp32 weights: 6 of 12 channels of layers 0 and 1 and 2 of 4 of layer 2 are pruned; the
    # chip fetches the kept channels plus a bitmap of one bit per output channel.
    saved_ff = 4 * (6 * 10 + 6 * 12 + 2 * 12) - (2 + 2 + 1)
    assert d["ff"]["dram_read_bytes"] - p["ff"]["dram_read_bytes"] == saved_ff
    assert d["ff"]["sram_read_bytes"] - p["ff"]["sram_read_bytes"] == saved_ff
    saved_ep = 4 * (6 * 12 + 2 * 12) - (2 + 1)  # BP's EP reads W of layers 1 and 2
    assert d["ep"]["dram_read_bytes"] - p["ep"]["dram_read_bytes"] == saved_ep


def test_non_pruning_aware_chip_fetches_pruned_weights() -> None:
    x = np.ones((3, 10), np.float32)
    masks = {"0.weight": np.array([0] * 6 + [1] * 6, np.uint8)}
    dense = Engine((10,), mlp(), V1, init_seed=2)
    pruned = Engine((10,), mlp(), V1, init_seed=2)
    pruned.configure(EngineConfig(pruning="masks", pruning_masks=masks))
    d = dense.train_step(x, np.array([0, 1, 2])).counters
    p = pruned.train_step(x, np.array([0, 1, 2])).counters
    assert d["ff"]["dram_read_bytes"] == p["ff"]["dram_read_bytes"]


def _pdfa_pair(batch: int = 32) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(8)
    layers = [
        LayerSpec("linear", in_features=64, out_features=128),
        LayerSpec("relu"),
        LayerSpec("linear", in_features=128, out_features=64),
        LayerSpec("relu"),
        LayerSpec("linear", in_features=64, out_features=10),
    ]
    x = rng.standard_normal((batch, 64)).astype(np.float32)
    t = rng.integers(0, 10, batch)
    out = []
    for alg in ("dfa", "pipelined_dfa"):
        eng = Engine((64,), layers, V2, init_seed=3)
        eng.configure(EngineConfig(algorithm=alg, momentum=0.9))
        out.append(eng.train_step(x, t).counters)
    return out[0], out[1]


def test_pipelined_dfa_charges_static_power_over_the_period() -> None:
    dfa, pdfa = _pdfa_pair()
    static_w = V2.static_power_w
    # the same work: dynamic energy (slice products, bytes) does not depend on the schedule
    assert dfa["total"]["slice_ops"] == pdfa["total"]["slice_ops"]
    dyn_dfa = dfa["total"]["energy_pj"] - static_w * dfa["latency_s"] * 1e12
    dyn_pdfa = pdfa["total"]["energy_pj"] - static_w * pdfa["latency_s"] * 1e12
    assert dyn_pdfa == pytest.approx(dyn_dfa, rel=1e-9)
    assert pdfa["latency_s"] < dfa["latency_s"]  # the overlap saves time, hence static energy
    assert sum(pdfa[s]["energy_pj"] for s in ("ff", "ep", "wg", "update")) == pytest.approx(
        pdfa["total"]["energy_pj"], rel=1e-12
    )


def test_pipelined_dfa_splits_one_pe_array() -> None:
    dfa, pdfa = _pdfa_pair(batch=128)
    # One array: a step cannot execute more slice products than the array does in a period.
    cycles = pdfa["latency_s"] * V2.clock_hz
    assert pdfa["total"]["slice_ops"] <= cycles * V2.pe_slice_macs_per_cycle
    # DFA's EPs share that array too: its step is every stage in turn.
    assert dfa["latency_s"] * V2.clock_hz == pytest.approx(dfa["total"]["cycles"])


def test_update_moves_momentum_at_its_own_width() -> None:
    x = np.ones((2, 10), np.float32)
    out = {}
    for mom in ("dfxp8", "dfxp16"):
        eng = Engine((10,), mlp(), V1)
        pol = [PolicyEntry("master_weights", "dfxp8"), PolicyEntry("momentum", mom)]
        eng.configure(EngineConfig(policy=pol, momentum=0.9))
        out[mom] = eng.train_step(x, np.array([0, 1])).counters["update"]
    n = 132 + 156 + 52  # parameters of mlp()
    assert out["dfxp16"]["dram_read_bytes"] - out["dfxp8"]["dram_read_bytes"] == n
    assert out["dfxp16"]["dram_write_bytes"] - out["dfxp8"]["dram_write_bytes"] == n


def test_update_costs_reused_between_steps_equal_fresh_ones() -> None:
    """The update stage's costs are memoised per configuration: every step's counters equal
    those of an engine that costs them afresh, across a reconfiguration and a preset change."""
    rng = np.random.default_rng(11)
    memo, fresh = Engine((2, 8, 8), CNN, V2, init_seed=2), Engine((2, 8, 8), CNN, V2, init_seed=2)
    configs = [EngineConfig(momentum=0.9), EngineConfig(momentum=0.0)]
    for cfg in configs:
        for eng in (memo, fresh):
            eng.configure(cfg)
        for step in range(3):
            if step == 2:
                memo.preset = fresh.preset = V1
            x = rng.standard_normal((4, 2, 8, 8)).astype(np.float32)
            y = rng.integers(0, 3, 4)
            fresh._update_costs = (fresh.preset, {})
            got, want = memo.train_step(x, y).counters, fresh.train_step(x, y).counters
            assert got == want
            assert got["update"]["macs_total"] > 0
        memo.preset = fresh.preset = V2
    assert memo._update_costs[1]  # the memo was used
