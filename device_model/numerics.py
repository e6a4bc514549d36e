"""The chip's number formats, computed by the C datapath (``cext/numerics.c``).

Same public functions as the numpy reference ``protocol.numerics`` and bit-identical to it
(docs/numerics.md is the definition of both). The format table and the argument validation
are the reference's own (imported, so both modules accept and reject exactly the same input
with the same errors); this module makes the arrays contiguous, computes the per-tensor
parameters in C, and hands each tensor to C in one call: no per-element Python.

Environment switches (read at import): ``MICROTRAIN_THREADS=1`` keeps large arrays on one
thread (default: two); ``MICROTRAIN_KERNEL=portable`` uses the loops compiled for the baseline
instruction set instead of the AVX2/AVX-512 clones picked at load time (same results).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from device_model._chip import ffi, lib
from protocol import numerics as _ref
from protocol.numerics import FORMATS, ROUNDINGS, code_dtype
from protocol.numerics_float import FloatFormat

__all__ = [
    "FORMATS",
    "ROUNDINGS",
    "code_dtype",
    "decode",
    "encode",
    "encode_fixed_values",
    "encode_values",
    "outlier_ratio",
    "quantize",
    "scale_of",
    "scale_params",
    "sr_bits",
]

_ROUND_CODE = {
    "nearest": lib.MT_ROUND_NEAREST,
    "stochastic": lib.MT_ROUND_STOCHASTIC,
    "truncate": lib.MT_ROUND_TRUNCATE,
}
_FAMILY_CODE = {"ieee": lib.MT_FLOAT_IEEE, "fn": lib.MT_FLOAT_FN, "dl": lib.MT_FLOAT_DL}
_SCALED = ("fp8-seb", "flex16", *(f"dfxp{n}" for n in range(4, 17)))
_MASK64 = (1 << 64) - 1
#: bits and code dtype of the fixed-point formats (encode_fixed_values' per-call lookups)
_FIXED_SPEC: dict[str, tuple[int, Any]] = {
    f: (b, np.int8 if b <= 8 else np.int16)
    for f, b in (("flex16", 16), *((f"dfxp{n}", n) for n in range(4, 17)))
}

if os.environ.get("MICROTRAIN_THREADS", "").strip() == "1":
    lib.mt_numerics_set_threads(1)
if os.environ.get("MICROTRAIN_KERNEL", "").strip() == "portable":
    lib.mt_numerics_set_portable(1)


# ---------------------------------------------------------------------------- helpers


def _is_fixed(fmt: str) -> bool:
    return fmt == "flex16" or fmt.startswith("dfxp")


def _fixed_bits(fmt: str) -> int:
    return 16 if fmt == "flex16" else int(fmt[4:])


def _scale_name(fmt: str) -> str:
    return "frac_bits" if fmt.startswith("dfxp") else "shared_exp"


def _f32(a: np.ndarray) -> Any:
    return ffi.from_buffer("float[]", a)


def _u32(a: np.ndarray) -> Any:
    return ffi.from_buffer("uint32_t[]", a)


def _rbits_ptr(rbits: npt.ArrayLike | None, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The validated injected random values (kept alive by the caller) and their pointer."""
    r = _ref._check_rbits(rbits, shape)
    if r is None:
        return None, ffi.NULL
    r = np.asarray(r, dtype=np.uint32, order="C")
    return r, _u32(r)


def _c_float(spec: FloatFormat, code_bytes: int) -> Any:
    """A reference FloatFormat as the C struct mt_float_fmt (cext/numerics_api.h)."""
    f = ffi.new("mt_float_fmt *")
    f.ebits, f.mbits, f.bias = spec.ebits, spec.mbits, spec.bias
    f.family = _FAMILY_CODE[spec.family]
    f.code_bytes = code_bytes
    f.scale_exp = spec.scale
    return f


def _float_spec(xs: np.ndarray | None, fmt: str, params: dict[str, Any]) -> FloatFormat:
    """The float format of fmt with its parameters (fp8-seb's scale from xs when missing)."""
    if fmt == "hfp8":
        spec: FloatFormat = _ref._hfp8(params)
        return spec
    if fmt == "fp8-seb":
        e4m3 = _ref._FLOATS["e4m3"]
        s = _scale_param(xs, fmt, params)
        return FloatFormat(e4m3.ebits, e4m3.mbits, e4m3.bias, e4m3.family, s)
    base: FloatFormat = _ref._FLOATS[fmt]
    return base


def _scale_param(xs: np.ndarray | None, fmt: str, params: dict[str, Any]) -> int:
    """frac_bits / shared_exp of a scaled format: given, or computed from xs in C."""
    name = _scale_name(fmt)
    v = _ref._int_param(params, name, *_ref._SCALE_RANGE)
    if v is None:
        if xs is None:
            raise ValueError(f"decoding {fmt} needs {name} (an integer in [-64, 64])")
        v = _scale_of(xs, fmt)
    return int(v)


def _scale_of(xs: np.ndarray, fmt: str) -> int:
    """The per-tensor parameter of a scaled format from a float32 array (docs/numerics.md)."""
    amax = int(lib.mt_amax_bits(_f32(xs.reshape(-1)), xs.size))
    if fmt == "fp8-seb":
        return int(lib.mt_scale_seb(amax))
    if fmt == "flex16":
        return int(lib.mt_scale_flex16(amax))
    return int(lib.mt_scale_dfxp(amax, _fixed_bits(fmt)))


# ---------------------------------------------------------------------------- public API


def sr_bits(n: int, *, seed: int = 0, stream: int = 0, offset: int = 0) -> np.ndarray:
    """The SR generator's values r[offset : offset + n] for (seed, stream), as uint32."""
    if not _ref._is_int(n) or int(n) < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    seed_, stream_ = _ref._key_part(seed, "seed"), _ref._key_part(stream, "stream")
    offset_ = _ref._key_part(offset, "offset")
    out = np.empty(int(n), dtype=np.uint32)
    lib.mt_sr_bits(_u32(out), out.size, seed_, stream_, offset_)
    return out


def scale_params(x: npt.ArrayLike, fmt: str, **params: Any) -> dict[str, Any]:
    """The per-tensor parameter of ``fmt`` computed from ``x`` (empty for other formats):
    dfxpN ``frac_bits``; flex16 and fp8-seb ``shared_exp``."""
    fmt = _ref._check_format(fmt)
    _ref._check_params(fmt, params)
    if fmt not in _SCALED:
        return {}
    return {_scale_name(fmt): _scale_of(_ref._as_f32(x), fmt)}


def encode(
    x: npt.ArrayLike,
    fmt: str,
    *,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
    saturate: bool | None = None,
    rbits: npt.ArrayLike | None = None,
    **params: Any,
) -> np.ndarray:
    """Codes of ``x`` (converted to float32 first) in ``fmt``, with the shape of ``x``."""
    fmt = _ref._check_format(fmt)
    rnd = _ROUND_CODE[_ref._check_rounding(rounding)]
    _ref._check_params(fmt, params)
    sat = _ref._saturate(fmt, saturate)
    seed_, stream_ = _ref._key_part(seed, "seed"), _ref._key_part(stream, "stream")
    xs = _ref._as_f32(x)
    _keep, rptr = _rbits_ptr(rbits, xs.shape)
    if fmt == "fp32":
        return xs.view(np.uint32).copy()
    out = np.empty(xs.shape, dtype=code_dtype(fmt))
    xp, n = _f32(xs.reshape(-1)), xs.size
    if fmt == "fgmp":
        t = _ref._threshold(params)
        lib.mt_encode_fgmp(xp, _u32(out), n, t, rnd, sat, seed_, stream_, 0, rptr)
    elif _is_fixed(fmt):
        v = _scale_param(xs, fmt, params)
        f = -v if fmt == "flex16" else v
        cp = ffi.from_buffer(out)
        lib.mt_encode_fixed(xp, cp, n, _fixed_bits(fmt), f, rnd, sat, seed_, stream_, 0, rptr)
    else:
        spec = _c_float(_float_spec(xs, fmt, params), out.itemsize)
        lib.mt_encode_float(xp, ffi.from_buffer(out), n, spec, rnd, sat, seed_, stream_, 0, rptr)
    return out


def encode_values(
    x: npt.ArrayLike,
    fmt: str,
    *,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
    saturate: bool | None = None,
    rbits: npt.ArrayLike | None = None,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``(encode(x, ...), decode(codes, ...))`` of a fixed-point format (dfxpN, flex16) in
    one C pass: the codes and their float32 values code * 2^-frac (frac_bits, or
    -shared_exp for flex16; computed from ``x`` when not given)."""
    fmt = _ref._check_format(fmt)
    if not _is_fixed(fmt):
        raise ValueError(f"encode_values takes a fixed-point format (dfxpN, flex16), got {fmt}")
    rnd = _ROUND_CODE[_ref._check_rounding(rounding)]
    _ref._check_params(fmt, params)
    sat = _ref._saturate(fmt, saturate)
    seed_, stream_ = _ref._key_part(seed, "seed"), _ref._key_part(stream, "stream")
    xs = _ref._as_f32(x)
    _keep, rptr = _rbits_ptr(rbits, xs.shape)
    v = _scale_param(xs, fmt, params)
    f = -v if fmt == "flex16" else v
    codes = np.empty(xs.shape, dtype=code_dtype(fmt))
    out = np.empty(xs.shape, dtype=np.float32)
    lib.mt_encode_fixed_values(
        _f32(xs.reshape(-1)), ffi.from_buffer(codes), _f32(out.reshape(-1)), xs.size,
        _fixed_bits(fmt), f, rnd, sat, seed_, stream_, 0, rptr,
    )  # fmt: skip
    return codes, out


def scale_of(xs: np.ndarray, fmt: str) -> int:
    """scale_params' one value (frac_bits of dfxpN, shared_exp of flex16 / fp8-seb) for a
    C-contiguous float32 array, without scale_params' argument checks (for the training
    engine, whose formats were validated at configuration)."""
    if not (isinstance(xs, np.ndarray) and xs.dtype == np.float32 and xs.flags.c_contiguous):
        raise ValueError("xs must be a C-contiguous float32 array")
    if fmt not in _SCALED:
        raise ValueError(f"{fmt!r} has no per-tensor scale")
    return _scale_of(xs, fmt)


def encode_fixed_values(
    xs: np.ndarray,
    fmt: str,
    frac: int | None,
    *,
    rounding: str,
    saturate: bool | None,
    seed: int,
    stream: int,
    values: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """encode_values for a caller that has validated its arguments already (the training
    engine's policy): a C-contiguous float32 ``xs``, a fixed-point ``fmt`` (dfxpN, flex16),
    its fractional length ``frac`` (value = code * 2^-frac; None = from the amax of ``xs``,
    as scale_params), a rounding name. Returns ``(codes, values, frac)``; the same bits as
    encode_values (``values=False``: codes only, values None)."""
    if not (isinstance(xs, np.ndarray) and xs.dtype == np.float32 and xs.flags.c_contiguous):
        raise ValueError("xs must be a C-contiguous float32 array")
    spec = _FIXED_SPEC.get(fmt)
    if spec is None:
        raise ValueError(f"encode_fixed_values takes dfxpN or flex16, got {fmt!r}")
    bits, dtype = spec
    xp = ffi.from_buffer("float[]", xs)  # C-contiguous: the flat buffer, one pointer for both
    n = xs.size
    if frac is None:  # _scale_of
        amax = int(lib.mt_amax_bits(xp, n))
        frac = -int(lib.mt_scale_flex16(amax)) if fmt == "flex16" else lib.mt_scale_dfxp(amax, bits)
    codes = np.empty(xs.shape, dtype=dtype)
    out = np.empty(xs.shape, dtype=np.float32) if values else None
    sat = True if saturate is None else bool(saturate)
    lib.mt_encode_fixed_values(
        xp, ffi.from_buffer(codes), ffi.NULL if out is None else ffi.from_buffer("float[]", out),
        n, bits, int(frac), _ROUND_CODE[rounding], sat, int(seed) & _MASK64,
        int(stream) & _MASK64, 0, ffi.NULL,
    )  # fmt: skip
    return codes, out, int(frac)


def decode(codes: npt.ArrayLike, fmt: str, **params: Any) -> np.ndarray:
    """float32 values of ``codes`` in ``fmt`` (same shape). dfxpN, flex16 and fp8-seb need
    their per-tensor parameter (it cannot be recovered from the codes)."""
    fmt = _ref._check_format(fmt)
    _ref._check_params(fmt, params)
    cs = np.asarray(_ref._as_codes(codes, fmt), order="C")
    if fmt == "fp32":
        return cs.view(np.float32).copy()
    out = np.empty(cs.shape, dtype=np.float32)
    op, n = _f32(out.reshape(-1)), cs.size
    if fmt == "fgmp":
        _ref._threshold(params)
        lib.mt_decode_fgmp(_u32(cs), op, n)
    elif _is_fixed(fmt):
        v = _scale_param(None, fmt, params)
        f = -v if fmt == "flex16" else v
        lib.mt_decode_fixed(ffi.from_buffer(cs), op, n, _fixed_bits(fmt), f)
    else:
        spec = _c_float(_float_spec(None, fmt, params), cs.itemsize)
        lib.mt_decode_float(ffi.from_buffer(cs), op, n, spec)
    return out


def quantize(
    x: npt.ArrayLike,
    fmt: str,
    *,
    rounding: str = "nearest",
    seed: int = 0,
    stream: int = 0,
    saturate: bool | None = None,
    rbits: npt.ArrayLike | None = None,
    **params: Any,
) -> np.ndarray:
    """``decode(encode(x, ...), fmt, **params_used)`` as float32 (params_used: params
    completed by scale_params); dfxpN and flex16 in one fused C pass."""
    fmt = _ref._check_format(fmt)
    _ref._check_params(fmt, params)
    xs = _ref._as_f32(x)
    used = dict(params)
    if fmt in _SCALED and used.get(_scale_name(fmt)) is None:
        used[_scale_name(fmt)] = _scale_of(xs, fmt)
    if not _is_fixed(fmt):
        codes = encode(
            xs, fmt, rounding=rounding, seed=seed, stream=stream, saturate=saturate, rbits=rbits,
            **used,
        )  # fmt: skip
        return decode(codes, fmt, **used)
    rnd = _ROUND_CODE[_ref._check_rounding(rounding)]
    sat = _ref._saturate(fmt, saturate)
    seed_, stream_ = _ref._key_part(seed, "seed"), _ref._key_part(stream, "stream")
    _keep, rptr = _rbits_ptr(rbits, xs.shape)
    v = _scale_param(xs, fmt, used)
    f = -v if fmt == "flex16" else v
    out = np.empty(xs.shape, dtype=np.float32)
    lib.mt_quantize_fixed(
        _f32(xs.reshape(-1)), _f32(out.reshape(-1)), xs.size, _fixed_bits(fmt), f, rnd, sat,
        seed_, stream_, 0, rptr,
    )  # fmt: skip
    return out


def outlier_ratio(codes: npt.ArrayLike) -> float:
    """Share of fgmp codes that are outliers (bit 16 set: kept in fp16); 0.0 for no codes."""
    cs = np.asarray(_ref._as_codes(codes, "fgmp"), order="C")
    if cs.size == 0:
        return 0.0
    return int(lib.mt_count_outliers(_u32(cs), cs.size)) / cs.size
