"""Analytic work records: ``StageWork`` of fully connected layers from dense MAC counts and
stated sparsity assumptions, with the preset's skip rules applied.

The engine fills ``StageWork`` from what its kernels counted; this module fills it from
shapes and fractions instead, for the survey figures of docs/chip-model.md and for design-space
studies before a model runs. The rules are the ones the engine applies to counted zeros:

* a skip happens only if the preset skips that reason in that stage (``preset.skips``);
* each skipped MAC is counted under one reason, in the order pruned / weight_zero (structural,
  known before the stage) then output_zero (ReLU mask, known from FF) then input_zero;
* in-slice skipping ("zero_slice") acts on the input operand only (HNPU's in-slice skipping):
  an executed MAC costs ``slice_density * slices(a_bits) * slices(b_bits)`` slice products;
* out-slice skipping ("out_slice", HNPU-V1's FF) computes only the input's MSB slice for the
  outputs the ReLU will zero.

Dataflow (assumption, docs/chip-model.md): weights stream from DRAM once per stage (pruned
channels are not fetched by a chip that skips them: it stores them compressed, the kept
channels plus a one-bit-per-channel bitmap), each layer's input is read from DRAM and
its output written to DRAM once (kept for WG), the input is re-read from SRAM once per
``pe_output_tile`` outputs, and WG hands its gradient tile to the update in SRAM (fused), so the
update moves the stored weights and momentum through DRAM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from device_model.config import ChipPreset
from device_model.costs import StageWork

__all__ = [
    "FIG10_IA_SPARSITY",
    "FcLayer",
    "Precision",
    "Sparsity",
    "fc_stage_work",
    "fig10_ia_sparsity",
    "slice_density",
]


@dataclass(frozen=True)
class FcLayer:
    """A fully connected layer: ``n_in`` inputs, ``n_out`` outputs; ``relu`` when a ReLU
    follows it (hidden layers); ``prunable`` when its output channels may be pruned (hidden
    layers; not the class outputs)."""

    n_in: int
    n_out: int
    relu: bool = True
    prunable: bool = True

    def __post_init__(self) -> None:
        if min(self.n_in, self.n_out) < 1:
            raise ValueError(f"FcLayer needs n_in, n_out >= 1, got {self.n_in}, {self.n_out}")

    @property
    def weights(self) -> int:
        return self.n_in * self.n_out


@dataclass(frozen=True)
class Precision:
    """Operand widths (bits) of one training configuration: activations, weights (as stored;
    DFXP with SR needs no higher-precision master copy), errors, gradients, momentum, DFA
    feedback (1 = binary feedback), and the update's arithmetic."""

    act_bits: int = 8
    weight_bits: int = 8
    error_bits: int = 8
    grad_bits: int = 16
    momentum_bits: int = 16
    feedback_bits: int = 8
    update_bits: int = 16

    def __post_init__(self) -> None:
        for name, v in vars(self).items():
            if not isinstance(v, int) or not 1 <= v <= 32:
                raise ValueError(f"Precision.{name} must be an int in 1..32, got {v!r}")


@dataclass(frozen=True)
class Sparsity:
    """Stated sparsity assumptions (fractions in [0, 1)).

    * ``activation_zero``: zeros in the inputs of hidden layers (ReLU outputs) and the ReLU
      mask of hidden outputs (the same statistic, so errors masked by dReLU have it too);
    * ``input_zero_first``: zeros in the first layer's input (features from frozen layers);
    * ``pruning``: share of pruned output channels of prunable layers;
    * ``feedback_zero``: zeros of a sparse DFA feedback matrix;
    * ``slice_density``: share of non-zero slices among the slices of non-zero inputs, per
      input width in bits (``slice_density(bits)`` gives a modelled value).
    """

    activation_zero: float = 0.0
    input_zero_first: float = 0.0
    pruning: float = 0.0
    feedback_zero: float = 0.0
    slice_density: float = 1.0

    def __post_init__(self) -> None:
        for name in ("activation_zero", "input_zero_first", "pruning", "feedback_zero"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"Sparsity.{name} must be in [0, 1), got {v!r}")
        if not 0.0 < self.slice_density <= 1.0:
            raise ValueError(f"Sparsity.slice_density must be in (0, 1], got {self.slice_density}")


#: Survey Fig. 10: layerwise average IA sparsity after retraining, rows DFXP16..DFXP4, columns
#: pruning ratio 0.0..0.9, for (a) ResNet-9, (b) ResNet-18, (c) ResNet-34 (read from the OCR
#: text; every row has ten readable numbers).
FIG10_IA_SPARSITY: dict[str, dict[int, tuple[float, ...]]] = {
    "resnet9": {
        16: (0.53, 0.53, 0.56, 0.58, 0.61, 0.65, 0.69, 0.72, 0.78, 0.82),
        14: (0.52, 0.53, 0.55, 0.58, 0.62, 0.65, 0.68, 0.72, 0.77, 0.82),
        12: (0.52, 0.53, 0.55, 0.58, 0.61, 0.65, 0.69, 0.73, 0.78, 0.82),
        10: (0.52, 0.53, 0.55, 0.59, 0.62, 0.65, 0.69, 0.73, 0.79, 0.82),
        8: (0.53, 0.54, 0.56, 0.59, 0.62, 0.66, 0.69, 0.73, 0.78, 0.82),
        6: (0.57, 0.61, 0.63, 0.65, 0.67, 0.70, 0.72, 0.76, 0.79, 0.82),
        4: (0.76, 0.78, 0.76, 0.79, 0.79, 0.79, 0.80, 0.83, 0.84, 0.85),
    },
    "resnet18": {
        16: (0.59, 0.60, 0.60, 0.62, 0.63, 0.66, 0.69, 0.73, 0.79, 0.84),
        14: (0.59, 0.60, 0.61, 0.62, 0.63, 0.66, 0.68, 0.73, 0.78, 0.84),
        12: (0.58, 0.60, 0.60, 0.62, 0.63, 0.66, 0.69, 0.73, 0.78, 0.84),
        10: (0.59, 0.60, 0.61, 0.62, 0.64, 0.66, 0.69, 0.73, 0.78, 0.84),
        8: (0.61, 0.61, 0.62, 0.63, 0.64, 0.66, 0.69, 0.73, 0.79, 0.85),
        6: (0.65, 0.65, 0.66, 0.67, 0.67, 0.69, 0.73, 0.76, 0.81, 0.85),
        4: (0.83, 0.83, 0.83, 0.84, 0.85, 0.86, 0.86, 0.87, 0.89, 0.91),
    },
    "resnet34": {
        16: (0.60, 0.61, 0.63, 0.64, 0.66, 0.68, 0.70, 0.74, 0.79, 0.84),
        14: (0.60, 0.61, 0.63, 0.64, 0.66, 0.68, 0.70, 0.73, 0.78, 0.84),
        12: (0.60, 0.61, 0.62, 0.64, 0.65, 0.67, 0.70, 0.73, 0.78, 0.84),
        10: (0.61, 0.62, 0.63, 0.65, 0.67, 0.68, 0.71, 0.74, 0.78, 0.84),
        8: (0.62, 0.63, 0.64, 0.66, 0.67, 0.69, 0.71, 0.75, 0.79, 0.84),
        6: (0.68, 0.69, 0.70, 0.71, 0.72, 0.73, 0.75, 0.78, 0.81, 0.86),
        4: (0.85, 0.85, 0.85, 0.86, 0.87, 0.87, 0.89, 0.90, 0.91, 0.94),
    },
}


def fig10_ia_sparsity(bits: int, pruning: float) -> float:
    """Mean over the three ResNets of Fig. 10's IA sparsity at DFXP``bits`` and the pruning
    ratio (a multiple of 0.1 in [0, 0.9])."""
    col = round(pruning * 10)
    if (
        bits not in FIG10_IA_SPARSITY["resnet9"]
        or not 0 <= col <= 9
        or abs(col / 10 - pruning) > 1e-9
    ):
        raise ValueError(
            "Fig. 10 has DFXP4..16 (even) and pruning 0.0..0.9 in steps of 0.1; "
            f"got {bits}, {pruning}"
        )
    return float(np.mean([FIG10_IA_SPARSITY[n][bits][col] for n in FIG10_IA_SPARSITY]))


def slice_density(bits: int, *, slice_bits: int = 4, full_scale_sigmas: float = 4.0) -> float:
    """Modelled share of non-zero slices among the slices of non-zero DFXP codes.

    Model (assumption): non-zero magnitudes are half-normal, and the DFXP range rule puts
    ``full_scale_sigmas`` standard deviations at the largest code 2^(bits-1)-1 (an overflow
    ratio of ~6e-5). Codes are rounded to nearest; the share is E[non-zero slices of |code|]
    / slices, over the non-zero codes. Deterministic (exact sums over every code)."""
    if not 2 <= bits <= 32:
        raise ValueError(f"bits must be in 2..32, got {bits}")
    top = (1 << (bits - 1)) - 1
    codes = np.arange(0, top + 1, dtype=np.float64)
    # P(code = c) for |x| ~ half-normal(sigma), x scaled so that full_scale_sigmas*sigma -> top.
    scale = top / full_scale_sigmas
    edges = np.concatenate([[0.0], (codes[:-1] + 0.5) / scale, [np.inf]])
    from math import erf, sqrt

    cdf = np.array([erf(e / sqrt(2.0)) if np.isfinite(e) else 1.0 for e in edges])
    p = np.diff(cdf)
    ci = np.arange(0, top + 1, dtype=np.int64)
    n_slices = math.ceil(bits / slice_bits)
    nz = sum(((ci >> (slice_bits * s)) & ((1 << slice_bits) - 1)) != 0 for s in range(n_slices))
    p_nz = p[1:].sum()
    return float((p[1:] * nz[1:]).sum() / p_nz / n_slices)


def _b(n_elems: int, bits: int) -> int:
    """Bytes of ``n_elems`` elements of ``bits`` bits (packed)."""
    return math.ceil(n_elems * bits / 8)


def fc_stage_work(
    preset: ChipPreset,
    stage: str,
    layer: FcLayer,
    *,
    batch: int,
    precision: Precision,
    sparsity: Sparsity,
    first: bool,
    algorithm: str = "bp",
    n_classes: int = 1,
    feedback_stored: bool = True,
    ff_weights_from_update: bool = False,
) -> StageWork | None:
    """The analytic ``StageWork`` of ``stage`` for one FC layer, or None when the stage does
    no work for it (BP's EP of the first layer: no error is propagated into frozen features;
    DFA's EP of the last layer, whose error is the output error itself).

    ``first``: the layer's input is the network input (its zeros are ``input_zero_first``).
    ``algorithm``: "bp" (EP through W transposed) or "dfa"/"pdfa" (EP through the feedback
    matrix from the ``n_classes`` output errors; stored in DRAM or regenerated from a PRNG).
    ``ff_weights_from_update``: FF takes its weights from the update's stream of the same layer
    (pipelined DFA: the next step's FF of a layer runs while that layer's weights are being
    updated, so they are fetched from DRAM once for both; survey III-B-5 names the reload of the
    same weights in every stage as a cost of backward locking).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if algorithm not in ("bp", "dfa", "pdfa"):
        raise ValueError(f"unknown algorithm {algorithm!r}; accepted: bp, dfa, pdfa")
    skips = preset.skips(stage)
    pr = precision
    s_in = sparsity.input_zero_first if first else sparsity.activation_zero
    s_out = sparsity.activation_zero if layer.relu else 0.0
    p = sparsity.pruning if layer.prunable else 0.0
    density = sparsity.slice_density if "zero_slice" in skips else 1.0
    tile_passes = math.ceil(layer.n_out / preset.pe_output_tile)
    w_bytes = _b(layer.weights, pr.weight_bits)
    # Pruned channels stored compressed: the kept channels plus a bitmap of one bit per output
    # channel (the index overhead; the engine's assumption too).
    fetched_w = (
        _b(round(layer.weights * (1 - p)), pr.weight_bits) + _b(layer.n_out, 1) if p else w_bytes
    )

    def split(
        macs: int, structural: str | None, frac_struct: float, out_frac: float, in_frac: float
    ) -> dict[str, int]:
        # One reason per skipped MAC, in the order of the module docstring.
        out = {"input_zero": 0, "weight_zero": 0, "output_zero": 0, "pruned": 0}
        rest = macs
        if structural is not None and structural in skips and frac_struct:
            out[structural] = round(rest * frac_struct)
            rest -= out[structural]
        if "output_zero" in skips and out_frac:
            out["output_zero"] = round(rest * out_frac)
            rest -= out["output_zero"]
        if "input_zero" in skips and in_frac:
            out["input_zero"] = round(rest * in_frac)
            rest -= out["input_zero"]
        out["executed"] = rest
        return out

    def slices(executed: int, a_bits: int, b_bits: int, out_slice_frac: float = 0.0) -> int:
        na, nb = preset.slices(a_bits), preset.slices(b_bits)
        ops = executed * na * nb * density
        if "out_slice" in skips and out_slice_frac:
            ops *= 1.0 - out_slice_frac * (1.0 - 1.0 / na)
        return min(round(ops), executed * na * nb)

    if stage == "ff":
        macs = batch * layer.weights
        s = split(macs, "weight_zero", p, 0.0, s_in)
        in_b = _b(batch * layer.n_in, pr.act_bits)
        out_b = _b(batch * layer.n_out, pr.act_bits)
        w_read = fetched_w if "weight_zero" in skips else w_bytes
        w_dram = 0 if ff_weights_from_update else w_read
        return StageWork(
            "ff", macs, s["executed"], s["input_zero"], s["weight_zero"], 0, 0,
            slice_ops=slices(s["executed"], pr.act_bits, pr.weight_bits, s_out),
            a_bits=pr.act_bits, b_bits=pr.weight_bits,
            dram_read_bytes=w_dram + in_b, dram_write_bytes=out_b,
            sram_read_bytes=w_read + in_b * tile_passes, sram_write_bytes=w_read + in_b + out_b,
        )  # fmt: skip
    if stage == "ep":
        if algorithm == "bp":
            if first:
                return None
            macs = batch * layer.weights
            # Input: this layer's output error, masked by its dReLU (s_out zeros); output: the
            # previous layer's error, masked by that layer's dReLU (s_in zeros, known from FF).
            s = split(macs, "weight_zero", p, s_in, s_out)
            w_read = fetched_w if "weight_zero" in skips else w_bytes
            e_in = _b(batch * layer.n_out, pr.error_bits)
            e_out = _b(batch * layer.n_in, pr.error_bits)
            return StageWork(
                "ep", macs, s["executed"], s["input_zero"], s["weight_zero"], s["output_zero"], 0,
                slice_ops=slices(s["executed"], pr.error_bits, pr.weight_bits),
                a_bits=pr.error_bits, b_bits=pr.weight_bits,
                dram_read_bytes=w_read + e_in, dram_write_bytes=e_out,
                sram_read_bytes=w_read + e_in * math.ceil(layer.n_in / preset.pe_output_tile),
                sram_write_bytes=w_read + e_in + e_out,
                transposed_read=True, transposed_bytes=w_read,
            )  # fmt: skip
        if not layer.relu:  # the last layer's error is the output error itself
            return None
        macs = batch * layer.n_out * n_classes
        s = split(macs, "weight_zero", sparsity.feedback_zero, s_out, 0.0)
        fb = _b(layer.n_out * n_classes, pr.feedback_bits)
        fb_read = round(fb * (1 - sparsity.feedback_zero)) if "weight_zero" in skips else fb
        e_in = _b(batch * n_classes, pr.error_bits)
        e_out = _b(batch * layer.n_out, pr.error_bits)
        return StageWork(
            "ep", macs, s["executed"], s["input_zero"], s["weight_zero"], s["output_zero"], 0,
            slice_ops=slices(s["executed"], pr.error_bits, pr.feedback_bits),
            a_bits=pr.error_bits, b_bits=pr.feedback_bits,
            dram_read_bytes=(fb_read if feedback_stored else 0) + e_in, dram_write_bytes=e_out,
            sram_read_bytes=fb_read + e_in, sram_write_bytes=fb_read + e_in + e_out,
        )  # fmt: skip
    if stage == "wg":
        macs = batch * layer.weights
        s = split(macs, "pruned", p, 0.0, s_in)
        a_b = _b(batch * layer.n_in, pr.act_bits)
        e_b = _b(batch * layer.n_out, pr.error_bits)
        g_b = _b(round(layer.weights * (1 - p)) if "pruned" in skips else layer.weights,
                 pr.grad_bits)  # fmt: skip
        return StageWork(
            "wg", macs, s["executed"], s["input_zero"], 0, 0, s["pruned"],
            slice_ops=slices(s["executed"], pr.act_bits, pr.error_bits),
            a_bits=pr.act_bits, b_bits=pr.error_bits,
            dram_read_bytes=a_b + e_b, dram_write_bytes=0,
            sram_read_bytes=a_b * tile_passes + e_b, sram_write_bytes=a_b + e_b + g_b,
        )  # fmt: skip
    if stage == "update":
        # Momentum SGD: m = mu*m + g; w = w - lr*m: two multiply-adds per weight.
        macs = 2 * layer.weights
        s = split(macs, "pruned", p, 0.0, 0.0)
        kept = round(layer.weights * (1 - p)) if "pruned" in skips else layer.weights
        wm = _b(kept, pr.weight_bits) + _b(kept, pr.momentum_bits)
        g_b = _b(kept, pr.grad_bits)
        return StageWork(
            "update", macs, s["executed"], 0, 0, 0, s["pruned"],
            slice_ops=None, a_bits=pr.update_bits, b_bits=pr.update_bits,
            dram_read_bytes=wm, dram_write_bytes=wm,
            sram_read_bytes=wm + g_b, sram_write_bytes=wm,
        )  # fmt: skip
    raise ValueError(f"unknown stage {stage!r}; accepted: ff, ep, wg, update")
