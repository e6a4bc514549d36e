"""Optimizer specs sent in TRAIN_CONFIG (the update runs on the device)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from host.errors import InvalidArgument
from protocol.messages import Optimizer

__all__ = ["SGD"]


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent: v = momentum * v + (g + weight_decay * w); w -= lr * v."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name, v, ok in (
            ("lr", self.lr, lambda x: x > 0),
            ("momentum", self.momentum, lambda x: 0 <= x < 1),
            ("weight_decay", self.weight_decay, lambda x: x >= 0),
        ):
            if not isinstance(v, int | float) or not math.isfinite(v) or not ok(v):
                raise InvalidArgument(
                    f"SGD {name}={v!r} is out of range; accepted: lr > 0, 0 <= momentum < 1, "
                    "weight_decay >= 0"
                )

    def wire(self) -> dict[str, Any]:
        """The TRAIN_CONFIG ``optimizer`` field."""
        return {
            "kind": Optimizer.SGD,
            "lr": float(self.lr),
            "momentum": float(self.momentum),
            "weight_decay": float(self.weight_decay),
        }
