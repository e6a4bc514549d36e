"""Every command and response of the microtrain protocol, as construct definitions.

A *message* is the payload the link delivers (protocol.link reassembles fragments, so a
message may be longer than one frame). It starts with a 5-byte header, little-endian:

    opcode u8 | request_id u32 | body (by opcode)

* Requests use the opcodes of ``Opcode`` (0x01..0x7F). Every request carries a u32 request id
  chosen by the host; the device executes a request id once and answers a duplicate from its
  response cache (exactly-once commands above the link).
* Every request gets exactly one response echoing its request id: either its own response,
  whose opcode is ``request opcode | 0x80`` (``ResponseOpcode``), or ERROR (0xFF) with a
  ``Status`` code and a detail text.
* Unknown opcodes fail to parse through ``Switch(..., default=Error)`` and are reported as
  ``Status.UNKNOWN_OPCODE``; any other malformed body (truncated, trailing bytes, a value out of
  range, an unknown enum value) as ``Status.BAD_REQUEST``. ``MessageError`` is the only
  exception the codec functions raise on bad input.
* Tensor bytes are ``Blob`` fields (a length and raw bytes), converted with
  ``protocol.dtypes.from_wire`` (numpy.frombuffer), never element by element.

A typical session: HELLO (check versions and schema hash) -> AUTH if the device requires it ->
TENSOR_BEGIN/DATA/END for initial weights -> DEFINE_MODEL -> TRAIN_CONFIG -> per step: upload
input and target tensors, TRAIN_STEP (or FORWARD with KEEP_ACTIVATIONS, upload the output
error, BACKWARD) -> READ_COUNTERS -> GET_WEIGHTS and TENSOR_READ of each listed tensor. The
host may pipeline requests up to the link window; the device answers them in order.

``schema_hash()`` is the first 8 bytes of SHA-256 over ``schema_text()``, a canonical rendering
of every definition (opcodes, field names, types, sizes, records, enums): HELLO carries it and a
mismatch refuses the link. Change any definition and the hash changes; bump PROTOCOL_MINOR for
compatible additions and PROTOCOL_MAJOR for anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import struct as pystruct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

import numpy as np
from construct import (
    Bytes,
    ConstructError,
    Error,
    ExplicitError,
    Float32l,
    Float64l,
    Int8sl,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    Switch,
    this,
)
from numpy.typing import NDArray

from protocol.dtypes import CODE_DTYPE, DType, shape_count, to_wire, wire_nbytes
from protocol.framing import MAX_PAYLOAD, MIN_PAYLOAD
from protocol.framing import crc32 as _crc32
from protocol.messages_counters import COUNTERS_SIZE, Counters, pack_counters, unpack_counters
from protocol.messages_types import (
    Blob,
    Code,
    Flags,
    List,
    Ranged,
    Text,
    layout_rows,
    record,
    referenced,
)
from protocol.status import MessageError, Status

#: Protocol version. Major: incompatible change (the link is refused); minor: compatible.
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 2

#: Bit set in a response opcode: response opcode = request opcode | RESPONSE_BIT.
RESPONSE_BIT = 0x80
#: Request id an ERROR carries when the request was too short to hold one.
NO_REQUEST_ID = 0xFFFF_FFFF
#: Layer index meaning "every layer" (precision policy entries, GET_WEIGHTS).
ALL_LAYERS = 0xFFFF
#: First tensor id the device allocates (weights, outputs it creates); the host uses lower ids.
DEVICE_TENSOR_ID_BASE = 0x8000_0000
MAX_NDIM = 8
MAX_LAYERS = 1024
MAX_DETAIL_BYTES = 1024
#: Bytes of the request/response header (opcode u8 + request_id u32).
HEADER_SIZE = 5
#: Sizes of the authentication fields.
AUTH_CHALLENGE_SIZE = 16
AUTH_NONCE_SIZE = 16
AUTH_TAG_SIZE = 8
SCHEMA_HASH_SIZE = 8
#: Largest TensorDesc: id, dtype, scale, ndim + MAX_NDIM dims, nbytes, crc32.
MAX_TENSOR_DESC_SIZE = 4 + 1 + 4 + 1 + 4 * MAX_NDIM + 4 + 4
#: Bytes of a TENSOR_DATA request around its data: header, id, offset, data length.
DATA_OVERHEAD = HEADER_SIZE + 12
#: Most bytes of a TENSOR_READ response around its data: header, descriptor, offset, length.
READ_OVERHEAD = HEADER_SIZE + MAX_TENSOR_DESC_SIZE + 8


# ----------------------------------------------------------------------------- enums


class Opcode(IntEnum):
    """Request opcode (u8)."""

    HELLO = 0x01
    AUTH = 0x02
    RESET = 0x03
    TENSOR_BEGIN = 0x10
    TENSOR_DATA = 0x11
    TENSOR_END = 0x12
    TENSOR_READ = 0x13
    DEFINE_MODEL = 0x20
    TRAIN_CONFIG = 0x21
    FORWARD = 0x30
    TRAIN_STEP = 0x31
    BACKWARD = 0x32
    GET_WEIGHTS = 0x33
    TRAIN_STEP_INLINE = 0x34
    READ_COUNTERS = 0x40
    RESET_COUNTERS = 0x41


class ResponseOpcode(IntEnum):
    """Response opcode (u8): the request's opcode | 0x80, or ERROR."""

    HELLO = 0x81
    AUTH = 0x82
    RESET = 0x83
    TENSOR_BEGIN = 0x90
    TENSOR_DATA = 0x91
    TENSOR_END = 0x92
    TENSOR_READ = 0x93
    DEFINE_MODEL = 0xA0
    TRAIN_CONFIG = 0xA1
    FORWARD = 0xB0
    TRAIN_STEP = 0xB1
    BACKWARD = 0xB2
    GET_WEIGHTS = 0xB3
    TRAIN_STEP_INLINE = 0xB4
    READ_COUNTERS = 0xC0
    RESET_COUNTERS = 0xC1
    ERROR = 0xFF


class HfpStage(IntEnum):
    """Which hfp8 variant a tensor uses: forward 1-4-3 with ``exp_bias``, backward e5m2."""

    FORWARD = 0
    BACKWARD = 1


class TensorClass(IntEnum):
    """The tensor classes of a layer that carry their own precision."""

    ACTIVATIONS = 0
    WEIGHTS = 1
    ERRORS = 2
    GRADIENTS = 3
    MASTER_WEIGHTS = 4
    MOMENTUM = 5


class Rounding(IntEnum):
    """Rounding mode (docs/numerics.md, "Rounding")."""

    NEAREST = 0
    STOCHASTIC = 1
    TRUNCATE = 2


class FracMode(IntEnum):
    """How a tensor class's per-tensor scale (frac_bits / shared_exp) is chosen.

    FIXED: the entry's ``scale`` as given. AMAX: ``scale_params`` of each tensor (from its
    largest magnitude). OVERFLOW: dynamic fixed point, moved from the overflow ratio.
    STOCHASTIC_THRESHOLD: OVERFLOW with stochastic thresholding (docs/numerics.md).
    """

    FIXED = 0
    AMAX = 1
    OVERFLOW = 2
    STOCHASTIC_THRESHOLD = 3


class PrecisionFlags(IntFlag):
    """Switches of the precision policy."""

    LAPS = 0x01  #: layerwise adaptive precision scaling of DFXP word lengths


class Algorithm(IntEnum):
    """Training algorithm (error propagation)."""

    BP = 0
    DFA = 1
    PIPELINED_DFA = 2


class FeedbackKind(IntEnum):
    """DFA feedback matrix kind."""

    DENSE = 0
    BINARY = 1
    SPARSE = 2


class FeedbackStorage(IntEnum):
    """Whether DFA feedback matrices are kept in memory or regenerated from their seed."""

    STORED = 0
    REGENERATED = 1


class Loss(IntEnum):
    """Loss of TRAIN_STEP (BACKWARD takes its output error from the host instead)."""

    SOFTMAX_CROSS_ENTROPY = 0
    MSE = 1


class Optimizer(IntEnum):
    """Weight update rule."""

    SGD = 0


class TrainableMode(IntEnum):
    """Which parameters are updated."""

    ALL = 0
    BIAS_ONLY = 1
    LAST_K = 2
    MASKS = 3


class PruningMode(IntEnum):
    """Which weights are pruned (and their work skipped in every stage)."""

    NONE = 0
    MAGNITUDE = 1
    CHANNEL = 2
    MASKS = 3


class LayerKind(IntEnum):
    """Layer types of DEFINE_MODEL (PyTorch names)."""

    LINEAR = 1
    CONV2D = 2
    RELU = 3
    LEAKY_RELU = 4
    MAX_POOL2D = 5
    AVG_POOL2D = 6
    FLATTEN = 7


class ParamKind(IntEnum):
    """A layer's parameter tensor."""

    WEIGHT = 0
    BIAS = 1


class ResetScope(IntEnum):
    """What RESET clears (the link and its session are never reset by a message)."""

    ALL = 0
    MODEL = 1
    TENSORS = 2


class ForwardFlags(IntFlag):
    """Options of FORWARD."""

    INLINE_OUTPUT = 0x01  #: return the output bytes in the response (else READ them)
    KEEP_ACTIVATIONS = 0x02  #: keep activations for a following BACKWARD


class Feature(IntFlag):
    """Feature bits of HELLO: what the device implements beyond the mandatory core."""

    AUTH = 0x0001  #: AUTH is implemented
    AUTH_REQUIRED = 0x0002  #: the device has a key: only HELLO/AUTH until proven
    STOCHASTIC_ROUNDING = 0x0004
    STOCHASTIC_THRESHOLDING = 0x0008
    LAPS = 0x0010
    FGMP = 0x0020
    PRUNING = 0x0040
    SELECTIVE_TRAINING = 0x0080
    BACKWARD = 0x0100  #: BACKWARD with an external output error
    RESUME = 0x0200  #: TENSOR_BEGIN resumes an interrupted transfer
    COUNTERS = 0x0400  #: READ_COUNTERS returns at least one present field
    PACKED_DFXP4 = 0x0800  #: dfxp4 tensors packed two per byte
    INLINE_STEP = 0x1000  #: TRAIN_STEP_INLINE (a training step with its tensors in the request)


# ----------------------------------------------------------------------------- records

U8, U16, U32, U64 = Int8ul, Int16ul, Int32ul, Int64ul
Bool = Ranged(Int8ul, 0, 1)

Scale = record(
    "Scale",
    Struct(
        "frac_bits" / Ranged(Int8sl, -64, 64) * "dfxpN: value = code * 2^-frac_bits",
        "shared_exp" / Ranged(Int8sl, -64, 64) * "fp8-seb, flex16: value scaled by 2^shared_exp",
        "exp_bias" / Ranged(Int8ul, 0, 15) * "hfp8 forward exponent bias (7 = e4m3)",
        "stage" / Code(Int8ul, HfpStage) * "hfp8 variant (forward 1-4-3 / backward e5m2)",
    ),
)

Shape = List(U8, U32, max_count=MAX_NDIM)

TensorDesc = record(
    "TensorDesc",
    Struct(
        "id" / U32 * "tensor id (host ids < 0x80000000, device ids >= 0x80000000)",
        "dtype" / Code(U8, DType) * "element type on the wire",
        "scale" / Scale * "per-tensor scale parameters (zero when the dtype has none)",
        "shape" / Shape * "dimensions, outermost first (C order)",
        "nbytes" / U32 * "wire bytes = wire_nbytes(dtype, prod(shape)), else BAD_SHAPE",
        "crc32" / U32 * "CRC-32 (zlib) of the whole tensor's wire bytes",
    ),
)

ParamRef = record(
    "ParamRef",
    Struct(
        "layer" / U16 * "layer index",
        "param" / Code(U8, ParamKind) * "weight or bias",
        "tensor_id" / U32 * "tensor holding the values / mask",
    ),
)

ParamTensor = record(
    "ParamTensor",
    Struct(
        "layer" / U16 * "layer index",
        "param" / Code(U8, ParamKind) * "weight or bias",
        "tensor" / TensorDesc * "the device tensor holding it (READ it)",
    ),
)

ChipParam = record(
    "ChipParam",
    Struct(
        "name" / Text(U8) * "parameter name (e.g. clock_hz, sram_bytes, dram_bytes)",
        "value" / Float64l * "value in SI units",
    ),
)

LinearParams = record(
    "LinearParams",
    Struct(
        "in_features" / U32,
        "out_features" / U32,
        "bias" / Bool * "1: the layer has a bias",
    ),
)

Conv2dParams = record(
    "Conv2dParams",
    Struct(
        "in_channels" / U32,
        "out_channels" / U32,
        "kernel_h" / U16,
        "kernel_w" / U16,
        "stride_h" / U16,
        "stride_w" / U16,
        "padding_h" / U16,
        "padding_w" / U16,
        "bias" / Bool * "1: the layer has a bias",
    ),
)

PoolParams = record(
    "PoolParams",
    Struct(
        "kernel_h" / U16,
        "kernel_w" / U16,
        "stride_h" / U16,
        "stride_w" / U16,
        "padding_h" / U16,
        "padding_w" / U16,
    ),
)

LeakyReLUParams = record("LeakyReLUParams", Struct("negative_slope" / Float32l))
NoParams = record("NoParams", Struct())

Layer = record(
    "Layer",
    Struct(
        "kind" / Code(U8, LayerKind) * "layer type",
        "params"
        / Switch(
            this.kind,
            {
                LayerKind.LINEAR: LinearParams,
                LayerKind.CONV2D: Conv2dParams,
                LayerKind.RELU: NoParams,
                LayerKind.LEAKY_RELU: LeakyReLUParams,
                LayerKind.MAX_POOL2D: PoolParams,
                LayerKind.AVG_POOL2D: PoolParams,
                LayerKind.FLATTEN: NoParams,
            },
            default=Error,
        )
        * "parameters of the kind",
    ),
)

PolicyEntry = record(
    "PolicyEntry",
    Struct(
        "layer" / U16 * "layer index, 0xFFFF = every layer (later entries override)",
        "tensor_class" / Code(U8, TensorClass),
        "format" / Code(U8, DType) * "number format (not a plain integer dtype)",
        "rounding" / Code(U8, Rounding),
        "frac_mode" / Code(U8, FracMode),
        "saturate" / Bool * "1: saturate on overflow (chip default), 0: IEEE-like overflow",
        "scale" / Scale * "initial / fixed scale parameters",
    ),
)


def _body(*fields: Any) -> Struct:
    return Struct(*fields)


# ----------------------------------------------------------------------------- bodies

#: Body of every request, by opcode.
REQUEST_BODIES: dict[Opcode, Struct] = {
    Opcode.HELLO: _body(
        "protocol_major" / U16 * "host's PROTOCOL_MAJOR",
        "protocol_minor" / U16 * "host's PROTOCOL_MINOR",
        "schema_hash" / Bytes(SCHEMA_HASH_SIZE) * "host's schema_hash()",
        "client" / Text(U8) * "host software name and version",
    ),
    Opcode.AUTH: _body(
        "host_nonce" / Bytes(AUTH_NONCE_SIZE) * "random bytes chosen by the host",
        "counter" / U64 * "first 64-bit counter of the authenticated session",
        "tag" / Bytes(AUTH_TAG_SIZE) * "auth_tag(key, 'host', challenge, host_nonce, counter)",
    ),
    Opcode.RESET: _body("scope" / Code(U8, ResetScope)),
    Opcode.TENSOR_BEGIN: _body(
        "tensor" / TensorDesc * "the tensor to be received; same id+nbytes+crc32 resumes"
    ),
    Opcode.TENSOR_DATA: _body(
        "id" / U32,
        "offset" / U32 * "byte offset of data in the tensor (must equal the receiver's offset)",
        "data" / Blob(U32) * "wire bytes of the tensor",
    ),
    Opcode.TENSOR_END: _body("id" / U32),
    Opcode.TENSOR_READ: _body(
        "id" / U32,
        "offset" / U32 * "first byte to read",
        "length" / U32 * "bytes to read (the device may return fewer: at most max payload)",
    ),
    Opcode.DEFINE_MODEL: _body(
        "input_shape" / Shape * "shape of one sample (no batch dimension)",
        "layers" / List(U16, Layer, max_count=MAX_LAYERS),
        "init_seed" / U64 * "seed of the device-side weight initialisation",
        "weights" / List(U16, ParamRef) * "initial values from uploaded tensors (else init)",
    ),
    Opcode.TRAIN_CONFIG: _body(
        "precision"
        / Struct(
            "flags" / Flags(U8, PrecisionFlags),
            "sr_seed" / U64 * "seed of the stochastic-rounding generator",
            "policy" / List(U16, PolicyEntry, max_count=4096) * "applied in order",
        ),
        "algorithm"
        / Struct(
            "kind" / Code(U8, Algorithm),
            "feedback" / Code(U8, FeedbackKind) * "DFA only",
            "feedback_storage" / Code(U8, FeedbackStorage) * "DFA only",
            "feedback_density" / Float32l * "share of nonzero feedback weights (SPARSE)",
            "feedback_seed" / U64 * "seed of the feedback matrices",
        ),
        "loss" / Code(U8, Loss),
        "optimizer"
        / Struct(
            "kind" / Code(U8, Optimizer),
            "lr" / Float32l,
            "momentum" / Float32l,
            "weight_decay" / Float32l,
        ),
        "trainable"
        / Struct(
            "mode" / Code(U8, TrainableMode),
            "last_k" / U16 * "LAST_K: number of trailing parameterised layers",
            "masks"
            / List(U16, ParamRef)
            * "MASKS: uint8 0/1 tensors, shape of the param or (out_channels,) per channel",
        ),
        "pruning"
        / Struct(
            "mode" / Code(U8, PruningMode),
            "ratio" / Float32l * "MAGNITUDE/CHANNEL: share of weights / channels pruned",
            "masks" / List(U16, ParamRef) * "MASKS: uint8 0/1 tensors, 0 = pruned",
        ),
    ),
    Opcode.FORWARD: _body(
        "input_id" / U32 * "tensor of shape (batch, *input_shape)",
        "output_id" / U32 * "id under which the device stores the output",
        "flags" / Flags(U8, ForwardFlags),
    ),
    Opcode.TRAIN_STEP: _body(
        "input_id" / U32 * "tensor of shape (batch, *input_shape)",
        "target_id" / U32 * "class indices (int) or targets (float format) for the loss",
    ),
    Opcode.BACKWARD: _body(
        "error_id" / U32 * "dLoss/dOutput for the last FORWARD with KEEP_ACTIVATIONS",
    ),
    Opcode.GET_WEIGHTS: _body("layer" / U16 * "layer index, 0xFFFF = every layer"),
    Opcode.TRAIN_STEP_INLINE: _body(
        "input" / TensorDesc * "the input batch, stored under its id as TENSOR_END would",
        "input_data" / Blob(U32) * "its wire bytes (nbytes of them)",
        "target" / TensorDesc * "the targets, stored under their id (not the input's)",
        "target_data" / Blob(U32) * "their wire bytes (nbytes of them)",
    ),
    Opcode.READ_COUNTERS: _body(),
    Opcode.RESET_COUNTERS: _body(),
}

#: Body of every response, by response opcode.
RESPONSE_BODIES: dict[ResponseOpcode, Struct] = {
    ResponseOpcode.HELLO: _body(
        "protocol_major" / U16,
        "protocol_minor" / U16,
        "schema_hash" / Bytes(SCHEMA_HASH_SIZE),
        "firmware" / Text(U8) * "firmware name and version",
        "preset" / Text(U8) * "chip preset name (e.g. hnpu-v2)",
        "parameters" / List(U16, ChipParam) * "chip parameters of the preset",
        "max_payload" / Ranged(U16, MIN_PAYLOAD, MAX_PAYLOAD) * "link payload bytes per frame",
        "window" / Ranged(U8, 1, 64) * "link window in frames",
        "dtypes" / List(U8, Code(U8, DType)) * "wire dtypes accepted in tensors",
        "formats" / List(U8, Code(U8, DType)) * "number formats of the precision policy",
        "algorithms" / List(U8, Code(U8, Algorithm)),
        "features" / Flags(U32, Feature),
        "auth_challenge" / Bytes(AUTH_CHALLENGE_SIZE) * "fresh random bytes (zeros: no AUTH)",
    ),
    ResponseOpcode.AUTH: _body(
        "counter" / U64 * "echo of the accepted counter",
        "tag" / Bytes(AUTH_TAG_SIZE) * "auth_tag(key, 'device', challenge, host_nonce, counter)",
    ),
    ResponseOpcode.RESET: _body(),
    ResponseOpcode.TENSOR_BEGIN: _body(
        "id" / U32,
        "offset" / U32 * "bytes already held: 0 for a new transfer, else resume from here",
    ),
    ResponseOpcode.TENSOR_DATA: _body(
        "id" / U32, "offset" / U32 * "the receiver's offset after this chunk"
    ),
    ResponseOpcode.TENSOR_END: _body(
        "id" / U32, "nbytes" / U32, "crc32" / U32 * "verified CRC-32 of the tensor"
    ),
    ResponseOpcode.TENSOR_READ: _body(
        "tensor" / TensorDesc,
        "offset" / U32 * "offset of data in the tensor",
        "data" / Blob(U32),
    ),
    ResponseOpcode.DEFINE_MODEL: _body(
        "layer_count" / U16,
        "parameter_count" / U64 * "elements of all weights and biases",
        "output_shape" / Shape * "shape of one output sample",
        "memory_bytes" / U64 * "device memory the model takes",
    ),
    ResponseOpcode.TRAIN_CONFIG: _body(
        "memory_bytes" / U64 * "device memory of model + training state",
    ),
    ResponseOpcode.FORWARD: _body(
        "output" / TensorDesc,
        "data" / Blob(U32) * "output bytes with INLINE_OUTPUT, else empty",
    ),
    ResponseOpcode.TRAIN_STEP: _body(
        "loss" / Float32l * "mean loss of the batch before the update",
        "step" / U64 * "training steps done since DEFINE_MODEL",
        "counters" / Counters * "counters delta of this step",
    ),
    ResponseOpcode.BACKWARD: _body(
        "step" / U64, "counters" / Counters * "counters delta of this step"
    ),
    ResponseOpcode.GET_WEIGHTS: _body("params" / List(U16, ParamTensor)),
    ResponseOpcode.TRAIN_STEP_INLINE: _body(
        "loss" / Float32l * "mean loss of the batch before the update",
        "step" / U64 * "training steps done since DEFINE_MODEL",
        "counters" / Counters * "counters delta of this step",
    ),
    ResponseOpcode.READ_COUNTERS: _body("counters" / Counters * "totals since RESET_COUNTERS"),
    ResponseOpcode.RESET_COUNTERS: _body(),
    ResponseOpcode.ERROR: _body(
        "status" / Code(U16, Status),
        "request_opcode" / U8 * "opcode byte of the failed request (0 if unknown)",
        "detail" / Text(U16, max_len=MAX_DETAIL_BYTES) * "what was wrong, what is accepted",
    ),
}

#: What each request does and the status codes it may answer with (normative; rendered into
#: docs/protocol.md). Every request may also get BAD_REQUEST, NOT_AUTHENTICATED (except HELLO
#: and AUTH), BUSY and INTERNAL.
MESSAGE_DOCS: dict[Opcode, str] = {
    Opcode.HELLO: (
        "First request of a session. The device answers with its versions, schema hash, "
        "limits and capabilities whatever the host sent; the host refuses the link when the "
        "major version or the schema hash differ (the device may also answer VERSION_MISMATCH "
        "or SCHEMA_MISMATCH). Never needs authentication."
    ),
    Opcode.AUTH: (
        "Proves the key (see Authentication). AUTH_FAILED on a wrong tag or a reused counter; "
        "UNSUPPORTED when the device has no key."
    ),
    Opcode.RESET: (
        "Clears device state: ALL = model, tensors and counters; MODEL = model and training "
        "configuration; TENSORS = host tensors. The link session and authentication survive."
    ),
    Opcode.TENSOR_BEGIN: (
        "Announces a tensor the host will send. A new id (or a different descriptor for an "
        "existing id) allocates it and answers offset 0; the same id, nbytes and crc32 as an "
        "unfinished transfer keeps the received bytes and answers their count (resume). "
        "BAD_SHAPE if nbytes != wire bytes of dtype x shape (more than 8 dimensions do not "
        "parse: BAD_REQUEST); UNSUPPORTED_FORMAT "
        "for a dtype the device lacks; TENSOR_TOO_LARGE above max_tensor_bytes; "
        "TOO_MANY_TENSORS for a new id when the device holds max_tensors; OUT_OF_MEMORY when "
        "it does not fit; LIMIT for an id at or above 0x80000000."
    ),
    Opcode.TENSOR_DATA: (
        "Bytes [offset, offset+len) of a begun tensor, in chunks of any length up to the "
        f"device's largest request less {DATA_OVERHEAD} bytes (the link cuts a longer "
        "request into frames; fewer, larger chunks cost fewer requests and answers). offset "
        "must equal the receiver's offset "
        "(else TRANSFER_INCOMPLETE, the detail names the expected offset; the host re-sends "
        "TENSOR_BEGIN to learn it); LIMIT if the chunk runs past nbytes; UNKNOWN_TENSOR if "
        "the id was not begun."
    ),
    Opcode.TENSOR_END: (
        "Completes a transfer: TRANSFER_INCOMPLETE if fewer than nbytes arrived, "
        "CHECKSUM_MISMATCH if the CRC-32 of the bytes differs from BEGIN's (the tensor is then "
        "discarded). Only completed tensors can be used by other requests."
    ),
    Opcode.TENSOR_READ: (
        "Reads bytes of any completed tensor (host or device id). The response carries at "
        f"most min(length, max_payload - {READ_OVERHEAD}) bytes of data, so it fits one frame; "
        "a read at or past the end returns zero bytes. UNKNOWN_TENSOR for an unknown id."
    ),
    Opcode.DEFINE_MODEL: (
        "Replaces the model. Layer sizes must chain from input_shape (BAD_SHAPE), the model "
        "with its training state must fit device memory (OUT_OF_MEMORY), weights list "
        "uploaded tensors of the parameters' exact shape in fp32 or a supported format "
        "(UNKNOWN_TENSOR, BAD_SHAPE, UNKNOWN_LAYER); TOO_MANY_LAYERS above max_layers. "
        "Counters and the step count restart."
    ),
    Opcode.TRAIN_CONFIG: (
        "Sets precision policy, algorithm, loss, optimizer, trainable set and pruning for "
        "the defined model (NO_MODEL before DEFINE_MODEL). UNSUPPORTED_FORMAT, "
        "UNSUPPORTED_ALGORITHM, UNKNOWN_LAYER (policy, masks), UNKNOWN_TENSOR (masks)."
    ),
    Opcode.FORWARD: (
        "Runs the model on a completed input tensor of shape (batch, *input_shape) and stores "
        "the output as output_id. NO_MODEL, UNKNOWN_TENSOR, BAD_SHAPE, TENSOR_TOO_LARGE "
        "(output above max_tensor_bytes), OUT_OF_MEMORY."
    ),
    Opcode.TRAIN_STEP: (
        "One training step: forward, loss against target, backward by the configured "
        "algorithm, update. Targets are int class indices (cross-entropy) or values of the "
        "output's shape (MSE). NO_MODEL, UNKNOWN_TENSOR, BAD_SHAPE."
    ),
    Opcode.BACKWARD: (
        "Backward pass and update from an externally supplied output error (dLoss/dOutput, "
        "shape of the last FORWARD's output), e.g. for distillation or host-side losses. "
        "Requires a preceding FORWARD with KEEP_ACTIVATIONS (else BAD_REQUEST)."
    ),
    Opcode.TRAIN_STEP_INLINE: (
        "TRAIN_STEP with its tensors in the request: the input and the target are stored "
        "under their ids exactly as a TENSOR_BEGIN/DATA/END of the same descriptor and bytes "
        "would store them (a later TENSOR_BEGIN of the same descriptor answers offset = nbytes), "
        "then the step runs and answers as TRAIN_STEP does. One request and one response per "
        "step instead of seven; the link fragments a request longer than a frame. The tensor "
        "checks of TENSOR_BEGIN and TENSOR_END apply (BAD_SHAPE, UNSUPPORTED_FORMAT, "
        "CHECKSUM_MISMATCH, TENSOR_TOO_LARGE, OUT_OF_MEMORY, LIMIT); BAD_REQUEST if the data "
        "length differs from nbytes or both tensors have the same id. Devices with feature "
        "INLINE_STEP."
    ),
    Opcode.GET_WEIGHTS: (
        "Lists the device tensors holding the weights and biases of one layer or all "
        "(UNKNOWN_LAYER, NO_MODEL); read them with TENSOR_READ."
    ),
    Opcode.READ_COUNTERS: (
        "Counters accumulated since RESET_COUNTERS or DEFINE_MODEL; absent fields are "
        "counters this backend cannot count."
    ),
    Opcode.RESET_COUNTERS: "Zeroes every counter.",
}


#: The whole request: header + body selected by opcode; unknown opcodes hit ``Error``.
Request = Struct(
    "opcode" / U8 * "Opcode",
    "request_id" / U32 * "chosen by the host, echoed by the response",
    "body" / Switch(this.opcode, {int(k): v for k, v in REQUEST_BODIES.items()}, default=Error),
)
#: The whole response: header + body selected by response opcode.
Response = Struct(
    "opcode" / U8 * "ResponseOpcode",
    "request_id" / U32 * "the request's id",
    "body" / Switch(this.opcode, {int(k): v for k, v in RESPONSE_BODIES.items()}, default=Error),
)


# ----------------------------------------------------------------------------- codec


@dataclass(frozen=True)
class RequestMsg:
    """A decoded request: opcode, request id and the body as plain dicts/lists/values."""

    opcode: Opcode
    request_id: int
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResponseMsg:
    """A decoded response (``opcode`` is ResponseOpcode.ERROR for an error)."""

    opcode: ResponseOpcode
    request_id: int
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def is_error(self) -> bool:
        return self.opcode == ResponseOpcode.ERROR

    @property
    def answers(self) -> Opcode | None:
        """The request opcode this response answers (None for ERROR)."""
        if self.opcode == ResponseOpcode.ERROR:
            return None
        known = _REQUEST_OF.get(self.opcode)
        return known if known is not None else Opcode(self.opcode & ~RESPONSE_BIT)


def response_opcode(opcode: Opcode) -> ResponseOpcode:
    """The response opcode of a request opcode."""
    known = _RESPONSE_OF.get(opcode)
    return known if known is not None else ResponseOpcode(int(opcode) | RESPONSE_BIT)


def _plain(obj: Any) -> Any:
    """Containers -> dicts without construct's private keys, ListContainers -> lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _encode(
    struct: Struct, bodies: Mapping[Any, Struct], opcode: int, request_id: int, body: Any
) -> bytes:
    name = getattr(opcode, "name", hex(int(opcode)))
    if int(opcode) not in {int(k) for k in bodies}:
        raise MessageError(Status.UNKNOWN_OPCODE, f"no message has opcode {int(opcode):#04x}")
    if not isinstance(request_id, int) or not 0 <= request_id <= 0xFFFF_FFFF:
        raise MessageError(Status.BAD_REQUEST, f"request_id must be a u32, got {request_id!r}")
    try:
        return bytes(
            struct.build({"opcode": int(opcode), "request_id": request_id, "body": body or {}})
        )
    except KeyError as e:
        raise MessageError(Status.BAD_REQUEST, f"cannot encode {name}: missing field {e}") from None
    except (ConstructError, TypeError, ValueError, OverflowError) as e:
        raise MessageError(Status.BAD_REQUEST, f"cannot encode {name}: {e}") from None


# TENSOR_DATA fast path. A tensor moves as one TENSOR_DATA request and response per frame, so
# the generic construct codec (tens of microseconds a message) was the largest per-frame cost of
# a tensor upload. These struct layouts are the same fields as the construct definitions of
# REQUEST_BODIES[TENSOR_DATA] / RESPONSE_BODIES[TENSOR_DATA] and produce the same bytes (a
# hypothesis test compares the two paths). Anything unusual (a missing field, a value out of
# range, a non-int, a length that does not match) goes to the construct path, which produces
# the documented error or result.
_DATA_REQ = pystruct.Struct("<BIIII")  # opcode, request_id, id, offset, data length
_DATA_RESP = pystruct.Struct("<BIII")  # opcode, request_id, id, offset
_DATA_REQ_OP = 0x11
_DATA_RESP_OP = 0x91
_U32_MAX = 0xFFFF_FFFF


def _fast_u32s(*values: Any) -> bool:
    """True if every value is a plain int in u32 range (bools and subclasses excluded)."""
    for v in values:
        if type(v) is not int or not 0 <= v <= _U32_MAX:
            return False
    return True


def _encode_data_request(request_id: Any, body: Any) -> bytes | None:
    """TENSOR_DATA request bytes by struct, or None where construct must decide."""
    if type(body) is not dict:
        return None
    tid = body.get("id")
    offset = body.get("offset")
    data = body.get("data")
    if not _fast_u32s(request_id, tid, offset):
        return None
    if type(data) is bytes or type(data) is bytearray:
        n = len(data)
    elif type(data) is memoryview and data.c_contiguous:
        n = data.nbytes
    else:
        return None
    if n > _U32_MAX:
        return None
    return b"".join((_DATA_REQ.pack(_DATA_REQ_OP, request_id, tid, offset, n), data))


def _encode_data_response(request_id: Any, body: Any) -> bytes | None:
    """TENSOR_DATA response bytes by struct, or None where construct must decide."""
    if type(body) is not dict:
        return None
    tid = body.get("id")
    offset = body.get("offset")
    if not _fast_u32s(request_id, tid, offset):
        return None
    return _DATA_RESP.pack(_DATA_RESP_OP, request_id, tid, offset)


# Training-step fast path: the same idea for the messages of every training step
# (TRAIN_STEP, TRAIN_STEP_INLINE and their responses, with TensorDesc and the counters by
# precompiled structs). Same bytes as construct, checked by hypothesis in
# tests/test_messages_fastpath.py; anything construct would refuse goes to construct.
_HEAD = pystruct.Struct("<BI")  # opcode, request_id
_DESC_HEAD = pystruct.Struct("<IBbbBBB")  # id, dtype, frac_bits, shared_exp, exp_bias, stage, ndim
_U32 = pystruct.Struct("<I")
_DESC_TAIL = pystruct.Struct("<II")  # nbytes, crc32
_STEP_REQ = pystruct.Struct("<BIII")  # opcode, request_id, input_id, target_id
_STEP_RESP = pystruct.Struct("<BIfQ")  # opcode, request_id, loss, step (then the counters)
_STEP_REQ_OP = 0x31
_INLINE_REQ_OP = 0x34
_STEP_RESP_OPS = (0xB1, 0xB4)
_DTYPE_CODES: dict[int, DType] = {int(d): d for d in DType}
#: The response opcode of each request opcode, and the training steps' by value (dict lookups
#: instead of enum calls on every step).
_RESPONSE_OF: dict[int, ResponseOpcode] = {
    int(o): ResponseOpcode(int(o) | RESPONSE_BIT)
    for o in Opcode
    if int(o) | RESPONSE_BIT in ResponseOpcode._value2member_map_
}
_STEP_RESPONSES: dict[int, ResponseOpcode] = {op: ResponseOpcode(op) for op in _STEP_RESP_OPS}
_REQUEST_OF: dict[int, Opcode] = {int(r): Opcode(code) for code, r in _RESPONSE_OF.items()}
_STAGE_CODES: dict[int, HfpStage] = {int(h): h for h in HfpStage}


#: The shape's u32s by rank (struct's own cache of formats is a dict lookup more).
_SHAPES = [pystruct.Struct(f"<{n}I") for n in range(MAX_NDIM + 1)]


def _pack_desc(desc: Any) -> list[bytes] | None:
    """The TensorDesc fields' bytes by struct, or None where construct must decide."""
    if type(desc) is not dict:
        return None
    scale, dtype = desc.get("scale"), desc.get("dtype")
    shape: Any = desc.get("shape")
    if type(scale) is not dict or type(shape) not in (list, tuple) or len(shape) > MAX_NDIM:
        return None  # (a subclass of list or tuple: construct decides)
    if type(dtype) is not DType and (type(dtype) is not int or dtype not in _DTYPE_CODES):
        return None
    fb = scale.get("frac_bits")
    se = scale.get("shared_exp")
    eb = scale.get("exp_bias")
    st = scale.get("stage")
    if type(st) is HfpStage:
        st = int(st)
    if not (
        type(fb) is int
        and -64 <= fb <= 64
        and type(se) is int
        and -64 <= se <= 64
        and type(eb) is int
        and 0 <= eb <= 15
        and st in _STAGE_CODES
        and _fast_u32s(desc.get("id"), desc.get("nbytes"), desc.get("crc32"), *shape)
    ):
        return None
    return [
        _DESC_HEAD.pack(desc["id"], dtype, fb, se, eb, st, len(shape)),
        _SHAPES[len(shape)].pack(*shape),
        _DESC_TAIL.pack(desc["nbytes"], desc["crc32"]),
    ]


def _unpack_desc(data: bytes, at: int) -> tuple[dict[str, Any], int] | None:
    """(TensorDesc dict, offset after it) at ``at``, or None where construct must decide."""
    n = len(data)
    if at + _DESC_HEAD.size > n:
        return None
    tid, dtype, fb, se, eb, st, ndim = _DESC_HEAD.unpack_from(data, at)
    at += _DESC_HEAD.size
    end = at + 4 * ndim + _DESC_TAIL.size
    if (
        dtype not in _DTYPE_CODES
        or not (-64 <= fb <= 64 and -64 <= se <= 64 and eb <= 15)
        or st not in _STAGE_CODES
        or ndim > MAX_NDIM
        or end > n
    ):
        return None
    shape = list(pystruct.unpack_from(f"<{ndim}I", data, at))
    nbytes, crc = _DESC_TAIL.unpack_from(data, end - _DESC_TAIL.size)
    scale = {"frac_bits": fb, "shared_exp": se, "exp_bias": eb, "stage": _STAGE_CODES[st]}
    desc = {
        "id": tid,
        "dtype": _DTYPE_CODES[dtype],
        "scale": scale,
        "shape": shape,
        "nbytes": nbytes,
        "crc32": crc,
    }
    return desc, end


def _blob_len(data: Any) -> int | None:
    if type(data) is bytes or type(data) is bytearray:
        return len(data)
    if type(data) is memoryview and data.c_contiguous:
        return data.nbytes
    return None


def _encode_inline_request(request_id: Any, body: Any) -> bytes | None:
    """TRAIN_STEP_INLINE request bytes by struct (one copy of the tensor bytes), or None."""
    if type(body) is not dict or not _fast_u32s(request_id):
        return None
    parts: list[Any] = [_HEAD.pack(_INLINE_REQ_OP, request_id)]
    for key in ("input", "target"):
        desc = _pack_desc(body.get(key))
        data = body.get(f"{key}_data")
        n = _blob_len(data)
        if desc is None or n is None or n > _U32_MAX:
            return None
        parts += desc
        parts += (_U32.pack(n), data)
    return b"".join(parts)


def _decode_inline_request(data: bytes) -> RequestMsg | None:
    at = _HEAD.size
    body: dict[str, Any] = {}
    for key in ("input", "target"):
        got = _unpack_desc(data, at)
        if got is None or got[1] + 4 > len(data):
            return None
        body[key], at = got
        (n,) = _U32.unpack_from(data, at)
        at += 4
        if at + n > len(data):
            return None
        body[f"{key}_data"] = memoryview(data)[at : at + n]  # no copy of the tensor bytes
        at += n
    if at != len(data):
        return None
    return RequestMsg(Opcode.TRAIN_STEP_INLINE, _U32.unpack_from(data, 1)[0], body)


def _encode_step_response(opcode: int, request_id: Any, body: Any) -> bytes | None:
    """TRAIN_STEP / TRAIN_STEP_INLINE response bytes by struct, or None."""
    if type(body) is not dict or not _fast_u32s(request_id):
        return None
    loss, step = body.get("loss"), body.get("step")
    if type(loss) is not float or type(step) is not int or not 0 <= step < 1 << 64:
        return None
    counters = pack_counters(body.get("counters"))
    if counters is None:
        return None
    try:
        return _STEP_RESP.pack(opcode, request_id, loss, step) + counters
    except (pystruct.error, OverflowError):
        return None


def encode_request(opcode: Opcode, request_id: int, body: Mapping[str, Any] | None = None) -> bytes:
    """Bytes of a request message. Raises MessageError on a missing or out-of-range field."""
    if type(opcode) is Opcode:
        fast = None
        if opcode == _DATA_REQ_OP:
            fast = _encode_data_request(request_id, body)
        elif opcode == _INLINE_REQ_OP:
            fast = _encode_inline_request(request_id, body)
        elif opcode == _STEP_REQ_OP and type(body) is dict:
            ids = (request_id, body.get("input_id"), body.get("target_id"))
            if _fast_u32s(*ids):
                fast = _STEP_REQ.pack(_STEP_REQ_OP, *ids)
        if fast is not None:
            return fast
    return _encode(Request, REQUEST_BODIES, opcode, request_id, body)


def encode_response(
    opcode: ResponseOpcode | Opcode, request_id: int, body: Mapping[str, Any] | None = None
) -> bytes:
    """Bytes of a response; ``opcode`` may be the request's Opcode (the response bit is set)."""
    if isinstance(opcode, Opcode):
        opcode = response_opcode(opcode)
    if type(opcode) is ResponseOpcode:
        fast = None
        if opcode == _DATA_RESP_OP:
            fast = _encode_data_response(request_id, body)
        elif opcode in _STEP_RESP_OPS:
            fast = _encode_step_response(int(opcode), request_id, body)
        if fast is not None:
            return fast
    return _encode(Response, RESPONSE_BODIES, opcode, request_id, body)


def encode_error(request_id: int, status: Status, detail: str, request_opcode: int = 0) -> bytes:
    """Bytes of an ERROR response (detail truncated to MAX_DETAIL_BYTES of UTF-8)."""
    raw = detail.encode("utf-8")[:MAX_DETAIL_BYTES].decode("utf-8", errors="ignore")
    body = {"status": status, "request_opcode": request_opcode & 0xFF, "detail": raw}
    return encode_response(ResponseOpcode.ERROR, request_id, body)


def _decode(
    struct: Struct, data: bytes | bytearray | memoryview, what: str
) -> tuple[int, int, dict[str, Any]]:
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise MessageError(
            Status.BAD_REQUEST,
            f"{what} of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header",
        )
    opcode = data[0]
    request_id = int.from_bytes(data[1:5], "little")
    stream = io.BytesIO(data)
    try:
        obj = struct.parse_stream(stream)
    except ExplicitError:
        raise MessageError(
            Status.UNKNOWN_OPCODE,
            f"{what} opcode {opcode:#04x} is not defined in protocol "
            f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            opcode=opcode,
            request_id=request_id,
        ) from None
    except (ConstructError, ValueError, OverflowError) as e:
        raise MessageError(
            Status.BAD_REQUEST,
            f"malformed {what} (opcode {opcode:#04x}): {e}",
            opcode=opcode,
            request_id=request_id,
        ) from None
    end = stream.tell()
    if end != len(data):
        raise MessageError(
            Status.BAD_REQUEST,
            f"{what} (opcode {opcode:#04x}) has {len(data) - end} trailing bytes after its body",
            opcode=opcode,
            request_id=request_id,
        )
    return opcode, request_id, _plain(obj.body)


def decode_request(data: bytes | bytearray | memoryview) -> RequestMsg:
    """Parse a request message. Raises MessageError (UNKNOWN_OPCODE or BAD_REQUEST)."""
    n = len(data)
    op = data[0] if n else -1
    if op == _DATA_REQ_OP and n >= _DATA_REQ.size:
        _, rid, tid, offset, length = _DATA_REQ.unpack_from(data)
        if length == n - _DATA_REQ.size:  # else construct reports what is wrong
            chunk = bytes(data[_DATA_REQ.size :])
            return RequestMsg(Opcode.TENSOR_DATA, rid, {"id": tid, "offset": offset, "data": chunk})
    elif op == _INLINE_REQ_OP and n >= _HEAD.size:
        fast = _decode_inline_request(bytes(data))
        if fast is not None:
            return fast
    elif op == _STEP_REQ_OP and n == _STEP_REQ.size:
        _, rid, input_id, target_id = _STEP_REQ.unpack(data)
        return RequestMsg(Opcode.TRAIN_STEP, rid, {"input_id": input_id, "target_id": target_id})
    opcode, request_id, body = _decode(Request, data, "request")
    return RequestMsg(Opcode(opcode), request_id, body)


def decode_response(data: bytes | bytearray | memoryview) -> ResponseMsg:
    """Parse a response message. Raises MessageError (UNKNOWN_OPCODE or BAD_REQUEST)."""
    if len(data) == _DATA_RESP.size and data[0] == _DATA_RESP_OP:
        _, rid, tid, offset = _DATA_RESP.unpack(data)
        return ResponseMsg(ResponseOpcode.TENSOR_DATA, rid, {"id": tid, "offset": offset})
    if len(data) == _STEP_RESP.size + COUNTERS_SIZE and data[0] in _STEP_RESP_OPS:
        counters = unpack_counters(data, _STEP_RESP.size)
        if counters is not None:
            op, rid, loss, step = _STEP_RESP.unpack_from(data)
            body = {"loss": loss, "step": step, "counters": counters}
            return ResponseMsg(_STEP_RESPONSES[op], rid, body)
    opcode, request_id, body = _decode(Response, data, "response")
    return ResponseMsg(ResponseOpcode(opcode), request_id, body)


# ----------------------------------------------------------------------------- helpers


def zero_scale() -> dict[str, int]:
    """The Scale of a tensor without scale parameters."""
    return {"frac_bits": 0, "shared_exp": 0, "exp_bias": 0, "stage": HfpStage.FORWARD}


def tensor_message(
    tensor_id: int,
    codes: NDArray[np.generic],
    dtype: DType,
    scale: Mapping[str, int] | None = None,
    *,
    copy: bool = True,
) -> tuple[dict[str, Any], bytes | memoryview]:
    """(TensorDesc dict, wire bytes) of a code array, with nbytes and the CRC-32 filled in.
    ``copy=False``: when the array already holds the wire codes (C-contiguous, the dtype's
    code dtype, not packed dfxp4) the bytes are a read-only view of it, not a copy (the
    caller must not change the array while it uses them)."""
    dt = dtype if type(dtype) is DType else DType(dtype)
    arr = np.asarray(codes)
    data: bytes | memoryview
    if (
        not copy
        and dt is not DType.DFXP4
        and arr.dtype == CODE_DTYPE[dt]
        and arr.flags.c_contiguous
    ):
        # count x itemsize bytes: the wire size of the shape by construction
        data = memoryview(arr).toreadonly().cast("B")  # type: ignore[arg-type]
        shape = list(arr.shape)
    else:
        data = to_wire(codes, dt)
        shape = list(np.shape(codes))
        assert len(data) == wire_nbytes(dt, shape_count(shape))
    desc = {
        "id": tensor_id,
        "dtype": dt,
        "scale": zero_scale() if not scale else {**zero_scale(), **scale},
        "shape": shape,
        "nbytes": len(data),
        "crc32": _crc32(data),
    }
    return desc, data


def data_chunks(
    tensor_id: int, data: bytes | memoryview, max_payload: int, offset: int = 0
) -> list[dict[str, Any]]:
    """TENSOR_DATA bodies sending ``data[offset:]`` in chunks that each fit one frame of
    ``max_payload`` bytes (slices of a memoryview: no copy until encoding)."""
    step = max_payload - DATA_OVERHEAD
    if step <= 0:
        raise ValueError(f"max_payload {max_payload} leaves no room for data")
    view = memoryview(data)
    return [
        {"id": tensor_id, "offset": o, "data": view[o : o + step]}
        for o in range(offset, len(data), step)
    ]


def auth_tag(key: bytes, role: str, challenge: bytes, host_nonce: bytes, counter: int) -> bytes:
    """The 8-byte AUTH proof: HMAC-SHA256(key, label | challenge | host_nonce | counter u64le),
    truncated to 8 bytes; label is b"microtrain-auth-host" or b"microtrain-auth-device"."""
    if role not in ("host", "device"):
        raise ValueError(f"role must be 'host' or 'device', got {role!r}")
    msg = (
        b"microtrain-auth-" + role.encode() + challenge + host_nonce + counter.to_bytes(8, "little")
    )
    return hmac.new(key, msg, hashlib.sha256).digest()[:AUTH_TAG_SIZE]


# ----------------------------------------------------------------------------- schema hash


def schema_text(
    requests: Mapping[Opcode, Struct] | None = None,
    responses: Mapping[ResponseOpcode, Struct] | None = None,
    records: Mapping[str, Struct] | None = None,
    enums: Mapping[str, type[IntEnum] | type[IntFlag]] | None = None,
) -> str:
    """Canonical text of every definition (what ``schema_hash`` hashes).

    Arguments default to this module's tables; tests pass modified copies to show that any
    change of a definition changes the text.
    """
    requests = REQUEST_BODIES if requests is None else requests
    responses = RESPONSE_BODIES if responses is None else responses
    used_records, used_enums = referenced([*requests.values(), *responses.values()])
    records = used_records if records is None else records
    enums = (
        {"Opcode": Opcode, "ResponseOpcode": ResponseOpcode, **used_enums}
        if enums is None
        else enums
    )
    lines = [f"microtrain-messages header={HEADER_SIZE} opcode:u8 request_id:u32"]
    tables: list[tuple[str, Mapping[Any, Struct]]] = [
        ("request", requests),
        ("response", responses),
    ]
    for kind, table in tables:
        for op in sorted(table, key=int):
            lines.append(f"{kind} {op.name} {int(op):#04x}")
            lines.extend(f"  {r.name}: {r.type} [{r.size}]" for r in layout_rows(table[op]))
    for name in sorted(records):
        lines.append(f"record {name}")
        lines.extend(f"  {r.name}: {r.type} [{r.size}]" for r in layout_rows(records[name]))
    for name in sorted(enums):
        cls = enums[name]
        kind = "flags" if issubclass(cls, IntFlag) else "enum"
        lines.append(f"{kind} {name}: " + ", ".join(f"{m.name}={int(m)}" for m in cls))
    return "\n".join(lines) + "\n"


def schema_hash(text: str | None = None) -> bytes:
    """First 8 bytes of SHA-256 of ``schema_text()`` (or of ``text``)."""
    return hashlib.sha256((schema_text() if text is None else text).encode()).digest()[:8]
