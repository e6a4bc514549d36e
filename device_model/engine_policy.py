"""The precision policy at run time: which format each tensor gets, and its range state.

A ``Policy`` resolves the config's entries to one entry per (layer, tensor class), keeps the
fractional length of every DFXP tensor whose ``frac_mode`` is OVERFLOW or
STOCHASTIC_THRESHOLD (moved by protocol.range_rules.update_frac_bits after each use), and the
LAPS controller of each layer. ``quantize`` turns a float32 tensor into a ``QTensor``: its
quantized float32 values and, for the integer formats (dfxpN, flex16), its codes and the
exponent ``frac`` with value = code * 2^-frac, which the integer kernels consume.

Where each tensor class is quantized (per parameterised layer l):
ACTIVATIONS: the input activations of l (the IA operand of FF and WG); WEIGHTS: the weights
and bias read from the master copy for FF and EP; ERRORS: the error at l's output (the
incoming operand of EP and WG); GRADIENTS: the weight and bias gradients after WG;
MASTER_WEIGHTS and MOMENTUM: after the update. Entries of layers without parameters are
accepted and have no tensor to act on (those layers compute exactly in float32).

Stochastic-rounding stream of each quantization call (seed = sr_seed):
``stream = pass * 2^16 + layer * 2^8 + class * 2^4 + part`` with ``pass`` the number of
forward passes (FORWARD or TRAIN_STEP) before this one, ``class`` the TensorClass value and
``part`` 0 = weight, 1 = bias, 2 = activations/errors. The range rules use the same stream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_model.datapath import rescale_i64
from device_model.engine_config import TENSOR_CLASSES, EngineConfig, EngineError, PolicyEntry
from device_model.engine_kernels import Kernels
from device_model.engine_layers import Layer
from protocol.range_rules import (
    DEFAULT_OVERFLOW_THRESHOLD,
    FRAC_BITS_MAX,
    FRAC_BITS_MIN,
    LapsController,
    update_frac_bits,
)
from protocol.status import Status

__all__ = ["CLASS", "Policy", "QTensor", "format_bits", "is_int_format"]

CLASS = {name: i for i, name in enumerate(TENSOR_CLASSES)}
PART_WEIGHT, PART_BIAS, PART_DATA = 0, 1, 2
_CODE_CLASSES = frozenset({"activations", "weights", "errors"})
_LAZY_VALUES_MIN = 1 << 16  # elements
_DEFAULT = PolicyEntry(tensor_class="activations", format="fp32")
_SCALED = ("fp8-seb", "flex16")


def is_int_format(fmt: str) -> bool:
    """Formats whose codes are two's complement integers the integer kernels take."""
    return fmt.startswith("dfxp") or fmt == "flex16"


@functools.cache
def format_bits(fmt: str) -> int:
    """Stored bits of one element (fgmp: its 8-bit majority; tf32: 19)."""
    if fmt.startswith("dfxp"):
        return int(fmt[4:])
    return {"fp32": 32, "tf32": 19, "fp16": 16, "bf16": 16, "dlfloat16": 16, "flex16": 16}.get(
        fmt, 8
    )


@dataclass(frozen=True)
class QTensor:
    """A quantized tensor: float32 values; codes and frac (value = code * 2^-frac) when the
    format is an integer one, else None. The values of an integer tensor may be left to be
    computed from the codes when first read (``raw`` None): the integer kernels and the
    counters need only the codes."""

    raw: np.ndarray | None
    fmt: str
    codes: np.ndarray | None = None
    frac: int = 0

    @property
    def values(self) -> np.ndarray:
        """The float32 values (computed from the codes, once, if they were not given)."""
        v = self.raw
        if v is None:
            assert self.codes is not None, "a QTensor needs values or codes"
            v = rescale(self.codes, self.frac)
            object.__setattr__(self, "raw", v)
        return v

    @property
    def zeros_source(self) -> np.ndarray:
        """An array with the tensor's shape that is zero exactly where the values are: the
        codes when there are (a code times 2^-frac, |frac| <= 64, is zero only for code 0),
        else the values."""
        return self.codes if self.codes is not None else self.values

    @property
    def size(self) -> int:
        return int((self.codes if self.codes is not None else self.values).size)

    @property
    def is_int(self) -> bool:
        return self.codes is not None

    @property
    def c(self) -> np.ndarray:
        """The codes (only for integer formats)."""
        assert self.codes is not None, f"{self.fmt} has no integer codes"
        return self.codes

    @property
    def bits(self) -> int:
        return format_bits(self.fmt)


def _fp32_tensor(x: np.ndarray) -> QTensor:
    """``QTensor(x, "fp32")`` without the frozen dataclass's __init__ (one per fp32 operand,
    about 18 a training step): the same fields."""
    q = _new_object(QTensor)
    q.__dict__.update(raw=x, fmt="fp32", codes=None, frac=0)
    return q


_new_object = object.__new__


def rescale(acc: np.ndarray, frac: int) -> np.ndarray:
    """Integer values (codes or int64 accumulators) times 2^-frac, rounded once to float32.

    For frac <= 126 a non-zero result is at least 2^-126 (normal), so rounding the integer to
    float32 first and scaling by the power of two after gives the same single rounding as
    the exact product (the fast path); otherwise the product is formed in float64."""
    if -64 <= frac <= 126 and acc.dtype == np.int64:
        return rescale_i64(acc, frac)  # one C pass, the same bits as below
    if -64 <= frac <= 126:
        out = acc.astype(np.float32)  # scaled in place: one fresh buffer, not two
        with np.errstate(over="ignore"):
            out *= np.float32(2.0**-frac)
        return out
    with np.errstate(over="ignore"):
        return (acc.astype(np.float64) * np.ldexp(1.0, -frac)).astype(np.float32)


def next_frac_bits(
    x: np.ndarray, bits: int, frac: int, threshold: float = DEFAULT_OVERFLOW_THRESHOLD
) -> int:
    """protocol.range_rules.update_frac_bits without stochastic thresholding, computed in
    float32: |x| * 2^f > qmax is compared as |x| > qmax * 2^-f, whose right side is exactly
    a float32 for |f| <= 65 (so the comparison is exact; NaN never counts, inf always does).
    Equal to the rule for every input (tests/test_engine.py checks it)."""
    a = np.abs(np.asarray(x, np.float32))
    n = a.size
    if n == 0:
        return min(FRAC_BITS_MAX, frac + 1)
    qmax = float(2 ** (bits - 1) - 1)

    def ratio(f: int) -> float:
        return float(np.count_nonzero(a > np.float32(qmax * 2.0**-f))) / n

    if ratio(frac) > threshold:
        return max(FRAC_BITS_MIN, frac - 1)
    if frac < FRAC_BITS_MAX and ratio(frac + 1) <= threshold:
        return frac + 1
    return frac


class Policy:
    """Resolved entries, range state and LAPS controllers of one configured model."""

    def __init__(
        self,
        cfg: EngineConfig,
        layers: Sequence[Layer],
        kernels: Kernels,
        laps_ok: bool,
        st_ok: bool,
    ) -> None:
        n = len(layers)
        self.sr_seed = int(cfg.sr_seed)
        self.kernels = kernels
        table = [[_DEFAULT for _ in TENSOR_CLASSES] for _ in range(n)]
        for raw in cfg.policy:
            e = raw.normalized()
            if e.layer is not None and not 0 <= e.layer < n:
                raise EngineError(
                    Status.UNKNOWN_LAYER,
                    f"policy entry names layer {e.layer}; the model has layers 0..{n - 1} "
                    f"(0xFFFF = all)",
                )
            _check_entry(e, st_ok)
            for li in range(n) if e.layer is None else (e.layer,):
                table[li][CLASS[e.tensor_class]] = e
        self.table = table
        self.frac: dict[tuple[int, int, int], int] = {}
        self.laps: dict[int, LapsController] = {}
        if cfg.laps:
            if not laps_ok:
                raise EngineError(Status.UNSUPPORTED, "this chip preset has no LAPS unit")
            for layer in layers:
                w = table[layer.index][CLASS["weights"]]
                if layer.has_params and w.format.startswith("dfxp"):
                    bits = int(w.format[4:])
                    if bits in (4, 8, 12, 16):
                        self.laps[layer.index] = LapsController(bits=bits)

    def entry(self, layer: int, cls: str) -> PolicyEntry:
        return self.table[layer][CLASS[cls]]

    def _fmt(self, layer: int, cls: str, e: PolicyEntry) -> tuple[str, int]:
        """The format in effect and the frac offset LAPS adds to a FIXED frac_bits."""
        ctl = self.laps.get(layer)
        if ctl is not None and cls in ("activations", "weights") and e.format.startswith("dfxp"):
            return f"dfxp{ctl.bits}", ctl.bits - int(e.format[4:])
        return e.format, 0

    def quantize(self, x: np.ndarray, layer: int, cls: str, part: int, pass_no: int) -> QTensor:
        """Quantize ``x`` with the entry of (layer, cls); see the module docstring."""
        e = self.table[layer][CLASS[cls]]
        if e.format == "fp32":  # the identity on float32 bits (LAPS changes dfxp widths only)
            return _fp32_tensor(np.ascontiguousarray(x, np.float32))
        fmt, laps_shift = self._fmt(layer, cls, e)
        x = np.ascontiguousarray(x, np.float32)
        if fmt == "fp32":
            return QTensor(x, fmt)
        stream = pass_no * 65536 + layer * 256 + CLASS[cls] * 16 + part
        k = self.kernels
        if is_int_format(fmt):
            key = (layer, CLASS[cls], part)
            # the datapath operands (activations, weights, errors) are used as codes: large
            # ones get their values only if read (small ones at once: one C call is cheaper
            # than a later rescale); the rest (gradients, momentum, master weights) as values
            want_values = cls not in _CODE_CLASSES or x.size < _LAZY_VALUES_MIN
            if e.frac_mode == "amax":  # the scale of _frac, found by the encoding call
                codes, values, frac = k.encode_values_amax(
                    x,
                    fmt,
                    values=want_values,
                    rounding=e.rounding,
                    seed=self.sr_seed,
                    stream=stream,
                    saturate=e.saturate,
                )
            else:
                frac = self._frac(x, fmt, e, key, laps_shift)
                params = {"shared_exp": -frac} if fmt == "flex16" else {"frac_bits": frac}
                codes, values = k.encode_values(
                    x,
                    fmt,
                    frac,
                    values=want_values,
                    rounding=e.rounding,
                    seed=self.sr_seed,
                    stream=stream,
                    saturate=e.saturate,
                    **params,
                )
            if e.frac_mode == "overflow":
                self.frac[key] = next_frac_bits(x, format_bits(fmt), frac)
            elif e.frac_mode == "stochastic_threshold":
                self.frac[key] = update_frac_bits(
                    x, format_bits(fmt), frac, stochastic=True, seed=self.sr_seed, stream=stream
                )
            q = _new_object(QTensor)  # QTensor(values, fmt, codes, frac) without its __init__
            q.__dict__.update(raw=values, fmt=fmt, codes=codes, frac=frac)
            return q
        kw = {
            "rounding": e.rounding,
            "seed": self.sr_seed,
            "stream": stream,
            "saturate": e.saturate,
        }
        fparams: dict[str, Any] = {}
        if fmt == "hfp8":
            fparams = {"bias": e.exp_bias, "stage": e.hfp8_stage}
        elif fmt == "fp8-seb":
            fparams = (
                k.scale_params(x, fmt) if e.frac_mode == "amax" else {"shared_exp": e.shared_exp}
            )
        return QTensor(k.quantize(x, fmt, **kw, **fparams), fmt)

    def _frac(
        self, x: np.ndarray, fmt: str, e: PolicyEntry, key: tuple[int, int, int], laps_shift: int
    ) -> int:
        if e.frac_mode == "amax":
            p = self.kernels.scale_params(x, fmt)
            return -int(p["shared_exp"]) if fmt == "flex16" else int(p["frac_bits"])
        init = -e.shared_exp if fmt == "flex16" else e.frac_bits
        if e.frac_mode == "fixed":
            return max(-64, min(64, init + laps_shift))
        return self.frac.setdefault(key, init)

    def observe_laps(self, layer: int, high: np.ndarray, low: np.ndarray) -> None:
        """Feed one LAPS comparison; a width change shifts the layer's DFXP range state by
        the change (the integer bits stay)."""
        ctl = self.laps.get(layer)
        if ctl is None:
            return
        old = ctl.bits
        new = ctl.observe(high, low)
        if new != old:
            for cls in ("activations", "weights"):
                for part in (PART_WEIGHT, PART_BIAS, PART_DATA):
                    key = (layer, CLASS[cls], part)
                    if key in self.frac:
                        self.frac[key] = max(-64, min(64, self.frac[key] + new - old))


def _check_entry(e: PolicyEntry, st_ok: bool) -> None:
    if e.frac_mode in ("overflow", "stochastic_threshold") and not is_int_format(e.format):
        raise EngineError(
            Status.UNSUPPORTED_FORMAT,
            f"frac_mode {e.frac_mode} needs a dfxpN or flex16 format, got {e.format} "
            f"(use fixed or amax)",
        )
    if e.frac_mode == "amax" and not (is_int_format(e.format) or e.format in _SCALED):
        raise EngineError(
            Status.UNSUPPORTED_FORMAT,
            f"frac_mode amax needs a scaled format (dfxpN, flex16, fp8-seb), got {e.format}",
        )
    if e.frac_mode == "stochastic_threshold" and not st_ok:
        raise EngineError(
            Status.UNSUPPORTED, "this chip preset has no stochastic thresholding (ST) unit"
        )
    for name, v in (("frac_bits", e.frac_bits), ("shared_exp", e.shared_exp)):
        if not -64 <= v <= 64:
            raise EngineError(Status.BAD_REQUEST, f"{name} must be in [-64, 64], got {v}")
    if not 0 <= e.exp_bias <= 15:
        raise EngineError(Status.BAD_REQUEST, f"exp_bias must be in [0, 15], got {e.exp_bias}")
