"""The numpy reference of the engine: the same steps as device_model.engine with the numpy
models of every kernel, for bit-for-bit comparison.

``ReferenceEngine`` runs the engine's control flow (what is quantized where, SR streams,
range rules, DFA feedback, update rule, skip accounting) with ``ReferenceKernels``:
protocol.numerics (the numpy definition of every number format) instead of the C
quantizers, and device_model.gemm_reference's sequential int64 accumulator model and
sequential fp32 GEMM instead of the C datapath. Convolutions are im2col + GEMM in the
datapath's accumulation order ((c, i, j) for FF, (o, i, j) over the zero-inserted error for
the input gradient, (n, ho, wo) for the weight gradient), so saturation happens at the same
MAC. Slice products are counted from the operands (sum over k of the non-zero slices of
column k of A times those of row k of B). It is slow (Python loops over k): small models
only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from device_model import gemm_reference as gr
from device_model.engine import Engine
from device_model.engine_kernels import IntResult, Kernels
from device_model.engine_policy import rescale
from protocol import numerics as ref_numerics

__all__ = ["ReferenceEngine", "ReferenceKernels"]


def _acc_bits(a: np.ndarray, b: np.ndarray) -> int:
    """datapath's default accumulator: 32 bits for int8 x int8, 48 otherwise."""
    return 32 if a.dtype.itemsize == 1 and b.dtype.itemsize == 1 else 48


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def _slice_ops(a: np.ndarray, b: np.ndarray) -> int:
    """Slice products of the GEMM A (M x K) . B (K x N), by column/row sums."""
    sa = gr.nzslices(a).sum(axis=0)
    sb = gr.nzslices(b).sum(axis=1)
    return int(sa @ sb)


class ReferenceKernels:
    """protocol.numerics + device_model.gemm_reference behind the engine's Kernels interface."""

    name = "reference"

    def encode(self, x: np.ndarray, fmt: str, **kw: Any) -> np.ndarray:
        return ref_numerics.encode(x, fmt, **kw)

    def encode_values(
        self, x: np.ndarray, fmt: str, frac: int, *, values: bool = True, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        codes = ref_numerics.encode(x, fmt, **kw)
        return codes, rescale(codes, frac) if values else None

    def encode_values_amax(
        self, x: np.ndarray, fmt: str, *, values: bool = True, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        p = self.scale_params(x, fmt)
        frac = -int(p["shared_exp"]) if fmt == "flex16" else int(p["frac_bits"])
        codes, vals = self.encode_values(x, fmt, frac, values=values, **kw, **p)
        return codes, vals, frac

    def quantize(self, x: np.ndarray, fmt: str, **kw: Any) -> np.ndarray:
        return ref_numerics.quantize(x, fmt, **kw)

    def scale_params(self, x: np.ndarray, fmt: str, **kw: Any) -> dict[str, Any]:
        return ref_numerics.scale_params(x, fmt, **kw)

    def gemm_int(self, a: np.ndarray, b: np.ndarray, *, trans_a: bool, trans_b: bool) -> IntResult:
        am = a.T if trans_a else a
        bm = b.T if trans_b else b
        c = gr.gemm_int_ref(am, bm, acc_bits=_acc_bits(a, b))
        return c, _slice_ops(am, bm)

    def gemm_int_scaled(
        self, a: np.ndarray, b: np.ndarray, frac: int, *, trans_a: bool, trans_b: bool
    ) -> IntResult:
        c, so = self.gemm_int(a, b, trans_a=trans_a, trans_b=trans_b)
        return rescale(c, frac), so

    def gemm_float(
        self, a: np.ndarray, b: np.ndarray, *, trans_a: bool, trans_b: bool
    ) -> np.ndarray:
        return gr.gemm_f32_ref(a, b, trans_a=trans_a, trans_b=trans_b)

    def conv2d(self, x: np.ndarray, w: np.ndarray, stride: Any, padding: Any) -> IntResult:
        o, _, kh, kw = w.shape
        n, _, h, wd = x.shape
        (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
        cols = gr.im2col_ref(x, (kh, kw), (sh, sw), (ph, pw))
        wm = w.reshape(o, -1).T
        y = gr.gemm_int_ref(cols, wm, acc_bits=_acc_bits(x, w))
        ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        return y.reshape(n, ho, wo, o).transpose(0, 3, 1, 2), _slice_ops(cols, wm)

    def conv2d_input_grad(
        self, dy: np.ndarray, w: np.ndarray, hw: tuple[int, int], stride: Any, padding: Any
    ) -> IntResult:
        (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
        o, c, kh, kw = w.shape
        n, _, ho, wo = dy.shape
        h, wd = hw
        zh, zw = h + kh - 1, wd + kw - 1
        z = np.zeros((n, o, zh, zw), dy.dtype)
        for a in range(ho):
            r = kh - 1 - ph + sh * a
            if not 0 <= r < zh:
                continue
            for b in range(wo):
                q = kw - 1 - pw + sw * b
                if 0 <= q < zw:
                    z[:, :, r, q] = dy[:, :, a, b]
        wr = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        cols = gr.im2col_ref(z, (kh, kw), 1, 0)
        wm = wr.reshape(c, -1).T
        y = gr.gemm_int_ref(cols, wm, acc_bits=_acc_bits(dy, w))
        return y.reshape(n, h, wd, c).transpose(0, 3, 1, 2), _slice_ops(cols, wm)

    def conv2d_weight_grad(
        self, x: np.ndarray, dy: np.ndarray, khw: tuple[int, int], stride: Any, padding: Any
    ) -> IntResult:
        o = dy.shape[1]
        cols = gr.im2col_ref(x, tuple(khw), _pair(stride), _pair(padding))  # type: ignore[arg-type]
        dy2 = dy.transpose(1, 0, 2, 3).reshape(o, -1)
        dw = gr.gemm_int_ref(dy2, cols, acc_bits=_acc_bits(x, dy))
        return dw.reshape(o, x.shape[1], *khw), _slice_ops(dy2, cols)

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
        """PyTorch's SGD rule in numpy float32, in place: d = g + wd*w; m = mu*m + d and
        d = m (with momentum); w = w - lr*d where ``update``; w = 0 where not ``keep``."""
        lr32, mu32, wd32 = np.float32(lr), np.float32(mu), np.float32(weight_decay)
        d = (g + wd32 * w).astype(np.float32)
        if momentum is not None:
            m = (mu32 * momentum + d).astype(np.float32)
            d = m
            momentum[...] = m if update is None else np.where(update, m, momentum)
        wn = (w - lr32 * d).astype(np.float32)
        w[...] = wn if update is None else np.where(update, wn, w)
        if keep is not None:
            w[...] = np.where(keep, w, np.float32(0))

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
        """sgd_update without masks, then the zeros per row and column of w (rows: axis 0)."""
        self.sgd_update(
            w, g, lr=lr, momentum=momentum, mu=mu, weight_decay=weight_decay, update=None,
            keep=None,
        )  # fmt: skip
        z = w.reshape(w.shape[0], -1) == 0
        return z.sum(axis=1, dtype=np.int64), z.sum(axis=0, dtype=np.int64)


class ReferenceEngine(Engine):
    """The engine on the numpy reference kernels (same interface as Engine)."""

    def _make_kernels(self) -> Kernels:
        return ReferenceKernels()
