"""``host.open`` and ``Device``: one session with a device over a pyserial port.

``open(url)`` opens the port with ``serial.serial_for_url`` (``emu://PRESET`` for the in-process
emulator, ``/dev/ttyUSB0``, a pty path, ``socket://HOST:PORT``, ``spy://...``), runs the HELLO
handshake (protocol major and schema hash must match: else ``ProtocolMismatch``) and AUTH when
the device requires it (``key``; else ``AuthError``). The emulator's URL handler is found
through ``serial.protocol_handler_packages`` by package *name*: this module never imports it.

Tensors go up as TENSOR_BEGIN / pipelined TENSOR_DATA chunks (up to ``CHUNK_BYTES`` each, at
most the device's largest request; the link cuts them into frames) / TENSOR_END; a transfer
that the device reports incomplete (TRANSFER_INCOMPLETE) resumes from the offset a repeated
TENSOR_BEGIN returns. Tensors come down with pipelined TENSOR_READs. A training step whose
tensors fit one request goes as TRAIN_STEP_INLINE (one round trip, no upload requests).

If the device restarts (the link sees a new epoch), the runner replays unanswered requests;
the device is greeted again (HELLO, AUTH) and a deployed model it no longer holds makes every
use of that model raise ``StateLost`` (deploy it again). A keyed device refuses a replayed
request until the new AUTH (NOT_AUTHENTICATED: not executed), so the request is redone after
the greeting; restarts during the greeting or the redone request are survived up to
``CALL_ATTEMPTS`` attempts, then ``StateLost``. Operations of several requests
(uploads, weight reads) check for a restart between their requests too: tensors lost with a
restart are uploaded again when the host still has them (deploy, set_weights), and a restart
that took the model raises ``StateLost``, never the device's UNKNOWN_TENSOR or NO_MODEL.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import serial
from numpy.typing import NDArray

from host import errors
from host.model import Model, Precision
from host.nn import Sequential
from host.optim import SGD
from host.runner import Runner, check
from protocol import messages as m
from protocol import numerics
from protocol.dtypes import DType, from_wire
from protocol.framing import crc32
from protocol.link import link_keys
from protocol.messages import (
    Algorithm,
    Feature,
    Loss,
    Opcode,
    PrecisionFlags,
    PruningMode,
    TrainableMode,
)
from protocol.status import Status

__all__ = ["Device", "open"]

#: Package holding the ``emu://`` URL handler, registered by name (never imported here).
EMU_HANDLER_PACKAGE = "device_model"
#: Resource limits a device reports among its HELLO parameters (each refusal has its status
#: code: OUT_OF_MEMORY, request too long for the link, TENSOR_TOO_LARGE, TOO_MANY_TENSORS,
#: TOO_MANY_LAYERS, TOO_MANY_PENDING, LIMIT for the batch); ``Device.info()["limits"]`` lists them.
DEVICE_LIMITS = (
    "device_memory_bytes",
    "max_request_bytes",
    "max_tensor_bytes",
    "max_tensors",
    "max_layers",
    "max_pending",
    "max_batch",
)
CLIENT = "microtrain-host 0.1"
_ALGORITHMS = {
    "bp": (Algorithm.BP, TrainableMode.ALL),
    "dfa": (Algorithm.DFA, TrainableMode.ALL),
    "pipelined-dfa": (Algorithm.PIPELINED_DFA, TrainableMode.ALL),
    "bias-only": (Algorithm.BP, TrainableMode.BIAS_ONLY),
}
_LOSSES = {
    "cross_entropy": Loss.SOFTMAX_CROSS_ENTROPY,
    "cross-entropy": Loss.SOFTMAX_CROSS_ENTROPY,
    "mse": Loss.MSE,
}
#: Statuses that mean "the device no longer holds what we gave it" after a restart.
_LOST = errors.LOST_STATUSES
#: Largest TENSOR_DATA chunk the host sends (bytes of tensor data; capped by the device's
#: ``max_request_bytes``). Assumption: 256 KiB keeps a lost or replayed chunk cheap on a slow
#: line while a 2.4 MB MDNet batch takes 10 request/response pairs instead of 150 one-frame ones.
CHUNK_BYTES = 256 * 1024
#: Attempts at an upload (or a deploy) that device restarts interrupt before StateLost.
UPLOAD_ATTEMPTS = 3
#: Attempts at one request (and at the greeting, HELLO and AUTH) that device restarts
#: interrupt before StateLost: a keyed device that restarts forgets the AUTH, so the request
#: is refused (NOT_AUTHENTICATED, not executed) and redone after a new greeting, which a
#: further restart can interrupt in turn. Assumption: like UPLOAD_ATTEMPTS, three restarts in
#: a row within one request mean a device that cannot keep up, not bad luck.
CALL_ATTEMPTS = 3
#: A device's largest request when HELLO does not state ``max_request_bytes`` (the emulated
#: firmware's receive buffer, device_model.firmware.MAX_REQUEST_BYTES).
DEFAULT_MAX_REQUEST = 1 << 20
#: Bytes of a TRAIN_STEP_INLINE request besides the tensor bytes, at most: header, two
#: descriptors and two data lengths.
INLINE_OVERHEAD = m.HEADER_SIZE + 2 * (m.MAX_TENSOR_DESC_SIZE + 4)


def _fingerprint(desc: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two tensor descriptors name the same contents."""
    sc = desc["scale"]
    return (
        int(desc["dtype"]),
        tuple(desc["shape"]),
        desc["nbytes"],
        desc["crc32"],
        tuple(int(sc[k]) for k in ("frac_bits", "shared_exp", "exp_bias", "stage")),
    )


def _dfxp_nearest(arr: NDArray[Any], nbits: int, frac_bits: int) -> NDArray[Any]:
    """dfxpN codes of finite values with round-to-nearest-even and saturation: the codes of
    ``numerics.encode(arr, "dfxpN", frac_bits=...)`` (tests/test_host_device.py checks it) in
    three numpy passes instead of the reference's dozen (x 2^f is exact in float64)."""
    hi = (1 << (nbits - 1)) - 1
    y = np.rint(np.ldexp(np.asarray(arr, np.float64), frac_bits))
    np.clip(y, -hi - 1, hi, out=y)
    return y.astype(np.int8 if nbits <= 8 else np.int16)


def _register_emu() -> None:
    if EMU_HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(EMU_HANDLER_PACKAGE)


def open(
    url: str,
    *,
    baudrate: int | None = None,
    timeout: float | None = None,
    key: bytes | None = None,
) -> Device:
    """Open the device at ``url`` and greet it; see the module docstring.

    ``baudrate``: line rate of a real serial port (also scales deadlines). ``timeout``: the
    device's think time allowed per call, in seconds (default 10), on top of wire time.
    ``key``: the authentication key of a device that requires one.
    """
    if not isinstance(url, str) or not url:
        raise errors.InvalidArgument(f"url must be a non-empty string, got {url!r}")
    if key is not None and not isinstance(key, bytes | bytearray):
        raise errors.InvalidArgument(f"key must be bytes, got {type(key).__name__}")
    if baudrate is not None and (not isinstance(baudrate, int) or baudrate <= 0):
        raise errors.InvalidArgument(f"baudrate must be a positive int, got {baudrate!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or not timeout > 0):
        raise errors.InvalidArgument(f"timeout must be > 0 seconds or None, got {timeout!r}")
    _register_emu()
    kw: dict[str, Any] = {"timeout": 0.01}
    if baudrate is not None:
        kw["baudrate"] = baudrate
    try:
        port = serial.serial_for_url(url, **kw)
    except (serial.SerialException, ValueError, OSError) as e:
        raise errors.LinkLost(
            f"cannot open {url!r}: {e} (URLs: emu://PRESET[?options], a serial device path, "
            "socket://HOST:PORT, or any other pyserial URL)"
        ) from None
    return Device(port, url=url, baudrate=baudrate, timeout=timeout, key=key)


class Device:
    """A device session (see the module docstring). Use as a context manager or ``close()``."""

    #: Host tensor ids used for the per-call tensors (reused: the device keeps one of each).
    INPUT_ID, TARGET_ID, ERROR_ID, OUTPUT_ID = 1, 2, 3, 4
    WEIGHT_ID_BASE = 0x100
    MASK_ID_BASE = 0x1000

    def __init__(
        self,
        port: Any,
        *,
        url: str = "",
        baudrate: int | None = None,
        timeout: float | None = None,
        key: bytes | None = None,
    ) -> None:
        #: The URL as shown in repr and errors: a ``key=`` option's value is masked.
        self.url = re.sub(r"(?i)(\bkey=)[^&#]*", r"\1***", url)
        self._key = bytes(key) if key is not None else None
        self._auth_counter = 0
        self.runner = Runner(port, timeout=timeout, baudrate=baudrate)
        self._hello: dict[str, Any] = {}
        #: (the HELLO answer, its max_request_bytes): _max_request's memo.
        self._max_request_of: tuple[dict[str, Any] | None, int] = (None, DEFAULT_MAX_REQUEST)
        self._seen_resets = 0
        #: Bumped when the device is found to have lost its state; models of older ones die.
        self._generation = 0
        self._model: Model | None = None
        #: Descriptor of the last completed upload of each host tensor id (compared by
        #: _fingerprint when the id is uploaded again).
        self._sent: dict[int, Mapping[str, Any]] = {}
        #: Serialises whole operations (a tensor upload and the request using it).
        self.lock = threading.RLock()
        try:
            self._greet()
        except BaseException:
            self.runner.close()
            raise

    # ------------------------------------------------------------------ session

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<host.Device {self.url or 'port'} preset={self._hello.get('preset', '?')}>"

    def close(self) -> None:
        """Close the port (idempotent); the device keeps its state."""
        self.runner.close()

    @property
    def closed(self) -> bool:
        return self.runner.closed

    def _hello_request(self) -> dict[str, Any]:
        """The HELLO body this host sends (its protocol version and schema hash)."""
        return {
            "protocol_major": m.PROTOCOL_MAJOR,
            "protocol_minor": m.PROTOCOL_MINOR,
            "schema_hash": m.schema_hash(),
            "client": CLIENT,
        }

    def _greet(self) -> None:
        """HELLO (and AUTH when the device requires it), again from HELLO when the device
        restarts in between (its new incarnation issued no challenge), CALL_ATTEMPTS times."""
        for attempt in range(CALL_ATTEMPTS):
            resets = self.runner.resets
            try:
                return self._greet_once()
            except (errors.AuthError, errors.DeviceError):
                if self.runner.resets == resets or attempt == CALL_ATTEMPTS - 1:
                    raise

    def _greet_once(self) -> None:
        mine = self._hello_request()
        try:
            hello = self.runner.call(Opcode.HELLO, mine)
        except errors.DeviceError as e:
            if e.status in (Status.VERSION_MISMATCH, Status.SCHEMA_MISMATCH):
                raise errors.ProtocolMismatch(
                    f"the device refused the link: {e.detail}; use a host and firmware built "
                    "from the same protocol definitions"
                ) from None
            raise
        if (
            hello["protocol_major"] != mine["protocol_major"]
            or hello["schema_hash"] != mine["schema_hash"]
        ):
            raise errors.ProtocolMismatch(
                f"the device speaks protocol {hello['protocol_major']}.{hello['protocol_minor']} "
                f"with schema {hello['schema_hash'].hex()}; this host speaks "
                f"{mine['protocol_major']}.{mine['protocol_minor']} with schema "
                f"{mine['schema_hash'].hex()}: use a host and firmware built from the same "
                "protocol definitions"
            )
        self._hello = hello
        if hello["features"] & Feature.AUTH_REQUIRED:
            self._auth(hello["auth_challenge"])
        self._seen_resets = self.runner.resets

    def _auth(self, challenge: bytes) -> None:
        if self._key is None:
            raise errors.AuthError(
                f"the device at {self.url or 'this port'} requires authentication: pass "
                "key=b'...' to host.open"
            )
        nonce = os.urandom(m.AUTH_NONCE_SIZE)
        # The device refuses a counter not above every one it accepted before, also from
        # earlier host sessions: wall-clock nanoseconds grow across sessions and processes.
        counter = max(time.time_ns(), self._auth_counter + 1)
        self._auth_counter = counter
        tag = m.auth_tag(self._key, "host", challenge, nonce, counter)
        # Frames are authenticated from the AUTH answer on (protocol.link): the link accepts
        # them with these keys and authenticates its own once the first one has passed.
        host_key, device_key = link_keys(self._key, challenge, nonce)
        self.runner.link.start_auth(host_key, device_key, now=False)
        try:
            r = self.runner.call(Opcode.AUTH, {"host_nonce": nonce, "counter": counter, "tag": tag})
        except errors.DeviceError as e:
            self.runner.link.stop_auth()
            raise errors.AuthError(
                f"the device refused the key ({e.status.name}: {e.detail}); check the key"
            ) from None
        want = m.auth_tag(self._key, "device", challenge, nonce, counter)
        if r["tag"] != want:
            self.runner.link.stop_auth()
            raise errors.AuthError(
                "the device's proof does not match the key: it is not the device holding this "
                "key (or the line is tampered with)"
            )

    def _after_reset(self) -> None:
        """The device's link restarted: greet it again and find out whether it lost state."""
        self._seen_resets = self.runner.resets
        self._sent.clear()
        self._greet()
        if self._model is not None:
            try:
                self.runner.call(Opcode.GET_WEIGHTS, {"layer": 0})
            except errors.DeviceError as e:
                if e.status == Status.NO_MODEL:
                    self._generation += 1
                    self._model = None

    def _resync(self) -> bool:
        """_after_reset; False if another restart interrupted it (the next call greets the
        newest device again: ``resets`` is then above ``_seen_resets``)."""
        resets = self.runner.resets
        try:
            self._after_reset()
        except (errors.AuthError, errors.DeviceError):
            if self.runner.resets == resets:
                raise
            return False
        return True

    def _call(self, opcode: Opcode, body: dict[str, Any] | None = None, nbytes: int = 0) -> Any:
        """One request, redone (up to CALL_ATTEMPTS) while device restarts make a keyed device
        refuse it unexecuted; a restart that lost what it needs is StateLost."""
        with self.lock:
            status = Status.NOT_AUTHENTICATED
            for _ in range(CALL_ATTEMPTS):
                if self.runner.resets != self._seen_resets and not self._resync():
                    continue
                resets = self.runner.resets
                (resp,) = self.runner.wait([self.runner.submit(opcode, body)], nbytes=nbytes)
                if not resp.is_error or self.runner.resets == resets:
                    return check(resp, opcode)
                status = Status(resp.body["status"])
                if status == Status.NOT_AUTHENTICATED:
                    continue  # a restarted device wants AUTH first; it did not execute this
                if status in _LOST:
                    self._resync()
                    raise errors.StateLost(
                        f"the device restarted during {opcode.name} and lost its state "
                        f"({status.name}: {resp.body['detail']}); deploy it again"
                    )
                return check(resp, opcode)
            raise errors.StateLost(
                f"the device restarted during each of {CALL_ATTEMPTS} attempts at {opcode.name} "
                f"(last: {status.name}), so this host cannot tell what it still holds; check "
                "its power and line, then deploy again"
            )

    def _check_model(self, model: Model) -> None:
        if self.runner.resets != self._seen_resets:
            self._after_reset()
        if model.generation != self._generation or self._model is not model:
            raise errors.StateLost(
                "this model is no longer on the device (the device restarted and lost it, or "
                "another model was deployed since); deploy it again"
            )

    def _call_model(self, name: str, body: dict[str, Any], nbytes: int) -> Any:
        try:
            return self._call(Opcode[name], body, nbytes)
        except errors.DeviceError as e:
            if e.status == Status.NO_MODEL:
                self._generation += 1
                self._model = None
                raise errors.StateLost(
                    f"the device holds no model ({e.detail}); deploy it again"
                ) from None
            raise

    # ------------------------------------------------------------------ queries

    def info(self) -> dict[str, Any]:
        """What the device said in HELLO: protocol, firmware, preset, formats, algorithms,
        limits, plus dtypes, features and the preset's parameters. ``limits`` holds the link's
        offer and what the link agreed, and the device's resource limits it reports among its
        parameters (``DEVICE_LIMITS``; a device that does not report one leaves it out)."""
        h = self._hello
        params = {p["name"]: p["value"] for p in h["parameters"]}
        algos = {Algorithm.BP: "bp", Algorithm.DFA: "dfa", Algorithm.PIPELINED_DFA: "pipelined-dfa"}
        names = [algos[Algorithm(a)] for a in h["algorithms"]]
        if "bp" in names and h["features"] & Feature.SELECTIVE_TRAINING:
            names.append("bias-only")
        return {
            "protocol": f"{h['protocol_major']}.{h['protocol_minor']}",
            "schema_hash": h["schema_hash"].hex(),
            "firmware": h["firmware"],
            "preset": h["preset"],
            "formats": [DType(d).format_name for d in h["formats"]],
            "dtypes": [DType(d).format_name for d in h["dtypes"]],
            "algorithms": names,
            "features": [f.name.lower() for f in Feature if h["features"] & f and f.name],
            "limits": {
                "max_payload": h["max_payload"],
                "window": h["window"],
                "link_max_payload": self.runner.max_payload,
                "link_window": self.runner.link.window,
                **{k: int(params[k]) for k in DEVICE_LIMITS if k in params},
            },
            "parameters": params,
        }

    def counters(self) -> dict[str, Any]:
        """Counters since deploy or reset_counters: per stage (ff, ep, wg, update, total) MACs,
        skipped MACs by reason, cycles, energy, memory traffic; peak memory; latency. None
        marks a counter this device cannot count."""
        return dict(self._call(Opcode.READ_COUNTERS)["counters"])

    def reset_counters(self) -> None:
        """Zero every counter."""
        self._call(Opcode.RESET_COUNTERS)

    # ------------------------------------------------------------------ deploy

    def deploy(
        self,
        model: Sequential,
        weights: Mapping[str, Any] | None = None,
        *,
        precision: str | Precision | None = "fp32",
        algorithm: str = "bp",
        optimizer: SGD | None = None,
        loss: str = "cross_entropy",
        trainable: str | int | Mapping[str, Any] = "all",
        prune: float | Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> Model:
        """Define ``model`` on the device and configure its training; returns the Model.

        weights: a state dict (all parameters), or None for the device's own initialisation
        from ``seed``. precision: see ``host.Precision``. algorithm: "bp", "dfa",
        "pipelined-dfa" or "bias-only" (BP updating biases only). optimizer: ``host.optim.SGD``
        (default lr 0.01). loss: "cross_entropy" (targets are class indices) or "mse".
        trainable: "all", "bias-only", an int k (the last k layers with parameters) or a dict
        name -> 0/1 mask (shape of the parameter, or (out_channels,)); parameters the dict
        does not name are frozen. prune: None, a float ratio (magnitude pruning) or a dict
        name -> 0/1 mask (0 = pruned). seed: device initialisation, stochastic rounding and
        DFA feedback.
        """
        if not isinstance(model, Sequential):
            raise errors.InvalidArgument(
                f"deploy takes a host.nn.Sequential, got {type(model).__name__}"
            )
        checked = model.check_weights(weights) if weights is not None else None
        prec = Precision.parse(precision)
        if algorithm not in _ALGORITHMS:
            raise errors.InvalidArgument(
                f"unknown algorithm {algorithm!r}; accepted: {', '.join(_ALGORITHMS)}"
            )
        if algorithm not in self.info()["algorithms"]:
            raise errors.InvalidArgument(
                f"{self._hello['preset']} does not offer {algorithm!r}; it offers "
                f"{', '.join(self.info()['algorithms'])}"
            )
        if loss not in _LOSSES:
            raise errors.InvalidArgument(f"unknown loss {loss!r}; accepted: cross_entropy, mse")
        if prec.format not in self.info()["formats"]:
            raise errors.InvalidArgument(
                f"{self._hello['preset']} has no {prec.format} datapath; accepted: "
                f"{', '.join(self.info()['formats'])}"
            )
        if prec.scale == "st" and "stochastic_thresholding" not in self.info()["features"]:
            raise errors.InvalidArgument(
                f"{self._hello['preset']} has no stochastic thresholding unit: use "
                f"'{prec.format}+overflow' (dynamic fixed point without ST) or '+amax'"
            )
        if prec.laps and "laps" not in self.info()["features"]:
            raise errors.InvalidArgument(
                f"{self._hello['preset']} has no LAPS unit: drop '+laps' or use emu://hnpu-v1"
            )
        opt = optimizer if optimizer is not None else SGD(0.01)
        if not isinstance(opt, SGD):
            raise errors.InvalidArgument("optimizer must be host.optim.SGD(...)")
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise errors.InvalidArgument(f"seed must be an int in [0, 2**64), got {seed!r}")
        kind, mode = _ALGORITHMS[algorithm]
        trainable_body, prune_body, masks = self._selection(model, mode, trainable, prune)
        config = {
            "precision": {
                "flags": int(PrecisionFlags.LAPS) if prec.laps else 0,
                "sr_seed": seed,
                "policy": prec.policy(),
            },
            "algorithm": {
                "kind": kind,
                "feedback": 0,
                "feedback_storage": 0,
                "feedback_density": 1.0,
                "feedback_seed": seed,
            },
            "loss": _LOSSES[loss],
            "optimizer": opt.wire(),
            "trainable": trainable_body,
            "pruning": prune_body,
        }
        handle = Model(self, model, config, prec, {}, seed)
        handle.masks = masks
        with self.lock:
            self._define(handle, checked)
        return handle

    def _selection(
        self,
        model: Sequential,
        mode: TrainableMode,
        trainable: str | int | Mapping[str, Any],
        prune: float | Mapping[str, Any] | None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[int, NDArray[np.uint8]]]:
        masks: dict[int, NDArray[np.uint8]] = {}

        def refs(d: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
            shapes = model.param_shapes()
            out = []
            for name, mask in d.items():
                if name not in shapes:
                    raise errors.InvalidArgument(
                        f"{what} mask for unknown parameter {name!r}; this model has {list(shapes)}"
                    )
                arr = np.asarray(mask)
                if arr.size and not np.isin(arr, (0, 1)).all():
                    raise errors.InvalidArgument(f"{what} mask {name!r} must hold only 0 and 1")
                tid = self.MASK_ID_BASE + len(masks)
                masks[tid] = arr.astype(np.uint8)
                layer, param = name.split(".")
                out.append({"layer": int(layer), "param": int(param == "bias"), "tensor_id": tid})
            return out

        tr: dict[str, Any] = {"mode": mode, "last_k": 0, "masks": []}
        if trainable == "all":
            pass
        elif trainable == "bias-only":
            tr["mode"] = TrainableMode.BIAS_ONLY
        elif isinstance(trainable, int) and not isinstance(trainable, bool):
            tr.update(mode=TrainableMode.LAST_K, last_k=trainable)
        elif isinstance(trainable, Mapping):
            # Parameters the dict does not name are frozen (an all-zero mask), so the dict
            # says exactly what trains.
            shapes = model.param_shapes()
            full = {k: np.zeros(shapes[k], np.uint8) for k in shapes if k not in trainable}
            tr.update(mode=TrainableMode.MASKS, masks=refs({**trainable, **full}, "trainable"))
        else:
            raise errors.InvalidArgument(
                f"trainable={trainable!r}; accepted: 'all', 'bias-only', an int k (last k "
                "layers with parameters) or a dict name -> 0/1 mask"
            )
        pr: dict[str, Any] = {"mode": PruningMode.NONE, "ratio": 0.0, "masks": []}
        if prune is None:
            pass
        elif isinstance(prune, float | int) and not isinstance(prune, bool):
            if not 0 <= prune < 1:
                raise errors.InvalidArgument(f"prune ratio must be in [0, 1), got {prune}")
            pr.update(mode=PruningMode.MAGNITUDE, ratio=float(prune))
        elif isinstance(prune, Mapping):
            pr.update(mode=PruningMode.MASKS, masks=refs(prune, "prune"))
        else:
            raise errors.InvalidArgument(
                f"prune={prune!r}; accepted: None, a ratio in [0, 1) or a dict name -> 0/1 mask"
            )
        return tr, pr, masks

    def _define(self, handle: Model, weights: Mapping[str, NDArray[np.float32]] | None) -> None:
        """``_define_once``, done again from the start when the device restarts meanwhile
        (the host holds everything a deploy sends), up to UPLOAD_ATTEMPTS times."""
        for _ in range(UPLOAD_ATTEMPTS):
            if self.runner.resets != self._seen_resets:
                self._after_reset()
            resets = self.runner.resets
            try:
                self._define_once(handle, weights)
            except errors.StateLost:
                if self.runner.resets == resets:
                    raise
                continue
            except errors.DeviceError as e:
                if self.runner.resets == resets or e.status not in _LOST:
                    raise
                continue
            if self.runner.resets == resets:
                return
        raise errors.StateLost(
            f"the device restarted during each of {UPLOAD_ATTEMPTS} attempts to deploy the "
            "model; check its power supply and the line, then deploy again"
        )

    def _define_once(
        self, handle: Model, weights: Mapping[str, NDArray[np.float32]] | None
    ) -> None:
        """DEFINE_MODEL (with uploaded weights) then TRAIN_CONFIG (with uploaded masks)."""
        spec = handle.spec
        refs = []
        uploads: list[tuple[int, Any, str]] = []
        for n, (name, arr) in enumerate((weights or {}).items()):
            tid = self.WEIGHT_ID_BASE + n
            uploads.append((tid, arr, "fp32"))
            layer, param = name.split(".")
            refs.append({"layer": int(layer), "param": int(param == "bias"), "tensor_id": tid})
        uploads += [(tid, mask, "uint8") for tid, mask in handle.masks.items()]
        if uploads:
            self._upload_arrays(uploads)
        info = self._call(
            Opcode.DEFINE_MODEL,
            {
                "input_shape": list(spec.input_shape),
                "layers": spec.wire_layers(),
                "init_seed": handle.init_seed,
                "weights": refs,
            },
        )
        if tuple(info["output_shape"]) != spec.output_shape:
            raise errors.DeviceError(
                Status.BAD_SHAPE,
                f"device output shape {info['output_shape']} differs from the host's "
                f"{spec.output_shape}",
                "DEFINE_MODEL",
            )
        self._model = handle
        handle.generation = self._generation
        cfg = self._call(Opcode.TRAIN_CONFIG, handle.config)
        handle.info = {**info, "memory_bytes": cfg["memory_bytes"]}
        # Weights live on the device now; the host copies are not needed any longer.
        self._call(Opcode.RESET, {"scope": m.ResetScope.TENSORS})
        self._sent.clear()

    # ------------------------------------------------------------------ tensors

    def _upload_array(self, tid: int, values: Any, fmt: str, saturate: bool | None = None) -> None:
        """Send ``values`` as tensor ``tid`` in format/dtype ``fmt``."""
        self._upload_encoded([self._encode(tid, values, fmt, saturate)])

    def _upload_arrays(self, tensors: list[tuple[int, Any, str]]) -> None:
        """Send several tensors (id, values, format); see ``_upload_encoded``."""
        self._upload_encoded([self._encode(tid, values, fmt) for tid, values, fmt in tensors])

    def _upload_encoded(self, encoded: list[tuple[dict[str, Any], bytes | memoryview]]) -> None:
        """Send several encoded tensors pipelined: every TENSOR_BEGIN, DATA and END is sent
        before waiting, so the uploads cost one round trip. A tensor whose transfer did not go
        through (the device held part of it, or lost it) is sent again by ``_upload``, which
        resumes from the device's offset. A device restart during the uploads loses what the
        old session stored: every tensor is sent again in full (the host has them all), up to
        ``UPLOAD_ATTEMPTS`` times; then StateLost."""
        with self.lock:
            for _ in range(UPLOAD_ATTEMPTS):
                if self.runner.resets != self._seen_resets:
                    self._after_reset()
                resets = self.runner.resets
                try:
                    self._upload_pipelined(encoded)
                except errors.DeviceError as e:
                    if self.runner.resets == resets or e.status not in _LOST:
                        raise
                else:
                    if self.runner.resets == resets:
                        return
                for desc, _ in encoded:
                    self._sent.pop(desc["id"], None)
            raise errors.StateLost(
                f"the device restarted during each of {UPLOAD_ATTEMPTS} attempts to upload "
                f"{len(encoded)} tensor(s); check its power supply and the line, then retry"
            )

    def _upload_pipelined(self, encoded: list[tuple[dict[str, Any], bytes | memoryview]]) -> None:
        chunk = self._chunk_payload()
        groups: list[list[int]] = []
        for desc, data in encoded:
            ids = [self.runner.submit(Opcode.TENSOR_BEGIN, {"tensor": desc})]
            # The same contents as the last completed upload of this id: the device still
            # holds them (BEGIN answers offset = nbytes), else END fails and _upload resends.
            last = self._sent.pop(desc["id"], None)
            same = last is not None and _fingerprint(last) == _fingerprint(desc)
            for body in [] if same else m.data_chunks(desc["id"], data, chunk):
                ids.append(self.runner.submit(Opcode.TENSOR_DATA, body))
            ids.append(self.runner.submit(Opcode.TENSOR_END, {"id": desc["id"]}))
            groups.append(ids)
        nbytes = sum(len(data) for _, data in encoded)
        resps = self.runner.wait([i for g in groups for i in g], nbytes=nbytes)
        at = 0
        for (desc, data), ids in zip(encoded, groups, strict=True):
            mine = resps[at : at + len(ids)]
            at += len(ids)
            begin = mine[0]
            if begin.is_error and Status(begin.body["status"]) not in _LOST:
                check(begin, Opcode.TENSOR_BEGIN)  # raises: the device refuses this tensor
            if any(r.is_error for r in mine):
                self._upload(desc, data)
            self._sent[desc["id"]] = desc

    def _max_request(self) -> int:
        """The device's largest request message in bytes (HELLO's ``max_request_bytes``),
        looked up once per HELLO answer."""
        hello = self._hello
        if self._max_request_of[0] is not hello:
            most = DEFAULT_MAX_REQUEST
            for p in hello.get("parameters", ()):
                if p["name"] == "max_request_bytes":
                    most = int(p["value"])
                    break
            self._max_request_of = (hello, most)
        return self._max_request_of[1]

    def _chunk_payload(self) -> int:
        """Message size of the TENSOR_DATA chunks (``data_chunks``'s max_payload argument)."""
        most = min(CHUNK_BYTES + m.DATA_OVERHEAD, self._max_request())
        return max(self.runner.max_payload, most)

    def _train_step(
        self, xs: NDArray[np.float32], fmt: str, saturate: bool, ys: NDArray[Any], ydt: str
    ) -> Any:
        """The TRAIN_STEP response body of one step on the deployed model: one
        TRAIN_STEP_INLINE request when the device offers it and the tensors fit its largest
        request, else uploads and TRAIN_STEP (two round trips)."""
        encoded = [
            self._encode(self.INPUT_ID, xs, fmt, saturate),
            self._encode(self.TARGET_ID, ys, ydt),
        ]
        size = INLINE_OVERHEAD + sum(len(data) for _, data in encoded)
        if self._hello["features"] & Feature.INLINE_STEP and size <= self._max_request():
            (dx, bx), (dy, by) = encoded
            self._sent.pop(self.INPUT_ID, None)
            self._sent.pop(self.TARGET_ID, None)
            body = {"input": dx, "input_data": bx, "target": dy, "target_data": by}
            resp = self._call_model("TRAIN_STEP_INLINE", body, size)
            self._sent[self.INPUT_ID] = dx
            self._sent[self.TARGET_ID] = dy
            return resp
        self._upload_encoded(encoded)
        ids = {"input_id": self.INPUT_ID, "target_id": self.TARGET_ID}
        return self._call_model("TRAIN_STEP", ids, xs.nbytes)

    @staticmethod
    def _encode(
        tid: int, values: Any, fmt: str, saturate: bool | None = None
    ) -> tuple[dict[str, Any], bytes | memoryview]:
        """(TensorDesc, wire bytes) of ``values`` in format/dtype ``fmt`` (``saturate``: the
        overflow behaviour of a number format, None for the format's default)."""
        dtype = DType.from_name(fmt)
        arr = np.asarray(values)
        scale: dict[str, Any] = {}
        if fmt in ("int32", "uint8", "int8", "int16", "int64"):
            codes = arr
        elif fmt == "fp32":
            codes = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
        else:
            params = numerics.scale_params(arr, fmt)
            if fmt == "hfp8":
                # the descriptor carries the variant: forward 1-4-3 with the default bias
                params = {**params, "bias": 7, "stage": "forward"}
                scale["exp_bias"] = 7
                scale["stage"] = int(m.HfpStage.FORWARD)
            if fmt.startswith("dfxp") and saturate is not False:
                codes = _dfxp_nearest(arr, int(fmt[4:]), int(params["frac_bits"]))
            else:
                codes = numerics.encode(arr, fmt, saturate=saturate, **params)
            if "frac_bits" in params:
                scale["frac_bits"] = int(params["frac_bits"])
            if "shared_exp" in params:
                scale["shared_exp"] = int(params["shared_exp"])
        # A view of the codes, not a copy: the request that sends them copies them once.
        return m.tensor_message(tid, codes, dtype, scale, copy=False)

    def _upload(self, desc: dict[str, Any], data: bytes | memoryview) -> None:
        """Send one tensor, resuming from the offset TENSOR_BEGIN reports."""
        tid = desc["id"]
        self._sent.pop(tid, None)
        for _ in range(4):
            offset = self._call(Opcode.TENSOR_BEGIN, {"tensor": desc})["offset"]
            chunks = m.data_chunks(tid, data, self._chunk_payload(), offset)
            ids = [self.runner.submit(Opcode.TENSOR_DATA, c) for c in chunks]
            resps = self.runner.wait(ids, nbytes=len(data) - offset)
            failed = [r for r in resps if r.is_error]
            if failed and Status(failed[0].body["status"]) == Status.TRANSFER_INCOMPLETE:
                continue  # resume: BEGIN again tells the device's offset
            if failed:
                check(failed[0], Opcode.TENSOR_DATA)
            try:
                self._call(Opcode.TENSOR_END, {"id": tid})
                return
            except errors.DeviceError as e:
                if e.status not in (Status.TRANSFER_INCOMPLETE, Status.CHECKSUM_MISMATCH):
                    raise
        raise errors.DeviceError(
            Status.TRANSFER_INCOMPLETE,
            f"tensor {tid} did not complete after 4 attempts; check the link",
            "TENSOR_END",
        )

    def _download(self, tid: int) -> NDArray[np.float32]:
        """Read tensor ``tid`` from the device as float32 values."""
        first = self._call(Opcode.TENSOR_READ, {"id": tid, "offset": 0, "length": 1 << 31})
        desc = first["tensor"]
        parts = [first["data"]]
        total, step = int(desc["nbytes"]), len(first["data"])
        if step and total > step:
            ids = [
                self.runner.submit(Opcode.TENSOR_READ, {"id": tid, "offset": o, "length": step})
                for o in range(step, total, step)
            ]
            for r in self.runner.wait(ids, nbytes=total):
                parts.append(check(r, Opcode.TENSOR_READ)["data"])
        data = b"".join(parts)
        if len(data) != total or crc32(data) != desc["crc32"]:
            raise errors.DeviceError(
                Status.CHECKSUM_MISMATCH,
                f"tensor {tid}: read {len(data)} of {total} bytes or a CRC mismatch; read again",
                "TENSOR_READ",
            )
        return self._decode(desc, data)

    @staticmethod
    def _decode(desc: Mapping[str, Any], data: bytes) -> NDArray[np.float32]:
        dtype = DType(desc["dtype"])
        codes = from_wire(data, dtype, desc["shape"])
        name = dtype.format_name
        if dtype.format_name in ("int8", "int16", "int32", "uint8", "int64"):
            return np.asarray(codes, dtype=np.float32)
        sc = desc["scale"]
        params: dict[str, Any] = {}
        if name.startswith("dfxp"):
            params["frac_bits"] = int(sc["frac_bits"])
        elif name in ("flex16", "fp8-seb"):
            params["shared_exp"] = int(sc["shared_exp"])
        elif name == "hfp8":
            params["bias"] = int(sc["exp_bias"])
            params["stage"] = "backward" if int(sc["stage"]) else "forward"
        return np.array(numerics.decode(codes, name, **params), dtype=np.float32)
