"""The chip's number formats, computed by the C datapath (``cext/numerics.c``).

Same public functions as the numpy reference ``protocol.numerics`` and bit-identical to it
(docs/numerics.md is the definition of both). This module only validates arguments, makes the
arrays contiguous float32 and hands each tensor to C in one call; no per-element Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from device_model._chip import ffi, lib

__all__ = [
    "FORMATS",
    "ROUNDINGS",
    "code_dtype",
    "decode",
    "encode",
    "outlier_ratio",
    "quantize",
    "scale_params",
    "sr_bits",
]

ROUNDINGS: tuple[str, ...] = ("nearest", "stochastic", "truncate")
_ROUND_CODE = {
    "nearest": lib.MT_ROUND_NEAREST,
    "stochastic": lib.MT_ROUND_STOCHASTIC,
    "truncate": lib.MT_ROUND_TRUNCATE,
}
_DFXP = tuple(f"dfxp{n}" for n in range(4, 17))
FORMATS: tuple[str, ...] = (
    "fp32",
    "fp16",
    "bf16",
    "tf32",
    "dlfloat16",
    "e4m3",
    "e5m2",
    "hfp8",
    "fp8-seb",
    "flex16",
    *_DFXP,
    "fgmp",
)
_PARAM_RANGE = (-64, 64)  # frac_bits and shared_exp
_HFP8_BIAS = (0, 15)
_HFP8_STAGES = ("forward", "backward")
_MASK64 = (1 << 64) - 1

# Environment switches shared with the other kernels: one thread; baseline-ISA loops only.
if os.environ.get("MICROTRAIN_THREADS", "").strip() == "1":
    lib.mt_numerics_set_threads(1)
if os.environ.get("MICROTRAIN_KERNEL", "").strip() == "portable":
    lib.mt_numerics_set_portable(1)


@dataclass(frozen=True)
class _Float:
    """A float format as the C datapath takes it (see mt_float_fmt in cext/numerics_api.h)."""

    ebits: int
    mbits: int
    bias: int
    family: int
    dtype: type[np.unsignedinteger[Any]]

    def cstruct(self, scale_exp: int = 0) -> Any:
        f = ffi.new("mt_float_fmt *")
        f.ebits, f.mbits, f.bias, f.family = self.ebits, self.mbits, self.bias, self.family
        f.code_bytes = np.dtype(self.dtype).itemsize
        f.scale_exp = scale_exp
        return f


_IEEE, _FN, _DL = lib.MT_FLOAT_IEEE, lib.MT_FLOAT_FN, lib.MT_FLOAT_DL
_FLOATS: dict[str, _Float] = {
    "fp16": _Float(5, 10, 15, _IEEE, np.uint16),
    "bf16": _Float(8, 7, 127, _IEEE, np.uint16),
    "tf32": _Float(8, 10, 127, _IEEE, np.uint32),
    "dlfloat16": _Float(6, 9, 31, _DL, np.uint16),
    "e4m3": _Float(4, 3, 7, _FN, np.uint8),
    "e5m2": _Float(5, 2, 15, _IEEE, np.uint8),
}
# Formats whose default is IEEE overflow (saturate=False); every other one saturates.
_IEEE_DEFAULT = frozenset({"fp16", "bf16", "tf32"})
# Parameters each format accepts (encode/quantize/decode/scale_params).
_ACCEPTED: dict[str, tuple[str, ...]] = {
    "hfp8": ("stage", "bias"),
    "fp8-seb": ("shared_exp",),
    "flex16": ("shared_exp",),
    "fgmp": ("threshold",),
    **{name: ("frac_bits",) for name in _DFXP},
}
_FGMP_OUTLIER = 0x10000


# ---------------------------------------------------------------------------- validation


def _check_format(fmt: object) -> str:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    return fmt


def _check_rounding(rounding: object) -> int:
    if not isinstance(rounding, str) or rounding not in _ROUND_CODE:
        raise ValueError(f"unknown rounding {rounding!r}; accepted: {', '.join(ROUNDINGS)}")
    return int(_ROUND_CODE[rounding])


def _check_params(fmt: str, params: dict[str, Any]) -> None:
    accepted = _ACCEPTED.get(fmt, ())
    for name in params:
        if name not in accepted:
            ok = ", ".join(accepted) if accepted else "none"
            raise ValueError(f"unknown parameter {name!r} for format {fmt!r}; accepted: {ok}")


def _int_param(params: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = params.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _threshold(params: dict[str, Any]) -> float:
    v = params.get("threshold", 448.0)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be a number > 0, got {v!r}")
    t = float(v)
    if not t > 0:
        raise ValueError(f"threshold must be a number > 0, got {v!r}")
    return t


def _hfp8(params: dict[str, Any]) -> tuple[_Float, bool]:
    """The format hfp8 stands for with these params, and whether it is the forward one."""
    stage = params.get("stage", "forward")
    if not isinstance(stage, str) or stage not in _HFP8_STAGES:
        raise ValueError(f"stage must be one of {', '.join(_HFP8_STAGES)}; got {stage!r}")
    bias = _int_param(params, "bias", *_HFP8_BIAS)
    if stage == "backward":
        return _FLOATS["e5m2"], False
    return _Float(4, 3, 7 if bias is None else bias, _FN, np.uint8), True


def _saturate(fmt: str, saturate: object) -> bool:
    if saturate is None:
        return fmt not in _IEEE_DEFAULT
    if not isinstance(saturate, (bool, np.bool_)):
        raise ValueError(f"saturate must be None, True or False, got {saturate!r}")
    return bool(saturate)


def _key(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer (taken modulo 2^64), got {value!r}")
    return int(value) & _MASK64


def _as_f32(x: npt.ArrayLike) -> np.ndarray:
    """x as a C-contiguous float32 array of its own shape (0-d stays 0-d); values beyond
    float32's range become +-inf, as numpy's cast does (not a warning: it is the spec)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32, order="C")


def _rbits(rbits: npt.ArrayLike | None, shape: tuple[int, ...]) -> tuple[np.ndarray | None, Any]:
    """The injected random values as a contiguous uint32 array and its C pointer (or NULL)."""
    if rbits is None:
        return None, ffi.NULL
    r = np.asarray(rbits)
    if r.dtype != np.uint32:
        raise ValueError(f"rbits must be a uint32 array, got dtype {r.dtype}")
    if r.shape != shape:
        raise ValueError(f"rbits must have the shape of x {shape}, got {r.shape}")
    r = np.asarray(r, order="C")
    return r, ffi.from_buffer("uint32_t[]", r)


def _as_codes(codes: npt.ArrayLike, fmt: str) -> np.ndarray:
    """codes as a C-contiguous array of fmt's code dtype (integer input only)."""
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise ValueError(f"{fmt} codes must be an integer array, got dtype {c.dtype}")
    return np.asarray(c.astype(code_dtype(fmt), copy=False), order="C")


def _fixed_bits(fmt: str) -> int:
    return 16 if fmt == "flex16" else int(fmt[4:])


def _fixed_dtype(nbits: int) -> type[np.signedinteger[Any]]:
    return np.int8 if nbits <= 8 else np.int16


def _f32_ptr(a: np.ndarray) -> Any:
    return ffi.from_buffer("float[]", a)


def _buf(a: np.ndarray) -> Any:
    return ffi.from_buffer(a)


# ---------------------------------------------------------------------------- public API


def code_dtype(fmt: str) -> np.dtype[Any]:
    """The numpy dtype of ``fmt``'s codes."""
    fmt = _check_format(fmt)
    if fmt == "fp32" or fmt == "fgmp":
        return np.dtype(np.uint32)
    if fmt in ("hfp8", "fp8-seb"):
        return np.dtype(np.uint8)
    if fmt in _FLOATS:
        return np.dtype(_FLOATS[fmt].dtype)
    return np.dtype(_fixed_dtype(_fixed_bits(fmt)))


def sr_bits(n: int, *, seed: int = 0, stream: int = 0, offset: int = 0) -> np.ndarray:
    """The SR generator's values r[offset : offset + n] for (seed, stream), as uint32."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    out = np.empty(int(n), dtype=np.uint32)
    lib.mt_sr_bits(
        ffi.from_buffer("uint32_t[]", out),
        int(n),
        _key(seed, "seed"),
        _key(stream, "stream"),
        _key(offset, "offset"),
    )
    return out


def scale_params(x: npt.ArrayLike, fmt: str, **params: Any) -> dict[str, Any]:
    """The per-tensor parameter of ``fmt`` computed from ``x`` (empty for other formats).

    dfxpN: ``frac_bits``; flex16 and fp8-seb: ``shared_exp`` (docs/numerics.md).
    """
    fmt = _check_format(fmt)
    _check_params(fmt, params)
    if fmt not in ("fp8-seb", "flex16") and not fmt.startswith("dfxp"):
        return {}
    xs = _as_f32(x)
    amax = int(lib.mt_amax_bits(_f32_ptr(xs.reshape(-1)), xs.size))
    if fmt == "fp8-seb":
        return {"shared_exp": int(lib.mt_scale_seb(amax))}
    if fmt == "flex16":
        return {"shared_exp": int(lib.mt_scale_flex16(amax))}
    return {"frac_bits": int(lib.mt_scale_dfxp(amax, _fixed_bits(fmt)))}


def _scale_param(xs: np.ndarray, fmt: str, params: dict[str, Any]) -> int:
    """frac_bits (dfxp, flex16 as -shared_exp) or shared_exp (fp8-seb): given or computed."""
    name = "frac_bits" if fmt.startswith("dfxp") else "shared_exp"
    v = _int_param(params, name, *_PARAM_RANGE)
    if v is None:
        v = int(scale_params(xs, fmt)[name])
    return -v if fmt == "flex16" else v


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
    """Codes of ``x`` (converted to float32 first) in ``fmt``; the shape of ``x``."""
    fmt = _check_format(fmt)
    rnd = _check_rounding(rounding)
    _check_params(fmt, params)
    sat = _saturate(fmt, saturate)
    k_seed, k_stream = _key(seed, "seed"), _key(stream, "stream")
    xs = _as_f32(x)
    _r, rptr = _rbits(rbits, xs.shape)
    n = xs.size
    flat = xs.reshape(-1)
    if fmt == "fp32":
        return xs.view(np.uint32).copy()
    if fmt == "fgmp":
        out = np.empty(xs.shape, dtype=np.uint32)
        lib.mt_encode_fgmp(
            _f32_ptr(flat),
            ffi.from_buffer("uint32_t[]", out),
            n,
            _threshold(params),
            rnd,
            sat,
            k_seed,
            k_stream,
            0,
            rptr,
        )
        return out
    if fmt == "flex16" or fmt.startswith("dfxp"):
        nbits = _fixed_bits(fmt)
        f = _scale_param(xs, fmt, params)
        out = np.empty(xs.shape, dtype=_fixed_dtype(nbits))
        lib.mt_encode_fixed(
            _f32_ptr(flat), _buf(out), n, nbits, f, rnd, sat, k_seed, k_stream, 0, rptr
        )
        return out
    spec, scale = _float_spec(xs, fmt, params)
    out = np.empty(xs.shape, dtype=spec.dtype)
    lib.mt_encode_float(
        _f32_ptr(flat), _buf(out), n, spec.cstruct(scale), rnd, sat, k_seed, k_stream, 0, rptr
    )
    return out


def _float_spec(xs: np.ndarray | None, fmt: str, params: dict[str, Any]) -> tuple[_Float, int]:
    """The float format and scale exponent of ``fmt``; xs is None when decoding."""
    if fmt == "hfp8":
        return _hfp8(params)[0], 0
    if fmt == "fp8-seb":
        s = _int_param(params, "shared_exp", *_PARAM_RANGE)
        if s is None:
            if xs is None:
                raise ValueError("decoding fp8-seb needs shared_exp (an integer in [-64, 64])")
            s = int(scale_params(xs, fmt)["shared_exp"])
        return _FLOATS["e4m3"], s
    return _FLOATS[fmt], 0


def decode(codes: npt.ArrayLike, fmt: str, **params: Any) -> np.ndarray:
    """float32 values of ``codes`` in ``fmt`` (same shape)."""
    fmt = _check_format(fmt)
    _check_params(fmt, params)
    cs = _as_codes(codes, fmt)
    out = np.empty(cs.shape, dtype=np.float32)
    n = cs.size
    if fmt == "fp32":
        return cs.view(np.float32).copy()
    if fmt == "fgmp":
        _threshold(params)
        lib.mt_decode_fgmp(ffi.from_buffer("uint32_t[]", cs), _f32_ptr(out), n)
        return out
    if fmt == "flex16" or fmt.startswith("dfxp"):
        name = "frac_bits" if fmt.startswith("dfxp") else "shared_exp"
        v = _int_param(params, name, *_PARAM_RANGE)
        if v is None:
            raise ValueError(f"decoding {fmt} needs {name} (an integer in [-64, 64])")
        f = -v if fmt == "flex16" else v
        lib.mt_decode_fixed(_buf(cs), _f32_ptr(out), n, _fixed_bits(fmt), f)
        return out
    spec, scale = _float_spec(None, fmt, params)
    lib.mt_decode_float(_buf(cs), _f32_ptr(out), n, spec.cstruct(scale))
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
    """decode(encode(x, ...)) as float32; dfxp and flex16 in one fused C pass."""
    fmt = _check_format(fmt)
    if fmt == "flex16" or fmt.startswith("dfxp"):
        rnd = _check_rounding(rounding)
        _check_params(fmt, params)
        sat = _saturate(fmt, saturate)
        k_seed, k_stream = _key(seed, "seed"), _key(stream, "stream")
        xs = _as_f32(x)
        _r, rptr = _rbits(rbits, xs.shape)
        f = _scale_param(xs, fmt, params)
        out = np.empty(xs.shape, dtype=np.float32)
        lib.mt_quantize_fixed(
            _f32_ptr(xs.reshape(-1)),
            _f32_ptr(out),
            xs.size,
            _fixed_bits(fmt),
            f,
            rnd,
            sat,
            k_seed,
            k_stream,
            0,
            rptr,
        )
        return out
    xs = _as_f32(x)
    used = dict(params)
    if fmt == "fp8-seb" and used.get("shared_exp") is None:
        used.update(scale_params(xs, fmt))
    codes = encode(
        xs,
        fmt,
        rounding=rounding,
        seed=seed,
        stream=stream,
        saturate=saturate,
        rbits=rbits,
        **used,
    )
    return decode(codes, fmt, **used)


def outlier_ratio(codes: npt.ArrayLike) -> float:
    """Share of fgmp codes that are outliers (kept in fp16); 0.0 for no codes."""
    cs = _as_codes(codes, "fgmp")
    if cs.size == 0:
        return 0.0
    return int(lib.mt_count_outliers(ffi.from_buffer("uint32_t[]", cs), cs.size)) / cs.size
