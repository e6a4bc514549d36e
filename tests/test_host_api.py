"""Host-side pieces without a device: nn specs and forward, state dicts, Precision, SGD, USB
discovery, the CLI's info command, and the layering rule."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import host
from host import cli, discovery, errors, nn
from host.model import Precision
from protocol.messages import ALL_LAYERS, FracMode, Rounding, TensorClass

ROOT = Path(__file__).resolve().parent.parent


def naive_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    n, _, h, wd = x.shape
    o, _ci, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("ncij,ocij->no", patch, w) + b
    return out


@given(
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    size=st.integers(3, 6),
    seed=st.integers(0, 2**16),
)
def test_conv2d_forward_equals_the_definition(
    k: int, stride: int, pad: int, size: int, seed: int
) -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, k, stride=stride, padding=pad), input_shape=(2, size, size))
    w = net.init_weights(seed)
    x = np.random.default_rng(seed).standard_normal((2, 2, size, size)).astype(np.float32)
    want = naive_conv(x, w["0.weight"], w["0.bias"], stride, pad)
    assert net.output_shape == want.shape[1:]
    np.testing.assert_allclose(net.forward(x, w), want, rtol=1e-5, atol=1e-5)


def test_pools_flatten_and_shapes() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    mp = nn.Sequential(nn.MaxPool2d(2), input_shape=(1, 4, 4))
    ap = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), input_shape=(1, 4, 4))
    np.testing.assert_array_equal(mp.forward(x, {}), [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(ap.forward(x, {}), [[2.5, 4.5, 10.5, 12.5]])
    assert ap.shapes == [(1, 4, 4), (1, 2, 2), (4,)]
    lr = nn.Sequential(nn.LeakyReLU(0.5), input_shape=(2,))
    np.testing.assert_array_equal(lr.forward(np.array([[-2.0, 3.0]]), {}), [[-1.0, 3.0]])


def test_state_dict_names_shapes_and_npz_round_trip(tmp_path: Path) -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 2, bias=False),
        input_shape=(1, 4, 4),
    )
    assert net.param_shapes() == {"0.weight": (4, 1, 3, 3), "0.bias": (4,), "3.weight": (2, 16)}
    w = net.init_weights(seed=1)
    nn.save_npz(tmp_path / "w.npz", w)
    back = nn.load_npz(tmp_path / "w.npz")
    assert back.keys() == w.keys()
    for k in w:
        np.testing.assert_array_equal(back[k], w[k])


def test_spec_errors_say_what_is_accepted() -> None:
    with pytest.raises(errors.ShapeError, match="add Flatten"):
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(8, 2), input_shape=(1, 4, 4))
    with pytest.raises(errors.InvalidArgument, match="pass input_shape"):
        nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(errors.InvalidArgument, match="accepted: Linear, Conv2d"):
        nn.Sequential("relu")  # type: ignore[arg-type]
    with pytest.raises(errors.ShapeError, match="do not fit"):
        nn.Sequential(nn.Conv2d(1, 2, 5), input_shape=(1, 3, 3))
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(errors.InvalidArgument, match="unknown weight name"):
        net.check_weights({"1.weight": np.zeros((2, 3))})
    with pytest.raises(errors.InvalidArgument, match="lack"):
        net.check_weights({"0.weight": np.zeros((2, 3))})


@pytest.mark.parametrize(
    ("text", "fmt", "rounding", "scale"),
    [
        ("fp32", "fp32", "nearest", "amax"),
        ("dfxp8+sr", "dfxp8", "stochastic", "amax"),
        ("DFXP8+stochastic+overflow", "dfxp8", "stochastic", "overflow"),
        ("bf16+truncate", "bf16", "truncate", "amax"),
        ("fp8-seb+fixed", "fp8-seb", "nearest", "fixed"),
    ],
)
def test_precision_strings(text: str, fmt: str, rounding: str, scale: str) -> None:
    p = Precision.parse(text)
    assert (p.format, p.rounding, p.scale) == (fmt, rounding, scale)
    assert Precision.parse(str(p)) == p


def test_precision_policy_entries() -> None:
    assert Precision.parse("fp32").policy() == []
    pol = Precision.parse("dfxp8+sr").policy()
    assert [e["tensor_class"] for e in pol] == [
        TensorClass.ACTIVATIONS,
        TensorClass.WEIGHTS,
        TensorClass.ERRORS,
        TensorClass.GRADIENTS,
    ]
    assert all(e["layer"] == ALL_LAYERS for e in pol)
    assert all(
        e["rounding"] == Rounding.STOCHASTIC and e["frac_mode"] == FracMode.AMAX for e in pol
    )
    bf = Precision("bf16", classes=("weights",)).policy()
    assert len(bf) == 1 and bf[0]["frac_mode"] == FracMode.FIXED
    assert Precision.parse("dfxp8").input_dtype() == "dfxp8"
    assert Precision("dfxp8", classes=("weights",)).input_dtype() == "fp32"
    assert Precision.parse("hfp8").input_dtype() == "fp32"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("fp33", "unknown precision format 'fp33'; accepted: fp32"),
        ("int8", "integer dtype"),
        ("dfxp8+fast", "unknown precision option 'fast'"),
        ("bf16+overflow", "needs a dfxpN or flex16"),
        (8, "a string like 'dfxp8\\+sr'"),
    ],
)
def test_precision_errors(spec: object, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        Precision.parse(spec)  # type: ignore[arg-type]


def test_sgd_validates() -> None:
    assert host.optim.SGD(0.1, momentum=0.9).wire()["momentum"] == pytest.approx(0.9)
    for bad in ({"lr": 0}, {"lr": 0.1, "momentum": 1.0}, {"lr": float("nan")}):
        with pytest.raises(errors.InvalidArgument, match="accepted"):
            host.optim.SGD(**bad)


def _port(device: str, vid: int | None, pid: int | None, serial_number: str | None) -> object:
    return SimpleNamespace(
        device=device, vid=vid, pid=pid, serial_number=serial_number, description="adapter"
    )


PORTS = [
    _port("/dev/ttyUSB1", 0x0403, 0x6010, "FT2"),
    _port("/dev/ttyUSB0", 0x0403, 0x6010, "FT1"),
    _port("/dev/ttyACM0", 0x2E8A, 0x000A, "PICO"),
    _port("/dev/ttyS0", None, None, None),
]


def test_discovery_by_vid_pid_serial() -> None:
    def ports() -> list[object]:
        return PORTS

    assert discovery.find_port(0x2E8A, ports=ports) == "/dev/ttyACM0"
    assert discovery.find_port("0403", "6010", "FT1", ports=ports) == "/dev/ttyUSB0"
    assert [p.device for p in discovery.find_ports(0x0403, ports=ports)] == [
        "/dev/ttyUSB0",
        "/dev/ttyUSB1",
    ]
    with pytest.raises(errors.DiscoveryError, match=r"2 serial ports match.*serial_number"):
        discovery.find_port(0x0403, 0x6010, ports=ports)
    with pytest.raises(errors.DiscoveryError, match="no serial port matches vid=0x1234"):
        discovery.find_port(0x1234, ports=ports)
    with pytest.raises(errors.InvalidArgument, match="outside"):
        discovery.find_port(0x10000, ports=ports)


def test_cli_info_prints_json_and_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "--device", "emu://hnpu-v1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "hnpu-v1" and info["algorithms"] == ["bp", "bias-only"]
    assert cli.main(["info", "--device", "emu://hnpu-v2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^preset\s+hnpu-v2$", out, re.M)
    assert re.search(r"^limits\s+.*max_request_bytes 8388608, .*max_batch 256$", out, re.M)
    assert re.search(r"^  device_memory_bytes\s+67108864$", out, re.M)  # an integer, not 6.7e+07
    assert cli.main(["info", "--device", "emu://nope"]) == 1
    assert "unknown chip preset" in capsys.readouterr().err


def test_host_driver_code_never_imports_device_model() -> None:
    # Only the CLI modules (host/cli.py, host/cli_*.py: the application layer) may; the
    # studies get the cost model handed in by the CLI.
    pattern = re.compile(r"^\s*(from\s+device_model\b|import\s+device_model\b)", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "host").rglob("*.py"))
        if not p.name.startswith("cli") and pattern.search(p.read_text())
    ]
    assert offenders == []
    # The rule is not vacuous: the pattern does find such imports.
    assert pattern.search("from device_model.emu_port import EmuSerial")
    assert pattern.search("    import device_model")
