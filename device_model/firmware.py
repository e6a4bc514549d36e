"""The device end of the protocol at the message layer: a sans-I/O firmware object.

``Firmware.receive(message)`` takes one request message (what the link delivered) and returns
the list of response messages: always exactly one, the request's own response or ERROR with a
specific ``Status`` and a detail text saying what was wrong and what is accepted. The firmware
never raises and never crashes on any input: every exception inside a handler becomes an ERROR
(INTERNAL for unexpected ones), and every handler validates the whole request before it
changes any state, so a refused request leaves the device as it was (except where the protocol
says a refusal discards something: TENSOR_END with a CRC mismatch drops the tensor).

State it holds: the tensor store (host uploads, FORWARD outputs, weight snapshots), the model
(an ``Engine`` built by DEFINE_MODEL), its training configuration, the step count, the
authentication state, and a cache of recent responses by request id (exactly-once commands: a
duplicate request, same id and same bytes, is answered from the cache without executing again;
a different request reusing an id is executed and replaces the entry). Device memory is the
preset's ``device_memory_bytes``: the engine's memory plus the stored tensors must fit in it.

Resource limits, each refused with its own status before anything changes (HELLO reports them
as chip parameters): one tensor at most ``max_tensor_bytes`` (TENSOR_TOO_LARGE), at most
``max_tensors`` tensors under host ids (TOO_MANY_TENSORS), all of them within device memory
(OUT_OF_MEMORY), at most the preset's ``max_layers`` layers per model (TOO_MANY_LAYERS), and at
most ``max_pending`` answers waiting for the host's acknowledgement: the link end stops taking
requests there and its credits hold the host back; requests a host sends anyway are answered
TOO_MANY_PENDING (``receive``'s ``pending``; see ``device_model.firmware_link``).

The link end that turns bytes into messages and back is ``device_model.firmware_link``.
"""

from __future__ import annotations

import functools
import hmac
import importlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from device_model.config import ChipPreset, get_preset
from device_model.firmware_model import ModelPlan, param_name, parse_param_name, plan_model
from device_model.firmware_tensors import (
    POLICY_FORMATS,
    STORABLE,
    FirmwareError,
    TensorStore,
)
from protocol import messages as m
from protocol.dtypes import DType
from protocol.framing import DEFAULT_PAYLOAD
from protocol.link import DEFAULT_WINDOW, link_keys
from protocol.messages import (
    ALL_LAYERS,
    AUTH_CHALLENGE_SIZE,
    DEVICE_TENSOR_ID_BASE,
    NO_REQUEST_ID,
    READ_OVERHEAD,
    Algorithm,
    Feature,
    ForwardFlags,
    Loss,
    Opcode,
    ParamKind,
    ResetScope,
    TrainableMode,
)
from protocol.messages_counters import (
    COUNTER_FIELDS,
    counters_from_tree,
    empty_counters,
    plain_counters,
)
from protocol.status import MessageError, Status

FIRMWARE_NAME = "microtrain-emu 0.1.0"
#: Largest batch a FORWARD / TRAIN_STEP takes (issue 4: batch sizes 1 to 256).
MAX_BATCH = 256
#: Responses kept for duplicate request ids.
DEFAULT_CACHE_SIZE = 64
#: A cached response is stored with its request's bytes (a reference to the message the link
#: delivered: no copy, no digest) and a duplicate is told from a reused id by comparing bytes
#: (a memcmp, and only when an id repeats). Requests up to this size are always kept.
CACHE_RAW_MAX = 16384
#: Largest tensor, in wire bytes, the device takes or makes (uploads, FORWARD outputs): 16 MiB
#: (assumption: one DMA descriptor with a 24-bit length field moves a tensor; a quarter of the
#: presets' 64 MiB device memory). Weight snapshots of GET_WEIGHTS are views of engine memory,
#: which device memory already bounds, and are exempt.
MAX_TENSOR_BYTES = 1 << 24
#: Tensors the device holds under host ids (uploads and FORWARD outputs): 1024 (assumption: a
#: 1024-entry tensor descriptor table in device SRAM). Zero-byte tensors count too, so the
#: table, not device memory, bounds what a stream of empty uploads costs.
MAX_TENSORS = 1024
#: Answers the device queues before the host's link acknowledges them: 256 (assumption: a
#: transmit queue of 256 response descriptors, 32 windows at the default window of 8). A host
#: reading its answers stays within a window without faults and reached 147-235 with 5% frame
#: loss or combined faults while pipelining a 1 MiB read; at the limit the device link pauses
#: the host by credits; a request taken anyway is answered TOO_MANY_PENDING, not executed.
MAX_PENDING = 256
#: Largest request message the device's link reassembles: 8 MiB (assumption: the firmware
#: receives a request into device memory; a TRAIN_STEP_INLINE of an MDNet batch of 256 (4.7 MB
#: of fp32 input) fits, so a training step is one request up to that size). Every request of the
#: protocol fits, at its schema maxima (the largest, TRAIN_CONFIG with 4096 policy entries and
#: 2 x 65535 masks, is 962,603 bytes); TENSOR_DATA chunks and inline tensors must fit it. A longer
#: message is discarded by the link unanswered (``Link.stats["oversize_messages"]``). HELLO
#: reports it (``max_request_bytes``).
MAX_REQUEST_BYTES = 8 << 20
#: Bytes of cached requests longer than CACHE_RAW_MAX the cache keeps: 16 MiB, two of the
#: largest requests. When a new long request takes the total above it, the oldest long entries
#: leave the cache (response and request together); the newest entry always stays. Before,
#: each long request was kept as its SHA-256 (1.3 ms for the 2.4 MB of an MDNet step); a
#: duplicate is a request the host replays because its answer had not arrived, i.e. one of
#: the last requests it sent, which this keeps (a host waits for each training step's answer
#: and pipelines at most an upload's chunks).
CACHE_LONG_BYTES = 2 * MAX_REQUEST_BYTES
#: Statuses that change no state and may succeed later: not cached, so a retry executes.
_TRANSIENT = frozenset({Status.BUSY, Status.TOO_MANY_PENDING})
_ALGORITHM_NAMES = {"bp": Algorithm.BP, "dfa": Algorithm.DFA, "pdfa": Algorithm.PIPELINED_DFA}

#: Builds an engine: (input_shape, layer specs, preset, init_seed=, weights=) -> engine.
EngineFactory = Callable[..., Any]


@functools.cache
def _schema_hash() -> bytes:
    # The definitions do not change while the process runs; rendering them takes ~20 ms.
    return m.schema_hash()


def _real_engine_modules() -> Any:
    # Imported late: the firmware works (tensors, HELLO, ...) before any model exists.
    return importlib.import_module("device_model.engine")


def default_engine_factory(
    input_shape: tuple[int, ...],
    layers: list[tuple[str, dict[str, Any]]],
    preset: ChipPreset,
    *,
    init_seed: int,
    weights: dict[str, np.ndarray] | None,
) -> Any:
    """Build a ``device_model.engine.Engine`` from the firmware's validated layer table."""
    eng = _real_engine_modules()
    specs = [eng.LayerSpec(kind, **kw) for kind, kw in layers]
    return eng.Engine(input_shape, specs, preset, init_seed=init_seed, weights=weights)


def default_config_factory(body: dict[str, Any], masks: dict[int, np.ndarray]) -> Any:
    """``EngineConfig.from_message`` of a TRAIN_CONFIG body, mask tensor ids resolved."""
    return _real_engine_modules().EngineConfig.from_message(body, masks)


def _engine_status(exc: BaseException) -> tuple[Status, str] | None:
    """(status, detail) of an EngineError-like exception (a ValueError with a Status)."""
    status = getattr(exc, "status", None)
    if isinstance(status, Status) and status != Status.OK:
        return status, str(getattr(exc, "detail", exc))
    return None


def zero_counters() -> dict[str, Any]:
    """Counters with every field present and zero (nothing counted yet)."""
    out = empty_counters()
    for path in COUNTER_FIELDS:
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node[p]
        node[leaf] = 0.0 if leaf in ("energy_pj", "latency_s") else 0
    return out


def normalize_counters(tree: Any) -> dict[str, Any]:
    """The engine's counters in the wire schema: every known leaf copied as a plain number,
    missing leaves None (the backend cannot count them), unknown keys ignored."""
    return counters_from_tree(tree)


class Firmware:
    """The emulated device at the message layer (see the module docstring).

    ``preset``: a ChipPreset or its name. ``seed``: seed of the device's own randomness (the
    link end's session epochs; auth challenges always come from the OS's CSPRNG). ``key``:
    the authentication key; with a key, every request but
    HELLO/AUTH answers NOT_AUTHENTICATED until an AUTH proves it. ``engine_factory`` /
    ``config_factory`` build the engine and its training configuration (tests inject fakes).
    """

    def __init__(
        self,
        preset: ChipPreset | str,
        *,
        seed: int = 0,
        key: bytes | None = None,
        max_payload: int = DEFAULT_PAYLOAD,
        window: int = DEFAULT_WINDOW,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_tensor_bytes: int = MAX_TENSOR_BYTES,
        max_tensors: int = MAX_TENSORS,
        max_pending: int = MAX_PENDING,
        engine_factory: EngineFactory | None = None,
        config_factory: Callable[[dict[str, Any], dict[int, np.ndarray]], Any] | None = None,
    ) -> None:
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        if key is not None and not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"key must be bytes or None, got {type(key).__name__}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        for name, v in (
            ("max_tensor_bytes", max_tensor_bytes),
            ("max_tensors", max_tensors),
            ("max_pending", max_pending),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        #: Resource limits (see the module docstring); HELLO reports them.
        self.max_tensor_bytes = max_tensor_bytes
        self.max_tensors = max_tensors
        self.max_pending = max_pending
        self.seed = seed
        self.key = bytes(key) if key is not None else None
        #: Payload bytes per frame; the link end sets the agreed value (TENSOR_READ sizes).
        self.max_payload = max_payload
        self.window = window
        self._engine_factory = engine_factory or default_engine_factory
        self._config_factory = config_factory or default_config_factory
        #: request id -> (the request's bytes, response), least recently used first
        self._cache: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()
        self._cache_size = cache_size
        #: Bytes of the cached requests longer than CACHE_RAW_MAX (bounded by CACHE_LONG_BYTES).
        self._cache_long = 0
        self.tensors = TensorStore()
        self.engine: Any = None
        self.plan: ModelPlan | None = None
        self.loss = Loss.SOFTMAX_CROSS_ENTROPY
        self.step = 0
        #: Output shape of the last FORWARD with KEEP_ACTIVATIONS (BACKWARD needs it).
        self._kept: tuple[int, ...] | None = None
        self.authenticated = self.key is None
        self._challenge: bytes | None = None
        self._auth_counter = -1
        #: (host's, device's) link keys of the last successful AUTH (frames are authenticated
        #: with them from its answer on; the device link installs them), None without.
        self.link_keys: tuple[bytes, bytes] | None = None
        #: Requests executed (not answered from the cache), for tests and statistics.
        self.executed = 0
        self._handlers: dict[Opcode, Callable[[dict[str, Any]], dict[str, Any]]] = {
            Opcode.HELLO: self._hello,
            Opcode.AUTH: self._auth,
            Opcode.RESET: self._reset,
            Opcode.TENSOR_BEGIN: self._tensor_begin,
            Opcode.TENSOR_DATA: self._tensor_data,
            Opcode.TENSOR_END: self._tensor_end,
            Opcode.TENSOR_READ: self._tensor_read,
            Opcode.DEFINE_MODEL: self._define_model,
            Opcode.TRAIN_CONFIG: self._train_config,
            Opcode.FORWARD: self._forward,
            Opcode.TRAIN_STEP: self._train_step,
            Opcode.TRAIN_STEP_INLINE: self._train_step_inline,
            Opcode.BACKWARD: self._backward,
            Opcode.GET_WEIGHTS: self._get_weights,
            Opcode.READ_COUNTERS: self._read_counters,
            Opcode.RESET_COUNTERS: self._reset_counters,
        }

    # ------------------------------------------------------------------ entry point

    def receive(self, message: bytes | bytearray | memoryview, *, pending: int = 0) -> list[bytes]:
        """Answer one request message: a list holding exactly one response message.

        ``pending``: answers the link end has queued and the host has not acknowledged yet. At
        ``max_pending`` or more the request is answered TOO_MANY_PENDING without executing it
        (not cached: the same request id executes once the host has read its answers)."""
        data = bytes(message)
        if len(data) < m.HEADER_SIZE:
            detail = (
                f"message of {len(data)} bytes is shorter than the {m.HEADER_SIZE}-byte header "
                "(opcode u8, request_id u32)"
            )
            return [self._error(NO_REQUEST_ID, 0, Status.BAD_REQUEST, detail)]
        opcode = data[0]
        request_id = int.from_bytes(data[1:5], "little")
        if not self.authenticated and opcode not in (Opcode.HELLO, Opcode.AUTH):
            # Checked before the cache: a replayed request must not reveal a cached answer.
            detail = (
                "this device has a key: send HELLO, then AUTH with the proof; only HELLO and "
                "AUTH are accepted until then"
            )
            return [self._error(request_id, opcode, Status.NOT_AUTHENTICATED, detail)]
        if pending >= self.max_pending:
            detail = (
                f"{pending} answers wait for the host's acknowledgement; this device queues "
                f"at most {self.max_pending}: the request was not executed, read the answers "
                "and send it again"
            )
            return [self._error(request_id, opcode, Status.TOO_MANY_PENDING, detail)]
        # A duplicate has the same bytes as the cached request; a reused id with other bytes
        # executes (bytes compare by length first, then memcmp).
        cached = self._cache.get(request_id)
        if cached is not None and cached[0] == data:
            self._cache.move_to_end(request_id)
            return [cached[1]]
        try:
            status, response = self._execute(data, request_id)
        except Exception as e:  # last resort: even a fault while answering gets an answer
            detail = f"internal fault answering opcode {opcode:#04x}: {type(e).__name__}"
            return [self._error(request_id, opcode, Status.INTERNAL, detail)]
        if status not in _TRANSIENT:
            self._remember(request_id, data, response)
        return [response]

    def _remember(self, request_id: int, data: bytes, response: bytes) -> None:
        """Cache ``response`` under ``request_id`` with the request's bytes, within
        ``cache_size`` entries and CACHE_LONG_BYTES of long requests (oldest out first)."""
        cache = self._cache
        old = cache.pop(request_id, None)
        if old is not None and len(old[0]) > CACHE_RAW_MAX:
            self._cache_long -= len(old[0])
        cache[request_id] = (data, response)
        if len(data) > CACHE_RAW_MAX:
            self._cache_long += len(data)
            if self._cache_long > CACHE_LONG_BYTES:
                for rid in [r for r, e in cache.items() if len(e[0]) > CACHE_RAW_MAX][:-1]:
                    self._cache_long -= len(cache.pop(rid)[0])
                    if self._cache_long <= CACHE_LONG_BYTES:
                        break
        while len(cache) > self._cache_size:
            gone = cache.popitem(last=False)[1][0]
            if len(gone) > CACHE_RAW_MAX:
                self._cache_long -= len(gone)

    def _execute(self, data: bytes, request_id: int) -> tuple[Status, bytes]:
        opcode = data[0]
        try:
            req = m.decode_request(data)
        except MessageError as e:
            return e.status, self._error(request_id, opcode, e.status, e.detail)
        handler = self._handlers.get(req.opcode)
        if handler is None:  # defined by the protocol, not implemented by this firmware
            detail = f"{req.opcode.name} is not implemented by {FIRMWARE_NAME}"
            return Status.UNSUPPORTED, self._error(request_id, opcode, Status.UNSUPPORTED, detail)
        self.executed += 1
        try:
            body = handler(req.body)
            return Status.OK, m.encode_response(req.opcode, request_id, body)
        except FirmwareError as e:
            return e.status, self._error(request_id, opcode, e.status, e.detail)
        except MessageError as e:
            detail = f"the device could not encode its answer: {e.detail}"
            return Status.INTERNAL, self._error(request_id, opcode, Status.INTERNAL, detail)
        except MemoryError:
            detail = "the emulator's process ran out of memory executing the request"
            return Status.OUT_OF_MEMORY, self._error(
                request_id, opcode, Status.OUT_OF_MEMORY, detail
            )
        except Exception as e:  # the device never crashes: every fault becomes an ERROR
            known = _engine_status(e)
            if known is not None:
                return known[0], self._error(request_id, opcode, known[0], known[1])
            detail = f"internal fault in {req.opcode.name}: {type(e).__name__}: {e}"
            return Status.INTERNAL, self._error(request_id, opcode, Status.INTERNAL, detail)

    @staticmethod
    def _error(request_id: int, opcode: int, status: Status, detail: str) -> bytes:
        return m.encode_error(request_id, status, detail, opcode)

    # ------------------------------------------------------------------ helpers

    def _need_model(self) -> tuple[Any, ModelPlan]:
        if self.engine is None or self.plan is None:
            raise FirmwareError(Status.NO_MODEL, "no model is defined; send DEFINE_MODEL first")
        return self.engine, self.plan

    def _free_bytes(self, *, replacing: int | None = None, engine: Any = None) -> int:
        eng = self.engine if engine is None else engine
        used = self.tensors.held_bytes(exclude=replacing)
        if eng is not None:
            used += int(eng.memory_bytes())
        return self.preset.device_memory_bytes - used

    def _oom(self, what: str, need: int, free: int) -> FirmwareError:
        return FirmwareError(
            Status.OUT_OF_MEMORY,
            f"{what} needs {need} bytes but {max(free, 0)} of the device's "
            f"{self.preset.device_memory_bytes} bytes are free; RESET TENSORS or define a "
            "smaller model",
        )

    def _check_batch_memory(self, engine: Any, batch: int, extra: int = 0) -> None:
        """The model's training memory at ``batch`` plus ``extra`` new bytes must fit."""
        try:
            need = int(engine.memory_bytes(batch))
        except TypeError:  # an engine whose memory does not depend on the batch
            need = int(engine.memory_bytes())
        free = self.preset.device_memory_bytes - self.tensors.held_bytes()
        if need + extra > free:
            raise self._oom(f"batch {batch} with its activations and errors", need + extra, free)

    def _batch_input(self, tensor_id: int) -> np.ndarray:
        _, plan = self._need_model()
        x = self.tensors.values(tensor_id, "input")
        want = plan.input_shape
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise FirmwareError(
                Status.BAD_SHAPE,
                f"input {tensor_id} has shape {tuple(x.shape)}; the model takes "
                f"(batch, {', '.join(map(str, want))}) with batch 1..{MAX_BATCH}",
            )
        if not 1 <= x.shape[0] <= MAX_BATCH:
            raise FirmwareError(
                Status.LIMIT, f"batch {x.shape[0]} is outside the accepted 1..{MAX_BATCH}"
            )
        return x

    def _host_tensor_count(self) -> int:
        return sum(1 for i in self.tensors._tensors if i < DEVICE_TENSOR_ID_BASE)

    def _check_new_tensor(self, tensor_id: int, nbytes: int, what: str) -> None:
        """TENSOR_TOO_LARGE / TOO_MANY_TENSORS for a tensor of ``nbytes`` stored as
        ``tensor_id`` (replacing the tensor of that id, if any)."""
        if nbytes > self.max_tensor_bytes:
            raise FirmwareError(
                Status.TENSOR_TOO_LARGE,
                f"{what} takes {nbytes} bytes; the device's largest tensor is "
                f"{self.max_tensor_bytes} bytes (max_tensor_bytes): split it, use a smaller "
                "batch or a narrower format",
            )
        if tensor_id not in self.tensors and self._host_tensor_count() >= self.max_tensors:
            raise FirmwareError(
                Status.TOO_MANY_TENSORS,
                f"{what}: the device holds {self.max_tensors} tensors, its maximum "
                "(max_tensors); reuse the id of a tensor no longer needed or RESET TENSORS",
            )

    def _check_output_id(self, output_id: int) -> None:
        if output_id >= DEVICE_TENSOR_ID_BASE:
            raise FirmwareError(
                Status.LIMIT,
                f"output id {output_id:#x} is in the device range; use an id below "
                f"{DEVICE_TENSOR_ID_BASE:#x}",
            )

    def _layer(self, layer: int, plan: ModelPlan, what: str) -> None:
        if not 0 <= layer < len(plan.specs):
            raise FirmwareError(
                Status.UNKNOWN_LAYER,
                f"{what}: layer {layer} is outside the model's layers 0..{len(plan.specs) - 1}",
            )

    def _param_shape(self, ref: dict[str, Any], plan: ModelPlan, what: str) -> tuple[int, ...]:
        layer, kind = int(ref["layer"]), ParamKind(ref["param"])
        self._layer(layer, plan, what)
        shape = plan.params.get((layer, kind))
        if shape is None:
            have = [param_name(i, k) for (i, k) in plan.params if i == layer] or ["none"]
            raise FirmwareError(
                Status.UNKNOWN_LAYER,
                f"{what}: layer {layer} ({plan.specs[layer][0]}) has no {kind.name.lower()}; "
                f"its parameters: {', '.join(have)}",
            )
        return shape

    # ------------------------------------------------------------------ HELLO / AUTH / RESET

    def hello_body(self, challenge: bytes) -> dict[str, Any]:
        """The HELLO response body of this device (with ``challenge``)."""
        p = self.preset
        params: list[dict[str, Any]] = []
        for name, value in p.as_dict().items():
            if isinstance(value, bool | int | float):
                params.append({"name": name, "value": float(value)})
            elif (
                isinstance(value, tuple)
                and len(value) == 2
                and all(isinstance(v, int | float) for v in value)
            ):
                params.append({"name": f"{name}.min", "value": float(value[0])})
                params.append({"name": f"{name}.max", "value": float(value[1])})
        params += [
            {"name": "max_tensor_bytes", "value": float(self.max_tensor_bytes)},
            {"name": "max_tensors", "value": float(self.max_tensors)},
            {"name": "max_pending", "value": float(self.max_pending)},
            {"name": "max_request_bytes", "value": float(MAX_REQUEST_BYTES)},
            {"name": "max_batch", "value": float(MAX_BATCH)},
        ]
        features = (
            Feature.AUTH
            | Feature.STOCHASTIC_ROUNDING
            | Feature.FGMP
            | Feature.SELECTIVE_TRAINING
            | Feature.BACKWARD
            | Feature.RESUME
            | Feature.COUNTERS
            | Feature.PACKED_DFXP4
            | Feature.INLINE_STEP
            | Feature.PRUNING
        )
        if self.key is not None:
            features |= Feature.AUTH_REQUIRED
        if p.stochastic_thresholding:
            features |= Feature.STOCHASTIC_THRESHOLDING
        if p.laps:
            features |= Feature.LAPS
        return {
            "protocol_major": m.PROTOCOL_MAJOR,
            "protocol_minor": m.PROTOCOL_MINOR,
            "schema_hash": _schema_hash(),
            "firmware": FIRMWARE_NAME,
            "preset": p.name,
            "parameters": params,
            "max_payload": self.max_payload,
            "window": self.window,
            "dtypes": sorted(STORABLE),
            "formats": sorted(POLICY_FORMATS),
            "algorithms": [_ALGORITHM_NAMES[a] for a in p.algorithms if a in _ALGORITHM_NAMES],
            "features": features,
            "auth_challenge": challenge,
        }

    def _hello(self, body: dict[str, Any]) -> dict[str, Any]:
        if body["protocol_major"] != m.PROTOCOL_MAJOR:
            raise FirmwareError(
                Status.VERSION_MISMATCH,
                f"host speaks protocol {body['protocol_major']}.{body['protocol_minor']}; this "
                f"device speaks {m.PROTOCOL_MAJOR}.{m.PROTOCOL_MINOR} (same major required)",
            )
        if body["schema_hash"] != _schema_hash():
            raise FirmwareError(
                Status.SCHEMA_MISMATCH,
                f"host schema hash {body['schema_hash'].hex()} differs from the device's "
                f"{_schema_hash().hex()}: host and device were built from different message "
                "definitions",
            )
        challenge = bytes(AUTH_CHALLENGE_SIZE)
        if self.key is not None:
            challenge = os.urandom(AUTH_CHALLENGE_SIZE)
            self._challenge = challenge
        return self.hello_body(challenge)

    def _auth(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.key is None:
            raise FirmwareError(
                Status.UNSUPPORTED, "this device has no key: AUTH is not needed (no AUTH_REQUIRED)"
            )
        if self._challenge is None:
            raise FirmwareError(
                Status.AUTH_FAILED, "no challenge issued yet: send HELLO first, then AUTH"
            )
        counter = int(body["counter"])
        if counter <= self._auth_counter:
            raise FirmwareError(
                Status.AUTH_FAILED,
                f"counter {counter} was already used; send a counter above {self._auth_counter}",
            )
        nonce = body["host_nonce"]
        want = m.auth_tag(self.key, "host", self._challenge, nonce, counter)
        if not hmac.compare_digest(want, body["tag"]):
            raise FirmwareError(
                Status.AUTH_FAILED,
                "wrong tag: expected auth_tag(key, 'host', challenge of the last HELLO, "
                "host_nonce, counter)",
            )
        self._auth_counter = counter
        self.authenticated = True
        self.link_keys = link_keys(self.key, self._challenge, nonce)
        tag = m.auth_tag(self.key, "device", self._challenge, nonce, counter)
        return {"counter": counter, "tag": tag}

    def deauthenticate(self) -> None:
        """Forget a proven key (a new host connection must AUTH again)."""
        self.authenticated = self.key is None
        self._challenge = None
        self.link_keys = None

    def _drop_model(self) -> None:
        self.engine = None
        self.plan = None
        self.loss = Loss.SOFTMAX_CROSS_ENTROPY
        self.step = 0
        self._kept = None
        self.tensors.drop_mirrors()

    def _reset(self, body: dict[str, Any]) -> dict[str, Any]:
        scope = ResetScope(body["scope"])
        if scope in (ResetScope.ALL, ResetScope.MODEL):
            self._drop_model()
        if scope == ResetScope.ALL:
            self.tensors.clear()
        elif scope == ResetScope.TENSORS:
            self.tensors.clear(host=True, device=False)
        return {}

    # ------------------------------------------------------------------ tensors

    def _tensor_begin(self, body: dict[str, Any]) -> dict[str, Any]:
        desc = body["tensor"]
        tid = int(desc["id"])
        resumed = self.tensors.check_begin(desc, STORABLE)
        if resumed is not None:
            return {"id": tid, "offset": resumed.received}
        need = int(desc["nbytes"])
        self._check_new_tensor(tid, need, f"tensor {tid}")
        free = self._free_bytes(replacing=tid)
        if need > free:
            raise self._oom(f"tensor {tid}", need, free)
        self.tensors.begin(desc)
        return {"id": tid, "offset": 0}

    def _tensor_data(self, body: dict[str, Any]) -> dict[str, Any]:
        tid = int(body["id"])
        offset = self.tensors.data(tid, int(body["offset"]), body["data"])
        return {"id": tid, "offset": offset}

    def _tensor_end(self, body: dict[str, Any]) -> dict[str, Any]:
        t = self.tensors.end(int(body["id"]))
        return {"id": t.desc["id"], "nbytes": t.desc["nbytes"], "crc32": t.desc["crc32"]}

    def _tensor_read(self, body: dict[str, Any]) -> dict[str, Any]:
        limit = max(0, self.max_payload - READ_OVERHEAD)
        t, data = self.tensors.read(
            int(body["id"]), int(body["offset"]), int(body["length"]), limit
        )
        return {"tensor": t.desc, "offset": int(body["offset"]), "data": data}

    # ------------------------------------------------------------------ model

    def _initial_weights(
        self, refs: list[dict[str, Any]], plan: ModelPlan
    ) -> dict[str, np.ndarray] | None:
        if not refs:
            return None
        weights: dict[str, np.ndarray] = {}
        for ref in refs:
            shape = self._param_shape(ref, plan, "weights")
            tid = int(ref["tensor_id"])
            values = self.tensors.values(tid, "weight tensor")
            if tuple(values.shape) != shape:
                raise FirmwareError(
                    Status.BAD_SHAPE,
                    f"weight tensor {tid} has shape {tuple(values.shape)}; "
                    f"{param_name(int(ref['layer']), ParamKind(ref['param']))} takes {shape}",
                )
            weights[param_name(int(ref["layer"]), ParamKind(ref["param"]))] = values
        return weights

    def _define_model(self, body: dict[str, Any]) -> dict[str, Any]:
        n_layers, most = len(body["layers"]), self.preset.max_layers
        if n_layers > most:
            raise FirmwareError(
                Status.TOO_MANY_LAYERS,
                f"the model has {n_layers} layers; {self.preset.name}'s layer table holds at "
                f"most {most} (max_layers): merge layers or use a smaller model",
            )
        plan = plan_model(body["input_shape"], body["layers"], self.preset.max_layers)
        weights = self._initial_weights(body["weights"], plan)
        # Parameters alone (fp32) plus one sample's activations must fit before we allocate.
        floor = 4 * (plan.parameter_count + plan.activation_count)
        free_now = self.preset.device_memory_bytes - self.tensors.held_bytes()
        if floor > free_now:
            raise self._oom("the model's parameters and activations", floor, free_now)
        engine = self._engine_factory(
            plan.input_shape,
            list(plan.specs),
            self.preset,
            init_seed=int(body["init_seed"]),
            weights=weights,
        )
        need = int(engine.memory_bytes())
        if need > free_now:
            raise self._oom("the model with its training state", need, free_now)
        self._drop_model()
        self.engine, self.plan = engine, plan
        return {
            "layer_count": len(plan.specs),
            "parameter_count": plan.parameter_count,
            "output_shape": list(plan.output_shape),
            "memory_bytes": need,
        }

    def _resolve_masks(
        self, refs: list[dict[str, Any]], plan: ModelPlan, what: str, out: dict[int, np.ndarray]
    ) -> None:
        """Check every mask ParamRef and add its tensor (uint8 0/1) to ``out`` by id."""
        for ref in refs:
            shape = self._param_shape(ref, plan, what)
            tid = int(ref["tensor_id"])
            mask = self.tensors.integers(tid, f"{what} mask")
            per_channel = (plan.out_channels(int(ref["layer"])),)
            if tuple(mask.shape) not in (shape, per_channel):
                raise FirmwareError(
                    Status.BAD_SHAPE,
                    f"{what} mask {tid} has shape {tuple(mask.shape)}; accepted {shape} "
                    f"(per weight) or {per_channel} (per channel)",
                )
            if mask.size and (mask.min() < 0 or mask.max() > 1):
                raise FirmwareError(Status.BAD_REQUEST, f"{what} mask {tid} must hold only 0 and 1")
            out[tid] = mask.astype(np.uint8)

    def _train_config(self, body: dict[str, Any]) -> dict[str, Any]:
        engine, plan = self._need_model()
        for entry in body["precision"]["policy"]:
            if entry["layer"] != ALL_LAYERS:
                self._layer(int(entry["layer"]), plan, "precision policy")
            fmt = DType(entry["format"])
            if fmt not in POLICY_FORMATS:
                accepted = ", ".join(d.format_name for d in sorted(POLICY_FORMATS))
                raise FirmwareError(
                    Status.UNSUPPORTED_FORMAT,
                    f"{fmt.format_name} is not a number format of the precision policy; "
                    f"accepted: {accepted}",
                )
        algo = Algorithm(body["algorithm"]["kind"])
        offered = [_ALGORITHM_NAMES[a] for a in self.preset.algorithms if a in _ALGORITHM_NAMES]
        if algo not in offered:
            raise FirmwareError(
                Status.UNSUPPORTED_ALGORITHM,
                f"{algo.name} is not offered by {self.preset.name}; accepted: "
                f"{', '.join(a.name for a in offered)}",
            )
        trainable = body["trainable"]
        if trainable["mode"] == TrainableMode.LAST_K:
            n_param_layers = len({i for i, _ in plan.params})
            if not 1 <= trainable["last_k"] <= n_param_layers:
                raise FirmwareError(
                    Status.UNKNOWN_LAYER,
                    f"last_k {trainable['last_k']} outside 1..{n_param_layers} "
                    "(the model's layers with parameters)",
                )
        masks: dict[int, np.ndarray] = {}
        self._resolve_masks(trainable["masks"], plan, "trainable", masks)
        self._resolve_masks(body["pruning"]["masks"], plan, "pruning", masks)
        config = self._config_factory(body, masks)
        engine.configure(config)
        self.loss = Loss(body["loss"])
        self._kept = None
        return {"memory_bytes": int(engine.memory_bytes())}

    # ------------------------------------------------------------------ training

    def _forward(self, body: dict[str, Any]) -> dict[str, Any]:
        engine, plan = self._need_model()
        x = self._batch_input(int(body["input_id"]))
        out_id = int(body["output_id"])
        self._check_output_id(out_id)
        need = 4 * x.shape[0] * math.prod(plan.output_shape)
        self._check_new_tensor(out_id, need, f"output {out_id}")
        free = self._free_bytes(replacing=out_id)
        if need > free:
            raise self._oom(f"output {out_id}", need, free)
        self._check_batch_memory(engine, x.shape[0], need)
        flags = ForwardFlags(body["flags"])
        keep = bool(flags & ForwardFlags.KEEP_ACTIVATIONS)
        y = np.asarray(engine.forward(x, keep_activations=keep), dtype=np.float32)
        t = self.tensors.put(out_id, y, device_made=False)
        self._kept = tuple(y.shape) if keep else None
        data = bytes(t.buf) if flags & ForwardFlags.INLINE_OUTPUT else b""
        return {"output": t.desc, "data": data}

    def _target(self, tensor_id: int, batch: int, plan: ModelPlan) -> np.ndarray:
        if self.loss == Loss.SOFTMAX_CROSS_ENTROPY:
            y = self.tensors.integers(tensor_id, "target")
            classes = math.prod(plan.output_shape)
            if tuple(y.shape) != (batch,):
                raise FirmwareError(
                    Status.BAD_SHAPE,
                    f"target {tensor_id} has shape {tuple(y.shape)}; cross-entropy takes "
                    f"({batch},) class indices",
                )
            # min/max of a short vector by Python's (a numpy reduction costs ~2 us a call)
            vals = y.tolist() if y.size <= 1024 else None
            lo, hi = (min(vals), max(vals)) if vals else (y.min(), y.max()) if y.size else (0, 0)
            if y.size and (lo < 0 or hi >= classes):
                raise FirmwareError(
                    Status.BAD_REQUEST,
                    f"target {tensor_id} holds class indices outside 0..{classes - 1}",
                )
            return y
        t = self.tensors.values(tensor_id, "target")
        want = (batch, *plan.output_shape)
        if tuple(t.shape) != want:
            raise FirmwareError(
                Status.BAD_SHAPE,
                f"target {tensor_id} has shape {tuple(t.shape)}; MSE takes {want}",
            )
        return t

    def _train_step(self, body: dict[str, Any]) -> dict[str, Any]:
        engine, plan = self._need_model()
        x = self._batch_input(int(body["input_id"]))
        target = self._target(int(body["target_id"]), x.shape[0], plan)
        self._check_batch_memory(engine, x.shape[0])
        self._kept = None
        res = engine.train_step(x, target)
        self.step += 1
        # The engine's counters as they are when they already have the wire schema's leaves
        # (the response encoder reads those leaves only), else the schema's copy of them.
        counters = plain_counters(res.counters) or normalize_counters(res.counters)
        return {"loss": float(res.loss), "step": self.step, "counters": counters}

    def _train_step_inline(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store input and target as completed uploads (the checks of TENSOR_BEGIN, DATA and
        END), then TRAIN_STEP on them."""
        ids = [int(body[k]["id"]) for k in ("input", "target")]
        if ids[0] == ids[1]:
            raise FirmwareError(Status.BAD_REQUEST, f"input and target share the id {ids[0]}")
        free = self._free_bytes()  # one query of the engine's memory for both tensors
        for key, tid in zip(("input", "target"), ids, strict=True):
            desc, data = body[key], body[f"{key}_data"]
            self.tensors.check_begin(desc, STORABLE, resume=False)
            self._check_new_tensor(tid, len(data), f"{key} {tid}")
            old = self.tensors.counted_bytes(tid)
            if len(data) > free + old:
                raise self._oom(f"{key} {tid}", len(data), free + old)
            self.tensors.put_host(desc, data)
            free += old - len(data)
        return self._train_step({"input_id": ids[0], "target_id": ids[1]})

    def _backward(self, body: dict[str, Any]) -> dict[str, Any]:
        engine, _ = self._need_model()
        if self._kept is None:
            raise FirmwareError(
                Status.BAD_REQUEST,
                "BACKWARD needs a preceding FORWARD with KEEP_ACTIVATIONS (and no TRAIN_STEP, "
                "TRAIN_CONFIG or BACKWARD since)",
            )
        err = self.tensors.values(int(body["error_id"]), "output error")
        if tuple(err.shape) != self._kept:
            raise FirmwareError(
                Status.BAD_SHAPE,
                f"output error {body['error_id']} has shape {tuple(err.shape)}; the last "
                f"FORWARD output has shape {self._kept}",
            )
        res = engine.backward(err)
        self._kept = None
        self.step += 1
        return {"step": self.step, "counters": normalize_counters(res.counters)}

    def _get_weights(self, body: dict[str, Any]) -> dict[str, Any]:
        engine, plan = self._need_model()
        layer = int(body["layer"])
        if layer != ALL_LAYERS:
            self._layer(layer, plan, "GET_WEIGHTS")
        weights = engine.get_weights()
        listed: list[tuple[int, ParamKind, np.ndarray]] = []
        for name, arr in weights.items():
            key = parse_param_name(name)
            if key is None or key not in plan.params:
                continue
            if layer in (ALL_LAYERS, key[0]):
                listed.append((key[0], key[1], np.asarray(arr, dtype=np.float32)))
        listed.sort(key=lambda e: (e[0], int(e[1])))
        params = []
        for i, kind, arr in listed:
            tid = DEVICE_TENSOR_ID_BASE + 2 * i + int(kind)
            t = self.tensors.put(tid, arr, device_made=True, mirror=True)
            params.append({"layer": i, "param": kind, "tensor": t.desc})
        return {"params": params}

    def _read_counters(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.engine is None:
            return {"counters": zero_counters()}
        return {"counters": normalize_counters(self.engine.counters())}

    def _reset_counters(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.engine is not None:
            self.engine.reset_counters()
        return {}
