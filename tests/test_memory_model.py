"""Survey Table 5: memory kept for training under BP, DDG, FDG and DFA
(device_model/memory_model.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_model.costs_analytic import FcLayer, Precision
from device_model.memory_model import (
    METHODS,
    LayerMemory,
    fc_layer_memory,
    memory_peak_bytes,
    selective_layers,
    training_memory,
)
from protocol.messages_counters import MEMORY_KINDS

# Three layers with sizes that make every coefficient of Table 5 visible.
A = (1_000_003, 10_007, 101)
E = (700_001, 7_001, 71)
W = (50_021, 5_003, 503)
B = (307, 31, 0)  # DFA feedback matrices; the last layer gets the output error directly
NET = [LayerMemory(a, e, w, b) for a, e, w, b in zip(A, E, W, B, strict=True)]


def test_table5_bp() -> None:
    m = training_memory(NET, "bp")
    assert m["activations"] + m["errors"] == A[0] + A[1] + A[2] + E[0] + E[1] + E[2]
    assert m["weights"] == W[0] + W[1] + W[2] and m["feedback"] == 0


def test_table5_ddg() -> None:
    m = training_memory(NET, "ddg")
    assert m["activations"] + m["errors"] == 3 * A[0] + 2 * A[1] + A[2] + E[0] + E[1] + E[2]
    assert m["weights"] == 3 * W[0] + 2 * W[1] + 1 * W[2]


def test_table5_fdg() -> None:
    m = training_memory(NET, "fdg")
    assert m["activations"] + m["errors"] == 6 * A[0] + 4 * A[1] + 2 * A[2] + E[0] + E[1] + E[2]
    assert m["weights"] == W[0] + W[1] + W[2]


def test_table5_dfa() -> None:
    m = training_memory(NET, "dfa")
    assert m["activations"] + m["errors"] == A[0] + A[1] + A[2] + E[2]  # A + E_last
    assert m["weights"] + m["feedback"] == W[0] + W[1] + W[2] + B[0] + B[1]  # W + BW
    assert m["total"] == sum(A) + E[2] + sum(W) + B[0] + B[1]


LAYERS = st.lists(
    st.builds(
        LayerMemory,
        st.integers(0, 10**9),
        st.integers(0, 10**9),
        st.integers(0, 10**9),
        st.integers(0, 10**9),
    ),
    min_size=1,
    max_size=10,
)


@given(LAYERS)
def test_table5_orderings(layers: list[LayerMemory]) -> None:
    """The section VIII comparison: DDG copies weights, FDG copies activations, both keep at
    least BP's memory; DFA keeps no more activations and errors than BP."""
    bp, ddg, fdg, dfa = (training_memory(layers, m) for m in METHODS)
    assert ddg["weights"] >= bp["weights"] == fdg["weights"] == dfa["weights"]
    assert fdg["activations"] >= ddg["activations"] >= bp["activations"] == dfa["activations"]
    assert dfa["errors"] <= bp["errors"]
    for m in (bp, ddg, fdg, dfa):
        assert m["total"] == m["activations"] + m["errors"] + m["weights"] + m["feedback"]


def test_fc_layer_memory_and_regenerated_feedback() -> None:
    layers = (FcLayer(4608, 512), FcLayer(512, 512), FcLayer(512, 2, relu=False, prunable=False))
    pr = Precision(act_bits=8, weight_bits=8, error_bits=8, feedback_bits=1)
    mem = fc_layer_memory(layers, batch=128, precision=pr)
    assert mem[0] == LayerMemory(128 * 4608, 128 * 512, 4608 * 512, 512 * 2 // 8)
    assert mem[2].feedback == 0
    regen = fc_layer_memory(layers, batch=128, precision=pr, feedback_stored=False)
    assert training_memory(regen, "dfa")["feedback"] == 0
    peak = memory_peak_bytes(mem, "dfa", gradients=7, optimizer=11)
    assert set(peak) == set(MEMORY_KINDS)
    assert peak["total"] == training_memory(mem, "dfa")["total"] + 18


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown method 'ddp'; accepted: bp, ddg, fdg, dfa"):
        training_memory(NET, "ddp")
    with pytest.raises(ValueError, match="at least one layer"):
        training_memory([], "bp")
    with pytest.raises(ValueError, match="non-negative int"):
        LayerMemory(-1, 0, 0)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        fc_layer_memory([FcLayer(2, 2)], batch=0, precision=Precision())


def test_selective_layers_drop_what_frozen_parameters_do_not_need() -> None:
    every = selective_layers(NET, "bp", weight_trained=[True] * 3, trained=[True] * 3)
    assert every == NET
    # last layer only: its input activations, its output error
    last = training_memory(
        selective_layers(NET, "bp", weight_trained=[False, False, True],
                         trained=[False, False, True]),
        "bp",
    )  # fmt: skip
    assert (last["activations"], last["errors"]) == (A[2], E[2])
    assert last["weights"] == sum(W)
    # biases only: no WG input; errors from the lowest trained layer up
    bias = training_memory(
        selective_layers(NET, "bp", weight_trained=[False] * 3, trained=[True] * 3), "bp"
    )
    assert (bias["activations"], bias["errors"]) == (0, sum(E))
    # DFA, the middle layer only: its activations, the output error, its feedback only
    mid = training_memory(
        selective_layers(NET, "dfa", weight_trained=[False, True, False],
                         trained=[False, True, False]),
        "dfa",
    )  # fmt: skip
    assert (mid["activations"], mid["errors"], mid["feedback"]) == (A[1], E[2], B[1])
    frozen = training_memory(
        selective_layers(NET, "ddg", weight_trained=[False] * 3, trained=[False] * 3), "ddg"
    )
    assert frozen["total"] == frozen["weights"]  # nothing trains: the weights only


def test_selective_layers_rejects_bad_flags() -> None:
    with pytest.raises(ValueError, match="one flag per layer"):
        selective_layers(NET, "bp", weight_trained=[True], trained=[True] * 3)
    with pytest.raises(ValueError, match="trained weight makes the layer trained"):
        selective_layers(NET, "bp", weight_trained=[True] * 3, trained=[False, True, True])
    with pytest.raises(ValueError, match="unknown method"):
        selective_layers(NET, "sgd", weight_trained=[True] * 3, trained=[True] * 3)
