"""An independent plain-numpy backpropagation (and DFA) of the engine's layers, from the math.

Nothing here is shared with device_model: every layer's forward pass, input gradient and
parameter gradient is written directly from its definition (convolutions as sums over
kernel offsets, pooling as loops over output positions), in float64 by default (float32 on
request). The tests compare the engine's fp32 training against it and check its gradients
by finite differences.

Layers are ``(kind, params)`` pairs with the engine's kinds and PyTorch parameter names;
weights use state-dict names ("0.weight", "0.bias").
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Spec = tuple[str, dict[str, Any]]


def _two(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _conv_geometry(p: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    return _two(p["kernel_size"]), _two(p.get("stride", 1)), _two(p.get("padding", 0))


def conv_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> np.ndarray:
    """y[n,o,a,c] = b[o] + sum_{ch,i,j} x[n, ch, a*sh + i - ph, c*sw + j - pw] w[o,ch,i,j]."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, ho, wo), x.dtype)
    for a in range(ho):
        for c in range(wo):
            for i in range(kh):
                for j in range(kw):
                    r, q = a * sh + i - ph, c * sw + j - pw
                    if 0 <= r < h and 0 <= q < wd:
                        y[:, :, a, c] += x[:, :, r, q] @ w[:, :, i, j].T
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv_backward(
    x: np.ndarray, w: np.ndarray, dy: np.ndarray, stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dw, db) of conv_forward for the output error dy."""
    _, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for a in range(dy.shape[2]):
        for c in range(dy.shape[3]):
            for i in range(kh):
                for j in range(kw):
                    r, q = a * sh + i - ph, c * sw + j - pw
                    if 0 <= r < h and 0 <= q < wd:
                        dx[:, :, r, q] += dy[:, :, a, c] @ w[:, :, i, j]
                        dw[:, :, i, j] += dy[:, :, a, c].T @ x[:, :, r, q]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def pool_forward(x: np.ndarray, kind: str, p: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """Max pool (padding never wins: -inf) or average pool (zero padding counted)."""
    k = _two(p["kernel_size"])
    s = _two(p["stride"]) if p.get("stride") is not None else k
    pd = _two(p.get("padding", 0))
    n, ch, h, wd = x.shape
    ho, wo = (h + 2 * pd[0] - k[0]) // s[0] + 1, (wd + 2 * pd[1] - k[1]) // s[1] + 1
    y = np.zeros((n, ch, ho, wo), x.dtype)
    where: dict[tuple[int, int], list[tuple[int, int]]] = {}
    arg = np.zeros((n, ch, ho, wo, 2), np.int64)
    for a in range(ho):
        for c in range(wo):
            cells = [
                (a * s[0] + i - pd[0], c * s[1] + j - pd[1])
                for i in range(k[0])
                for j in range(k[1])
            ]
            where[(a, c)] = cells
            if kind == "max_pool2d":
                best = np.full((n, ch), -np.inf, x.dtype)
                for r, q in cells:
                    if 0 <= r < h and 0 <= q < wd:
                        better = x[:, :, r, q] > best
                        best = np.where(better, x[:, :, r, q], best)
                        arg[:, :, a, c, 0] = np.where(better, r, arg[:, :, a, c, 0])
                        arg[:, :, a, c, 1] = np.where(better, q, arg[:, :, a, c, 1])
                y[:, :, a, c] = best
            else:
                tot = np.zeros((n, ch), x.dtype)
                for r, q in cells:
                    if 0 <= r < h and 0 <= q < wd:
                        tot += x[:, :, r, q]
                y[:, :, a, c] = tot / (k[0] * k[1])
    return y, (where, arg, k)


def pool_backward(x: np.ndarray, dy: np.ndarray, kind: str, state: Any) -> np.ndarray:
    where, arg, k = state
    n, ch, h, wd = x.shape
    dx = np.zeros_like(x)
    ni, ci = np.meshgrid(np.arange(n), np.arange(ch), indexing="ij")
    for (a, c), cells in where.items():
        if kind == "max_pool2d":
            np.add.at(dx, (ni, ci, arg[:, :, a, c, 0], arg[:, :, a, c, 1]), dy[:, :, a, c])
        else:
            for r, q in cells:
                if 0 <= r < h and 0 <= q < wd:
                    dx[:, :, r, q] += dy[:, :, a, c] / (k[0] * k[1])
    return dx


class GoldenNet:
    """A sequential network in plain numpy (``dtype`` float64 or float32)."""

    def __init__(
        self, specs: Sequence[Spec], weights: Mapping[str, np.ndarray], dtype: Any = np.float64
    ) -> None:
        self.specs = [(k, dict(p)) for k, p in specs]
        self.dtype = dtype
        self.w = {n: np.array(v, dtype) for n, v in weights.items()}
        self.m: dict[str, np.ndarray] = {}

    def param_layers(self) -> list[int]:
        return [i for i, (k, _) in enumerate(self.specs) if k in ("linear", "conv2d")]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """Output and what the backward pass needs (each layer's input and state)."""
        x = np.asarray(x, self.dtype)
        tape: list[Any] = []
        for i, (kind, p) in enumerate(self.specs):
            st: Any = None
            if kind == "linear":
                y = x @ self.w[f"{i}.weight"].T
                if p.get("bias", True):
                    y = y + self.w[f"{i}.bias"]
            elif kind == "conv2d":
                _, s, pd = _conv_geometry(p)
                b = self.w[f"{i}.bias"] if p.get("bias", True) else None
                y = conv_forward(x, self.w[f"{i}.weight"], b, s, pd)
            elif kind == "relu":
                y = np.maximum(x, 0)
            elif kind == "leaky_relu":
                y = np.where(x > 0, x, x * self.dtype(p.get("negative_slope", 0.01)))
            elif kind in ("max_pool2d", "avg_pool2d"):
                y, st = pool_forward(x, kind, p)
            elif kind == "flatten":
                y = x.reshape(x.shape[0], -1)
            else:
                raise ValueError(kind)
            tape.append((x, st))
            x = y.astype(self.dtype)
        return x, tape

    def layer_backward(
        self, i: int, dy: np.ndarray, tape: list[Any], grads: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Input error of layer i from its output error; parameter gradients into grads."""
        kind, p = self.specs[i]
        x, st = tape[i]
        if kind == "linear":
            grads[f"{i}.weight"] = dy.T @ x
            if p.get("bias", True):
                grads[f"{i}.bias"] = dy.sum(axis=0)
            return dy @ self.w[f"{i}.weight"]
        if kind == "conv2d":
            _, s, pd = _conv_geometry(p)
            dx, dw, db = conv_backward(x, self.w[f"{i}.weight"], dy, s, pd)
            grads[f"{i}.weight"] = dw
            if p.get("bias", True):
                grads[f"{i}.bias"] = db
            return dx
        if kind == "relu":
            return np.where(x > 0, dy, 0)
        if kind == "leaky_relu":
            return np.where(x > 0, dy, dy * self.dtype(p.get("negative_slope", 0.01)))
        if kind in ("max_pool2d", "avg_pool2d"):
            return pool_backward(x, dy, kind, st)
        return dy.reshape(x.shape)

    def loss(self, y: np.ndarray, target: np.ndarray, kind: str) -> tuple[float, np.ndarray]:
        """Mean softmax cross-entropy over the batch (int targets) or mean squared error
        over all elements; returns (loss, dLoss/dy)."""
        if kind == "mse":
            d = y - np.asarray(target, self.dtype)
            return float(np.mean(d**2)), 2 * d / d.size
        n = y.shape[0]
        z = y - y.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(n), target]).mean()
        onehot = np.zeros_like(p)
        onehot[np.arange(n), target] = 1
        return float(loss), (p - onehot) / n

    def gradients(
        self,
        x: np.ndarray,
        target: np.ndarray,
        loss: str = "softmax_cross_entropy",
        *,
        output_error: np.ndarray | None = None,
    ) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
        """Backprop: (loss, parameter gradients, dLoss/dx)."""
        y, tape = self.forward(x)
        if output_error is None:
            value, e = self.loss(y, target, loss)
        else:
            value, e = float("nan"), np.asarray(output_error, self.dtype)
        grads: dict[str, np.ndarray] = {}
        for i in reversed(range(len(self.specs))):
            e = self.layer_backward(i, e, tape, grads)
        return value, grads, e

    def dfa_gradients(
        self,
        x: np.ndarray,
        target: np.ndarray,
        feedback: Mapping[int, np.ndarray],
        loss: str = "softmax_cross_entropy",
    ) -> tuple[float, dict[str, np.ndarray]]:
        """DFA: the output error reaches the input of the parameterised layer after hidden
        layer l as e_out @ B_l.T and is propagated back through the parameter-free layers
        between; the last parameterised layer gets the output error by backprop."""
        y, tape = self.forward(x)
        value, e_out = self.loss(y, target, loss)
        pls = self.param_layers()
        grads: dict[str, np.ndarray] = {}
        e = e_out
        for i in range(len(self.specs) - 1, pls[-1] - 1, -1):
            e = self.layer_backward(i, e, tape, grads)
        for a, b in itertools.pairwise(pls):
            x_in = tape[b][0]
            e = e_out.reshape(e_out.shape[0], -1) @ np.asarray(feedback[a], self.dtype).T
            e = e.reshape(x_in.shape)
            for i in range(b - 1, a - 1, -1):
                e = self.layer_backward(i, e, tape, grads)
        return value, grads

    def sgd(
        self,
        grads: Mapping[str, np.ndarray],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        """PyTorch SGD: d = g + wd*w; m = momentum*m + d (m starts at d); w -= lr*m."""
        for n, g in grads.items():
            d = g + weight_decay * self.w[n]
            if momentum:
                d = momentum * self.m.get(n, np.zeros_like(d)) + d
                self.m[n] = d
            self.w[n] = self.w[n] - lr * d


def dfa_feedback(
    kind: str, seed: int, layer: int, shape: tuple[int, int], density: float
) -> np.ndarray:
    """The documented feedback generator (device_model/engine_setup.py docstring), written
    again from its definition: default_rng([seed, layer]); dense N(0,1); binary ±1 by
    random < 0.5 -> -1; sparse N(0,1) kept where a second uniform draw < density."""
    rng = np.random.default_rng([seed, layer])
    if kind == "binary":
        u = rng.random(shape)
        return np.where(u < 0.5, -1.0, 1.0)
    g = rng.standard_normal(shape)
    if kind == "sparse":
        keep = rng.random(shape) < density
        g = g * keep
    return g
