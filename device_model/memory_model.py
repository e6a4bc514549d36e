"""Memory kept for training under BP and the backward-unlocking methods of survey Table 5.

For a list of layers (layer l has input activations A_l kept for its WG, output error E_l,
weights W_l and, under DFA, a feedback matrix B_l), survey Table 5 ("MEM of A&E", "MEM of W",
written there for three layers) generalises to L layers, l = 0..L-1, as

    method  activations        errors        weights            feedback
    BP      sum A_l            sum E_l       sum W_l            0
    DDG     sum (L-l) A_l      sum E_l       sum (L-l) W_l      0
    FDG     sum 2(L-l) A_l     sum E_l       sum W_l            0
    DFA     sum A_l            E_{L-1}       sum W_l            sum B_l

DDG (decoupled delayed gradients [69]) pipelines groups of layers and keeps one copy of a
group's weights and activations per step in flight: with one layer per group, layer l has L-l
steps in flight (3A0 + 2A1 + A2, 3W0 + 2W1 + W2 for three layers). FDG (fully decoupled
gradients [70]) also pipelines FF, keeping twice as many delayed activations (6A0 + 4A1 + 2A2)
and one set of weights. DFA keeps the activations, only the output error ("E_last") and the
feedback matrices ("BW"); regenerating the feedback from a PRNG seed (DF-LNPU) makes B_l = 0.

Selective training (survey VII-C) keeps less: ``selective_layers`` drops what frozen parameters
do not need before Table 5 is applied (a frozen weight needs no stored input activations for its
WG; under BP no error is kept below the lowest trained layer; a frozen DFA layer needs no
feedback matrix), and the caller counts gradient and momentum buffers for the trainable
elements only (``memory_peak_bytes``' ``gradients`` and ``optimizer``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from device_model.costs_analytic import FcLayer, Precision
from protocol.messages_counters import MEMORY_KINDS

__all__ = [
    "METHODS",
    "LayerMemory",
    "fc_layer_memory",
    "memory_peak_bytes",
    "selective_layers",
    "training_memory",
]

#: Methods of survey Table 5.
METHODS: tuple[str, ...] = ("bp", "ddg", "fdg", "dfa")


@dataclass(frozen=True)
class LayerMemory:
    """Bytes of one layer's tensors for one training step: input activations kept for WG
    (A_l), output error (E_l), weights (W_l), DFA feedback matrix (B_l; 0 when regenerated
    from a PRNG seed or when the layer gets the output error directly)."""

    activations: int
    errors: int
    weights: int
    feedback: int = 0

    def __post_init__(self) -> None:
        for name in ("activations", "errors", "weights", "feedback"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"LayerMemory.{name} must be a non-negative int, got {v!r}")


def training_memory(layers: Sequence[LayerMemory], method: str) -> dict[str, int]:
    """Bytes kept for training under ``method`` (Table 5): activations, errors, weights,
    feedback and their total."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    if not layers:
        raise ValueError("training_memory needs at least one layer")
    n = len(layers)
    copies = [n - i for i in range(n)]  # L - l
    a = [x.activations for x in layers]
    w = [x.weights for x in layers]
    errors = sum(x.errors for x in layers)
    feedback = 0
    if method == "bp":
        acts, weights = sum(a), sum(w)
    elif method == "ddg":
        acts = sum(c * v for c, v in zip(copies, a, strict=True))
        weights = sum(c * v for c, v in zip(copies, w, strict=True))
    elif method == "fdg":
        acts = sum(2 * c * v for c, v in zip(copies, a, strict=True))
        weights = sum(w)
    else:  # dfa
        acts, weights = sum(a), sum(w)
        errors = layers[-1].errors
        feedback = sum(x.feedback for x in layers)
    return {
        "activations": acts,
        "errors": errors,
        "weights": weights,
        "feedback": feedback,
        "total": acts + errors + weights + feedback,
    }


def selective_layers(
    layers: Sequence[LayerMemory],
    method: str,
    *,
    weight_trained: Sequence[bool],
    trained: Sequence[bool],
) -> list[LayerMemory]:
    """The per-layer tensors a step must keep when only some parameters train.

    ``weight_trained[l]``: layer l's weight has a trainable element (its WG needs the layer's
    whole input, A_l; a bias gradient needs only the error); ``trained[l]``: some parameter of
    layer l trains (weight or bias). Then, for ``method``:

    * activations: A_l only where ``weight_trained[l]``;
    * errors: BP / DDG / FDG keep E_l from the lowest trained layer up (EP stops there; the
      layers below see no error); DFA keeps the output error E_{L-1} if anything trains;
    * feedback: B_l only for trained layers (DFA delivers no error to a frozen one);
    * weights: all of them (FF needs every weight).

    Nothing trains: only the weights."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    n = len(layers)
    if len(weight_trained) != n or len(trained) != n:
        raise ValueError(
            f"weight_trained and trained need one flag per layer ({n}), got "
            f"{len(weight_trained)} and {len(trained)}"
        )
    bad = [i for i in range(n) if weight_trained[i] and not trained[i]]
    if bad:
        raise ValueError(f"layers {bad}: a trained weight makes the layer trained")
    lo = next((i for i in range(n) if trained[i]), None)
    out = []
    for i, x in enumerate(layers):
        if lo is None:
            keep_e = False
        elif method == "dfa":
            keep_e = i == n - 1
        else:
            keep_e = i >= lo
        out.append(
            LayerMemory(
                activations=x.activations if weight_trained[i] else 0,
                errors=x.errors if keep_e else 0,
                weights=x.weights,
                feedback=x.feedback if trained[i] else 0,
            )
        )
    return out


def fc_layer_memory(
    layers: Sequence[FcLayer],
    *,
    batch: int,
    precision: Precision,
    feedback_stored: bool = True,
) -> list[LayerMemory]:
    """``LayerMemory`` of fully connected layers: A_l = batch x n_in activations, E_l = batch x
    n_out errors, W_l = n_in x n_out weights, B_l = n_out x n_classes feedback for the hidden
    layers (stored at ``feedback_bits``; 0 if regenerated), at the precision's widths."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n_classes = layers[-1].n_out
    out = []
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        fb = 0 if (last or not feedback_stored) else layer.n_out * n_classes
        out.append(
            LayerMemory(
                activations=math.ceil(batch * layer.n_in * precision.act_bits / 8),
                errors=math.ceil(batch * layer.n_out * precision.error_bits / 8),
                weights=math.ceil(layer.weights * precision.weight_bits / 8),
                feedback=math.ceil(fb * precision.feedback_bits / 8),
            )
        )
    return out


def memory_peak_bytes(
    layers: Sequence[LayerMemory],
    method: str,
    *,
    gradients: int = 0,
    optimizer: int = 0,
) -> dict[str, int]:
    """The counters' ``memory_peak_bytes`` (MEMORY_KINDS) of one step: Table 5's kinds plus
    the gradient and optimizer-state bytes the caller keeps."""
    m: Mapping[str, int] = training_memory(layers, method)
    if gradients < 0 or optimizer < 0:
        raise ValueError("gradients and optimizer bytes must be >= 0")
    out = {
        "weights": m["weights"],
        "activations": m["activations"],
        "errors": m["errors"],
        "gradients": gradients,
        "optimizer": optimizer,
        "feedback": m["feedback"],
    }
    out["total"] = sum(out.values())
    assert set(out) == set(MEMORY_KINDS)
    return out
