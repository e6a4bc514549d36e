"""Golden numpy models of the datapath kernels (docs/datapath.md), written for clarity only.

They define what ``device_model.datapath`` must return, bit for bit: the sequential
accumulator model of the integer GEMM (int64 arithmetic, one k at a time), the operand
statistics by brute-force counting over every MAC, direct (loop-over-kernel-offset)
convolutions and their two backward passes, and the float GEMMs in their exact accumulation
order. Tests and benchmarks use them; nothing here is fast.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "conv2d_input_grad_ref",
    "conv2d_ref",
    "conv2d_weight_grad_ref",
    "gemm_chunked_ref",
    "gemm_f32_ref",
    "gemm_int_ref",
    "gemm_stats_ref",
    "im2col_ref",
    "nzslices",
    "round_ieee_like_ref",
]

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


def _logical(x: np.ndarray, trans: bool) -> np.ndarray:
    return (x.T if trans else x).astype(np.int64)


def gemm_int_ref(
    a: np.ndarray,
    b: np.ndarray,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    acc_bits: int = 32,
    acc_mode: str = "saturate",
    init: np.ndarray | None = None,
) -> np.ndarray:
    """acc = init (or 0); for k in order: acc = sat_or_wrap(acc + a[:, k] * b[k, :])."""
    am, bm = _logical(a, trans_a), _logical(b, trans_b)
    m, n = am.shape[0], bm.shape[1]
    acc = np.zeros((m, n), np.int64) if init is None else np.array(init, np.int64) + 0
    acc = np.broadcast_to(acc, (m, n)).copy()
    hi = (1 << (acc_bits - 1)) - 1
    lo = -(1 << (acc_bits - 1))
    span = 1 << acc_bits
    for k in range(am.shape[1]):
        p = np.outer(am[:, k], bm[k, :])
        if acc_bits == 64:
            with np.errstate(over="ignore"):
                t = acc + p  # numpy int64 arrays wrap modulo 2^64
            if acc_mode == "saturate":
                t = np.where((p > 0) & (acc > _I64_MAX - p), _I64_MAX, t)
                t = np.where((p < 0) & (acc < _I64_MIN - p), _I64_MIN, t)
            acc = t
        elif acc_mode == "saturate":
            acc = np.clip(acc + p, lo, hi)
        else:
            acc = (acc + p - lo) % span + lo
    return acc


def nzslices(x: np.ndarray) -> np.ndarray:
    """Number of non-zero 4-bit slices of |x| (int8: 2 slices, int16: 4) per element."""
    u = np.abs(x.astype(np.int64))
    return sum(((u >> (4 * s)) & 15) != 0 for s in range(4)).astype(np.int64)


def gemm_stats_ref(
    a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False
) -> dict[str, int]:
    """The statistics by visiting every MAC (m, k, n): only for small shapes."""
    am, bm = _logical(a, trans_a), _logical(b, trans_b)
    za = (am == 0)[:, :, None]
    zb = (bm == 0)[None, :, :]
    shape = (am.shape[0], am.shape[1], bm.shape[1])
    sa = nzslices(am)[:, :, None]
    sb = nzslices(bm)[None, :, :]
    return {
        "macs": int(np.prod(shape)),
        "zeros_a": int((am == 0).sum()),
        "zeros_b": int((bm == 0).sum()),
        "macs_a_zero": int(np.broadcast_to(za, shape).sum()),
        "macs_b_zero": int(np.broadcast_to(zb, shape).sum()),
        "macs_both_zero": int((za & zb).sum()),
        "macs_executed": int((~za & ~zb).sum()),
        "nzslices_a": int(nzslices(am).sum()),
        "nzslices_b": int(nzslices(bm).sum()),
        "slice_ops": int(np.broadcast_to(sa * sb, shape).sum()),
    }


def gemm_f32_ref(
    a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False
) -> np.ndarray:
    """acc = fl32(acc + fl32(a*b)) sequentially over k, from +0."""
    am = (a.T if trans_a else a).astype(np.float32)
    bm = (b.T if trans_b else b).astype(np.float32)
    acc = np.zeros((am.shape[0], bm.shape[1]), np.float32)
    with np.errstate(all="ignore"):
        for k in range(am.shape[1]):
            acc = acc + np.outer(am[:, k], bm[k, :]).astype(np.float32)
    return acc


def round_ieee_like_ref(x: np.ndarray, ebits: int, mbits: int) -> np.ndarray:
    """Round float64 values to the IEEE-like (ebits, mbits) format: nearest-even, subnormals
    kept, overflow to +-inf, zero signs kept; NaN and inf pass through."""
    x = np.asarray(x, np.float64)
    emax = (1 << (ebits - 1)) - 1
    emin = 1 - emax
    finite = np.isfinite(x) & (x != 0)
    safe = np.where(finite, x, 1.0)
    e = np.maximum(np.frexp(safe)[1] - 1, emin)  # floor(log2|x|), at least emin
    q = np.ldexp(1.0, e - mbits)
    r = np.rint(safe / q) * q
    maxv = np.ldexp(2.0 - 2.0**-mbits, emax)
    r = np.where(np.abs(r) > maxv, np.copysign(np.inf, safe), r)
    return np.where(finite, r, x)


def gemm_chunked_ref(
    a: np.ndarray,
    b: np.ndarray,
    *,
    chunk: int,
    ebits: int = 5,
    mbits: int = 10,
    trans_a: bool = False,
    trans_b: bool = False,
) -> np.ndarray:
    """Chunked accumulation: per chunk acc = round_(e,m)(acc + fl32(a*b)) in order from +0
    (sum formed in float64), chunk sums added in float32 in order from +0."""
    am = (a.T if trans_a else a).astype(np.float32)
    bm = (b.T if trans_b else b).astype(np.float32)
    m, kk, n = am.shape[0], am.shape[1], bm.shape[1]
    total = np.zeros((m, n), np.float32)
    with np.errstate(all="ignore"):
        for k0 in range(0, kk, chunk):
            acc = np.zeros((m, n), np.float64)
            for k in range(k0, min(k0 + chunk, kk)):
                p = np.outer(am[:, k], bm[k, :]).astype(np.float32)
                acc = round_ieee_like_ref(acc + p.astype(np.float64), ebits, mbits)
            total = total + acc.astype(np.float32)
    return total


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def im2col_ref(
    x: np.ndarray,
    kernel_hw: tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
) -> np.ndarray:
    """Rows (n, ho, wo), columns (c, i, j): the value x_padded[n, c, ho*sh + i, wo*sw + j]."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_hw, _pair(stride), _pair(padding)
    nb, c, h, w = x.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((nb, ho, wo, c, kh, kw), np.int64)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, :, i, j] = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw].transpose(
                0, 2, 3, 1
            )
    return out.reshape(nb * ho * wo, c * kh * kw)


def conv2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> np.ndarray:
    """y[n, o, ho, wo] = sum_{c,i,j} x_padded[n, c, ho*sh + i, wo*sw + j] * w[o, c, i, j]."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    _, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((x.shape[0], w.shape[0], ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.int64))
    return y


def conv2d_input_grad_ref(
    dy: np.ndarray,
    w: np.ndarray,
    input_hw: tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> np.ndarray:
    """dx[n, c, h, w] = sum over (o, ho, wo, i, j) with h = ho*sh - ph + i, w = wo*sw - pw + j
    of dy[n, o, ho, wo] * w[o, c, i, j] (the adjoint of conv2d_ref)."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    h, wd = input_hw
    nb, _, ho, wo = dy.shape
    _, c, kh, kw = w.shape
    dxp = np.zeros((nb, c, h + 2 * ph + sh * ho + kh, wd + 2 * pw + sw * wo + kw), np.int64)
    for i in range(kh):
        for j in range(kw):
            contrib = np.einsum(
                "nohw,oc->nchw", dy.astype(np.int64), w[:, :, i, j].astype(np.int64)
            )
            dxp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += contrib
    return dxp[:, :, ph : ph + h, pw : pw + wd]


def conv2d_weight_grad_ref(
    x: np.ndarray,
    dy: np.ndarray,
    kernel_hw: tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> np.ndarray:
    """dw[o, c, i, j] = sum_{n,ho,wo} dy[n, o, ho, wo] * x_padded[n, c, ho*sh + i, wo*sw + j]."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = kernel_hw
    _, _, ho, wo = dy.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dw = np.zeros((dy.shape[1], x.shape[1], kh, kw), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy.astype(np.int64), patch)
    return dw
