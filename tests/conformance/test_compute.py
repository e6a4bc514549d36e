"""Inference and training equal the host's numpy reference; counters follow the schema."""

from __future__ import annotations

import numpy as np

import host
from protocol.messages_counters import COUNTER_FIELDS

from .support import blobs, conv, mlp, mlp_sgd_step


def _leaf(tree: dict, path: str) -> object:
    node: object = tree
    for p in path.split("."):
        assert isinstance(node, dict) and p in node, f"counter {path} missing"
        node = node[p]
    return node


def test_fp32_inference_equals_the_numpy_forward(dev: host.Device) -> None:
    for net, shape in ((mlp(), (5, 4)), (conv(), (3, 1, 4, 4))):
        w = net.init_weights(seed=3)
        model = dev.deploy(net, w)
        x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(model.predict(x), net.forward(x, w), rtol=1e-4, atol=1e-5)


def test_fp32_training_steps_equal_a_numpy_backprop(dev: host.Device) -> None:
    net = mlp()
    w = net.init_weights(seed=5)
    lr = 0.1
    model = dev.deploy(net, w, optimizer=host.optim.SGD(lr))
    ref: dict = {k: v.astype(np.float64) for k, v in w.items()}
    for step in range(3):
        x, y = blobs(16, seed=step)
        res = model.train_step(x, y)
        ref, loss = mlp_sgd_step(ref, x, y, lr)
        assert res.step == step + 1
        assert abs(res.loss - loss) <= 1e-4 * max(1.0, loss)
    got = model.get_weights()
    assert list(got) == list(w)
    for k in w:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_low_precision_training_is_reproducible_for_a_seed(dev: host.Device) -> None:
    x, y = blobs(16, seed=7)
    runs = []
    for _ in range(2):
        model = dev.deploy(mlp(), precision="dfxp8+sr", optimizer=host.optim.SGD(0.1), seed=11)
        losses = [model.train_step(x, y).loss for _ in range(3)]
        runs.append((losses, model.get_weights()))
    (l1, w1), (l2, w2) = runs
    assert l1 == l2
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k])


def test_counters_follow_the_schema_and_count_the_forward_macs(dev: host.Device) -> None:
    model = dev.deploy(mlp())
    dev.reset_counters()
    zero = dev.counters()
    for path in COUNTER_FIELDS:
        v = _leaf(zero, path)
        assert v is None or v == 0, path
    x, y = blobs(8)
    res = model.train_step(x, y)
    after = dev.counters()
    for tree in (res.counters, after):
        for path in COUNTER_FIELDS:
            v = _leaf(tree, path)
            assert v is None or (isinstance(v, int | float) and v >= 0), path
    macs = _leaf(after, "ff.macs_total")
    assert macs is None or macs == 8 * (4 * 8 + 8 * 3)
