"""The host driver end to end against the in-process emulator (``emu://hnpu-v2``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import host
from host import errors, nn
from protocol import messages as m
from protocol import numerics
from protocol.dtypes import DType
from protocol.messages import Opcode
from protocol.status import Status

URL = "emu://hnpu-v2?seed=1"


@pytest.fixture
def dev() -> Iterator[host.Device]:
    d = host.open(URL)
    yield d
    d.close()


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def blobs(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated clusters in 4-D (a separable problem)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], np.float32)
    y = rng.integers(0, 3, n)
    x = centers[y] + 0.3 * rng.standard_normal((n, 4)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def test_info_reports_the_preset_formats_algorithms_and_limits(dev: host.Device) -> None:
    info = dev.info()
    assert info["preset"] == "hnpu-v2"
    assert info["protocol"].startswith("1.")
    assert {"fp32", "dfxp8", "bf16"} <= set(info["formats"])
    assert {"bp", "dfa", "pipelined-dfa", "bias-only"} <= set(info["algorithms"])
    assert 256 <= info["limits"]["link_max_payload"] <= info["limits"]["max_payload"]
    # the device's resource limits, as integers, equal to the parameters it reported
    for name in host.device.DEVICE_LIMITS:
        assert info["limits"][name] == info["parameters"][name] > 0
    assert info["limits"]["max_request_bytes"] == 8 << 20
    assert info["firmware"]


def test_hnpu_v1_offers_no_dfa_and_deploy_says_so() -> None:
    with host.open("emu://hnpu-v1") as d:
        assert "dfa" not in d.info()["algorithms"]
        with pytest.raises(errors.InvalidArgument, match="does not offer 'dfa'"):
            d.deploy(mlp(), algorithm="dfa")


def test_weights_round_trip_and_predict_matches_the_host_forward(dev: host.Device) -> None:
    net = mlp()
    w = net.init_weights(seed=3)
    model = dev.deploy(net, w)
    got = model.get_weights()
    assert list(got) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for k in w:
        np.testing.assert_array_equal(got[k], w[k])
    x, _ = blobs(5)
    np.testing.assert_allclose(model.predict(x), net.forward(x, w), rtol=1e-5, atol=1e-6)
    w2 = {k: v * -0.5 for k, v in w.items()}
    model.set_weights(w2)
    for k, v in model.get_weights().items():
        np.testing.assert_array_equal(v, w2[k])
    model.set_weights({"2.bias": np.array([1.0, 2.0, 3.0], np.float32)})
    after = model.get_weights()
    np.testing.assert_array_equal(after["2.bias"], [1, 2, 3])
    np.testing.assert_array_equal(after["0.weight"], w2["0.weight"])


def test_conv_model_predict_matches_the_host_forward(dev: host.Device) -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 2, stride=1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2, 4),
        input_shape=(1, 6, 6),
    )
    w = net.init_weights(seed=1)
    model = dev.deploy(net, w)
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), net.forward(x, w), rtol=1e-4, atol=1e-5)


def test_fp32_training_reduces_the_loss_and_counts_work(dev: host.Device) -> None:
    x, y = blobs()
    model = dev.deploy(mlp(), optimizer=host.optim.SGD(0.2), seed=2)
    dev.reset_counters()
    first = model.train_step(x, y)
    for _ in range(15):
        last = model.train_step(x, y)
    assert last.loss < 0.5 * first.loss
    assert last.step == 16
    assert first.counters["ff"]["macs_total"] == 48 * (4 * 8 + 8 * 3)
    assert dev.counters()["ff"]["macs_total"] == 16 * 48 * (4 * 8 + 8 * 3)
    acc = (model.predict(x).argmax(1) == y).mean()
    assert acc > 0.9


def _input_desc(dev: host.Device) -> dict:
    return dev._call(Opcode.TENSOR_READ, {"id": dev.INPUT_ID, "offset": 0, "length": 0})["tensor"]


def test_dfxp8_inputs_travel_as_one_byte_per_element_only_when_nearest(
    dev: host.Device,
) -> None:
    x, y = blobs()
    model = dev.deploy(mlp(), precision="dfxp8", optimizer=host.optim.SGD(0.2), seed=2)
    first = model.train_step(x, y)
    for _ in range(15):
        last = model.train_step(x, y)
    assert last.loss < 0.7 * first.loss
    desc = _input_desc(dev)
    assert desc["dtype"] == DType.DFXP8
    assert desc["nbytes"] == x.size
    # Stochastic rounding: the device's random bits cannot be reproduced here, so fp32.
    model = dev.deploy(mlp(), precision="dfxp8+sr", optimizer=host.optim.SGD(0.2), seed=2)
    first = model.train_step(x, y)
    for _ in range(15):
        last = model.train_step(x, y)
    assert last.loss < 0.7 * first.loss
    assert _input_desc(dev)["dtype"] == DType.FP32


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([4, 5, 8, 11, 16]),
    hnp.arrays(
        np.float32,
        st.integers(1, 40),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    st.one_of(st.none(), st.integers(-64, 64)),
)
def test_the_hosts_dfxp_encoder_gives_the_reference_codes(
    nbits: int, x: np.ndarray, frac: int | None
) -> None:
    from host.device import _dfxp_nearest

    fmt = f"dfxp{nbits}"
    f = numerics.scale_params(x, fmt)["frac_bits"] if frac is None else frac
    want = numerics.encode(x, fmt, frac_bits=f)
    got = _dfxp_nearest(x, nbits, f)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def _relu_first() -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), input_shape=(4,))


@pytest.mark.parametrize(
    ("precision", "build", "wire"),
    [
        ("dfxp8", mlp, DType.DFXP8),
        ("dfxp4", mlp, DType.DFXP4),
        ("flex16", mlp, DType.FLEX16),
        ("bf16", mlp, DType.BF16),
        ("e4m3", mlp, DType.E4M3),
        ("fp8-seb", mlp, DType.FP8_SEB),
        ("dfxp8+sr", mlp, DType.FP32),
        ("dfxp8+overflow", mlp, DType.FP32),
        ("dfxp8", _relu_first, DType.FP32),
    ],
)
def test_inputs_in_the_datapath_format_train_bit_for_bit_as_fp32_inputs(
    dev: host.Device, precision: str, build: object, wire: DType
) -> None:
    """The host sends inputs in the activation format only where the device's quantisation
    of the fp32 input gives the same values: the weights after a few steps (and a predict)
    are identical to those of the same run with fp32 inputs."""
    assert callable(build)
    x, y = blobs()
    x = x * np.float32(3.3)  # an amax that is no power of two
    runs = []
    for force_fp32 in (False, True):
        model = dev.deploy(build(), precision=precision, optimizer=host.optim.SGD(0.2), seed=5)
        if force_fp32:
            model.input_format = lambda: "fp32"  # type: ignore[method-assign]
        for i in range(3):
            model.train_step(x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16])
        assert _input_desc(dev)["dtype"] == (DType.FP32 if force_fp32 else wire)
        out = model.predict(x[:7])
        runs.append((model.get_weights(), out))
    (w_wire, out_wire), (w_fp32, out_fp32) = runs
    for k in w_fp32:
        np.testing.assert_array_equal(w_wire[k], w_fp32[k])
    np.testing.assert_array_equal(out_wire, out_fp32)


def test_bias_only_changes_only_biases(dev: host.Device) -> None:
    x, y = blobs()
    net = mlp()
    w = net.init_weights(seed=5)
    model = dev.deploy(net, w, algorithm="bias-only", optimizer=host.optim.SGD(0.2))
    for _ in range(3):
        model.train_step(x, y)
    got = model.get_weights()
    np.testing.assert_array_equal(got["0.weight"], w["0.weight"])
    np.testing.assert_array_equal(got["2.weight"], w["2.weight"])
    assert not np.array_equal(got["2.bias"], w["2.bias"])


def test_backward_with_the_cross_entropy_gradient_equals_train_step(dev: host.Device) -> None:
    x, y = blobs(16)
    net = mlp()
    w = net.init_weights(seed=7)
    a = dev.deploy(net, w, optimizer=host.optim.SGD(0.1))
    a.train_step(x, y)
    wa = a.get_weights()
    b = dev.deploy(net, w, optimizer=host.optim.SGD(0.1))
    out = b.predict(x, keep_activations=True).astype(np.float64)
    p = np.exp(out - out.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    res = b.backward(p / len(y))
    assert res.step == 1
    for k, v in b.get_weights().items():
        np.testing.assert_allclose(v, wa[k], rtol=1e-5, atol=1e-6)


def test_bad_input_gets_typed_errors_and_the_device_stays_usable(dev: host.Device) -> None:
    x, y = blobs(8)
    with pytest.raises(errors.InvalidArgument, match="unknown precision format 'fp33'"):
        dev.deploy(mlp(), precision="fp33")
    with pytest.raises(errors.InvalidArgument, match="accepted: bp, dfa"):
        dev.deploy(mlp(), algorithm="sgd")
    with pytest.raises(errors.InvalidArgument, match="accepted: cross_entropy, mse"):
        dev.deploy(mlp(), loss="hinge")
    with pytest.raises(errors.ShapeError, match=r"expected \(8, 4\)"):
        dev.deploy(mlp(), {**mlp().init_weights(), "0.weight": np.zeros((4, 8))})
    model = dev.deploy(mlp(), optimizer=host.optim.SGD(0.1))
    with pytest.raises(errors.ShapeError, match=r"takes \(batch, \*\(4,\)\)"):
        model.train_step(x[:, :3], y)
    with pytest.raises(errors.ShapeError, match="class indices"):
        model.train_step(x, y[:5])
    with pytest.raises(errors.InvalidArgument, match=r"outside 0\.\.2"):
        model.train_step(x, y + 3)
    # A request the device itself refuses: DeviceError with the status and the detail.
    with pytest.raises(errors.DeviceError) as exc:
        dev._call(Opcode.TRAIN_STEP, {"input_id": 999, "target_id": 998})
    assert exc.value.status == Status.UNKNOWN_TENSOR
    assert "999" in exc.value.detail
    assert np.isfinite(model.train_step(x, y).loss)
    assert model.predict(x).shape == (8, 3)


def test_deploying_again_retires_the_old_model(dev: host.Device) -> None:
    old = dev.deploy(mlp())
    dev.deploy(mlp())
    with pytest.raises(errors.StateLost, match="deploy it again"):
        old.predict(np.zeros((1, 4), np.float32))


def test_large_tensors_are_chunked_both_ways() -> None:
    # A small agreed payload forces many TENSOR_DATA and TENSOR_READ requests per tensor.
    with host.open("emu://hnpu-v2?max_payload=256") as d:
        assert d.runner.max_payload == 256
        net = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))
        w = net.init_weights(seed=9)
        model = d.deploy(net, w)
        for k, v in model.get_weights().items():
            np.testing.assert_array_equal(v, w[k])


def test_context_manager_closes_and_a_closed_device_says_so() -> None:
    with host.open(URL) as d:
        pass
    assert d.closed
    with pytest.raises(errors.LinkLost, match="open it again"):
        d.counters()


def test_auth_with_the_right_key_and_typed_errors_without_or_with_a_wrong_one() -> None:
    url = "emu://hnpu-v2?key=00112233445566778899"
    with host.open(url, key=bytes.fromhex("00112233445566778899")) as d:
        assert "auth_required" in d.info()["features"]
        d.deploy(mlp())
    with pytest.raises(errors.AuthError, match="pass key="):
        host.open(url)
    with pytest.raises(errors.AuthError, match="refused the key"):
        host.open(url, key=b"wrong")


def test_open_refuses_bad_urls_and_arguments() -> None:
    with pytest.raises(errors.LinkLost, match="unknown chip preset 'nope'"):
        host.open("emu://nope")
    with pytest.raises(errors.InvalidArgument, match="baudrate"):
        host.open(URL, baudrate=0)
    with pytest.raises(errors.InvalidArgument, match="timeout"):
        host.open(URL, timeout=-1)


def test_upload_resumes_from_the_offset_the_device_reports(dev: host.Device) -> None:
    # Three and a half chunks at whatever payload the link agreed (emu:// default or not).
    per_chunk = (dev.runner.max_payload - m.DATA_OVERHEAD) // 4
    x = np.random.default_rng(0).standard_normal(per_chunk * 7 // 2).astype(np.float32)
    desc, data = m.tensor_message(7, x.view(np.uint32), DType.FP32)
    chunks = m.data_chunks(7, data, dev.runner.max_payload)
    assert len(chunks) == 4
    # An interrupted transfer: BEGIN and the first chunk reached the device, then nothing.
    dev._call(Opcode.TENSOR_BEGIN, {"tensor": desc})
    dev._call(Opcode.TENSOR_DATA, chunks[0])
    sent: list[int] = []
    submit = dev.runner.submit

    def spy(opcode: Opcode, body: dict | None = None) -> int:
        if opcode == Opcode.TENSOR_DATA and body is not None:
            sent.append(body["offset"])
        return submit(opcode, body)

    dev.runner.submit = spy  # type: ignore[method-assign]
    dev._upload(desc, data)
    held = len(chunks[0]["data"])  # only what the device lacked, in the host's upload chunks
    assert sent == [c["offset"] for c in m.data_chunks(7, data, dev._chunk_payload(), held)]
    assert sent[0] == held
    np.testing.assert_array_equal(dev._download(7), x)


def test_device_errors_carry_status_detail_and_what_to_do(dev: host.Device) -> None:
    with pytest.raises(errors.DeviceError, match="deploy a model first") as exc:
        dev._call(Opcode.GET_WEIGHTS, {"layer": 0})
    assert exc.value.status == Status.NO_MODEL
    assert exc.value.opcode == "GET_WEIGHTS"


def test_repeated_uploads_skip_the_bytes_but_never_use_a_lost_tensor(dev: host.Device) -> None:
    x = np.arange(600, dtype=np.float32)
    dev._upload_array(9, x, "fp32")
    sent: list[Opcode] = []
    submit = dev.runner.submit

    def spy(opcode: Opcode, body: dict | None = None) -> int:
        sent.append(opcode)
        return submit(opcode, body)

    dev.runner.submit = spy  # type: ignore[method-assign]
    dev._upload_array(9, x, "fp32")  # identical: the device still holds it
    assert Opcode.TENSOR_DATA not in sent
    # Behind the driver's back the device drops its host tensors: the same upload must
    # notice (END fails) and send the bytes again.
    dev.runner.wait([submit(Opcode.RESET, {"scope": m.ResetScope.TENSORS})])
    sent.clear()
    dev._upload_array(9, x, "fp32")
    assert Opcode.TENSOR_DATA in sent
    np.testing.assert_array_equal(dev._download(9), x)


WIRE_FORMATS = [
    "fp32",
    "fp16",
    "bf16",
    "tf32",
    "dlfloat16",
    "e4m3",
    "e5m2",
    "hfp8",
    "flex16",
    "fp8-seb",
    "fgmp",
    "dfxp4",
    "dfxp8",
]


@pytest.fixture(scope="module")
def shared_dev() -> Iterator[host.Device]:
    d = host.open("emu://hnpu-v2?seed=9")
    yield d
    d.close()


@settings(max_examples=40)
@given(
    fmt=st.sampled_from(WIRE_FORMATS),
    values=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
        elements=st.floats(-300, 300, width=32),
    ),
)
def test_a_tensor_sent_in_a_format_reads_back_as_its_reference_quantization(
    shared_dev: host.Device, fmt: str, values: np.ndarray
) -> None:
    # Law: upload in fmt, then download == protocol.numerics.quantize(values, fmt) (nearest,
    # per-tensor scale from the largest magnitude), bit for bit, whatever the shape.
    shared_dev._upload_array(20, values, fmt)
    got = shared_dev._download(20)
    want = numerics.quantize(values, fmt)
    assert got.shape == values.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_selective_training_and_pruning_options(dev: host.Device) -> None:
    x, y = blobs(16)
    net = mlp()
    w = net.init_weights(seed=4)
    sgd = host.optim.SGD(0.2)

    def changed(model: host.Model) -> dict[str, np.ndarray]:
        model.train_step(x, y)
        got = model.get_weights()
        return {k: got[k] != w[k] for k in w}

    last = changed(dev.deploy(net, w, trainable=1, optimizer=sgd))
    assert not last["0.weight"].any() and not last["0.bias"].any() and last["2.weight"].any()
    mask = np.zeros((3, 8), np.uint8)
    mask[0] = 1
    only = changed(dev.deploy(net, w, trainable={"2.weight": mask}, optimizer=sgd))
    assert only["2.weight"][0].any() and not only["2.weight"][1:].any()
    assert not (only["0.weight"].any() or only["0.bias"].any() or only["2.bias"].any())
    pruned = dev.deploy(net, w, prune=0.5, optimizer=sgd)
    res = pruned.train_step(x, y)
    assert res.counters["ff"]["skipped"]["pruned"] > 0
    assert (pruned.get_weights()["0.weight"] == 0).mean() == pytest.approx(0.5)
    with pytest.raises(errors.InvalidArgument, match=r"unknown parameter '5\.weight'"):
        dev.deploy(net, w, trainable={"5.weight": mask})
    with pytest.raises(errors.InvalidArgument, match="only 0 and 1"):
        dev.deploy(net, w, prune={"2.weight": mask * 2})
    with pytest.raises(errors.InvalidArgument, match="no stochastic thresholding"):
        dev.deploy(net, w, precision="dfxp8+st")


def test_mse_loss_and_dfa_train(dev: host.Device) -> None:
    x, y = blobs(32)
    onehot = np.eye(3, dtype=np.float32)[y]
    mse = dev.deploy(mlp(), loss="mse", optimizer=host.optim.SGD(0.1), seed=1)
    first = mse.train_step(x, onehot).loss
    for _ in range(10):
        last = mse.train_step(x, onehot).loss
    assert last < first
    with pytest.raises(errors.ShapeError, match=r"MSE takes \(32, 3\)"):
        mse.train_step(x, y)
    dfa = dev.deploy(mlp(), algorithm="dfa", optimizer=host.optim.SGD(0.2), seed=1)
    first = dfa.train_step(x, y).loss
    for _ in range(15):
        last = dfa.train_step(x, y).loss
    assert last < first


@pytest.mark.parametrize("path", ["no-inline-feature", "over-max-request"])
def test_a_step_by_uploads_and_train_step_equals_the_inline_step(
    dev: host.Device, path: str
) -> None:
    """Devices without TRAIN_STEP_INLINE, and batches larger than the device's largest
    request, go by TENSOR_BEGIN/DATA/END and TRAIN_STEP: the same training, bit for bit."""
    x, y = blobs()
    runs = []
    for inline in (True, False):
        model = dev.deploy(mlp(), optimizer=host.optim.SGD(0.2), seed=4)
        sent: list[Opcode] = []
        submit = dev.runner.submit

        def spy(
            opcode: Opcode, body: dict | None = None, sent: list = sent, submit: Any = submit
        ) -> int:
            sent.append(opcode)
            return submit(opcode, body)

        dev.runner.submit = spy  # type: ignore[method-assign]
        features = dev._hello["features"]
        try:
            if not inline and path == "no-inline-feature":
                dev._hello["features"] = features & ~m.Feature.INLINE_STEP
            if not inline and path == "over-max-request":
                dev._max_request = lambda: 512  # type: ignore[method-assign]
            losses = [model.train_step(x, y).loss for _ in range(3)]
        finally:
            dev._hello["features"] = features
            del dev.runner.submit
            dev.__dict__.pop("_max_request", None)
        if inline:
            assert sent == [Opcode.TRAIN_STEP_INLINE] * 3
        else:
            assert Opcode.TRAIN_STEP_INLINE not in sent and sent.count(Opcode.TRAIN_STEP) == 3
        runs.append((losses, model.get_weights()))
    (l0, w0), (l1, w1) = runs
    assert l0 == l1
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k])


# ---------------------------------------------------------------------------- device restarts


@pytest.mark.parametrize("seed", range(4))
def test_a_restart_during_uploads_is_redone_or_state_lost_never_unknown_tensor(seed: int) -> None:
    """Issue 7: a device restart in the middle of a weight upload (deploy, set_weights) or of
    a step's tensors. The host either completes the operation on the restarted device (it
    holds everything a deploy sends: the weights read back are exactly the given ones) or
    raises StateLost; it never surfaces the device's UNKNOWN_TENSOR / NO_MODEL for what is
    really a restart, and never trains on what the device does not hold."""
    dev = host.open(f"emu://hnpu-v2?seed={seed}&reset_every=50", timeout=3)
    try:
        net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        w = net.init_weights(seed=1)
        x = np.random.default_rng(seed).standard_normal((200, 64)).astype(np.float32)
        y = np.arange(200) % 10
        deployed = done = lost = 0
        for i in range(6):
            want = {k: v * np.float32(1 + i) for k, v in w.items()}
            try:
                model = dev.deploy(net, want)
                got = model.get_weights()
            except host.errors.StateLost:
                lost += 1
                continue
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])
            deployed += 1
            try:
                model.set_weights({"2.bias": np.full(10, float(i), np.float32)})
                model.train_step(x, y)  # 51 KB of input in one request (4 KiB frames)
                model.predict(x)
                done += 1
            except host.errors.StateLost:
                lost += 1
        port = dev.runner.port
        assert port.fault_stats["device_resets"] >= 1
        assert deployed >= 1 and done + lost == 6
    finally:
        dev.close()
