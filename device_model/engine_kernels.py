"""The arithmetic the engine delegates: number formats and GEMM/convolution kernels.

``ChipKernels`` is the emulated chip: device_model.numerics (C quantizers) and
device_model.datapath (exact integer GEMM/convolutions with the accumulator model and
operand statistics, float GEMM with fp32 sequential accumulation). The numpy reference of
the engine (device_model.engine_reference) plugs in the same interface built from
protocol.numerics and device_model.gemm_reference, so the two engines differ exactly in the
kernels and can be compared bit for bit.

``encode_values`` gives a fixed-point tensor's codes and their float32 values
(code * 2^-frac, ``frac`` the fractional length the parameters in ``kw`` give; None for the
values when ``values=False``); ``encode_values_amax`` the same with the scale from the
tensor's amax (``scale_params``), returned as the third item.
``sgd_update`` is the float32 SGD step of the update stage, in place (master weights and
momentum in fp32; the engine quantizes other formats itself); ``sgd_update_zc`` the same
without masks, returning the zeros per row and per column of the updated weight (out x
fan_in), which the next FF and EP read instead of counting them again.

Integer kernels return ``(int64 result, slice_ops)`` where ``slice_ops`` is the number of
non-zero 4-bit slice products the kernel did (zero operands contribute none);
``gemm_int_scaled`` returns the GEMM's result already rescaled, ``(C * 2^-frac as float32,
slice_ops)``, -64 <= frac <= 126 (engine_policy.rescale of the int64 result, bit for bit).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from device_model import datapath
from device_model import numerics as chip_numerics

__all__ = ["ChipKernels", "Kernels"]

IntResult = tuple[np.ndarray, int]
_SCALED = frozenset({"fp8-seb", "flex16", *(f"dfxp{n}" for n in range(4, 17))})


class Kernels(Protocol):
    """What the engine needs from a backend (see the module docstring)."""

    name: str

    def encode(self, x: np.ndarray, fmt: str, **kw: Any) -> np.ndarray: ...
    def encode_values(
        self, x: np.ndarray, fmt: str, frac: int, *, values: bool = True, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray | None]: ...
    def encode_values_amax(
        self,
        x: np.ndarray,
        fmt: str,
        *,
        values: bool = True,
        rounding: str = "nearest",
        saturate: bool | None = None,
        seed: int = 0,
        stream: int = 0,
    ) -> tuple[np.ndarray, np.ndarray | None, int]: ...
    def quantize(self, x: np.ndarray, fmt: str, **kw: Any) -> np.ndarray: ...
    def scale_params(self, x: np.ndarray, fmt: str, **kw: Any) -> dict[str, Any]: ...
    def gemm_int(
        self, a: np.ndarray, b: np.ndarray, *, trans_a: bool, trans_b: bool
    ) -> IntResult: ...
    def gemm_int_scaled(
        self, a: np.ndarray, b: np.ndarray, frac: int, *, trans_a: bool, trans_b: bool
    ) -> tuple[np.ndarray, int]: ...
    def gemm_float(
        self, a: np.ndarray, b: np.ndarray, *, trans_a: bool, trans_b: bool
    ) -> np.ndarray: ...
    def conv2d(self, x: np.ndarray, w: np.ndarray, stride: Any, padding: Any) -> IntResult: ...
    def conv2d_input_grad(
        self, dy: np.ndarray, w: np.ndarray, hw: tuple[int, int], stride: Any, padding: Any
    ) -> IntResult: ...
    def conv2d_weight_grad(
        self, x: np.ndarray, dy: np.ndarray, khw: tuple[int, int], stride: Any, padding: Any
    ) -> IntResult: ...
    def sgd_update(
        self,
        w: np.ndarray,
        g: np.ndarray,
        *,
        lr: float,
        momentum: np.ndarray | None,
        mu: float,
        weight_decay: float,
        update: np.ndarray | None,
        keep: np.ndarray | None,
    ) -> None: ...
    def sgd_update_zc(
        self,
        w: np.ndarray,
        g: np.ndarray,
        *,
        lr: float,
        momentum: np.ndarray | None,
        mu: float,
        weight_decay: float,
    ) -> tuple[np.ndarray, np.ndarray]: ...


class ChipKernels:
    """The C datapath (accumulators at datapath's defaults: 32 bits for int8 x int8, 48
    otherwise, saturating)."""

    name = "chip"

    def encode(self, x: np.ndarray, fmt: str, **kw: Any) -> np.ndarray:
        return chip_numerics.encode(x, fmt, **kw)

    def encode_values(
        self, x: np.ndarray, fmt: str, frac: int, *, values: bool = True, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        xs = np.ascontiguousarray(x, np.float32)
        codes, vals, _ = chip_numerics.encode_fixed_values(
            xs,
            fmt,
            frac,
            rounding=kw.get("rounding", "nearest"),
            saturate=kw.get("saturate"),
            seed=kw.get("seed", 0),
            stream=kw.get("stream", 0),
            values=values,
        )
        return codes, vals

    def encode_values_amax(
        self,
        x: np.ndarray,
        fmt: str,
        *,
        values: bool = True,
        rounding: str = "nearest",
        saturate: bool | None = None,
        seed: int = 0,
        stream: int = 0,
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        xs = np.ascontiguousarray(x, np.float32)
        return chip_numerics.encode_fixed_values(
            xs,
            fmt,
            None,
            rounding=rounding,
            saturate=saturate,
            seed=seed,
            stream=stream,
            values=values,
        )

    def quantize(self, x: np.ndarray, fmt: str, **kw: Any) -> np.ndarray:
        return chip_numerics.quantize(x, fmt, **kw)

    def scale_params(self, x: np.ndarray, fmt: str, **kw: Any) -> dict[str, Any]:
        if (
            kw
            or fmt not in _SCALED
            or not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous)
        ):
            return chip_numerics.scale_params(x, fmt, **kw)
        return {
            "frac_bits" if fmt.startswith("dfxp") else "shared_exp": chip_numerics.scale_of(x, fmt)
        }

    def gemm_int(self, a: np.ndarray, b: np.ndarray, *, trans_a: bool, trans_b: bool) -> IntResult:
        return datapath.gemm_int_slice_ops(a, b, trans_a=trans_a, trans_b=trans_b)

    def gemm_int_scaled(
        self, a: np.ndarray, b: np.ndarray, frac: int, *, trans_a: bool, trans_b: bool
    ) -> tuple[np.ndarray, int]:
        return datapath.gemm_int_scaled(a, b, frac, trans_a=trans_a, trans_b=trans_b)

    def gemm_float(
        self, a: np.ndarray, b: np.ndarray, *, trans_a: bool, trans_b: bool
    ) -> np.ndarray:
        return datapath.gemm_float(a, b, trans_a=trans_a, trans_b=trans_b)

    def conv2d(self, x: np.ndarray, w: np.ndarray, stride: Any, padding: Any) -> IntResult:
        y, st = datapath.conv2d(x, w, stride=stride, padding=padding)
        return y, st.slice_ops

    def conv2d_input_grad(
        self, dy: np.ndarray, w: np.ndarray, hw: tuple[int, int], stride: Any, padding: Any
    ) -> IntResult:
        y, st = datapath.conv2d_input_grad(dy, w, hw, stride=stride, padding=padding)
        return y, st.slice_ops

    def conv2d_weight_grad(
        self, x: np.ndarray, dy: np.ndarray, khw: tuple[int, int], stride: Any, padding: Any
    ) -> IntResult:
        y, st = datapath.conv2d_weight_grad(x, dy, khw, stride=stride, padding=padding)
        return y, st.slice_ops

    def sgd_update(
        self,
        w: np.ndarray,
        g: np.ndarray,
        *,
        lr: float,
        momentum: np.ndarray | None,
        mu: float,
        weight_decay: float,
        update: np.ndarray | None,
        keep: np.ndarray | None,
    ) -> None:
        datapath.sgd_update(
            w,
            g,
            lr=lr,
            momentum=momentum,
            mu=mu,
            weight_decay=weight_decay,
            update=update,
            keep=keep,
        )

    def sgd_update_zc(
        self,
        w: np.ndarray,
        g: np.ndarray,
        *,
        lr: float,
        momentum: np.ndarray | None,
        mu: float,
        weight_decay: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        return datapath.sgd_update_zc(
            w, g, lr=lr, momentum=momentum, mu=mu, weight_decay=weight_decay
        )
