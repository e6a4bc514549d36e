"""Layer specs with PyTorch names, state-dict weights, shape inference and a numpy forward.

A ``Sequential`` holds layer *specs* (no weights): ``Linear``, ``Conv2d``, ``ReLU``,
``LeakyReLU``, ``MaxPool2d``, ``AvgPool2d``, ``Flatten``, with PyTorch's argument names and
defaults (pool stride defaults to the kernel size). Weights are a state dict named like
PyTorch's: ``"<index>.weight"`` and ``"<index>.bias"`` by position in the Sequential, shapes
``(out, in)`` for Linear and ``(out, in, kh, kw)`` for Conv2d. Shapes are per sample (no batch
dimension), channels first. ``forward`` runs the model in float32 numpy on the host, for checks
against the device; ``save_npz``/``load_npz`` store state dicts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from host.errors import InvalidArgument, ShapeError
from protocol.messages import LayerKind

__all__ = [
    "AvgPool2d",
    "Conv2d",
    "Flatten",
    "LayerSpec",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "Sequential",
    "load_npz",
    "save_npz",
]

Shape = tuple[int, ...]
Weights = dict[str, NDArray[np.float32]]


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and i >= 0 for i in t):
        raise InvalidArgument(f"{name} must be an int >= 0 or a pair of them, got {v!r}")
    return (int(t[0]), int(t[1]))


def _conv_out(size: int, k: int, s: int, p: int, what: str) -> int:
    out = (size + 2 * p - k) // s + 1
    if k < 1 or s < 1 or out < 1:
        raise ShapeError(f"{what}: kernel {k}, stride {s}, padding {p} do not fit size {size}")
    return out


class LayerSpec:
    """Base of the layer specs: output shape, wire description, parameter shapes, forward."""

    kind: LayerKind

    def output_shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def wire_params(self) -> dict[str, Any]:
        """The DEFINE_MODEL ``params`` of this layer."""
        return {}

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        """Parameter name ("weight", "bias") -> shape, for input ``shape``."""
        return {}

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Linear(LayerSpec):
    """y = x W^T + b over the last dimension of a 1-D sample."""

    in_features: int
    out_features: int
    bias: bool = True
    kind = LayerKind.LINEAR

    def output_shape(self, shape: Shape) -> Shape:
        if shape != (self.in_features,):
            raise ShapeError(
                f"Linear({self.in_features}, {self.out_features}) takes samples of shape "
                f"({self.in_features},), got {shape}; add Flatten() before it"
            )
        return (self.out_features,)

    def wire_params(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": int(self.bias),
        }

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        out: dict[str, Shape] = {"weight": (self.out_features, self.in_features)}
        return {**out, "bias": (self.out_features,)} if self.bias else out

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        y = x @ params["weight"].T
        return y + params["bias"] if self.bias else y


@dataclass(frozen=True)
class Conv2d(LayerSpec):
    """2-D convolution (cross-correlation, as PyTorch) of (C, H, W) samples."""

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    bias: bool = True
    kind = LayerKind.CONV2D

    def _geom(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return (
            _pair(self.kernel_size, "kernel_size"),
            _pair(self.stride, "stride"),
            _pair(self.padding, "padding"),
        )

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ShapeError(
                f"Conv2d({self.in_channels}, {self.out_channels}, ...) takes samples of shape "
                f"({self.in_channels}, H, W), got {shape}"
            )
        (kh, kw), (sh, sw), (ph, pw) = self._geom()
        return (
            self.out_channels,
            _conv_out(shape[1], kh, sh, ph, "Conv2d"),
            _conv_out(shape[2], kw, sw, pw, "Conv2d"),
        )

    def wire_params(self) -> dict[str, Any]:
        (kh, kw), (sh, sw), (ph, pw) = self._geom()
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_h": kh,
            "kernel_w": kw,
            "stride_h": sh,
            "stride_w": sw,
            "padding_h": ph,
            "padding_w": pw,
            "bias": int(self.bias),
        }

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        (kh, kw), _, _ = self._geom()
        out: dict[str, Shape] = {"weight": (self.out_channels, self.in_channels, kh, kw)}
        return {**out, "bias": (self.out_channels,)} if self.bias else out

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        (kh, kw), (sh, sw), (ph, pw) = self._geom()
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        win = win[:, :, ::sh, ::sw]  # (N, C, OH, OW, kh, kw)
        y = np.einsum("nchwij,ocij->nohw", win, params["weight"], optimize=True)
        return y + params["bias"][None, :, None, None] if self.bias else y


@dataclass(frozen=True)
class ReLU(LayerSpec):
    """max(x, 0)."""

    kind = LayerKind.RELU

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        return np.maximum(x, 0)


@dataclass(frozen=True)
class LeakyReLU(LayerSpec):
    """x for x >= 0, negative_slope * x below."""

    negative_slope: float = 0.01
    kind = LayerKind.LEAKY_RELU

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def wire_params(self) -> dict[str, Any]:
        return {"negative_slope": float(self.negative_slope)}

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        return np.where(x >= 0, x, np.float32(self.negative_slope) * x)


@dataclass(frozen=True)
class _Pool2d(LayerSpec):
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0

    def _geom(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        k = _pair(self.kernel_size, "kernel_size")
        s = k if self.stride is None else _pair(self.stride, "stride")
        return k, s, _pair(self.padding, "padding")

    def output_shape(self, shape: Shape) -> Shape:
        name = type(self).__name__
        if len(shape) != 3:
            raise ShapeError(f"{name} takes samples of shape (C, H, W), got {shape}")
        (kh, kw), (sh, sw), (ph, pw) = self._geom()
        return (
            shape[0],
            _conv_out(shape[1], kh, sh, ph, name),
            _conv_out(shape[2], kw, sw, pw, name),
        )

    def wire_params(self) -> dict[str, Any]:
        (kh, kw), (sh, sw), (ph, pw) = self._geom()
        return {
            "kernel_h": kh,
            "kernel_w": kw,
            "stride_h": sh,
            "stride_w": sw,
            "padding_h": ph,
            "padding_w": pw,
        }

    def _windows(self, x: NDArray[np.float32], fill: float) -> Any:
        (kh, kw), (sh, sw), (ph, pw) = self._geom()
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        return win[:, :, ::sh, ::sw]


@dataclass(frozen=True)
class MaxPool2d(_Pool2d):
    """Maximum over each window (padding never wins)."""

    kind = LayerKind.MAX_POOL2D

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        return self._windows(x, -np.inf).max(axis=(-2, -1))


@dataclass(frozen=True)
class AvgPool2d(_Pool2d):
    """Mean over each window, padding counted as zeros (PyTorch's count_include_pad)."""

    kind = LayerKind.AVG_POOL2D

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        return self._windows(x, 0.0).mean(axis=(-2, -1))


@dataclass(frozen=True)
class Flatten(LayerSpec):
    """(C, H, W) -> (C*H*W,), C order."""

    kind = LayerKind.FLATTEN

    def output_shape(self, shape: Shape) -> Shape:
        return (int(np.prod(shape)),)

    def forward(self, x: NDArray[np.float32], params: Mapping[str, NDArray[np.float32]]) -> Any:
        return x.reshape(x.shape[0], -1)


class Sequential:
    """Layers applied in order, and the per-sample input shape they take.

    ``input_shape`` may be omitted when the first layer is a Linear (it is then
    ``(in_features,)``); a model starting with Conv2d needs it, e.g. ``input_shape=(1, 8, 8)``.
    """

    def __init__(self, *layers: LayerSpec, input_shape: Shape | None = None) -> None:
        if not layers:
            raise InvalidArgument("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, LayerSpec):
                raise InvalidArgument(
                    f"layer {i} is a {type(layer).__name__}; accepted: Linear, Conv2d, ReLU, "
                    "LeakyReLU, MaxPool2d, AvgPool2d, Flatten from host.nn"
                )
        self.layers: tuple[LayerSpec, ...] = tuple(layers)
        if input_shape is None and isinstance(layers[0], Linear):
            input_shape = (layers[0].in_features,)
        if input_shape is None:
            raise InvalidArgument(
                "Sequential cannot infer the input shape of a model that does not start with "
                "Linear: pass input_shape=(C, H, W) (one sample, no batch dimension)"
            )
        self.input_shape: Shape = tuple(int(d) for d in input_shape)
        self.shapes: list[Shape] = [self.input_shape]
        for layer in self.layers:
            self.shapes.append(layer.output_shape(self.shapes[-1]))

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential({inner}, input_shape={self.input_shape})"

    @property
    def output_shape(self) -> Shape:
        """Shape of one output sample."""
        return self.shapes[-1]

    def param_shapes(self) -> dict[str, Shape]:
        """State-dict name -> shape of every parameter, in layer order."""
        out: dict[str, Shape] = {}
        for i, layer in enumerate(self.layers):
            for name, shape in layer.param_shapes(self.shapes[i]).items():
                out[f"{i}.{name}"] = shape
        return out

    def wire_layers(self) -> list[dict[str, Any]]:
        """The DEFINE_MODEL ``layers`` list."""
        return [{"kind": layer.kind, "params": layer.wire_params()} for layer in self.layers]

    def check_weights(self, weights: Mapping[str, Any], *, partial: bool = False) -> Weights:
        """float32 copies of ``weights`` checked against the parameter names and shapes
        (every parameter unless ``partial``)."""
        shapes = self.param_shapes()
        unknown = sorted(set(weights) - set(shapes))
        if unknown:
            raise InvalidArgument(
                f"unknown weight name(s) {unknown}; this model has {list(shapes)}"
            )
        missing = [k for k in shapes if k not in weights]
        if missing and not partial:
            raise InvalidArgument(f"weights lack {missing}; this model has {list(shapes)}")
        out: Weights = {}
        for name, value in weights.items():
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != shapes[name]:
                raise ShapeError(f"weight {name!r} has shape {arr.shape}; expected {shapes[name]}")
            out[name] = np.ascontiguousarray(arr)
        return out

    def init_weights(self, seed: int = 0) -> Weights:
        """Host-side initial weights (PyTorch's default uniform bound 1/sqrt(fan_in))."""
        rng = np.random.default_rng(seed)
        shapes = self.param_shapes()
        out: Weights = {}
        for name, shape in shapes.items():
            fan_in = int(np.prod(shapes[name.split(".")[0] + ".weight"][1:]))
            bound = 1.0 / np.sqrt(max(fan_in, 1))
            out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
        return out

    def forward(self, x: Any, weights: Mapping[str, Any]) -> NDArray[np.float32]:
        """float32 numpy forward of a batch ``x`` of shape (N, *input_shape)."""
        xs = np.asarray(x, dtype=np.float32)
        if xs.shape[1:] != self.input_shape:
            raise ShapeError(
                f"input has shape {xs.shape}; this model takes (batch, *{self.input_shape})"
            )
        w = self.check_weights(weights)
        for i, layer in enumerate(self.layers):
            params = {k.split(".", 1)[1]: v for k, v in w.items() if k.split(".")[0] == str(i)}
            xs = np.asarray(layer.forward(xs, params), dtype=np.float32)
        return xs


def save_npz(path: str | os.PathLike[str], weights: Mapping[str, Any]) -> None:
    """Write a state dict to an ``.npz`` file (one array per name)."""
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in weights.items()}
    np.savez(path, **arrays)


def load_npz(path: str | os.PathLike[str]) -> Weights:
    """Read a state dict written by ``save_npz`` (or numpy.savez) as float32 arrays."""
    with np.load(path) as f:
        return {k: np.asarray(f[k], dtype=np.float32) for k in f.files}
