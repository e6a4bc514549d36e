"""The layers of the engine: their specs, shape chaining, and the exact float parts of them.

``LayerSpec`` is what DEFINE_MODEL's layer list says (PyTorch names and parameters).
``build_layers`` checks that the sizes chain from the input shape and returns ``Layer``
records with each layer's input and output shape (per sample). The functions here are the
parts of the layers that do no MACs and are exact or order-defined in float32: im2col and
its adjoint col2im (for the float convolution path), pooling forward/backward, ReLU masks.
Both the engine and its numpy reference use them, so they are not what the golden model
tests (tests/golden_backprop.py is written independently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from device_model import datapath
from device_model.engine_config import EngineError
from protocol.status import Status

__all__ = ["KINDS", "PARAM_KINDS", "Layer", "LayerSpec", "build_layers", "col2im", "im2col"]

KINDS: tuple[str, ...] = (
    "linear",
    "conv2d",
    "relu",
    "leaky_relu",
    "max_pool2d",
    "avg_pool2d",
    "flatten",
)
PARAM_KINDS: frozenset[str] = frozenset({"linear", "conv2d"})
_ACCEPTED: dict[str, tuple[str, ...]] = {
    "linear": ("in_features", "out_features", "bias"),
    "conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"),
    "relu": (),
    "leaky_relu": ("negative_slope",),
    "max_pool2d": ("kernel_size", "stride", "padding"),
    "avg_pool2d": ("kernel_size", "stride", "padding"),
    "flatten": (),
}


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a model: ``kind`` (see KINDS) and its PyTorch-style parameters."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __init__(self, kind: str, **params: Any) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "params", dict(params))


@dataclass(frozen=True)
class Layer:
    """A checked layer: kind, index, shapes per sample, and its normalised parameters
    (``kernel``, ``stride``, ``padding`` as pairs; ``bias`` bool; ``slope`` float)."""

    index: int
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    bias: bool = False
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    slope: float = 0.0

    @property
    def has_params(self) -> bool:
        return self.kind in PARAM_KINDS

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_shape[0], self.in_shape[0])
        return (self.out_shape[0], self.in_shape[0], *self.kernel)

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.weight_shape[1:]))


def _int(v: object, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or int(v) < lo:
        raise EngineError(Status.BAD_REQUEST, f"{what} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _pair(v: object, what: str, lo: int) -> tuple[int, int]:
    if isinstance(v, tuple | list):
        if len(v) != 2:
            raise EngineError(Status.BAD_REQUEST, f"{what} must be an int or a pair, got {v!r}")
        return _int(v[0], what, lo), _int(v[1], what, lo)
    x = _int(v, what, lo)
    return x, x


def _out(size: int, k: int, s: int, p: int, i: int, what: str) -> int:
    if size + 2 * p < k:
        raise EngineError(
            Status.BAD_SHAPE,
            f"layer {i} ({what}): kernel {k} is larger than the padded input {size + 2 * p}",
        )
    return (size + 2 * p - k) // s + 1


def _check_params(i: int, spec: LayerSpec) -> Mapping[str, Any]:
    if not isinstance(spec, LayerSpec):
        raise EngineError(Status.BAD_REQUEST, f"layer {i} is not a LayerSpec: {spec!r}")
    if spec.kind not in KINDS:
        raise EngineError(
            Status.BAD_REQUEST, f"layer {i}: unknown kind {spec.kind!r}; accepted: {KINDS}"
        )
    bad = sorted(set(spec.params) - set(_ACCEPTED[spec.kind]))
    if bad:
        raise EngineError(
            Status.BAD_REQUEST,
            f"layer {i} ({spec.kind}): unknown parameter(s) {bad}; "
            f"accepted: {_ACCEPTED[spec.kind]}",
        )
    return spec.params


def build_layers(input_shape: Sequence[int], specs: Sequence[LayerSpec]) -> list[Layer]:
    """Check that the layer sizes chain from ``input_shape`` (one sample) and return them."""
    shape = tuple(_int(d, "input dimension", 1) for d in input_shape)
    if not shape:
        raise EngineError(Status.BAD_SHAPE, "input_shape must have at least one dimension")
    if not specs:
        raise EngineError(Status.BAD_REQUEST, "a model needs at least one layer")
    out: list[Layer] = []
    for i, spec in enumerate(specs):
        p = _check_params(i, spec)
        kind = spec.kind
        if kind == "linear":
            nin = _int(p.get("in_features"), "in_features", 1)
            nout = _int(p.get("out_features"), "out_features", 1)
            if shape != (nin,):
                raise EngineError(
                    Status.BAD_SHAPE,
                    f"layer {i} (linear) expects input ({nin},), the previous layer gives "
                    f"{shape} (add a flatten layer?)",
                )
            out.append(Layer(i, kind, shape, (nout,), bias=bool(p.get("bias", True))))
        elif kind == "conv2d":
            cin = _int(p.get("in_channels"), "in_channels", 1)
            cout = _int(p.get("out_channels"), "out_channels", 1)
            k = _pair(p.get("kernel_size"), "kernel_size", 1)
            s = _pair(p.get("stride", 1), "stride", 1)
            pad = _pair(p.get("padding", 0), "padding", 0)
            if len(shape) != 3 or shape[0] != cin:
                raise EngineError(
                    Status.BAD_SHAPE,
                    f"layer {i} (conv2d) expects input ({cin}, H, W), the previous layer gives "
                    f"{shape}",
                )
            ho = _out(shape[1], k[0], s[0], pad[0], i, "conv2d height")
            wo = _out(shape[2], k[1], s[1], pad[1], i, "conv2d width")
            out.append(Layer(i, kind, shape, (cout, ho, wo), bool(p.get("bias", True)), k, s, pad))
        elif kind in ("max_pool2d", "avg_pool2d"):
            k = _pair(p.get("kernel_size"), "kernel_size", 1)
            s = _pair(p.get("stride") if p.get("stride") is not None else k, "stride", 1)
            pad = _pair(p.get("padding", 0), "padding", 0)
            if len(shape) != 3:
                raise EngineError(
                    Status.BAD_SHAPE, f"layer {i} ({kind}) expects input (C, H, W), got {shape}"
                )
            if 2 * pad[0] > k[0] or 2 * pad[1] > k[1]:
                raise EngineError(
                    Status.BAD_REQUEST,
                    f"layer {i} ({kind}): padding {pad} must be at most half the kernel {k}",
                )
            ho = _out(shape[1], k[0], s[0], pad[0], i, f"{kind} height")
            wo = _out(shape[2], k[1], s[1], pad[1], i, f"{kind} width")
            out.append(Layer(i, kind, shape, (shape[0], ho, wo), False, k, s, pad))
        elif kind == "flatten":
            out.append(Layer(i, kind, shape, (int(np.prod(shape)),)))
        else:
            slope = 0.0
            if kind == "leaky_relu":
                v = p.get("negative_slope", 0.01)
                if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                    raise EngineError(
                        Status.BAD_REQUEST, f"layer {i}: negative_slope must be a finite number"
                    )
                slope = float(v)
            out.append(Layer(i, kind, shape, shape, slope=slope))
        shape = out[-1].out_shape
    return out


# ------------------------------------------------------------------- float helpers


def _padded(x: np.ndarray, ph: int, pw: int, fill: float = 0.0) -> np.ndarray:
    """x (N, C, H, W) with ``fill`` rows and columns around H and W (np.pad's constant mode,
    without its per-call overhead)."""
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


def im2col(x: np.ndarray, layer: Layer) -> np.ndarray:
    """Rows (n, ho, wo), columns (c, i, j) of the zero-padded input (as datapath.conv2d),
    gathered with one np.take of the cached positions (a copy of the entries, any dtype)."""
    ph, pw = layer.padding
    ho, wo = layer.out_shape[1:]
    n = x.shape[0]
    cols = datapath.im2col_copy(x, layer.kernel, layer.stride, layer.padding, (ho, wo))
    if cols is not None:  # the same entries in one C pass (C-ordered x of 1-8 byte elements)
        return cols
    xp = _padded(x, ph, pw)
    idx = datapath.im2col_positions(
        layer.in_shape, layer.kernel, layer.stride, layer.padding, (ho, wo)
    )
    flat = xp.reshape(n, xp.shape[1] * xp.shape[2] * xp.shape[3])
    return np.take(flat, idx, axis=1).reshape(n * ho * wo, idx.size // (ho * wo))


def col2im(cols: np.ndarray, layer: Layer, batch: int) -> np.ndarray:
    """The adjoint of im2col: add each column entry into its input position, kernel offset
    by kernel offset in (i, j) order, then drop the padding (float32, a fixed order)."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    c, h, w = layer.in_shape
    ho, wo = layer.out_shape[1:]
    t = cols.reshape(batch, ho, wo, c, kh, kw)
    xp = np.zeros((batch, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += t[
                :, :, :, :, i, j
            ].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(xp[:, :, ph : ph + h, pw : pw + w])


def _pool_windows(x: np.ndarray, layer: Layer, fill: float) -> np.ndarray:
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    ho, wo = layer.out_shape[1:]
    xp = _padded(x, ph, pw, fill)
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))
    win = win[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw]
    return win.reshape(*win.shape[:4], kh * kw)


def _tiled(layer: Layer) -> bool:
    """Windows that tile the input (stride = kernel, no padding): reshapes, no window view."""
    return layer.stride == layer.kernel and layer.padding == (0, 0)


def _tiles(x: np.ndarray, layer: Layer) -> np.ndarray:
    """The windows of a tiled pool as (n, c, ho, wo, kh * kw), offsets in (i, j) order (the
    rows and columns past the last whole window dropped, as the window view drops them)."""
    (kh, kw), (ho, wo) = layer.kernel, layer.out_shape[1:]
    n, c = x.shape[:2]
    t = x[:, :, : ho * kh, : wo * kw].reshape(n, c, ho, kh, wo, kw)
    return t.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, kh * kw)


def pool_forward(x: np.ndarray, layer: Layer) -> tuple[np.ndarray, np.ndarray | None]:
    """Max pool (padding with -inf; returns the flat window index of the first maximum for
    the backward pass) or average pool (zero padding counted, like PyTorch's default)."""
    if layer.kind == "max_pool2d" and _tiled(layer):
        if x.dtype == np.float32:
            return datapath.maxpool_tiled(x, layer.kernel)
        win = _tiles(x, layer)
        arg = np.argmax(win, axis=-1)
        return np.take_along_axis(win, arg[..., None], -1)[..., 0].astype(np.float32), arg
    if layer.kind == "max_pool2d":
        win = _pool_windows(x, layer, -np.inf)
        arg = np.argmax(win, axis=-1)
        return np.take_along_axis(win, arg[..., None], -1)[..., 0].astype(np.float32), arg
    win = _pool_windows(x, layer, 0.0)
    k = layer.kernel[0] * layer.kernel[1]
    return (win.sum(axis=-1, dtype=np.float32) / np.float32(k)).astype(np.float32), None


def pool_backward(dy: np.ndarray, layer: Layer, arg: np.ndarray | None) -> np.ndarray:
    """The adjoint of pool_forward (error routed to the max, or spread 1/k over the window)."""
    (kh, kw) = layer.kernel
    nb = dy.shape[0]
    c, ho, wo = layer.out_shape
    if layer.kind == "max_pool2d" and _tiled(layer):
        # col2im of disjoint windows: each input gets 0 + its one entry (dy at the window's
        # argmax, 0 elsewhere), in one C pass
        assert arg is not None
        return datapath.maxpool_tiled_backward(
            np.asarray(dy, np.float32), arg.astype(np.int64, copy=False), (nb, *layer.in_shape),
            layer.kernel,
        )  # fmt: skip
    if layer.kind == "max_pool2d":
        assert arg is not None
        onehot = np.zeros((nb, c, ho, wo, kh * kw), np.float32)
        np.put_along_axis(onehot, arg[..., None], dy[..., None], -1)
        cols: np.ndarray = onehot
    else:
        cols = np.broadcast_to((dy / np.float32(kh * kw))[..., None], (nb, c, ho, wo, kh * kw))
    cols = np.ascontiguousarray(
        cols.reshape(nb, c, ho, wo, kh, kw).transpose(0, 2, 3, 1, 4, 5)
    ).reshape(nb * ho * wo, c * kh * kw)
    return col2im(cols.astype(np.float32), layer, nb)
