"""Skipped-work accounting of one stage of one layer: which MACs the chip executes and which
it skips, and why.

Every stage is a GEMM ``out[i, j] = sum_k P[i, k] * Q[k, j]`` in its natural form (FC: the
activations/errors and weights; convolution: the im2col matrix of the input or of the input
error and the weight matrix). One operand is the stage's *input* operand ``a`` (IA in FF and
WG, the incoming error in EP), the other the ``b`` operand (weights or feedback in FF/EP,
errors in WG). Each skipped MAC is counted under exactly one reason, in this precedence
(the order of device_model.costs_analytic):

1. ``pruned``: the MAC's weight is pruned (FF/EP; skippable when the preset skips "pruned"
   or "weight_zero" in the stage: a pruned weight is a known zero), or its output is a
   pruned weight's gradient (WG; skippable when the preset skips "pruned" in WG);
2. ``output_zero``: the MAC's output (an error at the layer's input, in EP) is zeroed by the
   derivative of the ReLU that feeds the layer (known from FF), when skipped;
3. ``input_zero``: the ``a`` operand is zero, when the stage skips "input_zero";
4. ``weight_zero``: the ``b`` operand is zero, when the stage skips "weight_zero".

Everything else is executed. Outputs that need no work at all (conv EP: input-error
positions in the padding) are not counted (``counted``). ``slice_ops`` (DFXP only: the
4-bit slice products of the executed MACs when the stage skips zero slices) comes from the
kernel's statistics, minus the slice products of outputs skipped whole. Counting uses
row/column sums, so it costs far less than the GEMM except when an output mask meets two
operand properties.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from device_model.datapath import zero_counts

__all__ = ["MacCounts", "count_macs", "nzslices"]

MacCounts = dict[str, Any]
_add_reduce = np.add.reduce  # about 1 us less per call than ndarray.sum on small arrays
_C_DTYPES = (np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.int16))  # zero_counts takes


def nzslices(codes: np.ndarray | None) -> np.ndarray:
    """Non-zero 4-bit slices of |code| per element (int8: up to 2, int16: up to 4)."""
    assert codes is not None, "slice counts need integer codes"
    u = np.abs(codes.astype(np.int32))
    out = np.zeros(u.shape, np.int64)
    for s in range(4):
        out += ((u >> (4 * s)) & 15) != 0
    return out


def _pair(
    f: np.ndarray | None, g: np.ndarray | None, r: np.ndarray | None, shape: tuple[int, int, int]
) -> int:
    """Number of (i, k, j) with f[i, k] and g[k, j] and r[i, j] (None = all true)."""
    ni, nk, nj = shape
    if r is None:
        fk = np.full(nk, ni, np.int64) if f is None else f.sum(axis=0, dtype=np.int64)
        gk = np.full(nk, nj, np.int64) if g is None else g.sum(axis=1, dtype=np.int64)
        return int(fk @ gk)
    if f is None and g is None:
        return nk * int(r.sum())
    if f is None:
        assert g is not None
        return int(g.sum(axis=0, dtype=np.int64) @ r.sum(axis=0, dtype=np.int64))
    if g is None:
        return int(f.sum(axis=1, dtype=np.int64) @ r.sum(axis=1, dtype=np.int64))
    fg = f.astype(np.float64) @ g.astype(np.float64)
    return round(float((fg * r).sum()))


def _and(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
    if x is None:
        return y
    if y is None:
        return x
    return x & y


def count_macs(
    p: np.ndarray,
    q: np.ndarray,
    *,
    a_is_p: bool,
    skips: frozenset[str],
    stage: str,
    counted: np.ndarray | None = None,
    out_skip: np.ndarray | None = None,
    out_reason: str = "output_zero",
    pruned_b: np.ndarray | None = None,
    zeros_p: np.ndarray | None = None,
    zeros_q: np.ndarray | None = None,
) -> MacCounts:
    """Counts of one stage's GEMM P (I x K) . Q (K x J).

    ``counted`` (I x J bool): outputs that exist (conv EP: outputs landing in padding are no
    work at all); ``out_skip`` (I x J bool): outputs skipped whole for ``out_reason``
    ("output_zero": ReLU mask in EP; "pruned": pruned gradients in WG), applied only when
    the stage skips that reason; ``pruned_b``: pruned elements of the ``b`` operand (shape of
    it). ``zeros_p`` / ``zeros_q``: the zeros of each column of P / each row of Q when the
    caller has them already (used when nothing is masked). Returns macs_total,
    macs_executed and the four MAC skip reasons."""
    ni, nk = p.shape
    nj = q.shape[1]
    masked = (
        counted is not None
        or (out_skip is not None and out_reason in skips)
        or (pruned_b is not None and ("pruned" in skips or "weight_zero" in skips))
    )
    if not masked:
        return _count_unmasked(p, q, a_is_p=a_is_p, skips=skips, zp=zeros_p, zq=zeros_q)
    shape = (ni, nk, nj)
    r = counted
    total = _pair(None, None, r, shape)
    out: MacCounts = {"input_zero": 0, "weight_zero": 0, "output_zero": 0, "pruned": 0}
    za, zb = (p == 0, q == 0) if a_is_p else (q == 0, p == 0)

    def on_b(mask: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (None, mask) if a_is_p else (mask, None)

    alive_b: np.ndarray | None = None
    if pruned_b is not None and ("pruned" in skips or "weight_zero" in skips):
        out["pruned"] = _pair(*on_b(pruned_b), r, shape)
        alive_b = ~pruned_b
    if out_skip is not None and out_reason in skips:
        sk = out_skip if r is None else (out_skip & r)
        out[out_reason] += _pair(*on_b(alive_b), sk, shape)
        r = ~out_skip if r is None else (r & ~out_skip)
    alive_a: np.ndarray | None = None
    if "input_zero" in skips:
        fa, fb2 = (za, alive_b) if a_is_p else (alive_b, za)
        out["input_zero"] = _pair(fa, fb2, r, shape)
        alive_a = ~za
    if "weight_zero" in skips:
        wz = _and(zb, alive_b)
        fa, fb2 = (alive_a, wz) if a_is_p else (wz, alive_a)
        out["weight_zero"] = _pair(fa, fb2, r, shape)
    skipped = sum(out.values())
    return {"macs_total": total, "macs_executed": total - skipped, **out}


def _zeros_per_k(
    p: np.ndarray, q: np.ndarray, zp: np.ndarray | None, zq: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Zeros of each column k of P (I x K) and of each row k of Q (K x J), in one pass over
    each operand (C for float32 matrices) unless given."""
    if zp is None:
        zp = zero_counts(p)[1] if p.dtype in _C_DTYPES else (p == 0).sum(axis=0, dtype=np.int64)
    if zq is None:
        zq = zero_counts(q)[0] if q.dtype in _C_DTYPES else (q == 0).sum(axis=1, dtype=np.int64)
    return zp, zq


def _count_unmasked(
    p: np.ndarray,
    q: np.ndarray,
    *,
    a_is_p: bool,
    skips: frozenset[str],
    zp: np.ndarray | None = None,
    zq: np.ndarray | None = None,
) -> MacCounts:
    """count_macs without output masks or pruning: every count is a sum over k of per-k
    zero counts (the same numbers as the general path's _pair sums)."""
    ni, nk = p.shape
    nj = q.shape[1]
    out: MacCounts = {"input_zero": 0, "weight_zero": 0, "output_zero": 0, "pruned": 0}
    total = ni * nk * nj
    iz, wz = "input_zero" in skips, "weight_zero" in skips
    if iz or wz:
        zp, zq = _zeros_per_k(p, q, zp, zq)
        # the a operand's zeros per k and the other dimension's length; the b operand's
        za, na, zb, nb = (zp, ni, zq, nj) if a_is_p else (zq, nj, zp, ni)
        if iz:
            out["input_zero"] = int(_add_reduce(za)) * nb  # exact int64 sum, no .sum() wrapper
        if wz:
            alive_a = (na - za) if iz else np.full(nk, na, np.int64)
            out["weight_zero"] = int(alive_a @ zb)
    skipped = sum(out.values())
    return {"macs_total": total, "macs_executed": total - skipped, **out}


def masked_slice_ops(
    p_codes: np.ndarray | None, q_codes: np.ndarray | None, mask: np.ndarray | None
) -> int:
    """Slice products of the outputs in ``mask`` (I x J) of the GEMM of the codes P . Q."""
    if mask is None or not mask.any():
        return 0
    sp = nzslices(p_codes).astype(np.float64)
    sq = nzslices(q_codes).astype(np.float64)
    return round(float(((sp @ sq) * mask).sum()))
