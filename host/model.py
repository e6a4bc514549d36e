"""A model deployed on a device, its training options, and what a training step returns.

``Precision`` is the number-format part of TRAIN_CONFIG, written as a short string or built
directly:

* ``"fp32"`` (the default: the chip computes in float32), ``"bf16"``, ``"dfxp8"``, ...: every
  tensor class of the datapath (activations, weights, errors, gradients) in that format with
  round-to-nearest; master weights and momentum stay fp32.
* ``"+sr"`` (or ``"+stochastic"``) / ``"+truncate"`` / ``"+nearest"`` sets the rounding, e.g.
  ``"dfxp8+sr"``. For the scaled formats (dfxpN, flex16, fp8-seb) ``"+amax"`` (the default: the
  scale of each tensor from its largest magnitude), ``"+overflow"`` (dynamic fixed point: the
  fractional length moved by the overflow ratio, dfxpN/flex16 only), ``"+st"`` (overflow with
  stochastic thresholding) or ``"+fixed"`` choose how the scale is picked. ``"+laps"`` turns on
  layerwise adaptive precision scaling (DFXP widths 4/8/12/16 only; presets with a LAPS unit).
* ``Precision(format, rounding=..., scale=..., frac_bits=..., classes=..., saturate=...)``
  gives the same and more (which tensor classes, the initial or fixed fractional length:
  default N-2 for dfxpN, 13 for flex16, i.e. a range of about +-2 / +-4).

Inputs are sent in the activation format (a dfxp8 input costs one byte per element) only where
that gives the device exactly the values its own quantisation of the fp32 input would give:
round to nearest, the scale of a scaled format from the tensor's largest magnitude (``amax``),
and a Linear or Conv2d as the first layer (after a Flatten at most). The device then
quantises the decoded values to themselves (the amax scale of nearest-rounded values is the
scale of the originals). Otherwise the input goes as fp32: stochastic rounding draws random
bits keyed by the device's pass count, the overflow/st/fixed scales are device state, and a
ReLU or pooling layer before the first quantisation changes the tensor the scale comes from.
Weights travel in fp32 (the master copy).

A training step is one TRAIN_STEP_INLINE request carrying input and targets (one round trip)
when the device offers it and the request fits the device's ``max_request_bytes``; otherwise
the tensors are uploaded (TENSOR_BEGIN/DATA/END) and a TRAIN_STEP follows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from host import errors
from host.nn import Conv2d, Flatten, Linear, Sequential
from protocol.dtypes import FORMATS, DType
from protocol.messages import (
    ALL_LAYERS,
    FracMode,
    HfpStage,
    Rounding,
    TensorClass,
    zero_scale,
)

if TYPE_CHECKING:
    from host.device import Device

__all__ = ["Model", "Precision", "StepResult"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(fn: _F) -> _F:
    """Run a Model method under its device's lock (uploads and the request using them)."""

    @functools.wraps(fn)
    def wrapper(self: Model, *args: Any, **kwargs: Any) -> Any:
        with self.device.lock:
            return fn(self, *args, **kwargs)

    return cast(_F, wrapper)


_ROUNDINGS = {
    "nearest": Rounding.NEAREST,
    "sr": Rounding.STOCHASTIC,
    "stochastic": Rounding.STOCHASTIC,
    "truncate": Rounding.TRUNCATE,
}
_SCALES = {
    "amax": FracMode.AMAX,
    "overflow": FracMode.OVERFLOW,
    "st": FracMode.STOCHASTIC_THRESHOLD,
    "fixed": FracMode.FIXED,
}
_CLASSES = {c.name.lower(): c for c in TensorClass}
_DATAPATH = ("activations", "weights", "errors", "gradients")
#: Formats whose tensors the host encodes itself for upload (others go as fp32).
_WIRE_INPUT = {"fp16", "bf16", "e4m3", "e5m2", "flex16", "fp8-seb"} | {
    f"dfxp{n}" for n in range(4, 17)
}


def _default_frac(fmt: str) -> int:
    """Initial fractional length of ``overflow``/``st``/``fixed`` scales: range about +-2 for
    dfxpN (N-2 fraction bits) and +-4 for flex16 and fp8-seb; the overflow rule moves it."""
    if fmt.startswith("dfxp"):
        return int(fmt[4:]) - 2
    return {"flex16": 13, "fp8-seb": 6}.get(fmt, 0)


def _smallest(a: NDArray[Any]) -> Any:
    """a.min(), by Python's min for a short vector (a numpy reduction costs ~2 us a call)."""
    return min(a.tolist()) if a.size <= 1024 and a.ndim == 1 else a.min()


def _largest(a: NDArray[Any]) -> Any:
    """a.max(), like _smallest."""
    return max(a.tolist()) if a.size <= 1024 and a.ndim == 1 else a.max()


def _is_scaled(fmt: str) -> bool:
    return fmt.startswith("dfxp") or fmt in ("flex16", "fp8-seb")


@dataclass(frozen=True)
class Precision:
    """Number formats of the datapath (see the module docstring)."""

    format: str = "fp32"
    rounding: str = "nearest"
    scale: str = "amax"
    frac_bits: int | None = None
    classes: tuple[str, ...] = _DATAPATH
    saturate: bool = True
    laps: bool = False

    def __post_init__(self) -> None:
        accepted = ", ".join(d.format_name for d in FORMATS)
        try:
            dt = DType.from_name(self.format)
        except ValueError:
            raise errors.InvalidArgument(
                f"unknown precision format {self.format!r}; accepted: {accepted}"
            ) from None
        if dt not in FORMATS:
            raise errors.InvalidArgument(
                f"{self.format!r} is an integer dtype, not a number format; accepted: {accepted}"
            )
        object.__setattr__(self, "format", dt.format_name)
        if self.rounding not in _ROUNDINGS:
            raise errors.InvalidArgument(
                f"unknown rounding {self.rounding!r}; accepted: nearest, stochastic (sr), truncate"
            )
        if self.scale not in _SCALES:
            raise errors.InvalidArgument(
                f"unknown scale mode {self.scale!r}; accepted: {', '.join(_SCALES)}"
            )
        if self.scale in ("overflow", "st") and not (
            self.format.startswith("dfxp") or self.format == "flex16"
        ):
            raise errors.InvalidArgument(
                f"scale {self.scale!r} needs a dfxpN or flex16 format, got {self.format}; "
                "use amax or fixed"
            )
        bad = [c for c in self.classes if c not in _CLASSES]
        if bad or not self.classes:
            raise errors.InvalidArgument(
                f"unknown tensor class(es) {bad or '(none given)'}; accepted: {', '.join(_CLASSES)}"
            )
        if self.laps and self.format not in ("dfxp4", "dfxp8", "dfxp12", "dfxp16"):
            raise errors.InvalidArgument(
                f"laps needs a dfxp4/8/12/16 format (the widths LAPS moves between), got "
                f"{self.format}"
            )
        if self.frac_bits is None:
            object.__setattr__(self, "frac_bits", _default_frac(self.format))
        if not isinstance(self.frac_bits, int) or not -64 <= self.frac_bits <= 64:
            raise errors.InvalidArgument(
                f"frac_bits must be an int in [-64, 64], got {self.frac_bits!r}"
            )

    @classmethod
    def parse(cls, spec: str | Precision | None) -> Precision:
        """A Precision from ``"FORMAT[+OPTION...]"`` (see the module docstring)."""
        if spec is None:
            return cls()
        if isinstance(spec, Precision):
            return spec
        if not isinstance(spec, str):
            raise errors.InvalidArgument(
                f"precision must be a string like 'dfxp8+sr' or a host.Precision, got {spec!r}"
            )
        fmt, *opts = [p.strip().lower() for p in spec.split("+")]
        kw: dict[str, Any] = {}
        for o in opts:
            if o in _ROUNDINGS:
                kw["rounding"] = "stochastic" if o == "sr" else o
            elif o == "laps":
                kw["laps"] = True
            elif o in _SCALES:
                kw["scale"] = o
            else:
                raise errors.InvalidArgument(
                    f"unknown precision option {o!r} in {spec!r}; accepted: "
                    f"{', '.join([*_ROUNDINGS, *_SCALES, 'laps'])}"
                )
        return cls(fmt, **kw)

    def policy(self) -> list[dict[str, Any]]:
        """The TRAIN_CONFIG precision policy entries (every layer)."""
        if self.format == "fp32":
            return []
        mode = _SCALES[self.scale] if _is_scaled(self.format) else FracMode.FIXED
        out = []
        for c in self.classes:
            scale = zero_scale()
            frac = int(self.frac_bits or 0)
            if self.format.startswith("dfxp"):
                scale["frac_bits"] = frac
            elif _is_scaled(self.format):
                scale["shared_exp"] = -frac
            if self.format == "hfp8":
                backward = c in ("errors", "gradients")
                scale["exp_bias"] = 15 if backward else 7
                scale["stage"] = HfpStage.BACKWARD if backward else HfpStage.FORWARD
            out.append(
                {
                    "layer": ALL_LAYERS,
                    "tensor_class": _CLASSES[c],
                    "format": DType.from_name(self.format),
                    "rounding": _ROUNDINGS[self.rounding],
                    "frac_mode": mode,
                    "saturate": int(self.saturate),
                    "scale": scale,
                }
            )
        return out

    def input_dtype(self) -> str:
        """Format name inputs are sent in when the first layer quantises them (see the module
        docstring): the activation format with nearest rounding (and the amax scale for the
        scaled formats), else fp32."""
        act = self.format if "activations" in self.classes else "fp32"
        if act not in _WIRE_INPUT or self.rounding != "nearest":
            return "fp32"
        if _is_scaled(act) and self.scale != "amax":
            return "fp32"
        return act

    def __str__(self) -> str:
        return (
            f"{self.format}+{self.rounding}"
            + (f"+{self.scale}" if _is_scaled(self.format) else "")
            + ("+laps" if self.laps else "")
        )


@dataclass(frozen=True)
class StepResult:
    """What one training step returns: the batch's mean loss before the update (NaN for
    ``backward``, whose loss lives on the host), the device's step count and the counters
    delta of the step (None where the device cannot count)."""

    loss: float
    step: int
    counters: dict[str, Any] = field(repr=False)


class Model:
    """A model deployed on a device; created by ``Device.deploy``.

    Input tensors are sent in the activation format of the precision; outputs come back as
    float32. ``set_weights`` redefines the model with the given weights and the same training
    configuration (the device restarts its step count and counters, as DEFINE_MODEL does).
    """

    def __init__(
        self,
        device: Device,
        spec: Sequential,
        config: dict[str, Any],
        precision: Precision,
        info: Mapping[str, Any],
        init_seed: int,
    ) -> None:
        self.device = device
        self.spec = spec
        self.precision = precision
        self.config = config
        self.info = dict(info)
        self.init_seed = init_seed
        self.generation = device._generation
        self._cross_entropy = config["loss"] == 0
        #: Mask tensors of TRAIN_CONFIG (tensor id -> 0/1 array), uploaded with the config.
        self.masks: dict[int, NDArray[np.uint8]] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input_shape

    def input_format(self) -> str:
        """Format the inputs of this model travel in (see the module docstring)."""
        first = next((la for la in self.spec.layers if not isinstance(la, Flatten)), None)
        if not isinstance(first, Linear | Conv2d):
            return "fp32"
        return self.precision.input_dtype()

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.spec.output_shape

    def _batch(self, x: Any) -> NDArray[np.float32]:
        try:
            xs = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError):
            raise errors.ShapeError(
                f"input must be a numeric array, got {type(x).__name__}"
            ) from None
        if xs.shape == self.input_shape:
            xs = xs[None]
        if xs.shape[1:] != self.input_shape or xs.shape[0] < 1:
            raise errors.ShapeError(
                f"input has shape {xs.shape}; this model takes (batch, *{self.input_shape}) "
                f"or one sample of shape {self.input_shape}"
            )
        if not np.isfinite(xs).all():
            raise errors.InvalidArgument("input holds NaN or infinity")
        return xs

    def _targets(self, y: Any, batch: int) -> tuple[NDArray[Any], str]:
        arr = np.asarray(y)
        if self._cross_entropy:
            classes = math.prod(self.output_shape)
            if arr.shape != (batch,) or arr.dtype.kind not in "iu":
                raise errors.ShapeError(
                    f"targets have shape {arr.shape} and dtype {arr.dtype}; cross-entropy "
                    f"takes ({batch},) integer class indices in 0..{classes - 1}"
                )
            if arr.size and not 0 <= _smallest(arr) <= _largest(arr) < classes:
                raise errors.InvalidArgument(f"targets hold class indices outside 0..{classes - 1}")
            return arr.astype(np.int32), "int32"
        want = (batch, *self.output_shape)
        if arr.shape != want:
            raise errors.ShapeError(f"targets have shape {arr.shape}; MSE takes {want}")
        return arr.astype(np.float32), "fp32"

    @_locked
    def train_step(self, x: Any, y: Any) -> StepResult:
        """One training step on the device: forward, loss, backward, update."""
        xs = self._batch(x)
        ys, ydt = self._targets(y, xs.shape[0])
        dev = self.device
        dev._check_model(self)
        body = dev._train_step(xs, self.input_format(), self.precision.saturate, ys, ydt)
        return StepResult(float(body["loss"]), int(body["step"]), body["counters"])

    @_locked
    def predict(self, x: Any, *, keep_activations: bool = False) -> NDArray[np.float32]:
        """Model outputs (batch, *output_shape) as float32. ``keep_activations`` keeps what
        a following ``backward`` needs."""
        xs = self._batch(x)
        dev = self.device
        dev._check_model(self)
        dev._upload_array(dev.INPUT_ID, xs, self.input_format(), self.precision.saturate)
        flags = 0x01 | (0x02 if keep_activations else 0)
        body = dev._call_model(
            "FORWARD",
            {"input_id": dev.INPUT_ID, "output_id": dev.OUTPUT_ID, "flags": flags},
            xs.nbytes,
        )
        return dev._decode(body["output"], body["data"])

    @_locked
    def backward(self, error: Any) -> StepResult:
        """Backward pass and update from dLoss/dOutput of the last
        ``predict(x, keep_activations=True)`` (e.g. a host-side loss or distillation)."""
        err = np.asarray(error, dtype=np.float32)
        if err.ndim < 1 or err.shape[1:] != self.output_shape:
            raise errors.ShapeError(
                f"error has shape {err.shape}; backward takes (batch, *{self.output_shape}) "
                "matching the last predict(x, keep_activations=True)"
            )
        dev = self.device
        dev._check_model(self)
        dev._upload_array(dev.ERROR_ID, err, "fp32")
        body = dev._call_model("BACKWARD", {"error_id": dev.ERROR_ID}, err.nbytes)
        return StepResult(float("nan"), int(body["step"]), body["counters"])

    @_locked
    def get_weights(self) -> dict[str, NDArray[np.float32]]:
        """The device's current weights as a state dict (float32 copies).

        A device that restarts while the weights are read loses the snapshot tensors: the
        read is tried once more, and ``_check_model`` raises StateLost if the model itself
        is gone (never a bare UNKNOWN_TENSOR for what is really a restart)."""
        dev = self.device
        for attempt in range(2):
            dev._check_model(self)
            resets = dev.runner.resets
            body = dev._call_model("GET_WEIGHTS", {"layer": ALL_LAYERS}, 0)
            out: dict[str, NDArray[np.float32]] = {}
            try:
                for p in body["params"]:
                    name = f"{p['layer']}.{'weight' if int(p['param']) == 0 else 'bias'}"
                    out[name] = dev._download(int(p["tensor"]["id"]))
            except errors.DeviceError as e:
                restarted = dev.runner.resets != resets
                if attempt == 0 and restarted and e.status in errors.LOST_STATUSES:
                    continue
                raise
            return {k: out[k] for k in self.spec.param_shapes() if k in out}
        raise AssertionError("unreachable: the second attempt returns or raises")

    @_locked
    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Replace the weights (all of them, or some: the rest keep their current values)."""
        checked = self.spec.check_weights(weights, partial=True)
        full = (
            {**self.get_weights(), **checked}
            if len(checked) < len(self.spec.param_shapes())
            else checked
        )
        self.device._define(self, full)

    def counters(self) -> dict[str, Any]:
        """Counters accumulated since deploy or reset_counters (see Device.counters)."""
        return self.device.counters()
