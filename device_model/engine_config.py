"""The engine's configuration: what TRAIN_CONFIG says, as a validated Python dataclass.

``EngineConfig`` mirrors the TRAIN_CONFIG body of protocol/messages.py field for field
(precision policy, LAPS flag, SR seed, algorithm and DFA feedback, loss, SGD, trainable set,
pruning). Enum-valued fields are held as lower-case names of the protocol enums ("bp",
"pipelined_dfa", "softmax_cross_entropy", "stochastic_threshold", ...); the constructors
also take the IntEnum members. ``EngineError`` is the one exception of the engine: a
``ValueError`` carrying the protocol status the firmware answers with.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.messages import (
    Algorithm,
    FeedbackKind,
    FeedbackStorage,
    FracMode,
    Loss,
    ParamKind,
    PrecisionFlags,
    PruningMode,
    Rounding,
    TensorClass,
    TrainableMode,
)
from protocol.status import Status

__all__ = [
    "ALL_LAYERS",
    "TENSOR_CLASSES",
    "EngineConfig",
    "EngineError",
    "PolicyEntry",
]

#: Layer index of a policy entry that applies to every layer (the wire's 0xFFFF).
ALL_LAYERS = 0xFFFF


class EngineError(ValueError):
    """Bad input to the engine: ``status`` is the protocol status code to answer with,
    ``detail`` says what was wrong and what is accepted."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(f"{status.name}: {detail}")
        self.status = status
        self.detail = detail


def _names(enumcls: type[enum.IntEnum]) -> tuple[str, ...]:
    return tuple(m.name.lower() for m in enumcls)


TENSOR_CLASSES: tuple[str, ...] = _names(TensorClass)
ROUNDINGS: tuple[str, ...] = _names(Rounding)
FRAC_MODES: tuple[str, ...] = _names(FracMode)
ALGORITHMS: tuple[str, ...] = _names(Algorithm)
FEEDBACK_KINDS: tuple[str, ...] = _names(FeedbackKind)
FEEDBACK_STORAGES: tuple[str, ...] = _names(FeedbackStorage)
LOSSES: tuple[str, ...] = _names(Loss)
TRAINABLE_MODES: tuple[str, ...] = _names(TrainableMode)
PRUNING_MODES: tuple[str, ...] = _names(PruningMode)
HFP8_STAGES: tuple[str, ...] = ("forward", "backward")


def norm_name(value: object, accepted: tuple[str, ...], what: str, status: Status) -> str:
    """An enum-valued field as its lower-case name; EngineError(status) when unknown."""
    if isinstance(value, enum.Enum):
        value = value.name.lower()
    if isinstance(value, str) and value.lower() in accepted:
        return value.lower()
    raise EngineError(status, f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")


@dataclass(frozen=True)
class PolicyEntry:
    """One precision-policy entry: the number format of one tensor class of one layer.

    ``layer`` None (or 0xFFFF) means every layer; later entries override earlier ones.
    ``frac_bits`` (dfxpN), ``shared_exp`` (fp8-seb, flex16), ``exp_bias``/``hfp8_stage``
    (hfp8) are the initial (OVERFLOW, STOCHASTIC_THRESHOLD) or fixed (FIXED) scale; AMAX
    computes the scale of every tensor from its largest magnitude."""

    tensor_class: str
    format: str
    layer: int | None = None
    rounding: str = "nearest"
    frac_mode: str = "fixed"
    saturate: bool | None = None
    frac_bits: int = 0
    shared_exp: int = 0
    exp_bias: int = 7
    hfp8_stage: str = "forward"

    def normalized(self) -> PolicyEntry:
        """The entry with enum fields as names (EngineError on an unknown one)."""
        return PolicyEntry(
            tensor_class=norm_name(
                self.tensor_class, TENSOR_CLASSES, "tensor class", Status.BAD_REQUEST
            ),
            format=_format_name(self.format),
            layer=None if self.layer in (None, ALL_LAYERS) else self.layer,
            rounding=norm_name(self.rounding, ROUNDINGS, "rounding", Status.BAD_REQUEST),
            frac_mode=norm_name(self.frac_mode, FRAC_MODES, "frac_mode", Status.BAD_REQUEST),
            saturate=self.saturate,
            frac_bits=int(self.frac_bits),
            shared_exp=int(self.shared_exp),
            exp_bias=int(self.exp_bias),
            hfp8_stage=norm_name(self.hfp8_stage, HFP8_STAGES, "hfp8 stage", Status.BAD_REQUEST),
        )


def _format_name(fmt: object) -> str:
    from device_model.numerics import FORMATS

    name = getattr(fmt, "format_name", fmt)
    if isinstance(name, str) and name in FORMATS:
        return name
    raise EngineError(
        Status.UNSUPPORTED_FORMAT,
        f"unsupported number format {fmt!r}; accepted: {', '.join(FORMATS)}",
    )


@dataclass(frozen=True)
class EngineConfig:
    """Everything TRAIN_CONFIG sets. Defaults: fp32 everywhere, BP, softmax cross-entropy,
    plain SGD with lr 0.01, every parameter trainable, no pruning.

    Masks (``trainable_masks``, ``pruning_masks``) map state-dict names ("0.weight") to 0/1
    arrays of the parameter's shape or of shape (out_channels,) (one value per output
    channel / neuron). Pruning masks: 0 = pruned."""

    policy: Sequence[PolicyEntry] = ()
    laps: bool = False
    sr_seed: int = 0
    algorithm: str = "bp"
    feedback: str = "dense"
    feedback_storage: str = "stored"
    feedback_density: float = 0.5
    feedback_seed: int = 0
    loss: str = "softmax_cross_entropy"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    trainable: str = "all"
    last_k: int = 0
    trainable_masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    pruning: str = "none"
    pruning_ratio: float = 0.0
    pruning_masks: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_message(
        cls, body: Mapping[str, Any], tensors: Mapping[int, np.ndarray] | None = None
    ) -> EngineConfig:
        """The config of a decoded TRAIN_CONFIG body (dicts/lists as protocol.messages
        returns them). ``tensors`` resolves the mask tensor ids (id -> array); an id it does
        not hold raises EngineError(UNKNOWN_TENSOR)."""
        try:
            prec, alg, opt = body["precision"], body["algorithm"], body["optimizer"]
            tr, pr = body["trainable"], body["pruning"]
            policy = tuple(_entry_from_wire(e) for e in prec["policy"])
            return cls(
                policy=policy,
                laps=bool(int(prec["flags"]) & int(PrecisionFlags.LAPS)),
                sr_seed=int(prec["sr_seed"]),
                algorithm=norm_name(alg["kind"], ALGORITHMS, "algorithm", Status.BAD_REQUEST),
                feedback=norm_name(alg["feedback"], FEEDBACK_KINDS, "feedback", Status.BAD_REQUEST),
                feedback_storage=norm_name(
                    alg["feedback_storage"], FEEDBACK_STORAGES, "storage", Status.BAD_REQUEST
                ),
                feedback_density=float(alg["feedback_density"]),
                feedback_seed=int(alg["feedback_seed"]),
                loss=norm_name(body["loss"], LOSSES, "loss", Status.BAD_REQUEST),
                lr=float(opt["lr"]),
                momentum=float(opt["momentum"]),
                weight_decay=float(opt["weight_decay"]),
                trainable=norm_name(tr["mode"], TRAINABLE_MODES, "trainable", Status.BAD_REQUEST),
                last_k=int(tr["last_k"]),
                trainable_masks=_masks(tr["masks"], tensors),
                pruning=norm_name(pr["mode"], PRUNING_MODES, "pruning", Status.BAD_REQUEST),
                pruning_ratio=float(pr["ratio"]),
                pruning_masks=_masks(pr["masks"], tensors),
            )
        except (KeyError, TypeError) as e:
            raise EngineError(
                Status.BAD_REQUEST, f"TRAIN_CONFIG body lacks or mistypes field {e}"
            ) from None


def _entry_from_wire(e: Mapping[str, Any]) -> PolicyEntry:
    sc = e["scale"]
    return PolicyEntry(
        tensor_class=e["tensor_class"],
        format=e["format"],
        layer=int(e["layer"]),
        rounding=e["rounding"],
        frac_mode=e["frac_mode"],
        saturate=bool(e["saturate"]),
        frac_bits=int(sc["frac_bits"]),
        shared_exp=int(sc["shared_exp"]),
        exp_bias=int(sc["exp_bias"]),
        hfp8_stage=sc["stage"],
    )


def _masks(
    refs: Sequence[Mapping[str, Any]], tensors: Mapping[int, np.ndarray] | None
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for ref in refs:
        tid = int(ref["tensor_id"])
        if tensors is None or tid not in tensors:
            raise EngineError(Status.UNKNOWN_TENSOR, f"mask tensor {tid:#x} is not on the device")
        kind = ParamKind(int(ref["param"])).name.lower()
        out[f"{int(ref['layer'])}.{kind}"] = np.asarray(tensors[tid])
    return out
