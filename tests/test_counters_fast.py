"""The counters' straight-line paths (protocol.messages_counters: a tree with every leaf an
int or float, of plain dicts) against the slot-by-slot paths they short-cut: the same wire
bytes, the same trees (key order included), the same fallbacks."""

from __future__ import annotations

import random
from typing import Any

import pytest

from protocol import messages_counters as mc


def _full(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    tree = mc.empty_counters()
    for path in mc.COUNTER_FIELDS:
        *parents, leaf = path.split(".")
        node = tree
        for p in parents:
            node = node[p]
        node[leaf] = rng.random() * 1e9 if mc._is_float(path) else rng.randrange(2**64)
    return tree


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_tree: Any) -> Any:
        raise TypeError("straight-line path off")

    monkeypatch.setattr(mc, "_SLOT_TYPES", ())  # no tree's leaf types match
    monkeypatch.setattr(mc, "_GET_DICT_LEAVES", refuse)
    monkeypatch.setattr(mc, "_ALL_VALID", b"")  # no bitmap matches


@pytest.mark.parametrize("seed", range(5))
def test_full_tree_same_bytes_and_tree_as_slot_path(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _full(seed)
    fast = mc.pack_counters(tree)
    back = mc.unpack_counters(fast) if fast is not None else None
    copied = mc.counters_from_tree(tree)
    assert fast is not None and fast == mc.Counters.build(tree)
    with monkeypatch.context() as m:
        _slow(m)
        assert mc.pack_counters(tree) == fast
        assert repr(mc.unpack_counters(fast)) == repr(back)
        assert list(mc.unpack_counters(fast) or {}) == list(back or {})
    with monkeypatch.context() as m:
        _slow(m)
        assert repr(mc.counters_from_tree(tree)) == repr(copied)
    assert repr(back) == repr(copied) == repr(tree)


def test_partial_and_odd_trees_take_the_slot_path() -> None:
    tree = _full(1)
    tree["ff"]["cycles"] = None  # absent: the valid bit clear
    tree["ep"]["macs_total"] = True  # a bool: converted like int()
    data = mc.pack_counters(tree)
    assert data is not None and data == mc.Counters.build(tree)
    back = mc.unpack_counters(data)
    assert back is not None and back["ff"]["cycles"] is None and back["ep"]["macs_total"] == 1
    del tree["wg"]["skipped"]["pruned"]
    assert mc.pack_counters(tree) is None  # Counters decides (and raises)
    copied = mc.counters_from_tree(tree)
    assert copied["wg"]["skipped"]["pruned"] is None and copied["ep"]["macs_total"] == 1
    tree["update"] = [1, 2]
    assert mc.pack_counters(tree) is None
    assert mc.counters_from_tree(tree)["update"]["cycles"] is None
