"""Golden expectations of the conformance suite: the models, a numpy backprop of them, and
raw requests for the error checks (bytes no well-behaved host would send)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

import host
from host import nn
from protocol import messages as m
from protocol.messages import Opcode


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def conv() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 4),
        input_shape=(1, 4, 4),
    )


def blobs(n: int, seed: int = 0) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Three separated clusters in 4-D with their class labels."""
    rng = np.random.default_rng(seed)
    centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], np.float32)
    y = rng.integers(0, 3, n)
    x = centers[y] + 0.3 * rng.standard_normal((n, 4)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def mlp_sgd_step(
    w: dict[str, NDArray[Any]], x: NDArray[Any], y: NDArray[Any], lr: float
) -> tuple[dict[str, NDArray[np.float64]], float]:
    """One SGD step of ``mlp()`` on the mean softmax cross-entropy, in float64 from the
    definitions: (new weights, loss before the update)."""
    w1, b1, w2, b2 = (
        np.asarray(w[k], np.float64) for k in ("0.weight", "0.bias", "2.weight", "2.bias")
    )
    xs = np.asarray(x, np.float64)
    h_pre = xs @ w1.T + b1
    h = np.maximum(h_pre, 0.0)
    z = h @ w2.T + b2
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y]).mean())
    dz = p.copy()
    dz[np.arange(n), y] -= 1.0
    dz /= n
    dh = (dz @ w2) * (h_pre > 0)
    grads = {"0.weight": dh.T @ xs, "0.bias": dh.sum(0), "2.weight": dz.T @ h, "2.bias": dz.sum(0)}
    new = {k: np.asarray(w[k], np.float64) - lr * g for k, g in grads.items()}
    return new, loss


def raw_request(dev: host.Device, data: bytes) -> m.ResponseMsg:
    """Send an arbitrary request message (its request id in bytes 1..4) and return the
    device's response, without the host's encoder in the way."""
    runner = dev.runner
    rid = int.from_bytes(data[1:5], "little")
    with runner._lock:
        runner._pending[rid] = runner.link.send_message(0, data)
        (resp,) = runner.wait([rid])
    return resp


def request_bytes(opcode: Opcode, body: dict[str, Any] | None = None) -> bytearray:
    """A well-formed request with a fresh random request id, as bytes to be damaged."""
    rid = int(np.random.default_rng().integers(1, 2**31))
    return bytearray(m.encode_request(opcode, rid, body))
