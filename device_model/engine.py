"""The training engine of the emulated chip: FF, EP, WG and the update of every layer in the
configured number formats, through the chip's datapath, with the work counted per stage.

``Engine`` holds one model (layers, master weights, optimizer state, precision-policy state)
and runs forward passes, training steps (FF, loss, EP by BP or DFA, WG, update) and backward
passes from a host-supplied output error. Tensors of an integer format (dfxpN, flex16) go
through the exact integer kernels on their codes and are rescaled once to float32; float
formats are quantized to their grid and multiplied with fp32 sequential accumulation.
Layers without parameters compute in float32 (exact for ReLU, max pool and flatten).

What is quantized where, the SR stream numbering, the DFA feedback matrices and the skip
accounting are defined in device_model.engine_policy, engine_setup and engine_counts.
EP is computed only where an earlier layer is trainable (no error is propagated into frozen
features or the input); WG only for layers with a trainable parameter.

The numpy reference (device_model.engine_reference) is this class with numpy kernels.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_model.config import ChipPreset
from device_model.costs import (
    StageCounters,
    StageWork,
    counters_dict,
    counters_of,
    stage_costs,
    stage_work,
)
from device_model.costs_schedule import LayerCycles, bp_latency, dfa_latency, pdfa_split_costs
from device_model.datapath import (
    pin_threads,
    relu,
    relu_backward,
    to_nchw_bias,
    unpin_threads,
    zero_counts,
)
from device_model.engine_config import EngineConfig, EngineError, PolicyEntry
from device_model.engine_counts import count_macs, masked_slice_ops
from device_model.engine_kernels import ChipKernels, Kernels
from device_model.engine_layers import (
    Layer,
    LayerSpec,
    build_layers,
    col2im,
    im2col,
    pool_backward,
    pool_forward,
)
from device_model.engine_policy import (
    PART_BIAS,
    PART_DATA,
    PART_WEIGHT,
    Policy,
    QTensor,
    format_bits,
    is_int_format,
    rescale,
)
from device_model.engine_setup import Setup, feedback_matrix, feedback_shapes, prepare
from device_model.memory_model import LayerMemory, memory_peak_bytes, selective_layers
from protocol.messages_counters import MEMORY_KINDS
from protocol.status import Status

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "LayerSpec",
    "PolicyEntry",
    "StepResult",
]

MAX_BATCH = 256
_STAGES = ("ff", "ep", "wg", "update")


@dataclass(frozen=True)
class StepResult:
    """Result of a training step or backward pass: loss (None for BACKWARD), the counters
    delta of this call (schema of protocol/messages_counters.py) and the model outputs."""

    loss: float | None
    counters: dict[str, Any]
    outputs: np.ndarray | None = None


_COUNTER_VALUES = operator.attrgetter(*(f.name for f in dataclasses.fields(StageCounters)))


def _sum_counters(items: Sequence[StageCounters]) -> StageCounters:
    """The field-wise sum (StageCounters.__add__ over all of them in order, from zero, in
    one construction)."""
    if len(items) == 1:
        return items[0]
    # column j is ((0 + r0[j]) + r1[j]) + ...: sum()'s additions in sum()'s order, as nested
    # maps of operator.add (no Python call per field; counters_of checks the length)
    acc: Any = _INT_ZEROS
    for row in map(_COUNTER_VALUES, items):
        acc = map(operator.add, acc, row)
    return counters_of(acc)


_INT_ZEROS = (0,) * len(dataclasses.fields(StageCounters))
_NO_WORK = StageCounters()  # frozen, shared


#: StageWork and its stage_costs by a key that determines the work
_CostMemo = dict[tuple[int, ...], tuple[StageWork, StageCounters]]


@dataclass
class _Step:
    """Work of one call: stage counters per layer, memory of the step."""

    per_layer: dict[int, dict[str, list[StageCounters]]] = field(default_factory=dict)
    #: the work records behind per_layer (a pipelined schedule re-costs them)
    works: dict[int, dict[str, list[StageWork]]] = field(default_factory=dict)

    def add(self, layer: int, work: StageWork, stage: str, preset: ChipPreset) -> None:
        self.per_layer.setdefault(layer, {}).setdefault(stage, []).append(stage_costs(work, preset))
        self.works.setdefault(layer, {}).setdefault(stage, []).append(work)

    def add_costed(self, layer: int, work: StageWork, stage: str, costs: StageCounters) -> None:
        """``add`` with ``costs`` = stage_costs(work, preset) computed by the caller (both are
        frozen, so a record may be shared between steps)."""
        self.per_layer.setdefault(layer, {}).setdefault(stage, []).append(costs)
        self.works.setdefault(layer, {}).setdefault(stage, []).append(work)

    def layer_stage(self, layer: int) -> dict[str, StageCounters]:
        return {s: _sum_counters(v) for s, v in self.per_layer[layer].items()}

    def stages(
        self, sums: Mapping[int, dict[str, StageCounters]] | None = None
    ) -> dict[str, StageCounters]:
        """Totals per stage: each layer's sum (``sums``, when the caller has them), then the
        layers' sums in order (the float energies are added in that order)."""
        out: dict[str, list[StageCounters]] = {s: [] for s in _STAGES}
        for li in self.per_layer:
            for s, c in (self.layer_stage(li) if sums is None else sums[li]).items():
                out[s].append(c)
        return {s: _sum_counters(v) if v else StageCounters() for s, v in out.items()}


@dataclass(frozen=True)
class _UpdatePlan:
    """The masks of one trainable parameter as the update kernel takes them (None = every
    element) and the element counts the update's counters need, fixed per configuration."""

    update: np.ndarray | None  # trainable and not pruned
    keep: np.ndarray | None  # not pruned
    ntrain: int  # trainable elements
    npruned: int  # trainable elements that are pruned

    @classmethod
    def of(cls, trainable: np.ndarray, keep: np.ndarray | None) -> _UpdatePlan:
        upd = trainable if keep is None else (trainable & keep)
        npruned = 0 if keep is None else int((trainable & ~keep).sum())
        return cls(
            update=None if upd.all() else np.ascontiguousarray(upd),
            keep=None if keep is None else np.ascontiguousarray(keep),
            ntrain=int(trainable.sum()),
            npruned=npruned,
        )


def _error_matrix(e: np.ndarray) -> np.ndarray:
    """The error of a layer's output as the GEMM operand of EP and WG: (n, o) for Linear,
    (n * ho * wo, o) for Conv2d (NCHW moved to NHWC), the latter as the transposed view of
    a C-ordered (o, n * ho * wo) copy (copying whole ho x wo planes is cheaper than the NHWC
    gather; the kernels and zero_counts take either order without a copy)."""
    if e.ndim == 2:
        return e
    return np.ascontiguousarray(e.transpose(1, 0, 2, 3)).reshape(e.shape[1], -1).T


def _bytes(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


class Engine:
    """One model on the emulated chip (see the module docstring)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        layers: Sequence[LayerSpec],
        preset: ChipPreset,
        *,
        init_seed: int = 0,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if not isinstance(preset, ChipPreset):
            raise EngineError(Status.BAD_REQUEST, f"preset must be a ChipPreset, got {preset!r}")
        if len(layers) > preset.max_layers:
            raise EngineError(
                Status.LIMIT,
                f"{len(layers)} layers; preset {preset.name} takes at most {preset.max_layers}",
            )
        self.layers: list[Layer] = build_layers(input_shape, layers)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = self.layers[-1].out_shape
        self.preset = preset
        #: the update stage's (work, costs) per layer and element counts (they depend only on
        #: the configuration and the preset; the preset they were costed on is the first item)
        self._update_costs: tuple[ChipPreset, _CostMemo] = (preset, {})
        if (
            isinstance(init_seed, bool)
            or not isinstance(init_seed, int | np.integer)
            or init_seed < 0
        ):
            raise EngineError(
                Status.BAD_REQUEST, f"init_seed must be an integer >= 0, got {init_seed!r}"
            )
        self._k: Kernels = self._make_kernels()
        self._params = self._init_params(int(init_seed))
        if weights is not None:
            self.set_weights(weights)
        self._momentum: dict[str, np.ndarray] = {}
        self._pass = 0
        self._kept: dict[str, Any] | None = None
        self._total: dict[str, StageCounters] = {s: StageCounters() for s in _STAGES}
        self._latency_cycles = 0
        self._mem_peak: dict[str, int] = {}
        self.configure(EngineConfig())

    # ------------------------------------------------------------------ setup
    def _make_kernels(self) -> Kernels:
        return ChipKernels()

    def _init_params(self, seed: int) -> dict[str, np.ndarray]:
        """Kaiming-uniform as PyTorch's default init: weight and bias ~ U(-b, b) with
        b = 1/sqrt(fan_in), drawn in layer order (weight, then bias) from default_rng(seed)."""
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for x in self.layers:
            if not x.has_params:
                continue
            b = 1.0 / math.sqrt(x.fan_in)
            out[f"{x.index}.weight"] = rng.uniform(-b, b, x.weight_shape).astype(np.float32)
            if x.bias:
                out[f"{x.index}.bias"] = rng.uniform(-b, b, x.out_shape[0]).astype(np.float32)
        return out

    def configure(self, cfg: EngineConfig) -> None:
        """Install a training configuration (atomic: on EngineError nothing changes). The
        momentum state restarts; pruned weights are zeroed."""
        if not isinstance(cfg, EngineConfig):
            raise EngineError(Status.BAD_REQUEST, f"configure takes an EngineConfig, got {cfg!r}")
        setup = prepare(cfg, self.layers, self._params, self.preset)
        policy = Policy(
            cfg, self.layers, self._k, self.preset.laps, self.preset.stochastic_thresholding
        )
        self._setup: Setup = setup
        self._policy = policy
        #: zeros per row and column of fp32 master weights, counted by the update that wrote
        #: them (read by the next FF and EP while the weight array is unchanged)
        self._wz: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._mem_cache: dict[int, dict[str, int]] = {}
        self._fetch_cache: dict[tuple[int, int], int] = {}
        self._momentum = {}
        self._kept = None
        for n, m in setup.keep.items():
            self._params[n] = np.where(m, self._params[n], np.float32(0)).astype(np.float32)
        self._upd_plan = {
            n: _UpdatePlan.of(tm, setup.keep.get(n)) for n, tm in setup.trainable.items()
        }

    # ------------------------------------------------------------------ weights
    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the master weights by state-dict name."""
        return {n: v.copy() for n, v in self._params.items()}

    def set_weights(self, mapping: Mapping[str, np.ndarray]) -> None:
        """Replace some or all parameters (checked first; pruned entries stay zero)."""
        new: dict[str, np.ndarray] = {}
        for n, v in mapping.items():
            if n not in self._params:
                raise EngineError(
                    Status.UNKNOWN_LAYER,
                    f"no parameter {n!r}; accepted: {', '.join(self._params)}",
                )
            a = np.asarray(v)
            if a.shape != self._params[n].shape:
                raise EngineError(
                    Status.BAD_SHAPE,
                    f"{n} has shape {self._params[n].shape}, got {a.shape}",
                )
            if a.dtype.kind not in "fiu":
                raise EngineError(Status.UNSUPPORTED_FORMAT, f"{n}: dtype {a.dtype} is not numeric")
            new[n] = np.array(a, dtype=np.float32)
        keep = self._setup.keep if hasattr(self, "_setup") else {}
        if hasattr(self, "_wz"):
            self._wz.clear()
        for n, a in new.items():
            self._params[n] = np.where(keep[n], a, np.float32(0)) if n in keep else a
        self._kept = None

    # ------------------------------------------------------------------ counters
    def counters(self) -> dict[str, Any]:
        """Counters accumulated since construction or reset_counters()."""
        return counters_dict(
            self._total,
            self.preset,
            memory_peak_bytes=self._mem_peak or None,
            latency_cycles=self._latency_cycles,
        )

    def reset_counters(self) -> None:
        self._total = {s: StageCounters() for s in _STAGES}
        self._latency_cycles = 0
        self._mem_peak = {}

    def _fmt_bits(self, layer: int, cls: str) -> int:
        return format_bits(self._policy.entry(layer, cls).format)

    def _memory(self, batch: int) -> dict[str, int]:
        """Memory of a step at ``batch`` (fixed per configuration: cached)."""
        got = self._mem_cache.get(batch)
        if got is None:
            got = self._mem_cache[batch] = self._memory_uncached(batch)
        return dict(got)

    def _memory_uncached(self, batch: int) -> dict[str, int]:
        """Table 5's tensors of the layers with parameters, less what frozen parameters do
        not need (memory_model.selective_layers), plus gradient and momentum buffers of the
        trainable elements only (a frozen element has neither)."""
        lm, grads, opt = [], 0, 0
        w_trained, trained = [], []
        plays = [x for x in self.layers if x.has_params]
        shapes = feedback_shapes(self.layers)
        tr = self._setup.trainable
        for x in plays:
            i = x.index
            names = [n for n in self._params if n.startswith(f"{i}.")]
            nparam = sum(self._params[n].size for n in names)
            fb = 0
            if self._setup.feedback_stored and self._setup.algorithm != "bp" and i in shapes:
                fb = _bytes(int(np.prod(shapes[i])), self._fmt_bits(i, "weights"))
            lm.append(
                LayerMemory(
                    activations=_bytes(
                        batch * int(np.prod(x.in_shape)), self._fmt_bits(i, "activations")
                    ),
                    errors=_bytes(batch * int(np.prod(x.out_shape)), self._fmt_bits(i, "errors")),
                    weights=_bytes(nparam, self._fmt_bits(i, "master_weights")),
                    feedback=fb,
                )
            )
            w_trained.append(f"{i}.weight" in tr)
            trained.append(any(n in tr for n in names))
            ntrain = sum(int(tr[n].sum()) for n in names if n in tr)
            grads += _bytes(ntrain, self._fmt_bits(i, "gradients"))
            if self._setup.momentum > 0:
                opt += _bytes(ntrain, self._fmt_bits(i, "momentum"))
        if not lm:  # a model without parameters keeps nothing for training
            return {k: 0 for k in MEMORY_KINDS}
        method = "bp" if self._setup.algorithm == "bp" else "dfa"
        kept = selective_layers(lm, method, weight_trained=w_trained, trained=trained)
        return memory_peak_bytes(kept, method, gradients=grads, optimizer=opt)

    def _weight_fetch_bytes(self, layer: Layer, w: QTensor) -> int:
        """Bytes of a layer's weights one stage (FF, EP) fetches. A pruning-aware preset
        stores pruned weights compressed at its pruning granularity (hnpu-v2: output
        channels): the output channels with a kept weight, stored densely, plus a bitmap of one
        bit per output channel (the index overhead; docs/chip-model.md). Other presets, or no
        pruning: every weight."""
        i = layer.index
        key = (i, w.bits)
        got = self._fetch_cache.get(key)
        if got is None:
            keep = self._setup.keep.get(f"{i}.weight")
            if keep is None or not self.preset.pruning_aware_training:
                got = _bytes(w.size, w.bits)
            else:
                o = layer.out_shape[0]
                rows = int(keep.reshape(o, -1).any(axis=1).sum())
                got = _bytes(rows * (w.size // o), w.bits) + _bytes(o, 1)
            self._fetch_cache[key] = got
        return got

    def memory_bytes(self, batch: int = 1) -> int:
        """Bytes the model needs on the device for training at ``batch``: master weights,
        gradients, optimizer state, activations and errors kept for a step, stored feedback."""
        return int(self._memory(batch)["total"])

    def _finish(self, step: _Step, batch: int) -> dict[str, Any]:
        """Schedule the step's stages, add its counters to the totals, return its counters.

        One PE array (docs/chip-model.md "Schedules"): BP and DFA run every stage in turn
        (DFA's EPs one after another on the shared array), so the step lasts the sum of the
        stages' cycles. Pipelined DFA with backward work splits the array between the forward
        and the backward engine and re-costs every stage on its share; the step lasts the
        pipelined period and static power is charged over that period
        (costs_schedule.pdfa_split_costs, as the analytic figures do)."""
        alg = self._setup.algorithm
        order = sorted(step.per_layer)
        has_bw = any(s != "ff" for li in order for s in step.per_layer[li])
        lat = 0
        sums = None
        if alg == "pipelined_dfa" and has_bw:
            costed, lat, _ = pdfa_split_costs([step.works[li] for li in order], self.preset)
            step.per_layer = {
                li: {s: [c] for s, c in d.items()} for li, d in zip(order, costed, strict=True)
            }
        elif order:
            cyc = []
            sums = {}
            for li in order:
                d = sums[li] = step.layer_stage(li)
                g = d.get  # a missing stage: the zero record's 0 cycles
                cyc.append(
                    LayerCycles(
                        g("ff", _NO_WORK).cycles,
                        g("ep", _NO_WORK).cycles,
                        g("wg", _NO_WORK).cycles,
                        g("update", _NO_WORK).cycles,
                    )
                )
            if alg == "dfa" and has_bw:
                lat = dfa_latency(cyc, ep_parallel=False)
            else:
                lat = bp_latency(cyc)
        stages = step.stages(sums)
        for s in _STAGES:
            self._total[s] = _sum_counters([self._total[s], stages[s]])
        self._latency_cycles += lat
        mem = self._memory(batch)
        for k, v in mem.items():
            self._mem_peak[k] = max(self._mem_peak.get(k, 0), v)
        return counters_dict(stages, self.preset, memory_peak_bytes=mem, latency_cycles=lat)

    # ------------------------------------------------------------------ input checks
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype.kind not in "fiu":
            raise EngineError(Status.UNSUPPORTED_FORMAT, f"input dtype {a.dtype} is not numeric")
        if a.ndim != len(self.input_shape) + 1 or a.shape[1:] != self.input_shape:
            raise EngineError(
                Status.BAD_SHAPE,
                f"input shape {a.shape}; expected (batch, {', '.join(map(str, self.input_shape))})",
            )
        if not 1 <= a.shape[0] <= MAX_BATCH:
            raise EngineError(Status.LIMIT, f"batch {a.shape[0]}; accepted 1..{MAX_BATCH}")
        return np.ascontiguousarray(a, np.float32)

    def _check_target(self, t: np.ndarray, batch: int) -> np.ndarray:
        a = np.asarray(t)
        if self._setup.loss == "softmax_cross_entropy":
            n = math.prod(self.output_shape)
            if len(self.output_shape) != 1:
                raise EngineError(Status.BAD_SHAPE, "cross-entropy needs a 1-D output per sample")
            if a.dtype.kind not in "iu" or a.shape != (batch,):
                raise EngineError(
                    Status.BAD_SHAPE,
                    f"cross-entropy targets must be integer class indices of shape ({batch},), "
                    f"got {a.dtype} {a.shape}",
                )
            # the ufuncs' reductions (what ndarray.min and max call, without their wrappers)
            if a.size and (np.minimum.reduce(a) < 0 or np.maximum.reduce(a) >= n):
                raise EngineError(Status.BAD_REQUEST, f"class indices must be in 0..{n - 1}")
            return a.astype(np.int64)
        if a.dtype.kind not in "fiu" or a.shape != (batch, *self.output_shape):
            raise EngineError(
                Status.BAD_SHAPE,
                f"MSE targets must be numbers of shape {(batch, *self.output_shape)}, got "
                f"{a.dtype} {a.shape}",
            )
        return a.astype(np.float32)

    # ------------------------------------------------------------------ public passes
    def forward(self, x: np.ndarray, *, keep_activations: bool = False) -> np.ndarray:
        """Outputs (float32) of a batch; keep_activations keeps what BACKWARD needs."""
        token = pin_threads()  # MICROTRAIN_THREADS read once per call, not per kernel
        try:
            return self._forward_call(x, keep_activations)
        finally:
            unpin_threads(token)

    def _forward_call(self, x: np.ndarray, keep_activations: bool) -> np.ndarray:
        xs = self._check_x(x)
        step = _Step()
        y, cache = self._forward(xs, step, laps=False)
        self._finish(step, xs.shape[0])
        if keep_activations:  # a forward without keeping leaves earlier kept activations
            self._kept = {"cache": cache, "pass": self._pass - 1, "y": y}
        return y

    def train_step(self, x: np.ndarray, target: np.ndarray) -> StepResult:
        """FF, loss, EP (BP or DFA), WG and update on one batch."""
        token = pin_threads()
        try:
            return self._train_step_call(x, target)
        finally:
            unpin_threads(token)

    def _train_step_call(self, x: np.ndarray, target: np.ndarray) -> StepResult:
        xs = self._check_x(x)
        t = self._check_target(target, xs.shape[0])
        step = _Step()
        y, cache = self._forward(xs, step, laps=True)
        loss, grad = self._loss(y, t)
        self._backward(grad, cache, self._pass - 1, step)
        self._kept = None
        return StepResult(loss, self._finish(step, xs.shape[0]), y)

    def backward(self, output_error: np.ndarray) -> StepResult:
        """EP, WG and update from dLoss/dOutput of the last forward(keep_activations=True)."""
        token = pin_threads()
        try:
            return self._backward_call(output_error)
        finally:
            unpin_threads(token)

    def _backward_call(self, output_error: np.ndarray) -> StepResult:
        if self._kept is None:
            raise EngineError(
                Status.BAD_REQUEST, "BACKWARD needs a preceding FORWARD with keep_activations"
            )
        y = self._kept["y"]
        e = np.asarray(output_error)
        if e.dtype.kind not in "fiu" or e.shape != y.shape:
            raise EngineError(
                Status.BAD_SHAPE, f"output error must be numbers of shape {y.shape}, got {e.shape}"
            )
        step = _Step()
        self._backward(e.astype(np.float32), self._kept["cache"], self._kept["pass"], step)
        self._kept = None
        return StepResult(None, self._finish(step, y.shape[0]), None)

    # ------------------------------------------------------------------ loss
    def _loss(self, y: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        if self._setup.loss == "softmax_cross_entropy":
            # the ufuncs' reductions without the ndarray-method wrappers (max, sum, mean are
            # maximum.reduce, add.reduce and add.reduce / n): the same float64 operations
            z = y.astype(np.float64)
            z -= np.maximum.reduce(z, axis=1, keepdims=True)
            lse = np.log(np.add.reduce(np.exp(z), axis=1))
            p = np.exp(z - lse[:, None])
            n = y.shape[0]
            rows = np.arange(n)
            loss = float(np.add.reduce(lse - z[rows, t]) / n)
            p[rows, t] -= 1.0
            p /= n
            return loss, p.astype(np.float32)
        d = y.astype(np.float64) - t.astype(np.float64)
        return float(np.mean(d * d)), (2.0 * d / d.size).astype(np.float32)

    # ------------------------------------------------------------------ forward
    def _weights_q(self, x: Layer, pass_no: int) -> tuple[QTensor, QTensor | None]:
        i = x.index
        w = self._policy.quantize(self._params[f"{i}.weight"], i, "weights", PART_WEIGHT, pass_no)
        b = None
        if x.bias:
            b = self._policy.quantize(self._params[f"{i}.bias"], i, "weights", PART_BIAS, pass_no)
        return w, b

    def _forward(self, x: np.ndarray, step: _Step, *, laps: bool) -> tuple[np.ndarray, list[Any]]:
        pass_no = self._pass
        self._pass += 1
        cache: list[Any] = []
        for layer in self.layers:
            kind = layer.kind
            if kind in ("linear", "conv2d"):
                y, c = self._ff_param(layer, x, pass_no, step, laps)
            elif kind == "relu":
                y, pos = relu(x)  # np.where(x > 0, x, 0) and x > 0 in one pass
                c = {"pos": pos}
            elif kind == "leaky_relu":
                c = {"pos": x > 0}
                y = np.where(c["pos"], x, x * np.float32(layer.slope)).astype(np.float32)
            elif kind in ("max_pool2d", "avg_pool2d"):
                y, arg = pool_forward(x, layer)
                c = {"arg": arg}
            else:
                y, c = x.reshape(x.shape[0], -1), {}
            cache.append(c)
            x = y
        return x, cache

    def _ff_param(
        self, layer: Layer, x: np.ndarray, pass_no: int, step: _Step, laps: bool
    ) -> tuple[np.ndarray, dict[str, Any]]:
        i, k, pol = layer.index, self._k, self._policy
        xa = pol.quantize(x, i, "activations", PART_DATA, pass_no)
        w, b = self._weights_q(layer, pass_no)
        nb = x.shape[0]
        so = None
        cols_c = None
        b_added = False
        bv = None if b is None else b.values
        if layer.kind == "linear":
            p_nat = xa.zeros_source  # counted by zeros only: codes or values
            if xa.is_int and w.is_int:
                y, so = self._gemm_q(xa.c, w.c, xa.frac + w.frac, False, True)
            else:
                # W (out x in) read transposed by the kernel (it packs B panels anyway)
                y = k.gemm_float(xa.values, w.values, trans_a=False, trans_b=True)
        else:
            o = layer.out_shape[0]
            if xa.is_int and w.is_int:
                # datapath.conv2d's GEMM (im2col of the codes times W^T), computed as its
                # transpose W . cols^T (the same sums; the kernel's wide side is then the
                # n * ho * wo positions, not the few output channels) and rescaled in the
                # kernel; the codes' im2col is kept for WG, and counted by its zeros (those
                # of the values: xa.zeros_source)
                cols_c = p_nat = im2col(xa.c, layer)
                yt, so = self._gemm_q(w.c.reshape(o, -1), cols_c, xa.frac + w.frac, False, True)
                # moved to NCHW with the bias added in one pass (the same float32 additions)
                y = to_nchw_bias(yt, nb, o, layer.out_shape[1:], False, bv)
            else:
                p_nat = im2col(xa.values, layer)
                y2 = k.gemm_float(p_nat, w.values.reshape(o, -1), trans_a=False, trans_b=True)
                y = to_nchw_bias(y2, nb, o, layer.out_shape[1:], True, bv)
            b_added = True
        if b is not None and not b_added:
            shape = (1, -1) + (1,) * (y.ndim - 2)
            y = np.add(y, b.values.reshape(shape), dtype=np.float32)
        if laps and i in pol.laps:
            xf = x if layer.kind == "linear" else im2col(x, layer)
            wf = self._params[f"{i}.weight"].reshape(layer.out_shape[0], -1)
            high = xf.astype(np.float64) @ wf.astype(np.float64).T
            o = layer.out_shape[0]
            ylow = y if layer.kind == "linear" else y.transpose(0, 2, 3, 1).reshape(-1, o)
            ylow = ylow.astype(np.float64)
            if b is not None:
                ylow = ylow - b.values.astype(np.float64)
            pol.observe_laps(i, high, ylow)
        w2 = w.zeros_source.reshape(layer.out_shape[0], -1)
        q_nat = w2.T
        keep = self._setup.keep.get(f"{i}.weight")
        pr = None if keep is None else ~keep.reshape(layer.out_shape[0], -1).T
        skips = self.preset.skips("ff")
        # zeros per row and column of the input and of the weights, kept for EP and WG (the
        # weights' from the update that wrote them when they are the fp32 master weights)
        xz = zero_counts(p_nat)
        wz = self._wz.get(f"{i}.weight") if w.raw is self._params[f"{i}.weight"] else None
        if wz is None:
            wz = zero_counts(w2)
        cnt = count_macs(
            p_nat,
            q_nat,
            a_is_p=True,
            skips=skips,
            stage="ff",
            pruned_b=pr,
            zeros_p=xz[1],
            zeros_q=wz[1],
        )
        sl = so if (so is not None and "zero_slice" in skips) else None
        wbytes = self._weight_fetch_bytes(layer, w)
        ibytes = _bytes(x.size, xa.bits)
        obytes = _bytes(y.size, xa.bits)
        work = stage_work(
            stage="ff",
            **cnt,
            slice_ops=sl,
            a_bits=xa.bits,
            b_bits=w.bits,
            dram_read_bytes=wbytes + ibytes,
            dram_write_bytes=obytes,
            sram_read_bytes=wbytes + ibytes,
            sram_write_bytes=obytes,
        )
        step.add(i, work, "ff", self.preset)
        cols = p_nat if layer.kind == "conv2d" else None
        return y, {"xa": xa, "w": w, "cols": cols, "cols_c": cols_c, "xz": xz, "wz": wz}

    def _gemm_q(
        self, a: np.ndarray, b: np.ndarray, frac: int, trans_a: bool, trans_b: bool
    ) -> tuple[np.ndarray, int]:
        """The integer GEMM of two code matrices rescaled by 2^-frac to float32 values, and
        its slice_ops: rescale(gemm_int(...)), in one kernel call where frac allows."""
        if -64 <= frac <= 126:
            return self._k.gemm_int_scaled(a, b, frac, trans_a=trans_a, trans_b=trans_b)
        acc, so = self._k.gemm_int(a, b, trans_a=trans_a, trans_b=trans_b)
        return rescale(acc, frac), so

    # ------------------------------------------------------------------ backward
    def _relu_mask_before(
        self, idx: int, cache: list[Any], shape: tuple[int, ...]
    ) -> np.ndarray | None:
        """Zero mask of the ReLU right before layer ``idx`` (flatten layers skipped), as
        an array of ``shape``; None when no ReLU precedes directly."""
        j = idx - 1
        while j >= 0 and self.layers[j].kind == "flatten":
            j -= 1
        if j < 0 or self.layers[j].kind != "relu":
            return None
        return ~cache[j]["pos"].reshape(shape)

    def _backward(self, e: np.ndarray, cache: list[Any], pass_no: int, step: _Step) -> None:
        """Walk the layers from the last one: BP propagates the error layer by layer; DFA
        computes every hidden layer's error from the output error once the last
        parameterised layer is reached and re-enters the walk at each delivery point."""
        setup = self._setup
        plays = [x for x in self.layers if x.has_params]
        trainable_layers = {int(n.split(".")[0]) for n in setup.trainable}
        grads: dict[str, QTensor] = {}
        dfa = setup.algorithm != "bp"
        if not plays:
            return
        last = plays[-1].index
        deliver: dict[int, np.ndarray] = {}
        active = True
        for layer in reversed(self.layers):
            i = layer.index
            if i in deliver:
                e, active = deliver.pop(i), True
            if not active:
                if deliver:
                    continue
                break
            c = cache[i]
            if layer.has_params:
                eq = self._policy.quantize(e, i, "errors", PART_DATA, pass_no)
                # zeros per row and column of the error matrix (rows n or (n, ho, wo),
                # columns o), shared by WG and EP
                em = _error_matrix(eq.zeros_source)
                ez = zero_counts(em)
                if i in trainable_layers:
                    # the values' matrix is that one when the zeros come from the values
                    vm = em if eq.codes is None else None
                    self._wg(layer, eq, c, pass_no, step, grads, ez, vm)
                if dfa:
                    if i == last:
                        deliver = self._dfa_errors(eq, cache, step, trainable_layers)
                    active = False
                elif any(j < i for j in trainable_layers):
                    e = self._ep(layer, eq, c, cache, step, ez)
                else:
                    active = False
            elif layer.kind == "relu":
                e = relu_backward(np.asarray(e, np.float32), c["pos"])
            elif layer.kind == "leaky_relu":
                e = np.where(c["pos"], e, e * np.float32(layer.slope)).astype(np.float32)
            elif layer.kind in ("max_pool2d", "avg_pool2d"):
                e = pool_backward(e, layer, c["arg"])
            else:
                e = e.reshape(e.shape[0], *layer.in_shape)
        self._update(grads, pass_no, step)

    def _dfa_errors(
        self, eq: QTensor, cache: list[Any], step: _Step, trainable: set[int]
    ) -> dict[int, np.ndarray]:
        """DFA: the error delivered at the input of the next parameterised layer of every
        trainable hidden layer l: e_out . B_l^T (see engine_setup), keyed by the index of
        the layer whose output it is."""
        setup, k = self._setup, self._k
        nb = eq.values.shape[0]
        e2v = eq.values.reshape(nb, -1)
        out: dict[int, np.ndarray] = {}
        plays = [x for x in self.layers if x.has_params]
        for a, nxt in itertools.pairwise(plays):
            if a.index not in trainable:
                continue
            shape = (int(np.prod(nxt.in_shape)), e2v.shape[1])
            bm = setup.feedback_mats.get(a.index)
            if bm is None:
                bm = feedback_matrix(
                    setup.feedback, setup.feedback_seed, a.index, shape, setup.feedback_density
                )
            bq = self._feedback_q(bm, a.index)
            so = None
            if eq.is_int and bq.is_int:
                d, so = self._gemm_q(eq.c.reshape(nb, -1), bq.c, eq.frac + bq.frac, False, True)
            else:
                d = k.gemm_float(e2v, bq.values, trans_a=False, trans_b=True)
            mask = self._relu_mask_before(nxt.index, cache, d.shape)
            skips = self.preset.skips("ep")
            cnt = count_macs(e2v, bq.values.T, a_is_p=True, skips=skips, stage="ep", out_skip=mask)
            sl = None
            if so is not None and "zero_slice" in skips:
                sk = mask if "output_zero" in skips else None
                sl = so - masked_slice_ops(
                    eq.c.reshape(nb, -1),
                    bq.c.T,
                    sk,
                )
            fb_b = _bytes(bm.size, bq.bits) if setup.feedback_stored else 0
            work = stage_work(
                stage="ep",
                **cnt,
                slice_ops=sl,
                a_bits=eq.bits,
                b_bits=bq.bits,
                dram_read_bytes=fb_b + _bytes(e2v.size, eq.bits),
                dram_write_bytes=_bytes(d.size, eq.bits),
                sram_read_bytes=_bytes(bm.size, bq.bits) + _bytes(e2v.size, eq.bits),
                sram_write_bytes=_bytes(d.size, eq.bits),
            )
            step.add(a.index, work, "ep", self.preset)
            out[nxt.index - 1] = d.reshape(nb, *nxt.in_shape)
        return out

    def _feedback_q(self, bm: np.ndarray, layer: int) -> QTensor:
        """B_l in the WEIGHTS format of layer l, scale from its amax, nearest rounding."""
        e = self._policy.entry(layer, "weights")
        fmt, k = e.format, self._k
        if fmt == "fp32":
            return QTensor(bm, fmt)
        if is_int_format(fmt):
            p = k.scale_params(bm, fmt)
            frac = -int(p["shared_exp"]) if fmt == "flex16" else int(p["frac_bits"])
            codes = k.encode(bm, fmt, **p)
            return QTensor(rescale(codes, frac), fmt, codes, frac)
        params: dict[str, Any] = {}
        if fmt == "hfp8":
            params = {"bias": e.exp_bias, "stage": e.hfp8_stage}
        elif fmt == "fp8-seb":
            params = k.scale_params(bm, fmt)
        return QTensor(k.quantize(bm, fmt, **params), fmt)

    def _ep(
        self,
        layer: Layer,
        eq: QTensor,
        c: dict[str, Any],
        cache: list[Any],
        step: _Step,
        ez: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """BP error propagation through W transposed: the error at the layer's input."""
        k, w, nb = self._k, c["w"], eq.zeros_source.shape[0]
        i = layer.index
        o = layer.out_shape[0]
        so = None
        if layer.kind == "linear":
            p_nat, q_nat = eq.zeros_source, w.zeros_source
            if eq.is_int and w.is_int:
                d, so = self._gemm_q(eq.c, w.c, eq.frac + w.frac, False, False)
            else:
                d = k.gemm_float(eq.values, w.values, trans_a=False, trans_b=False)
            mask = self._relu_mask_before(i, cache, d.shape)
            counted = None
            p_codes, q_codes = eq.codes, w.codes
        else:
            p_nat = np.ascontiguousarray(eq.values.transpose(0, 2, 3, 1)).reshape(-1, o)
            q_nat = w.values.reshape(o, -1)
            if eq.is_int and w.is_int:
                acc, so = k.conv2d_input_grad(
                    eq.c, w.c, (layer.in_shape[1], layer.in_shape[2]), layer.stride, layer.padding
                )
                d = rescale(acc, eq.frac + w.frac)
            else:
                dcols = k.gemm_float(p_nat, q_nat, trans_a=False, trans_b=False)
                d = col2im(dcols, layer, nb)
            counted = None
            if layer.padding != (0, 0):
                ones = np.ones((1, *layer.in_shape), np.float32)
                counted = np.tile(im2col(ones, layer) != 0, (nb, 1))
            m = self._relu_mask_before(i, cache, (nb, *layer.in_shape))
            mask = None if m is None else im2col(m.astype(np.float32), layer) != 0
            p_codes = (
                None
                if eq.codes is None
                else np.ascontiguousarray(eq.codes.transpose(0, 2, 3, 1)).reshape(-1, o)
            )
            q_codes = None if w.codes is None else w.codes.reshape(o, -1)
        keep = self._setup.keep.get(f"{i}.weight")
        pr = None if keep is None else ~keep.reshape(o, -1)
        skips = self.preset.skips("ep")
        cnt = count_macs(
            p_nat,
            q_nat,
            a_is_p=True,
            skips=skips,
            stage="ep",
            counted=counted,
            out_skip=mask,
            pruned_b=pr,
            zeros_p=ez[1],
            zeros_q=c["wz"][0],
        )
        sl = None
        if so is not None and "zero_slice" in skips:
            sk = mask if "output_zero" in skips else None
            if sk is not None and counted is not None:
                sk = sk & counted
            sl = so - masked_slice_ops(p_codes, q_codes, sk)
        wbytes = self._weight_fetch_bytes(layer, w)
        work = stage_work(
            stage="ep",
            **cnt,
            slice_ops=sl,
            a_bits=eq.bits,
            b_bits=w.bits,
            dram_read_bytes=wbytes + _bytes(eq.size, eq.bits),
            dram_write_bytes=_bytes(d.size, eq.bits),
            sram_read_bytes=wbytes + _bytes(eq.size, eq.bits),
            sram_write_bytes=_bytes(d.size, eq.bits),
            transposed_read=wbytes > 0,
            transposed_bytes=wbytes,
        )
        step.add(i, work, "ep", self.preset)
        return d

    def _wg(
        self,
        layer: Layer,
        eq: QTensor,
        c: dict[str, Any],
        pass_no: int,
        step: _Step,
        grads: dict[str, QTensor],
        ez: tuple[np.ndarray, np.ndarray],
        vm: np.ndarray | None = None,
    ) -> None:
        """Weight and bias gradients of one layer (those of trainable parameters only),
        quantized with its GRADIENTS entry. The bias gradient is a sum (no MACs counted).
        ``vm``: the error values as the GEMM operand (_error_matrix), when the caller has it."""
        i, o = layer.index, layer.out_shape[0]
        if layer.bias and f"{i}.bias" in self._setup.trainable:
            # the sums as add.reduce (what ndarray.sum calls, without its wrapper)
            src = (
                eq.values
                if layer.kind == "linear"
                else np.add.reduce(eq.values, axis=(2, 3), dtype=np.float64)
            )
            db = np.add.reduce(np.asarray(src, np.float64), axis=0).astype(np.float32)
            grads[f"{i}.bias"] = self._policy.quantize(db, i, "gradients", PART_BIAS, pass_no)
        if f"{i}.weight" not in self._setup.trainable:
            return
        k, xa = self._k, c["xa"]
        so = None
        if layer.kind == "linear":
            p_nat, q_nat = eq.zeros_source.T, xa.zeros_source
            if eq.is_int and xa.is_int:
                dw, so = self._gemm_q(eq.c, xa.c, eq.frac + xa.frac, True, False)
            else:
                dw = k.gemm_float(eq.values, xa.values, trans_a=True, trans_b=False)
            p_codes, q_codes = (None if eq.codes is None else eq.codes.T), xa.codes
        else:
            dy2 = _error_matrix(eq.values) if vm is None else vm
            p_nat, q_nat = dy2.T, c["cols"]
            if eq.is_int and xa.is_int:
                # datapath.conv2d_weight_grad's GEMM (dy as O x (n, ho, wo) times the
                # input's im2col) rescaled in the kernel
                cols_c = c["cols_c"] if c["cols_c"] is not None else im2col(xa.c, layer)
                dyc = np.ascontiguousarray(eq.c.transpose(1, 0, 2, 3)).reshape(o, -1)
                dw2, so = self._gemm_q(dyc, cols_c, eq.frac + xa.frac, False, False)
                dw = dw2.reshape(layer.weight_shape)
            else:  # the values' im2col ("cols" holds the codes' when FF took the integer path)
                cols = c["cols"] if c["cols_c"] is None else im2col(xa.values, layer)
                dw = k.gemm_float(dy2, cols, trans_a=True, trans_b=False).reshape(
                    layer.weight_shape
                )
            p_codes = q_codes = None  # built below only when a slice count needs them
        keep = self._setup.keep.get(f"{i}.weight")
        prune_out = None if keep is None else ~keep.reshape(o, -1)
        skips = self.preset.skips("wg")
        cnt = count_macs(
            p_nat,
            q_nat,
            a_is_p=False,
            skips=skips,
            stage="wg",
            out_skip=prune_out,
            out_reason="pruned",
            zeros_p=ez[0],
            zeros_q=c["xz"][0],
        )
        sl = None
        if so is not None and "zero_slice" in skips:
            sk = prune_out if "pruned" in skips else None
            if sk is not None and layer.kind == "conv2d":
                p_codes = np.ascontiguousarray(eq.c.transpose(1, 0, 2, 3)).reshape(o, -1)
                q_codes = im2col(xa.c, layer)
            sl = so - masked_slice_ops(p_codes, q_codes, sk)
        gq = self._policy.quantize(
            dw.reshape(layer.weight_shape), i, "gradients", PART_WEIGHT, pass_no
        )
        grads[f"{i}.weight"] = gq
        # G skip: the gradients of pruned weights are not computed, so not written
        n_grad = dw.size
        if prune_out is not None and "pruned" in skips:
            n_grad -= int(prune_out.sum())
        gbytes = _bytes(n_grad, gq.bits)
        work = stage_work(
            stage="wg",
            **cnt,
            slice_ops=sl,
            a_bits=xa.bits,
            b_bits=eq.bits,
            dram_read_bytes=_bytes(xa.size, xa.bits) + _bytes(eq.size, eq.bits),
            sram_read_bytes=_bytes(xa.size, xa.bits) + _bytes(eq.size, eq.bits),
            sram_write_bytes=gbytes,
        )
        step.add(i, work, "wg", self.preset)

    # ------------------------------------------------------------------ update
    def _update(self, grads: dict[str, QTensor], pass_no: int, step: _Step) -> None:
        """SGD with momentum and weight decay (PyTorch's rule): d = g + wd*w; m = mu*m + d;
        w = w - lr*m, then MOMENTUM/MASTER_WEIGHTS quantization; frozen and pruned elements
        keep their value (pruned ones stay zero). With both of those classes in fp32 (the
        quantization is the identity) the step is one in-place kernel call per parameter."""
        s = self._setup
        skips = self.preset.skips("update")
        per_layer: dict[int, list[int]] = {}
        for n, gq in grads.items():
            li = int(n.split(".")[0])
            plan = self._upd_plan[n]
            if self._fp32_update(li):
                m = None
                if s.momentum > 0:
                    m = self._momentum.get(n)
                    if m is None:
                        m = self._momentum[n] = np.zeros_like(self._params[n])
                if plan.update is None and plan.keep is None and n.endswith(".weight"):
                    # the update also counts the new weights' zeros for the next FF and EP
                    self._wz[n] = self._k.sgd_update_zc(
                        self._params[n],
                        gq.values,
                        lr=s.lr,
                        momentum=m,
                        mu=s.momentum,
                        weight_decay=s.weight_decay,
                    )
                else:
                    self._wz.pop(n, None)
                    self._k.sgd_update(
                        self._params[n],
                        gq.values,
                        lr=s.lr,
                        momentum=m,
                        mu=s.momentum,
                        weight_decay=s.weight_decay,
                        update=plan.update,
                        keep=plan.keep,
                    )
            else:
                self._wz.pop(n, None)
                self._update_quantized(n, gq, li, pass_no)
            t = per_layer.setdefault(li, [0, 0, 0])
            t[0] += plan.ntrain
            t[1] += plan.npruned
            t[2] = self._fmt_bits(li, "master_weights")
        preset = self.preset
        if self._update_costs[0] is not preset:
            self._update_costs = (preset, {})
        memo = self._update_costs[1]
        for li, (ntrain, npruned, wbits) in per_layer.items():
            pruned = 2 * npruned if "pruned" in skips else 0
            kept = ntrain - npruned * ("pruned" in skips)
            wb = _bytes(kept, wbits)
            # momentum at its own format's width (it was counted at the weights' width)
            mb = _bytes(kept, self._fmt_bits(li, "momentum")) if s.momentum > 0 else 0
            gb = _bytes(kept, self._fmt_bits(li, "gradients"))
            key = (li, ntrain, pruned, wbits, wb, mb, gb)
            known = memo.get(key)
            if known is not None:
                step.add_costed(li, known[0], "update", known[1])
                continue
            work = StageWork(
                "update",
                2 * ntrain,
                2 * ntrain - pruned,
                pruned=pruned,
                a_bits=wbits,
                b_bits=wbits,
                dram_read_bytes=wb + mb,
                dram_write_bytes=wb + mb,
                sram_read_bytes=wb + mb + gb,
                sram_write_bytes=wb + mb,
            )
            costs = stage_costs(work, preset)
            if len(memo) < 4096:
                memo[key] = (work, costs)
            step.add_costed(li, work, "update", costs)

    def _fp32_update(self, layer: int) -> bool:
        pol = self._policy
        return (
            pol.entry(layer, "momentum").format == "fp32"
            and pol.entry(layer, "master_weights").format == "fp32"
        )

    def _update_quantized(self, n: str, gq: QTensor, li: int, pass_no: int) -> None:
        """The update of one parameter whose momentum or master weights are quantized: the
        same float32 steps as sgd_update, with MOMENTUM quantized before it is used and
        MASTER_WEIGHTS after."""
        s = self._setup
        lr, mu, wd = np.float32(s.lr), np.float32(s.momentum), np.float32(s.weight_decay)
        part = PART_WEIGHT if n.endswith(".weight") else PART_BIAS
        w = self._params[n]
        d = (gq.values + wd * w).astype(np.float32)
        new_m = None
        if s.momentum > 0:
            m_old = self._momentum.get(n, np.zeros_like(w))
            m = (mu * m_old + d).astype(np.float32)
            mq = self._policy.quantize(m, li, "momentum", part, pass_no)
            new_m = mq.values
            d = mq.values
        wn = (w - lr * d).astype(np.float32)
        wn = self._policy.quantize(wn, li, "master_weights", part, pass_no).values
        tm = s.trainable[n]
        keep = s.keep.get(n)
        upd = tm if keep is None else (tm & keep)
        new_w = np.where(upd, wn, w).astype(np.float32)
        if keep is not None:
            new_w = np.where(keep, new_w, np.float32(0)).astype(np.float32)
        self._params[n] = new_w
        if new_m is not None:
            self._momentum[n] = np.where(upd, new_m, self._momentum.get(n, 0)).astype(np.float32)
