"""DEFINE_MODEL checked on the device side before any engine is built: the layer table of the
message turned into engine layer specs, the shape of every layer's output, the parameter
shapes, and the sizes the memory check needs.

The firmware validates a model here (sizes chain, parameters fit the device) so that a bad or
huge model is refused with BAD_SHAPE / OUT_OF_MEMORY before anything is allocated, and so the
DEFINE_MODEL response can state the output shape and parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from device_model.firmware_tensors import FirmwareError
from protocol.dtypes import shape_count
from protocol.messages import LayerKind, ParamKind
from protocol.status import Status

#: Engine layer kind of each wire layer kind.
KIND_NAMES: dict[LayerKind, str] = {
    LayerKind.LINEAR: "linear",
    LayerKind.CONV2D: "conv2d",
    LayerKind.RELU: "relu",
    LayerKind.LEAKY_RELU: "leaky_relu",
    LayerKind.MAX_POOL2D: "max_pool2d",
    LayerKind.AVG_POOL2D: "avg_pool2d",
    LayerKind.FLATTEN: "flatten",
}


@dataclass(frozen=True)
class ModelPlan:
    """A validated model: engine layer specs (kind, params), per-layer output shapes (one
    sample), parameter shapes by (layer, ParamKind), and element counts."""

    input_shape: tuple[int, ...]
    specs: tuple[tuple[str, dict[str, Any]], ...]
    shapes: tuple[tuple[int, ...], ...]
    params: dict[tuple[int, ParamKind], tuple[int, ...]]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[-1] if self.shapes else self.input_shape

    @property
    def parameter_count(self) -> int:
        return sum(shape_count(s) for s in self.params.values())

    @property
    def activation_count(self) -> int:
        """Elements of one sample's input and every layer output."""
        return shape_count(self.input_shape) + sum(shape_count(s) for s in self.shapes)

    def out_channels(self, layer: int) -> int:
        return self.params[(layer, ParamKind.WEIGHT)][0]


def _bad(i: int, kind: str, what: str) -> FirmwareError:
    return FirmwareError(Status.BAD_SHAPE, f"layer {i} ({kind}): {what}")


def _spatial(
    i: int,
    kind: str,
    shape: tuple[int, ...],
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int],
) -> tuple[int, int]:
    if len(shape) != 3:
        raise _bad(i, kind, f"takes (channels, height, width) samples, got shape {shape}")
    if min(k) < 1 or min(s) < 1:
        raise _bad(i, kind, f"kernel {k} and stride {s} must be >= 1")
    h, w = shape[1] + 2 * p[0], shape[2] + 2 * p[1]
    if h < k[0] or w < k[1]:
        raise _bad(
            i, kind, f"kernel {k} is larger than the padded input {(h, w)} (input {shape[1:]})"
        )
    return (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1


def plan_model(input_shape: list[int], layers: list[dict[str, Any]], max_layers: int) -> ModelPlan:
    """Validate DEFINE_MODEL's input shape and layer table; raise FirmwareError otherwise."""
    if not layers:
        raise FirmwareError(Status.BAD_SHAPE, "a model needs at least one layer")
    if len(layers) > max_layers:
        raise FirmwareError(
            Status.LIMIT, f"{len(layers)} layers; this chip takes at most {max_layers}"
        )
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise FirmwareError(
            Status.BAD_SHAPE,
            f"input shape {shape} must have at least one dimension, each >= 1 (no batch dim)",
        )
    inp = shape
    specs: list[tuple[str, dict[str, Any]]] = []
    shapes: list[tuple[int, ...]] = []
    params: dict[tuple[int, ParamKind], tuple[int, ...]] = {}
    for i, layer in enumerate(layers):
        kind = LayerKind(layer["kind"])
        name = KIND_NAMES[kind]
        p = layer["params"]
        kw: dict[str, Any] = {}
        if kind == LayerKind.LINEAR:
            fin, fout = int(p["in_features"]), int(p["out_features"])
            if fin < 1 or fout < 1:
                raise _bad(i, name, "in_features and out_features must be >= 1")
            if shape != (fin,):
                raise _bad(
                    i,
                    name,
                    f"takes samples of shape ({fin},), got {shape}; add a flatten layer "
                    "or fix in_features",
                )
            kw = {"in_features": fin, "out_features": fout, "bias": bool(p["bias"])}
            params[(i, ParamKind.WEIGHT)] = (fout, fin)
            if p["bias"]:
                params[(i, ParamKind.BIAS)] = (fout,)
            shape = (fout,)
        elif kind == LayerKind.CONV2D:
            cin, cout = int(p["in_channels"]), int(p["out_channels"])
            k = (int(p["kernel_h"]), int(p["kernel_w"]))
            s = (int(p["stride_h"]), int(p["stride_w"]))
            pad = (int(p["padding_h"]), int(p["padding_w"]))
            if cin < 1 or cout < 1:
                raise _bad(i, name, "in_channels and out_channels must be >= 1")
            if len(shape) != 3 or shape[0] != cin:
                raise _bad(i, name, f"takes samples of shape ({cin}, H, W), got {shape}")
            oh, ow = _spatial(i, name, shape, k, s, pad)
            kw = {
                "in_channels": cin,
                "out_channels": cout,
                "kernel_size": k,
                "stride": s,
                "padding": pad,
                "bias": bool(p["bias"]),
            }
            params[(i, ParamKind.WEIGHT)] = (cout, cin, *k)
            if p["bias"]:
                params[(i, ParamKind.BIAS)] = (cout,)
            shape = (cout, oh, ow)
        elif kind in (LayerKind.MAX_POOL2D, LayerKind.AVG_POOL2D):
            k = (int(p["kernel_h"]), int(p["kernel_w"]))
            s = (int(p["stride_h"]), int(p["stride_w"]))
            pad = (int(p["padding_h"]), int(p["padding_w"]))
            if 2 * pad[0] > k[0] or 2 * pad[1] > k[1]:
                raise _bad(i, name, f"padding {pad} must be at most half the kernel {k}")
            oh, ow = _spatial(i, name, shape, k, s, pad)
            kw = {"kernel_size": k, "stride": s, "padding": pad}
            shape = (shape[0], oh, ow)
        elif kind == LayerKind.LEAKY_RELU:
            slope = float(p["negative_slope"])
            if slope != slope or abs(slope) == float("inf"):
                raise FirmwareError(
                    Status.BAD_REQUEST, f"layer {i} (leaky_relu): negative_slope must be finite"
                )
            kw = {"negative_slope": slope}
        elif kind == LayerKind.FLATTEN:
            shape = (shape_count(shape),)
        specs.append((name, kw))
        shapes.append(shape)
    return ModelPlan(inp, tuple(specs), tuple(shapes), params)


def param_name(layer: int, param: ParamKind) -> str:
    """State-dict style name of a parameter ("0.weight", "3.bias")."""
    return f"{layer}.{'weight' if param == ParamKind.WEIGHT else 'bias'}"


def parse_param_name(name: str) -> tuple[int, ParamKind] | None:
    """(layer, ParamKind) of a state-dict style name, None if it is not one."""
    head, _, tail = name.partition(".")
    if not head.isdigit() or tail not in ("weight", "bias"):
        return None
    return int(head), ParamKind.WEIGHT if tail == "weight" else ParamKind.BIAS
