"""Configuration-time state of the engine built from an EngineConfig: trainable and pruning
masks, DFA feedback matrices, optimizer and loss settings, all validated before the engine
changes anything (so a rejected TRAIN_CONFIG leaves the engine as it was).

Feedback matrices (DFA): hidden parameterised layer l gets its error at the input of the
next parameterised layer n (before the ReLU/pool/flatten layers between l and n, which the
error then passes backward through exactly as in BP): ``e = e_out . B_l^T`` with ``B_l`` of
shape (input size of layer n, number of outputs). ``B_l`` is drawn from
``numpy.random.default_rng([feedback_seed, l])``: dense = ``standard_normal``; binary =
``where(random < 0.5, -1, +1)``; sparse = ``standard_normal`` where a second draw ``random <
feedback_density``, else 0 (both draws of the full shape, in that order). STORED keeps them
from TRAIN_CONFIG on (they count as device memory); REGENERATED draws them again at every use
(the same values).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from device_model.config import ChipPreset
from device_model.engine_config import (
    ALGORITHMS,
    FEEDBACK_KINDS,
    FEEDBACK_STORAGES,
    LOSSES,
    PRUNING_MODES,
    TRAINABLE_MODES,
    EngineConfig,
    EngineError,
    norm_name,
)
from device_model.engine_layers import Layer
from protocol.status import Status

__all__ = ["Setup", "feedback_matrix", "prepare"]

_PRESET_ALG = {"bp": "bp", "dfa": "dfa", "pipelined_dfa": "pdfa"}


@dataclass(frozen=True)
class Setup:
    """What configure() installs (masks are bool arrays of the parameter's shape)."""

    algorithm: str  # bp | dfa | pipelined_dfa
    feedback: str
    feedback_stored: bool
    feedback_density: float
    feedback_seed: int
    loss: str
    lr: float
    momentum: float
    weight_decay: float
    trainable: dict[str, np.ndarray]  # name -> True where updated (absent: frozen whole)
    keep: dict[str, np.ndarray]  # name -> False where pruned (absent: nothing pruned)
    feedback_mats: dict[int, np.ndarray]  # stored matrices by layer


def feedback_matrix(
    kind: str, seed: int, layer: int, shape: tuple[int, int], density: float
) -> np.ndarray:
    """B_l as the module docstring defines it (float32)."""
    rng = np.random.default_rng([seed, layer])
    if kind == "binary":
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
    g = rng.standard_normal(shape)
    if kind == "sparse":
        g = np.where(rng.random(shape) < density, g, 0.0)
    return g.astype(np.float32)


def _finite(v: float, what: str, lo: float, hi: float = math.inf) -> float:
    x = float(v)
    if not (math.isfinite(x) and lo <= x <= hi):
        raise EngineError(Status.BAD_REQUEST, f"{what} must be in [{lo}, {hi}], got {v!r}")
    return x


def _mask(name: str, m: np.ndarray, params: Mapping[str, np.ndarray], what: str) -> np.ndarray:
    if name not in params:
        raise EngineError(
            Status.UNKNOWN_LAYER,
            f"{what} mask for {name!r}: no such parameter; accepted: {', '.join(params)}",
        )
    shape = params[name].shape
    a = np.asarray(m)
    if a.dtype.kind not in "biuf" or not np.isin(a, (0, 1)).all():
        raise EngineError(Status.BAD_REQUEST, f"{what} mask for {name!r} must hold only 0 and 1")
    if a.shape == shape:
        return a.astype(bool)
    if a.shape == (shape[0],):
        return np.broadcast_to(
            a.astype(bool).reshape((-1,) + (1,) * (len(shape) - 1)), shape
        ).copy()
    raise EngineError(
        Status.BAD_SHAPE,
        f"{what} mask for {name!r} has shape {a.shape}; accepted: {shape} or ({shape[0]},)",
    )


def prepare(
    cfg: EngineConfig,
    layers: Sequence[Layer],
    params: Mapping[str, np.ndarray],
    preset: ChipPreset,
) -> Setup:
    """Validate ``cfg`` against the model and the preset; build the masks and matrices."""
    alg = norm_name(cfg.algorithm, ALGORITHMS, "algorithm", Status.UNSUPPORTED_ALGORITHM)
    if _PRESET_ALG[alg] not in preset.algorithms:
        raise EngineError(
            Status.UNSUPPORTED_ALGORITHM,
            f"algorithm {alg} is not offered by preset {preset.name}; accepted: "
            f"{', '.join(a for a, p in _PRESET_ALG.items() if p in preset.algorithms)}",
        )
    fb = norm_name(cfg.feedback, FEEDBACK_KINDS, "feedback", Status.UNSUPPORTED_ALGORITHM)
    storage = norm_name(
        cfg.feedback_storage, FEEDBACK_STORAGES, "feedback storage", Status.UNSUPPORTED_ALGORITHM
    )
    density = _finite(cfg.feedback_density, "feedback_density", 0.0, 1.0)
    if fb == "sparse" and density <= 0.0:
        raise EngineError(Status.BAD_REQUEST, "feedback_density must be > 0 for SPARSE feedback")
    loss = norm_name(cfg.loss, LOSSES, "loss", Status.UNSUPPORTED_ALGORITHM)
    lr = _finite(cfg.lr, "lr", 0.0)
    mom = _finite(cfg.momentum, "momentum", 0.0, 1.0)
    wd = _finite(cfg.weight_decay, "weight_decay", 0.0)
    plays = [x for x in layers if x.has_params]
    names = [n for x in plays for n in _names(x)]
    # ---- trainable set
    mode = norm_name(cfg.trainable, TRAINABLE_MODES, "trainable mode", Status.BAD_REQUEST)
    trainable: dict[str, np.ndarray] = {}
    if mode == "all":
        trainable = {n: np.ones(params[n].shape, bool) for n in names}
    elif mode == "bias_only":
        trainable = {n: np.ones(params[n].shape, bool) for n in names if n.endswith(".bias")}
    elif mode == "last_k":
        k = int(cfg.last_k)
        if not 0 <= k <= len(plays):
            raise EngineError(
                Status.BAD_REQUEST,
                f"last_k must be in 0..{len(plays)} (the parameterised layers), got {k}",
            )
        for x in plays[len(plays) - k :]:
            trainable.update({n: np.ones(params[n].shape, bool) for n in _names(x)})
    else:
        given = {n: _mask(n, m, params, "trainable") for n, m in cfg.trainable_masks.items()}
        trainable = {n: given.get(n, np.ones(params[n].shape, bool)) for n in names}
    trainable = {n: m for n, m in trainable.items() if m.any()}
    # ---- pruning
    pmode = norm_name(cfg.pruning, PRUNING_MODES, "pruning mode", Status.BAD_REQUEST)
    ratio = _finite(cfg.pruning_ratio, "pruning ratio", 0.0, 1.0)
    keep: dict[str, np.ndarray] = {}
    if pmode == "magnitude":
        for x in plays:
            w = params[f"{x.index}.weight"]
            n = math.floor(ratio * w.size)
            m = np.ones(w.size, bool)
            m[np.argsort(np.abs(w).ravel(), kind="stable")[:n]] = False
            keep[f"{x.index}.weight"] = m.reshape(w.shape)
    elif pmode == "channel":
        for x in plays:
            w = params[f"{x.index}.weight"]
            n = math.floor(ratio * w.shape[0])
            norms = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).sum(axis=1)
            ch = np.ones(w.shape[0], bool)
            ch[np.argsort(norms, kind="stable")[:n]] = False
            keep[f"{x.index}.weight"] = _mask(f"{x.index}.weight", ch, params, "pruning")
            if x.bias:
                keep[f"{x.index}.bias"] = ch.copy()
    elif pmode == "masks":
        keep = {n: _mask(n, m, params, "pruning") for n, m in cfg.pruning_masks.items()}
    keep = {n: m for n, m in keep.items() if not m.all()}
    # ---- feedback
    mats: dict[int, np.ndarray] = {}
    if alg != "bp" and storage == "stored":
        for li, shape in feedback_shapes(layers).items():
            mats[li] = feedback_matrix(fb, int(cfg.feedback_seed), li, shape, density)
    return Setup(
        alg,
        fb,
        storage == "stored",
        density,
        int(cfg.feedback_seed),
        loss,
        lr,
        mom,
        wd,
        trainable,
        keep,
        mats,
    )


def _names(layer: Layer) -> list[str]:
    return [f"{layer.index}.weight"] + ([f"{layer.index}.bias"] if layer.bias else [])


def feedback_shapes(layers: Sequence[Layer]) -> dict[int, tuple[int, int]]:
    """Shape of B_l for each hidden parameterised layer l (see the module docstring)."""
    plays = [x for x in layers if x.has_params]
    n_out = int(np.prod(layers[-1].out_shape))
    out = {}
    for a, b in itertools.pairwise(plays):
        out[a.index] = (int(np.prod(b.in_shape)), n_out)
    return out
