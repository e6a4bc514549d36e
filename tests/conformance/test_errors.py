"""Bad requests get their specific status, and the device stays usable after each."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest

import host
from host import errors
from protocol import messages as m
from protocol.dtypes import DType
from protocol.messages import Opcode
from protocol.status import Status

from .support import mlp, raw_request, request_bytes

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def deployed(dev: host.Device) -> tuple[host.Model, dict]:
    w = mlp().init_weights(seed=2)
    return dev.deploy(mlp(), w, precision="dfxp8"), w


def _usable(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    model, w = deployed
    assert dev.counters()["ff"] is not None
    if dev._model is not model:
        model = dev.deploy(mlp(), w, precision="dfxp8")
    assert model.predict(X).shape == (2, 3)


def _status(fn: Callable[[], object]) -> Status:
    with pytest.raises(errors.DeviceError) as exc:
        fn()
    assert exc.value.detail, "an ERROR response must say what was wrong"
    return exc.value.status


def _raw_status(dev: host.Device, data: bytes) -> Status:
    resp = raw_request(dev, data)
    assert resp.is_error
    assert resp.body["detail"]
    return Status(resp.body["status"])


def test_unknown_opcode(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    data = request_bytes(Opcode.READ_COUNTERS)
    data[0] = 0xEE
    assert _raw_status(dev, bytes(data)) == Status.UNKNOWN_OPCODE
    _usable(dev, deployed)


def test_truncated_request(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    data = request_bytes(Opcode.TENSOR_READ, {"id": 1, "offset": 0, "length": 4})
    assert _raw_status(dev, bytes(data[:-3])) == Status.BAD_REQUEST
    _usable(dev, deployed)


def test_unknown_dtype_in_a_descriptor(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    desc, _ = m.tensor_message(0x50, np.zeros(4, np.int32), DType.INT32)
    good = request_bytes(Opcode.TENSOR_BEGIN, {"tensor": desc})
    other = m.encode_request(Opcode.TENSOR_BEGIN, 0, {"tensor": {**desc, "dtype": DType.FP32}})
    (at,) = [i for i in range(5, len(good)) if good[i] != other[i]]
    good[at] = 0x7F  # no DType has this code
    assert _raw_status(dev, bytes(good)) in (Status.BAD_REQUEST, Status.UNSUPPORTED_FORMAT)
    _usable(dev, deployed)


def test_unknown_tensor(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    read = {"id": 0x7777, "offset": 0, "length": 16}
    assert _status(lambda: dev._call(Opcode.TENSOR_READ, read)) == Status.UNKNOWN_TENSOR
    fwd = {"input_id": 0x7778, "output_id": dev.OUTPUT_ID, "flags": 1}
    assert _status(lambda: dev._call(Opcode.FORWARD, fwd)) == Status.UNKNOWN_TENSOR
    _usable(dev, deployed)


def test_descriptor_whose_size_does_not_match_its_shape(
    dev: host.Device, deployed: tuple[host.Model, dict]
) -> None:
    desc, _ = m.tensor_message(0x51, np.zeros(4, np.float32).view(np.uint32), DType.FP32)
    bad = {**desc, "nbytes": 20}
    assert _status(lambda: dev._call(Opcode.TENSOR_BEGIN, {"tensor": bad})) == Status.BAD_SHAPE
    _usable(dev, deployed)


def test_checksum_mismatch_at_the_end_of_an_upload(
    dev: host.Device, deployed: tuple[host.Model, dict]
) -> None:
    desc, data = m.tensor_message(0x52, np.arange(8, dtype=np.int32), DType.INT32)
    bad = {**desc, "crc32": desc["crc32"] ^ 1}
    dev._call(Opcode.TENSOR_BEGIN, {"tensor": bad})
    for chunk in m.data_chunks(0x52, data, dev.runner.max_payload):
        dev._call(Opcode.TENSOR_DATA, chunk)
    end = {"id": 0x52}
    assert _status(lambda: dev._call(Opcode.TENSOR_END, end)) == Status.CHECKSUM_MISMATCH
    _usable(dev, deployed)


def test_input_of_the_wrong_shape(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    _usable(dev, deployed)
    dev._upload_array(dev.INPUT_ID, np.zeros((2, 5), np.float32), "fp32")
    body = {"input_id": dev.INPUT_ID, "output_id": dev.OUTPUT_ID, "flags": 1}
    assert _status(lambda: dev._call(Opcode.FORWARD, body)) == Status.BAD_SHAPE
    _usable(dev, deployed)


def test_layer_outside_the_model(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    _usable(dev, deployed)
    body = {"layer": 7}
    assert _status(lambda: dev._call(Opcode.GET_WEIGHTS, body)) == Status.UNKNOWN_LAYER
    _usable(dev, deployed)


def test_unsupported_number_format(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    _usable(dev, deployed)
    model, _ = deployed
    cfg = copy.deepcopy(dev._model.config if dev._model else model.config)
    assert cfg["precision"]["policy"], "a dfxp8 model has a precision policy"
    for entry in cfg["precision"]["policy"]:
        entry["format"] = DType.INT8  # a storage dtype, never a datapath format
    assert _status(lambda: dev._call(Opcode.TRAIN_CONFIG, cfg)) == Status.UNSUPPORTED_FORMAT
    _usable(dev, deployed)


def test_no_model(dev: host.Device, deployed: tuple[host.Model, dict]) -> None:
    dev._call(Opcode.RESET, {"scope": m.ResetScope.MODEL})
    body = {"input_id": dev.INPUT_ID, "output_id": dev.OUTPUT_ID, "flags": 1}
    assert _status(lambda: dev._call(Opcode.FORWARD, body)) == Status.NO_MODEL
    dev._model = None
    _usable(dev, deployed)
