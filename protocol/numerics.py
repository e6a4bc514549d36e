"""The numpy reference (golden model) of every number format of microtrain.

docs/numerics.md is the definition; this module follows it with float64 arithmetic on exactly
representable values (power-of-two scaling, floor, frexp), so it is an independent model of
the C datapath in ``device_model.numerics``, which must agree with it bit for bit. The public
functions are the same in both modules: ``encode``, ``decode``, ``quantize``,
``scale_params``, ``code_dtype``, ``sr_bits``, ``outlier_ratio`` and ``FORMATS``.

Everything is vectorised; long tensors are processed in chunks so memory stays bounded (the
random value of an element depends only on its flat index, so chunking changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from protocol.numerics_fixed import decode_fixed, encode_fixed, fixed_dtype
from protocol.numerics_float import FloatFormat, decode_float, encode_float
from protocol.numerics_round import Rounding
from protocol.numerics_sr import MASK64, sr_key, sr_values

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
_DFXP: tuple[str, ...] = tuple(f"dfxp{n}" for n in range(4, 17))
#: Every accepted format name.
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

# The plain float formats (hfp8 and fp8-seb are built from these with their parameters).
_FLOATS: dict[str, FloatFormat] = {
    "fp16": FloatFormat(5, 10, 15, "ieee"),
    "bf16": FloatFormat(8, 7, 127, "ieee"),
    "tf32": FloatFormat(8, 10, 127, "ieee"),
    "dlfloat16": FloatFormat(6, 9, 31, "dl"),
    "e4m3": FloatFormat(4, 3, 7, "fn"),
    "e5m2": FloatFormat(5, 2, 15, "ieee"),
}
_CODE_DTYPES: dict[str, type[np.unsignedinteger[Any]]] = {
    "fp32": np.uint32,
    "fp16": np.uint16,
    "bf16": np.uint16,
    "tf32": np.uint32,
    "dlfloat16": np.uint16,
    "e4m3": np.uint8,
    "e5m2": np.uint8,
    "hfp8": np.uint8,
    "fp8-seb": np.uint8,
    "fgmp": np.uint32,
}
# Formats whose default is IEEE overflow (saturate=False); every other one saturates.
_IEEE_DEFAULT = frozenset({"fp16", "bf16", "tf32"})
# Parameters each format accepts.
_ACCEPTED: dict[str, tuple[str, ...]] = {
    "hfp8": ("stage", "bias"),
    "fp8-seb": ("shared_exp",),
    "flex16": ("shared_exp",),
    "fgmp": ("threshold",),
    **{name: ("frac_bits",) for name in _DFXP},
}
_SCALE_RANGE = (-64, 64)  # frac_bits and shared_exp
_HFP8_BIAS = (0, 15)
_HFP8_STAGES = ("forward", "backward")
_FGMP_THRESHOLD = 448.0
_FGMP_OUTLIER = 0x10000
_SEB_MAX = 448  # e4m3's largest finite
_FLEX_MAX = 32767
_CHUNK = 1 << 19  # elements per vectorised pass

# ---------------------------------------------------------------------------- validation


def _check_format(fmt: object) -> str:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    return fmt


def _check_rounding(rounding: object) -> Rounding:
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; accepted: {', '.join(ROUNDINGS)}")
    return cast(Rounding, rounding)


def _check_params(fmt: str, params: dict[str, Any]) -> None:
    accepted = _ACCEPTED.get(fmt, ())
    for name in params:
        if name not in accepted:
            ok = ", ".join(accepted) if accepted else "none"
            raise ValueError(f"unknown parameter {name!r} for format {fmt!r}; accepted: {ok}")


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_param(params: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = params.get(name)
    if v is None:
        return None
    if not _is_int(v) or not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _threshold(params: dict[str, Any]) -> float:
    v = params.get("threshold")
    if v is None:
        return _FGMP_THRESHOLD
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )
    if not ok or not float(v) > 0:
        raise ValueError(f"threshold must be a number > 0, got {v!r}")
    return float(v)


def _saturate(fmt: str, saturate: object) -> bool:
    if saturate is None:
        return fmt not in _IEEE_DEFAULT
    if not isinstance(saturate, (bool, np.bool_)):
        raise ValueError(f"saturate must be None, True or False, got {saturate!r}")
    return bool(saturate)


def _key_part(value: object, name: str) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer (taken modulo 2^64), got {value!r}")
    return int(cast(int, value)) & MASK64


def _as_f32(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes +-inf
        return np.asarray(x, dtype=np.float32, order="C")


def _check_rbits(rbits: npt.ArrayLike | None, shape: tuple[int, ...]) -> npt.NDArray[Any] | None:
    if rbits is None:
        return None
    r = np.asarray(rbits)
    if r.dtype != np.uint32:
        raise ValueError(f"rbits must be a uint32 array, got dtype {r.dtype}")
    if r.shape != shape:
        raise ValueError(f"rbits must have the shape of x {shape}, got {r.shape}")
    return np.ascontiguousarray(r).reshape(-1)


def _hfp8(params: dict[str, Any]) -> FloatFormat:
    stage = params.get("stage", "forward")
    if not isinstance(stage, str) or stage not in _HFP8_STAGES:
        raise ValueError(f"stage must be one of {', '.join(_HFP8_STAGES)}; got {stage!r}")
    bias = _int_param(params, "bias", *_HFP8_BIAS)
    if stage == "backward":
        return _FLOATS["e5m2"]
    return FloatFormat(4, 3, 7 if bias is None else bias, "fn")


def _fixed_bits(fmt: str) -> int:
    return 16 if fmt == "flex16" else int(fmt[4:])


def _is_fixed(fmt: str) -> bool:
    return fmt == "flex16" or fmt.startswith("dfxp")


def _scale_name(fmt: str) -> str:
    return "frac_bits" if fmt.startswith("dfxp") else "shared_exp"


# ---------------------------------------------------------------------------- public API


def code_dtype(fmt: str) -> np.dtype[Any]:
    """The numpy dtype of ``fmt``'s codes (docs/numerics.md, format table)."""
    fmt = _check_format(fmt)
    if _is_fixed(fmt):
        return fixed_dtype(_fixed_bits(fmt))
    return np.dtype(_CODE_DTYPES[fmt])


def sr_bits(n: int, *, seed: int = 0, stream: int = 0, offset: int = 0) -> npt.NDArray[np.uint32]:
    """The SR generator's values ``r[offset : offset + n]`` for (seed, stream), as uint32."""
    if not _is_int(n) or int(n) < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    key = sr_key(_key_part(seed, "seed"), _key_part(stream, "stream"))
    return sr_values(int(n), key, _key_part(offset, "offset"))


def _amax(xs: npt.NDArray[np.float32]) -> float:
    """Largest finite |x| (0.0 when there is none)."""
    a = np.abs(xs[np.isfinite(xs)])
    return float(a.max()) if a.size else 0.0


def _smallest_exp(amax: float, limit: int) -> int:
    """Smallest integer s with amax <= limit * 2^s (exact comparisons), clamped to [-64, 64];
    0 when amax is 0."""
    if amax == 0.0:
        return 0
    _, e = np.frexp(amax)  # amax in [2^(e-1), 2^e)
    # limit in [2^(b-1), 2^b): s = e - b + 1 satisfies amax < 2^e <= limit * 2^s, and
    # s - 2 cannot (limit * 2^(e-b-1) < 2^(e-1) <= amax), so s or s - 1 is the answer
    s = int(e) - limit.bit_length() + 1
    if amax <= float(np.ldexp(float(limit), s - 1)):
        s -= 1
    return min(max(s, _SCALE_RANGE[0]), _SCALE_RANGE[1])


def _largest_frac(amax: float, nbits: int) -> int:
    """Largest integer f with amax * 2^f <= 2^(N-1) - 1, clamped to [-64, 64]; 0 when amax
    is 0. (The same as -_smallest_exp(amax, 2^(N-1) - 1).)"""
    if amax == 0.0:
        return 0
    return -_smallest_exp(amax, (1 << (nbits - 1)) - 1)


def scale_params(x: npt.ArrayLike, fmt: str, **params: Any) -> dict[str, Any]:
    """The per-tensor parameter of ``fmt`` computed from the tensor ``x``; empty for formats
    without one. dfxpN: ``frac_bits``; flex16 and fp8-seb: ``shared_exp``."""
    fmt = _check_format(fmt)
    _check_params(fmt, params)
    if fmt not in ("fp8-seb", "flex16") and not fmt.startswith("dfxp"):
        return {}
    amax = _amax(_as_f32(x))
    if fmt == "fp8-seb":
        return {"shared_exp": _smallest_exp(amax, _SEB_MAX)}
    if fmt == "flex16":
        return {"shared_exp": _smallest_exp(amax, _FLEX_MAX)}
    return {"frac_bits": _largest_frac(amax, _fixed_bits(fmt))}


def _scale_param(xs: npt.NDArray[np.float32] | None, fmt: str, params: dict[str, Any]) -> int:
    """frac_bits / shared_exp of a scaled format: given, or computed from xs (encode)."""
    name = _scale_name(fmt)
    v = _int_param(params, name, *_SCALE_RANGE)
    if v is None:
        if xs is None:
            raise ValueError(f"decoding {fmt} needs {name} (an integer in [-64, 64])")
        v = int(scale_params(xs, fmt)[name])
    return v


_Encoder = Callable[[npt.NDArray[np.float32], npt.NDArray[np.uint32] | None], npt.NDArray[Any]]


def _encoder(
    xs: npt.NDArray[np.float32],
    fmt: str,
    rounding: Rounding,
    saturate: bool,
    params: dict[str, Any],
) -> _Encoder:
    """The chunk encoder of ``fmt`` with every parameter resolved (from xs when missing)."""
    if _is_fixed(fmt):
        nbits = _fixed_bits(fmt)
        v = _scale_param(xs, fmt, params)
        f = -v if fmt == "flex16" else v
        return lambda x, r: encode_fixed(x, nbits, f, rounding, saturate, r)
    if fmt == "fgmp":
        threshold = _threshold(params)
        low, high = _FLOATS["e4m3"], _FLOATS["fp16"]

        def fgmp(x: npt.NDArray[np.float32], r: npt.NDArray[np.uint32] | None) -> Any:
            with np.errstate(invalid="ignore"):  # signalling NaNs
                a = np.abs(x.astype(np.float64))
            outlier = ~np.isfinite(a) | (a > threshold)
            lc = encode_float(x, low, rounding, saturate, r)
            hc = encode_float(x, high, rounding, saturate, r) | np.uint32(_FGMP_OUTLIER)
            return np.where(outlier, hc, lc).astype(np.uint32)

        return fgmp
    spec = _float_spec(xs, fmt, params)
    dtype = _CODE_DTYPES[fmt]
    return lambda x, r: encode_float(x, spec, rounding, saturate, r).astype(dtype)


def _float_spec(
    xs: npt.NDArray[np.float32] | None, fmt: str, params: dict[str, Any]
) -> FloatFormat:
    """The float format of ``fmt`` with its parameters (fp8-seb's shared exponent given, or
    computed from xs when encoding)."""
    if fmt == "hfp8":
        return _hfp8(params)
    if fmt == "fp8-seb":
        e4m3 = _FLOATS["e4m3"]
        return FloatFormat(
            e4m3.ebits, e4m3.mbits, e4m3.bias, e4m3.family, _scale_param(xs, fmt, params)
        )
    return _FLOATS[fmt]


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
) -> npt.NDArray[Any]:
    """Codes of ``x`` (converted to float32 first) in ``fmt``, with the shape of ``x``.

    rounding: nearest (ties to even), stochastic or truncate. Stochastic rounding takes
    element i's random value from the generator keyed by (seed, stream), or from ``rbits``
    (a uint32 array of x's shape) when given. saturate: None = the format's default.
    params: ``frac_bits`` (dfxpN), ``shared_exp`` (flex16, fp8-seb), ``stage`` and ``bias``
    (hfp8), ``threshold`` (fgmp); a missing per-tensor parameter is computed from x.
    """
    fmt = _check_format(fmt)
    rnd = _check_rounding(rounding)
    _check_params(fmt, params)
    sat = _saturate(fmt, saturate)
    key = sr_key(_key_part(seed, "seed"), _key_part(stream, "stream"))
    xs = _as_f32(x)
    r_all = _check_rbits(rbits, xs.shape)
    if fmt == "fp32":
        return xs.view(np.uint32).copy()
    enc = _encoder(xs, fmt, rnd, sat, params)
    flat = xs.reshape(-1)
    out = np.empty(flat.shape, dtype=code_dtype(fmt))
    for start in range(0, flat.size, _CHUNK):
        stop = min(start + _CHUNK, flat.size)
        r: npt.NDArray[np.uint32] | None = None
        if rnd == "stochastic":
            r = r_all[start:stop] if r_all is not None else sr_values(stop - start, key, start)
        out[start:stop] = enc(flat[start:stop], r)
    return out.reshape(xs.shape)


def _as_codes(codes: npt.ArrayLike, fmt: str) -> npt.NDArray[Any]:
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise ValueError(f"{fmt} codes must be an integer array, got dtype {c.dtype}")
    return c.astype(code_dtype(fmt), copy=False)


def decode(codes: npt.ArrayLike, fmt: str, **params: Any) -> npt.NDArray[np.float32]:
    """float32 values of ``codes`` in ``fmt`` (same shape). dfxpN, flex16 and fp8-seb need
    their per-tensor parameter (it cannot be recovered from the codes)."""
    fmt = _check_format(fmt)
    _check_params(fmt, params)
    cs = _as_codes(codes, fmt)
    if fmt == "fp32":
        return np.asarray(cs, order="C").view(np.float32).copy()
    if _is_fixed(fmt):
        v = _scale_param(None, fmt, params)
        return np.asarray(decode_fixed(cs, -v if fmt == "flex16" else v)).reshape(cs.shape)
    flat = cs.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    if fmt == "fgmp":
        _threshold(params)
        low, high = _FLOATS["e4m3"], _FLOATS["fp16"]
        for start in range(0, flat.size, _CHUNK):
            c = flat[start : start + _CHUNK]
            outlier = (c & _FGMP_OUTLIER) != 0
            out[start : start + _CHUNK] = np.where(
                outlier, decode_float(c & 0xFFFF, high), decode_float(c & 0xFF, low)
            )
        return out.reshape(cs.shape)
    spec = _float_spec(None, fmt, params)
    for start in range(0, flat.size, _CHUNK):
        out[start : start + _CHUNK] = decode_float(flat[start : start + _CHUNK], spec)
    return out.reshape(cs.shape)


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
) -> npt.NDArray[np.float32]:
    """``decode(encode(x, ...), fmt, **params_used)`` as float32, where params_used is
    params completed by ``scale_params`` when a per-tensor parameter was not given."""
    fmt = _check_format(fmt)
    _check_params(fmt, params)
    xs = _as_f32(x)
    used = dict(params)
    if fmt in ("fp8-seb", "flex16") or fmt.startswith("dfxp"):
        name = _scale_name(fmt)
        if used.get(name) is None:
            used[name] = scale_params(xs, fmt)[name]
    codes = encode(
        xs, fmt, rounding=rounding, seed=seed, stream=stream, saturate=saturate, rbits=rbits, **used
    )
    return decode(codes, fmt, **used)


def outlier_ratio(codes: npt.ArrayLike) -> float:
    """Share of fgmp codes that are outliers (kept in fp16); 0.0 for no codes."""
    cs = _as_codes(codes, "fgmp")
    if cs.size == 0:
        return 0.0
    return int(np.count_nonzero(cs & _FGMP_OUTLIER)) / cs.size
