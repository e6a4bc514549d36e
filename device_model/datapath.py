"""The chip's datapath kernels: exact integer GEMM and convolution on DFXP codes with an
explicit accumulator model, float GEMM with a defined accumulation order, and the operand
statistics the cost model needs (docs/datapath.md is the definition).

This module validates arguments, passes strided views to C without copying where the layout
allows it (a transposed view is just the other ``trans`` flag), and builds the convolutions
from the GEMM (im2col). The arithmetic is in ``cext/gemm.c`` and ``cext/gemm_float.c``; the
numpy golden models are in ``device_model.gemm_reference``.

Environment: ``MICROTRAIN_KERNEL`` = ``auto`` (default) | ``portable`` | ``avx512-vnni`` picks
the integer kernel; ``MICROTRAIN_THREADS`` the number of worker threads (default 2). Both are
read at each call, and each function also takes ``kernel=`` / ``threads=``.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from device_model._chip import ffi, lib

__all__ = [
    "ACC_MODES",
    "KERNELS",
    "GemmStats",
    "conv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "default_acc_bits",
    "gemm_float",
    "gemm_int",
    "gemm_int_scaled",
    "gemm_int_slice_ops",
    "im2col_positions",
    "kernel_available",
    "maxpool_tiled",
    "maxpool_tiled_backward",
    "relu",
    "relu_backward",
    "rescale_i64",
    "round_ieee_like",
    "sgd_update",
    "sgd_update_zc",
    "zero_counts",
]

KERNELS: dict[str, int] = {
    "auto": lib.MT_KERNEL_AUTO,
    "portable": lib.MT_KERNEL_PORTABLE,
    "avx512-vnni": lib.MT_KERNEL_AVX512_VNNI,
}
_KERNEL_NAMES = {v: k for k, v in KERNELS.items()}
_AVAILABLE = {v: bool(lib.mt_gemm_kernel_available(v)) for v in KERNELS.values()}
if ffi.sizeof("mt_gemm_stats") != 96 or ffi.offsetof("mt_gemm_stats", "kernel") != 88:
    raise ImportError("mt_gemm_stats layout changed: update gemm_int's unpacking")
ACC_MODES: dict[str, int] = {"saturate": lib.MT_ACC_SATURATE, "wrap": lib.MT_ACC_WRAP}
ACC_BITS_RANGE = (8, 64)
_INT_TYPES = (int, np.integer)
_OK, _ENOMEM = lib.MT_GEMM_OK, lib.MT_GEMM_ENOMEM
_ARRAY_TYPE = {
    "void *": "char[]",
    "int64_t *": "int64_t[]",
    "float *": "float[]",
    "double *": "double[]",
}
_INT_DTYPES = (np.dtype(np.int8), np.dtype(np.int16))
_STAT_FIELDS = (
    "macs",
    "zeros_a",
    "zeros_b",
    "macs_a_zero",
    "macs_b_zero",
    "macs_both_zero",
    "macs_executed",
    "nzslices_a",
    "nzslices_b",
    "slice_ops",
)


@dataclass(frozen=True)
class GemmStats:
    """What one integer GEMM (or convolution, over its im2col operands) did.

    Counts are over the M*N*K MACs of the GEMM; slices are the 4-bit slices of each operand's
    magnitude (int8: 2, int16: 4). ``slow_rows`` says how many output rows needed the
    sequential saturating path, ``kernel`` which kernel computed the exact sums.
    """

    macs: int
    zeros_a: int
    zeros_b: int
    macs_a_zero: int
    macs_b_zero: int
    macs_both_zero: int
    macs_executed: int
    nzslices_a: int
    nzslices_b: int
    slice_ops: int
    slow_rows: int
    kernel: str
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        """Only the MAC, zero and slice counts (what the numpy reference also computes)."""
        return {f: int(getattr(self, f)) for f in _STAT_FIELDS}


def kernel_available(name: str) -> bool:
    """Whether the named integer kernel runs on this CPU (unknown names raise ValueError)."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; accepted: {', '.join(KERNELS)}")
    return _AVAILABLE[KERNELS[name]]


def default_acc_bits(a_dtype: Any, b_dtype: Any) -> int:
    """32 bits when both operands are int8, 48 otherwise (docs/datapath.md says why)."""
    both8 = np.dtype(a_dtype).itemsize == 1 and np.dtype(b_dtype).itemsize == 1
    return 32 if both8 else 48


def _kernel_code(name: str | None) -> int:
    if name is None:
        name = os.environ.get("MICROTRAIN_KERNEL", "auto").strip() or "auto"
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; accepted: {', '.join(KERNELS)}")
    code = KERNELS[name]
    if not _AVAILABLE[code]:
        raise ValueError(f"kernel {name!r} does not run on this CPU; use 'auto' or 'portable'")
    return code


def _threads(threads: int | None) -> int:
    """The thread count to pass to C; 0 = automatic (2, fewer for small GEMMs). None: the
    count this thread pinned (pin_threads), else ``MICROTRAIN_THREADS``'s."""
    if threads is None:
        pinned = getattr(_PINNED, "threads", None)
        if pinned is not None:
            return pinned
        return _env_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 16:
        raise ValueError(f"threads must be an integer 1..16, got {threads!r}")
    return threads


#: per Python thread: the thread count pin_threads read (absent or None: read the variable)
_PINNED = threading.local()


def pin_threads() -> int | None:
    """Read ``MICROTRAIN_THREADS`` once and let this Python thread's kernel calls with
    ``threads=None`` use that count until ``unpin_threads(token)`` (the engine pins for one
    public call: its ~20 kernel calls then do not each read the environment). Returns the
    token: the count pinned before (None when none was), so pins nest."""
    before = getattr(_PINNED, "threads", None)
    _PINNED.threads = _env_threads() if before is None else before
    return before


def unpin_threads(token: int | None) -> None:
    """Undo the ``pin_threads`` call that returned ``token``."""
    _PINNED.threads = token


def _env_threads() -> int:
    env = os.environ.get("MICROTRAIN_THREADS", "").strip()
    if not env:
        return 0
    try:
        threads = int(env)
    except ValueError:
        raise ValueError(f"MICROTRAIN_THREADS={env!r} is not an integer 1..16") from None
    if not 1 <= threads <= 16:
        raise ValueError(f"threads must be an integer 1..16, got {threads!r}")
    return threads


def _int_operand(x: object, name: str, trans: bool) -> tuple[np.ndarray, int, bool]:
    """A 2-D int8/int16 array as (array whose rows have unit stride, row stride, trans).

    A view with unit stride along its first axis (e.g. ``m.T``) is passed as the transpose
    of its base layout with the trans flag flipped, so no copy is made."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of int8 or int16 codes, got {type(x)}")
    if x.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must have dtype int8 or int16 (DFXP codes), got {x.dtype}")
    return _strided(x, name, trans)


def _strided(x: np.ndarray, name: str, trans: bool) -> tuple[np.ndarray, int, bool]:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if not x.flags.aligned:
        x = x.copy()
    item = x.itemsize
    rows, cols = x.shape
    s0, s1 = x.strides
    if cols <= 1 or rows <= 1:
        x = np.ascontiguousarray(x)  # at most one line: a copy is as cheap as a view
        return x, max(cols, 1), trans
    if s1 == item and s0 >= cols * item and s0 % item == 0:
        return x, s0 // item, trans
    if s0 == item and s1 >= rows * item and s1 % item == 0:
        return x.T, s1 // item, not trans
    raise ValueError(
        f"{name} must have unit stride along one axis (a C- or F-ordered matrix or a "
        f"slice of rows/columns of one), got strides {x.strides}; pass np.ascontiguousarray"
    )


def _ptr(x: np.ndarray, ctype: str) -> Any:
    if x.flags.c_contiguous:  # the cheap way
        return ffi.from_buffer(_ARRAY_TYPE[ctype], x, require_writable=False)
    return ffi.cast(ctype, x.__array_interface__["data"][0])


def _fptr(x: np.ndarray) -> Any:
    """_ptr(x, "float *")."""
    if x.flags.c_contiguous:
        return _new_fptr("float[]", x, require_writable=False)
    return ffi.cast("float *", x.__array_interface__["data"][0])


_new_fptr = ffi.from_buffer
_F32 = np.dtype(np.float32)


def _check_acc(acc_bits: object, acc_mode: object) -> tuple[int, int]:
    if isinstance(acc_bits, bool) or not isinstance(acc_bits, _INT_TYPES):
        raise ValueError(f"acc_bits must be an integer {ACC_BITS_RANGE}, got {acc_bits!r}")
    lo, hi = ACC_BITS_RANGE
    if not lo <= int(acc_bits) <= hi:
        raise ValueError(f"acc_bits must be in {lo}..{hi}, got {acc_bits}")
    if acc_mode not in ACC_MODES:
        raise ValueError(f"acc_mode must be one of {', '.join(ACC_MODES)}, got {acc_mode!r}")
    return int(acc_bits), ACC_MODES[str(acc_mode)]


def gemm_int(
    a: np.ndarray,
    b: np.ndarray,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    acc_bits: int | None = None,
    acc_mode: str = "saturate",
    init: Any = None,
    kernel: str | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, GemmStats]:
    """C = A.B on int8/int16 codes with the accumulator model, exact; returns (C int64, stats).

    ``a`` holds A (M x K), or A transposed (K x M) when ``trans_a``; ``b`` holds B (K x N) or
    B transposed (N x K) when ``trans_b``. Each output starts at ``init`` (broadcast to M x N;
    0 when None; must fit the accumulator) and adds a[m,k]*b[k,n] for k in order, saturating
    (``acc_mode="saturate"``) or wrapping (``"wrap"``) to ``acc_bits`` bits (8..64; default
    32 for int8 x int8, 48 otherwise)."""
    c, st = _gemm_int_raw(a, b, trans_a, trans_b, acc_bits, acc_mode, init, kernel, threads)
    raw = bytes(ffi.buffer(st))  # mt_gemm_stats: 11 int64 fields, then kernel and threads
    counts = np.frombuffer(raw, np.int64, count=11).tolist()
    kcode, nthr = np.frombuffer(raw, np.int32, count=2, offset=88).tolist()
    fields = dict(zip((*_STAT_FIELDS, "slow_rows"), counts, strict=True))
    stats = GemmStats(**fields, kernel=_KERNEL_NAMES.get(kcode, str(kcode)), threads=nthr)
    return c, stats


def gemm_int_slice_ops(
    a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False
) -> tuple[np.ndarray, int]:
    """``gemm_int`` with the default accumulator and kernel, returning only
    ``(C, stats.slice_ops)`` (what the training engine uses; no GemmStats built)."""
    c, st = _gemm_int_raw(a, b, trans_a, trans_b, None, "saturate", None, None, None)
    return c, int(st.slice_ops)


def _int_operands(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool) -> tuple[Any, ...]:
    """Both integer GEMM operands checked (``_int_operand``) and their shapes matched:
    ``(a2, lda, ta, b2, ldb, tb, m, k, n)``."""
    a2, lda, ta = _int_operand(a, "a", bool(trans_a))
    b2, ldb, tb = _int_operand(b, "b", bool(trans_b))
    m, ka = (a2.shape[1], a2.shape[0]) if ta else a2.shape
    kb, n = (b2.shape[1], b2.shape[0]) if tb else b2.shape
    if ka != kb:
        raise ValueError(
            f"inner dimensions differ: A is {m} x {ka}, B is {kb} x {n} (after trans flags)"
        )
    return a2, lda, ta, b2, ldb, tb, m, ka, n


def gemm_int_scaled(
    a: np.ndarray,
    b: np.ndarray,
    frac: int,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    threads: int | None = None,
) -> tuple[np.ndarray, int]:
    """``gemm_int`` with the default accumulator and kernel, its result rescaled to float32
    in the same C call: ``(rescale_i64(C, frac), stats.slice_ops)``, the same bits, without
    the int64 matrix where the kernel's one K block gives the final sums (what the training
    engine's DFXP layers use)."""
    a2, lda, ta, b2, ldb, tb, m, ka, n = _int_operands(a, b, trans_a, trans_b)
    if isinstance(frac, bool) or not isinstance(frac, int | np.integer) or not -64 <= frac <= 126:
        raise ValueError(f"frac must be an integer in [-64, 126], got {frac!r}")
    out = np.empty((m, n), np.float32)
    st = ffi.new("mt_gemm_stats *")
    rc = lib.mt_gemm_int_f32(
        _ptr(a2, "void *"),
        a2.itemsize,
        lda,
        int(ta),
        _ptr(b2, "void *"),
        b2.itemsize,
        ldb,
        int(tb),
        m,
        ka,
        n,
        _ptr(out, "float *"),
        int(frac),
        lib.MT_KERNEL_FROM_ENV,  # MICROTRAIN_KERNEL, read by the C side (as _kernel_code)
        _threads(threads),
        st,
    )
    if rc != _OK:
        _kernel_code(None)  # an unknown or unavailable kernel name: its own message
    _check_rc(rc, "gemm_int_scaled")
    return out, int(st.slice_ops)


def _gemm_int_raw(
    a: np.ndarray,
    b: np.ndarray,
    trans_a: bool,
    trans_b: bool,
    acc_bits: int | None,
    acc_mode: str,
    init: Any,
    kernel: str | None,
    threads: int | None,
) -> tuple[np.ndarray, Any]:
    a2, lda, ta, b2, ldb, tb, m, ka, n = _int_operands(a, b, trans_a, trans_b)
    if acc_bits is None:
        acc_bits = default_acc_bits(a.dtype, b.dtype)
    bits, mode = _check_acc(acc_bits, acc_mode)
    init_arr = _init(init, m, n, bits)
    kcode = _kernel_code(kernel)
    nthreads = _threads(threads)
    c = np.empty((m, n), np.int64)
    st = ffi.new("mt_gemm_stats *")
    rc = lib.mt_gemm_int(
        _ptr(a2, "void *"),
        a2.itemsize,
        lda,
        int(ta),
        _ptr(b2, "void *"),
        b2.itemsize,
        ldb,
        int(tb),
        m,
        ka,
        n,
        ffi.NULL if init_arr is None else _ptr(init_arr, "int64_t *"),
        _ptr(c, "int64_t *"),
        bits,
        mode,
        kcode,
        nthreads,
        st,
    )
    _check_rc(rc, "gemm_int")
    return c, st


def _init(init: Any, m: int, n: int, bits: int) -> np.ndarray | None:
    if init is None:
        return None
    arr = np.asarray(init)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"init must hold integers, got dtype {arr.dtype}")
    try:
        full = np.ascontiguousarray(np.broadcast_to(arr, (m, n)), dtype=np.int64)
    except ValueError:
        raise ValueError(f"init of shape {arr.shape} does not broadcast to ({m}, {n})") from None
    if full.size and bits < 64:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if int(full.min()) < lo or int(full.max()) > hi:
            raise ValueError(f"init values must lie in the {bits}-bit accumulator range {lo}..{hi}")
    return full


def _check_rc(rc: int, what: str) -> None:
    if rc == _OK:
        return
    if rc == _ENOMEM:
        raise MemoryError(f"{what}: scratch buffers could not be allocated")
    if rc != _OK:
        raise ValueError(f"{what}: arguments rejected by the kernel (code {rc})")


def gemm_float(
    a: np.ndarray,
    b: np.ndarray,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    chunk: int | None = None,
    acc_format: tuple[int, int] = (5, 10),
    threads: int | None = None,
) -> np.ndarray:
    """Float GEMM on float32 values (already quantized to the operand format).

    ``chunk=None``: acc = fl32(acc + fl32(a*b)) sequentially over k from +0. ``chunk=L``:
    within each run of L consecutive k, acc = round_accfmt(acc + fl32(a*b)) with
    ``acc_format = (ebits, mbits)`` an IEEE-like format (default fp16 = (5, 10)), and the chunk
    results added in order in float32."""
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        raise ValueError("a and b must be numpy float32 arrays")
    if a.dtype != _F32 or b.dtype != _F32:
        name, x = ("a", a) if a.dtype != _F32 else ("b", b)
        raise ValueError(f"{name} must have dtype float32, got {x.dtype}")
    a2, lda, ta = _strided(a, "a", bool(trans_a))
    b2, ldb, tb = _strided(b, "b", bool(trans_b))
    m, ka = (a2.shape[1], a2.shape[0]) if ta else a2.shape
    kb, n = (b2.shape[1], b2.shape[0]) if tb else b2.shape
    if ka != kb:
        raise ValueError(
            f"inner dimensions differ: A is {m} x {ka}, B is {kb} x {n} (after trans flags)"
        )
    nthreads = _threads(threads)
    c = np.empty((m, n), np.float32)
    args = (_fptr(a2), lda, int(ta), _fptr(b2), ldb, int(tb), m, ka, n)
    if chunk is None:
        rc = lib.mt_gemm_f32(*args, _new_fptr("float[]", c), nthreads)
        if rc != _OK:
            _check_rc(rc, "gemm_float")
        return c
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
    eb, mb = _acc_format(acc_format)
    rc = lib.mt_gemm_f32_chunked(*args, _ptr(c, "float *"), chunk, eb, mb, nthreads)
    _check_rc(rc, "gemm_float")
    return c


def _acc_format(fmt: object) -> tuple[int, int]:
    ok = isinstance(fmt, tuple) and len(fmt) == 2 and all(isinstance(v, int) for v in fmt)
    if not ok or not (2 <= fmt[0] <= 8 and 1 <= fmt[1] <= 23):  # type: ignore[index]
        raise ValueError(
            f"acc_format must be (ebits, mbits) with ebits 2..8 and mbits 1..23, got {fmt!r}"
        )
    return fmt[0], fmt[1]  # type: ignore[index]


def round_ieee_like(x: np.ndarray, ebits: int, mbits: int) -> np.ndarray:
    """The chunked accumulator's rounding in C (for tests): float64 in, float64 out."""
    eb, mb = _acc_format((ebits, mbits))
    xs = np.ascontiguousarray(x, np.float64)
    out = np.empty_like(xs)
    lib.mt_round_ieee_like(_ptr(xs, "double *"), _ptr(out, "double *"), xs.size, eb, mb)
    return out


# ---------------------------------------------------------------- convolution


def _pair(v: object, name: str, lo: int) -> tuple[int, int]:
    vals = (v, v) if isinstance(v, int | np.integer) else v
    if (
        not isinstance(vals, tuple | list)
        or len(vals) != 2
        or not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in vals)
        or min(vals) < lo
    ):
        raise ValueError(f"{name} must be an integer >= {lo} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])


def _codes4(x: object, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must be a numpy int8 or int16 array (DFXP codes)")
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (NCHW / OIHW), got shape {x.shape}")
    return x


def _out_size(size: int, k: int, s: int, p: int, what: str) -> int:
    o = (size + 2 * p - k) // s + 1
    if size + 2 * p < k or o < 1:
        raise ValueError(f"{what}: kernel {k} larger than the padded input {size + 2 * p}")
    return o


def _im2col(
    x: np.ndarray, kh: int, kw: int, st: tuple[int, int], pad: tuple[int, int]
) -> tuple[np.ndarray, int, int]:
    """Rows (n, ho, wo), columns (c, i, j), as in gemm_reference.im2col_ref."""
    nb, _, h, w = x.shape
    ho = _out_size(h, kh, st[0], pad[0], "height")
    wo = _out_size(w, kw, st[1], pad[1], "width")
    c = x.shape[1]
    xp = x
    if pad != (0, 0):  # zero padding (np.pad's constant mode without its per-call overhead)
        xp = np.zeros((nb, c, h + 2 * pad[0], w + 2 * pad[1]), x.dtype)
        xp[:, :, pad[0] : pad[0] + h, pad[1] : pad[1] + w] = x
    idx = im2col_positions((c, h, w), (kh, kw), st, pad, (ho, wo))
    flat = xp.reshape(nb, xp.shape[1] * xp.shape[2] * xp.shape[3])
    cols = np.take(flat, idx, axis=1).reshape(nb * ho * wo, c * kh * kw)
    return cols, ho, wo


def im2col_copy(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray | None:
    """The im2col of a C-contiguous (n, c, h, w) array of 1, 2, 4 or 8-byte elements in one C
    pass: rows (n, ho, wo), columns (c, i, j), all-zero bytes in the padding (+0 for floats):
    the entries np.take of ``im2col_positions`` over the zero-padded input gives. None for
    other arrays (the caller gathers with numpy). Geometry as the caller validated it."""
    if (
        type(x) is not np.ndarray
        or x.ndim != 4
        or x.itemsize not in (1, 2, 4, 8)
        or not x.flags.c_contiguous
        or x.dtype.hasobject
    ):
        return None
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    out = np.empty((n * ho * wo, c * kh * kw), x.dtype)
    if out.size == 0:
        return out
    rc = lib.mt_im2col(
        _from_buffer("char[]", x, require_writable=False), x.itemsize, n, c, h, w,
        kh, kw, sh, sw, ph, pw, ho, wo, _from_buffer("char[]", out),
    )  # fmt: skip
    if rc == -2:
        raise MemoryError("im2col: the padded planes could not be allocated")
    if rc != 0:
        raise ValueError("im2col: arguments rejected by the kernel")
    return out


_from_buffer = ffi.from_buffer


def to_nchw_bias(
    y: np.ndarray, n: int, o: int, hw: tuple[int, ...], nhwc: bool, bias: np.ndarray | None
) -> np.ndarray:
    """A conv GEMM's float32 result as a C-ordered (n, o, h, w) array plus ``bias`` (one
    float32 addition per element, numpy's; None: no bias), in one C pass: ``y`` is
    (n * h * w, o) when ``nhwc``, else (o, n * h * w). Equal to np.add of the
    moved array and bias.reshape(1, -1, 1, 1) with dtype float32. ``hw``: (h, w)."""
    h, w = hw
    p = h * w
    y = np.ascontiguousarray(y)
    if (
        y.dtype != _F32
        or y.shape != ((n * p, o) if nhwc else (o, n * p))
        or (bias is not None and (bias.dtype != _F32 or bias.size != o))
    ):
        raise ValueError("to_nchw_bias: y must be a C-ordered float32 GEMM result, bias (o,)")
    sb, sp, sc = (p * o, o, 1) if nhwc else (p, 1, n * p)
    out = np.empty((n, o, h, w), np.float32)
    bp = ffi.NULL if bias is None else _fptr(np.ascontiguousarray(bias))
    rc = lib.mt_to_nchw_bias_f32(_fptr(y), n, o, p, sb, sp, sc, bp, _fptr(out))
    if rc != 0:
        raise ValueError("to_nchw_bias: arguments rejected by the kernel")
    return out


@functools.lru_cache(maxsize=64)
def im2col_positions(
    in_shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out_hw: tuple[int, ...],
) -> np.ndarray:
    """Flat positions in one zero-padded sample (c, h + 2ph, w + 2pw) of every im2col entry,
    rows (ho, wo) then columns (c, i, j): the window view's order, computed once per
    geometry (read-only, shared); np.take of them is the im2col copy."""
    (c, h, w), (kh, kw), (sh, sw), (ph, pw), (ho, wo) = in_shape, kernel, stride, padding, out_hw
    pos = np.arange(c * (h + 2 * ph) * (w + 2 * pw), dtype=np.intp).reshape(
        c, h + 2 * ph, w + 2 * pw
    )
    win = sliding_window_view(pos, (kh, kw), axis=(1, 2))
    win = win[:, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw]
    out = np.ascontiguousarray(win.transpose(1, 2, 0, 3, 4)).reshape(-1)
    out.flags.writeable = False
    return out


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    acc_bits: int | None = None,
    acc_mode: str = "saturate",
    kernel: str | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, GemmStats]:
    """y = conv(x, w): x NCHW, w OIHW codes, zero padding; y int64 NCHW. Each output
    accumulates over (c, i, j) in that order with the accumulator model of gemm_int."""
    x = _codes4(x, "x")
    w = _codes4(w, "w")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"channels differ: x has {x.shape[1]}, w expects {w.shape[1]}")
    st, pad = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    o, _, kh, kw = w.shape
    cols, ho, wo = _im2col(x, kh, kw, st, pad)
    if acc_bits is None:
        acc_bits = default_acc_bits(x.dtype, w.dtype)
    y, stats = gemm_int(
        cols,
        np.ascontiguousarray(w).reshape(o, -1),
        trans_b=True,
        acc_bits=acc_bits,
        acc_mode=acc_mode,
        kernel=kernel,
        threads=threads,
    )
    y4 = np.ascontiguousarray(y.reshape(x.shape[0], ho, wo, o).transpose(0, 3, 1, 2))
    return y4, stats


def conv2d_input_grad(
    dy: np.ndarray,
    w: np.ndarray,
    input_hw: tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    acc_bits: int | None = None,
    acc_mode: str = "saturate",
    kernel: str | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, GemmStats]:
    """dx = the transposed convolution of the error dy (N, O, Ho, Wo) with w (O, C, kh, kw),
    int64 (N, C, H, W) for input_hw = (H, W): a stride-1 convolution of dy with zeros inserted
    between its elements (stride - 1 of them) and padded by kernel - 1 - padding, with w
    rotated by 180 degrees and its channel axes swapped. Accumulation order (o, i, j)."""
    dy = _codes4(dy, "dy")
    w = _codes4(w, "w")
    if dy.shape[1] != w.shape[0]:
        raise ValueError(f"channels differ: dy has {dy.shape[1]}, w has {w.shape[0]} outputs")
    st, pad = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    h, wd = _pair(tuple(input_hw), "input_hw", 1)
    o, _, kh, kw = w.shape
    ho, wo = _out_size(h, kh, st[0], pad[0], "height"), _out_size(wd, kw, st[1], pad[1], "width")
    if dy.shape[2:] != (ho, wo):
        raise ValueError(
            f"dy spatial shape {dy.shape[2:]} does not match the forward output {(ho, wo)} "
            f"of input {(h, wd)}, kernel {(kh, kw)}, stride {st}, padding {pad}"
        )
    zh, zw = h + kh - 1, wd + kw - 1
    z = np.zeros((dy.shape[0], o, zh, zw), dy.dtype)
    rows = kh - 1 - pad[0] + st[0] * np.arange(ho)
    cols = kw - 1 - pad[1] + st[1] * np.arange(wo)
    vr = (rows >= 0) & (rows < zh)
    vc = (cols >= 0) & (cols < zw)
    z[:, :, rows[vr][:, None], cols[vc][None, :]] = dy[:, :, vr][:, :, :, vc]
    wr = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    if acc_bits is None:
        acc_bits = default_acc_bits(dy.dtype, w.dtype)
    return conv2d(z, wr, acc_bits=acc_bits, acc_mode=acc_mode, kernel=kernel, threads=threads)


def conv2d_weight_grad(
    x: np.ndarray,
    dy: np.ndarray,
    kernel_hw: tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    acc_bits: int | None = None,
    acc_mode: str = "saturate",
    kernel: str | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, GemmStats]:
    """dw[o, c, i, j] = correlation of the input x (N, C, H, W) with the error dy
    (N, O, Ho, Wo), int64 (O, C, kh, kw); accumulation order (n, ho, wo)."""
    x = _codes4(x, "x")
    dy = _codes4(dy, "dy")
    if x.shape[0] != dy.shape[0]:
        raise ValueError(f"batch sizes differ: x has {x.shape[0]}, dy has {dy.shape[0]}")
    st, pad = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    kh, kw = _pair(tuple(kernel_hw), "kernel_hw", 1)
    cols, ho, wo = _im2col(x, kh, kw, st, pad)
    if dy.shape[2:] != (ho, wo):
        raise ValueError(
            f"dy spatial shape {dy.shape[2:]} does not match the forward output {(ho, wo)}"
        )
    o = dy.shape[1]
    dy2 = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(o, -1)
    if acc_bits is None:
        acc_bits = default_acc_bits(x.dtype, dy.dtype)
    dw, stats = gemm_int(
        dy2, cols, acc_bits=acc_bits, acc_mode=acc_mode, kernel=kernel, threads=threads
    )
    return dw.reshape(o, x.shape[1], kh, kw), stats


# ---------------------------------------------------------------- element-wise training


def _f32_owned(x: object, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError(f"{name} must be a numpy float32 array")
    if not (x.flags.c_contiguous and x.flags.writeable and x.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous, aligned and writeable (updated in place)")
    return x


def _mask_ptr(mask: np.ndarray | None, n: int, name: str) -> Any:
    if mask is None:
        return ffi.NULL
    if not isinstance(mask, np.ndarray) or mask.dtype not in (np.bool_, np.uint8):
        raise ValueError(f"{name} must be a bool or uint8 numpy array, got {type(mask)}")
    if mask.size != n or not mask.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous with {n} elements, got shape {mask.shape}")
    return ffi.from_buffer("uint8_t[]", mask, require_writable=False)


def sgd_update(
    w: np.ndarray,
    g: np.ndarray,
    *,
    lr: float,
    momentum: np.ndarray | None = None,
    mu: float = 0.0,
    weight_decay: float = 0.0,
    update: np.ndarray | None = None,
    keep: np.ndarray | None = None,
    threads: int | None = None,
) -> None:
    """One SGD step in place, in one C pass (cext/train_api.h is the definition): where
    ``update`` (all when None): d = g + wd*w; m = mu*m + d and d = m when ``momentum`` is
    given; w = w - lr*d, every operation a float32 operation rounded once; then w = 0 where
    ``keep`` is False. Elements not updated keep w and m. ``lr``, ``mu`` and
    ``weight_decay`` are rounded to float32 first (as numpy does with np.float32 scalars)."""
    w = _f32_owned(w, "w")
    if not isinstance(g, np.ndarray) or g.dtype != np.float32 or g.shape != w.shape:
        raise ValueError(f"g must be a float32 array of shape {w.shape}")
    gc = np.ascontiguousarray(g)
    mp = ffi.NULL
    if momentum is not None:
        m = _f32_owned(momentum, "momentum")
        if m.shape != w.shape:
            raise ValueError(f"momentum must have shape {w.shape}, got {m.shape}")
        mp = _ptr(m, "float *")
    rc = lib.mt_sgd_update(
        _ptr(w, "float *"),
        mp,
        _ptr(gc, "float *"),
        _mask_ptr(update, w.size, "update"),
        _mask_ptr(keep, w.size, "keep"),
        w.size,
        float(np.float32(lr)),
        float(np.float32(mu)),
        float(np.float32(weight_decay)),
        _threads(threads),
    )
    _check_rc(rc, "sgd_update")


def sgd_update_zc(
    w: np.ndarray,
    g: np.ndarray,
    *,
    lr: float,
    momentum: np.ndarray | None = None,
    mu: float = 0.0,
    weight_decay: float = 0.0,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``sgd_update`` without masks, then ``zero_counts`` of the updated ``w`` seen as a
    matrix of ``w.shape[0]`` rows (a weight as out x fan_in), in one C pass: the same
    results; returns the zeros per row and per column."""
    w = _f32_owned(w, "w")
    if w.ndim < 1:
        raise ValueError("w must have at least one dimension")
    if not isinstance(g, np.ndarray) or g.dtype != np.float32 or g.shape != w.shape:
        raise ValueError(f"g must be a float32 array of shape {w.shape}")
    gc = np.ascontiguousarray(g)
    mp = ffi.NULL
    if momentum is not None:
        m = _f32_owned(momentum, "momentum")
        if m.shape != w.shape:
            raise ValueError(f"momentum must have shape {w.shape}, got {m.shape}")
        mp = _ptr(m, "float *")
    rows = w.shape[0]
    cols = math.prod(w.shape[1:])
    out = np.empty(rows + cols, np.int64)
    op = ffi.from_buffer("int64_t[]", out)
    rc = lib.mt_sgd_update_zc(
        _ptr(w, "float *"),
        mp,
        _ptr(gc, "float *"),
        rows,
        cols,
        float(np.float32(lr)),
        float(np.float32(mu)),
        float(np.float32(weight_decay)),
        _threads(threads),
        op,
        op + rows,
    )
    _check_rc(rc, "sgd_update_zc")
    return out[:rows], out[rows:]


_ZERO_ELEM = {
    np.dtype(np.float32): lib.MT_ZERO_F32,
    np.dtype(np.int8): lib.MT_ZERO_I8,
    np.dtype(np.int16): lib.MT_ZERO_I16,
}


def zero_counts(x: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zeros (+0 or -0 for floats) of a 2-D float32, int8 or int16 matrix per row and per
    column, as int64 arrays: ``((x == 0).sum(axis=1), (x == 0).sum(axis=0))`` in one pass,
    without copying a C- or F-ordered matrix."""
    if not isinstance(x, np.ndarray) or x.dtype not in _ZERO_ELEM or x.ndim != 2:
        raise ValueError("x must be a 2-D numpy float32, int8 or int16 array")
    rows, cols = x.shape
    out = np.zeros(rows + cols, np.int64)
    per_row, per_col = out[:rows], out[rows:]
    if x.size == 0:
        return per_row, per_col
    if x.flags.c_contiguous:
        base, rs, cs = x, cols, 1
    elif x.flags.f_contiguous:
        base, rs, cs = x.T, 1, rows
    else:
        base, rs, cs = np.ascontiguousarray(x), cols, 1
    op = ffi.from_buffer("int64_t[]", out)
    lib.mt_zero_counts(
        ffi.from_buffer("char[]", base, require_writable=False),
        _ZERO_ELEM[x.dtype],
        rows,
        cols,
        rs,
        cs,
        op,
        op + rows,
        _threads(threads),
    )
    return per_row, per_col


def relu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(np.where(x > 0, x, 0), x > 0)`` of a float32 array in one C pass (the same bits;
    NaN and both zeros give +0 and False)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError("x must be a numpy float32 array")
    xs = np.ascontiguousarray(x)
    y = np.empty(xs.shape, np.float32)
    pos = np.empty(xs.shape, np.bool_)
    if xs.size:
        lib.mt_relu_f32(
            _ptr(xs, "float *"), _ptr(y, "float *"), ffi.from_buffer("uint8_t[]", pos), xs.size
        )
    return y, pos


def relu_backward(e: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``np.where(pos, e, 0)`` for a float32 error and the bool mask of ``relu`` (same shape),
    in one C pass (the same bits: e's where pos, +0 elsewhere)."""
    if not isinstance(e, np.ndarray) or e.dtype != np.float32:
        raise ValueError("e must be a numpy float32 array")
    if not isinstance(pos, np.ndarray) or pos.dtype != np.bool_ or pos.shape != e.shape:
        raise ValueError("pos must be a bool array of e's shape")
    es = np.ascontiguousarray(e)
    ps = np.ascontiguousarray(pos)
    out = np.empty(es.shape, np.float32)
    if es.size:
        lib.mt_relu_bwd_f32(
            _ptr(es, "float *"),
            ffi.from_buffer("uint8_t[]", ps, require_writable=False),
            _ptr(out, "float *"),
            es.size,
        )
    return out


def rescale_i64(acc: np.ndarray, frac: int, threads: int | None = None) -> np.ndarray:
    """float32 of int64 accumulators times 2^-frac (-64 <= frac <= 126) in one C pass: the
    same bits as ``acc.astype(np.float32) * np.float32(2.0**-frac)``."""
    if not isinstance(acc, np.ndarray) or acc.dtype != np.int64:
        raise ValueError("acc must be a numpy int64 array")
    if isinstance(frac, bool) or not isinstance(frac, int | np.integer) or not -64 <= frac <= 126:
        raise ValueError(f"frac must be an integer in [-64, 126], got {frac!r}")
    a = np.ascontiguousarray(acc)
    out = np.empty(a.shape, np.float32)
    if a.size:
        rc = lib.mt_rescale_i64(
            ffi.from_buffer("int64_t[]", a, require_writable=False),
            ffi.from_buffer("float[]", out),
            a.size,
            int(frac),
            _threads(threads),
        )
        _check_rc(rc, "rescale_i64")
    return out


def _pool_geometry(shape: tuple[int, ...], kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"the pool input must be 4-D (n, c, h, w), got shape {shape}")
    kh, kw = (int(k) for k in kernel)
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel must be two integers >= 1, got {kernel!r}")
    return kh, kw, shape[2] // kh, shape[3] // kw


def maxpool_tiled(x: np.ndarray, kernel: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Max pool of a float32 (n, c, h, w) array over the windows that tile it (stride =
    kernel, no padding; rows and columns past the last whole window dropped), in one C pass:
    (outputs (n, c, h // kh, w // kw) float32, int64 offsets i * kw + j of each window's
    first maximum), the values and offsets of np.argmax over the windows (a NaN first)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError("x must be a numpy float32 array")
    kh, kw, ho, wo = _pool_geometry(x.shape, kernel)
    n, c, h, w = x.shape
    xs = np.ascontiguousarray(x)
    y = np.empty((n, c, ho, wo), np.float32)
    arg = np.empty((n, c, ho, wo), np.int64)
    rc = lib.mt_maxpool_tiled_f32(
        _ptr(xs, "float *"), n * c, h, w, kh, kw, ho, wo, _ptr(y, "float *"),
        ffi.from_buffer("int64_t[]", arg),
    )  # fmt: skip
    _check_rc(rc, "maxpool_tiled")
    return y, arg


def maxpool_tiled_backward(
    dy: np.ndarray, arg: np.ndarray, in_shape: tuple[int, ...], kernel: tuple[int, int]
) -> np.ndarray:
    """The adjoint of maxpool_tiled: a float32 array of ``in_shape`` (n, c, h, w), zero except
    at each window's ``arg`` offset, which gets 0 + dy (so -0 becomes +0)."""
    kh, kw, ho, wo = _pool_geometry(tuple(in_shape), kernel)
    n, c, h, w = (int(d) for d in in_shape)
    want = (n, c, ho, wo)
    if not isinstance(dy, np.ndarray) or dy.dtype != np.float32 or dy.shape != want:
        raise ValueError(f"dy must be a float32 array of shape {want}")
    if not isinstance(arg, np.ndarray) or arg.dtype != np.int64 or arg.shape != want:
        raise ValueError(f"arg must be an int64 array of shape {want}")
    dys, args = np.ascontiguousarray(dy), np.ascontiguousarray(arg)
    dx = np.empty((n, c, h, w), np.float32)
    rc = lib.mt_maxpool_tiled_bwd_f32(
        _ptr(dys, "float *"), ffi.from_buffer("int64_t[]", args, require_writable=False),
        n * c, h, w, kh, kw, ho, wo, _ptr(dx, "float *"),
    )  # fmt: skip
    if rc != _OK:
        raise ValueError(f"arg offsets must be in 0..{kh * kw - 1}")
    return dx
