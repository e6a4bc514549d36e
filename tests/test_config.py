"""Chip presets: the survey's Fig. 12 numbers, the registry, immutability and validated
overrides (device_model/config.py, docs/chip-model.md)."""

from __future__ import annotations

import dataclasses

import pytest

from device_model.config import (
    PRESETS,
    STAGES,
    TRANSPOSE_MODES,
    ChipPreset,
    get_preset,
    preset_names,
)

ALL_PRECISIONS = {(a, b) for a in (4, 8, 12, 16) for b in (4, 8, 12, 16)}


def test_hnpu_v1_has_the_fig12_numbers() -> None:
    p = get_preset("hnpu-v1")
    assert p.technology == "Samsung 28nm 1P8M CMOS"
    assert p.die_area_mm2 == pytest.approx(3.6 * 3.6)
    assert p.clock_hz == 250e6 and p.min_clock_hz == 2e6
    assert p.voltage_range_v == (0.58, 1.04)
    assert p.data_type == "DFXP+SR+ST"
    assert set(p.precisions) == ALL_PRECISIONS
    assert p.peak_tops == 4.53
    assert p.power_range_w == (0.955, 1.162)
    assert p.laps and p.stochastic_thresholding
    assert not p.pruning_aware_training and p.pruning_granularity is None
    assert not p.backward_unlocking and p.algorithms == ("bp",)
    # FF/EP in-out slice skip, WG in-slice skip; no weight or gradient skipping.
    assert p.skips("ff") == {"input_zero", "zero_slice", "out_slice"}
    assert p.skips("ep") == {"input_zero", "zero_slice", "output_zero"}
    assert p.skips("wg") == {"input_zero", "zero_slice"}
    assert p.skips("update") == frozenset()


def test_hnpu_v2_has_the_fig12_numbers() -> None:
    p = get_preset("hnpu-v2")
    assert p.technology == "Samsung 28nm 1P8M CMOS"
    assert p.clock_hz == 250e6 and p.min_clock_hz == 10e6
    assert p.voltage_range_v == (0.63, 1.0)
    assert p.data_type == "DFXP+SR"
    assert set(p.precisions) == ALL_PRECISIONS
    assert p.peak_tops == 7.07
    assert p.power_range_w == (0.850, 1.032)
    assert not p.laps and not p.stochastic_thresholding
    assert p.sr_rng == "low-cost"
    assert p.pruning_aware_training and p.pruning_granularity == "channel"
    assert p.backward_unlocking and {"dfa", "pdfa"} <= set(p.algorithms)
    # FF: in-slice + FW skip, EP: in-slice + BW skip, WG: in-slice + G skip.
    assert "weight_zero" in p.skips("ff") and "weight_zero" in p.skips("ep")
    assert "pruned" in p.skips("wg") and "pruned" in p.skips("update")
    assert all("zero_slice" in p.skips(s) for s in ("ff", "ep", "wg"))
    assert "output_zero" not in p.skips("ep")


def test_derived_constants_follow_their_stated_rules() -> None:
    v1, v2 = get_preset("hnpu-v1"), get_preset("hnpu-v2")
    # One 4b x 4b slice product = 2 ops: 4.53 TOPS at 250 MHz.
    assert v1.pe_slice_macs_per_cycle == round(4.53e12 / (2 * 250e6))
    # Same hardware resources (survey IX-D): the same array in both.
    assert v2.pe_slice_macs_per_cycle == v1.pe_slice_macs_per_cycle
    for p in (v1, v2):
        assert p.static_power_w == pytest.approx(p.static_share * p.power_range_w[0])
        # The full array at its slice rate draws the top of the power range.
        full = p.slice_mac_pj * 1e-12 * p.pe_slice_macs_per_cycle * p.clock_hz
        assert full + p.static_power_w == pytest.approx(p.power_range_w[1])
    assert v2.slice_mac_pj < v1.slice_mac_pj  # V2 draws less power on the same array


def test_registry_and_unknown_names() -> None:
    assert preset_names() == ("hnpu-v1", "hnpu-v2")
    assert all(PRESETS[n].name == n for n in PRESETS)
    with pytest.raises(ValueError, match=r"'hnpu-v3'.*accepted: hnpu-v1, hnpu-v2"):
        get_preset("hnpu-v3")
    with pytest.raises(TypeError):
        PRESETS["x"] = PRESETS["hnpu-v1"]  # type: ignore[index]


def test_presets_are_immutable() -> None:
    p = get_preset("hnpu-v2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.clock_hz = 1.0  # type: ignore[misc]


def test_with_overrides_copies_validates_and_rederives() -> None:
    p = get_preset("hnpu-v2")
    q = p.with_overrides(transpose_mode="software", dram_bytes_per_s=25.6e9)
    assert q.transpose_mode == "software" and q.dram_bytes_per_cycle == 2 * p.dram_bytes_per_cycle
    assert p.transpose_mode == "transposable-pe"  # the original is untouched
    r = p.with_overrides(power_range_w=(0.5, 0.6))
    assert r.slice_mac_pj < p.slice_mac_pj and r.static_power_w == pytest.approx(0.15)
    assert p.with_overrides(slice_mac_pj=0.5).slice_mac_pj == 0.5
    assert p.with_overrides(power_range_w=(0.5, 0.6), slice_mac_pj=0.5).slice_mac_pj == 0.5


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"clock": 1e6}, r"unknown preset field\(s\) clock; accepted: .*clock_hz"),
        ({"transpose_mode": "magic"}, r"'magic'; accepted: software, transposable-pe"),
        ({"dram_bytes_per_s": 0}, "dram_bytes_per_s must be a positive number"),
        ({"clock_hz": -1.0}, "clock_hz must be a positive number"),
        ({"min_clock_hz": 300e6}, "min_clock_hz"),
        ({"power_range_w": (1.2, 1.0)}, "power_range_w"),
        ({"static_share": 1.0}, r"static_share must be in \[0, 1\)"),
        ({"skip_ff": frozenset({"everything"})}, "skip_ff must be a frozenset of"),
        ({"skip_ep": {"input_zero"}}, "skip_ep must be a frozenset of"),
        ({"precisions": ((4, 64),)}, "pair of ints in 1..32"),
        ({"algorithms": ("dfa",)}, "must include 'bp'"),
        ({"max_layers": 2.5}, "max_layers must be a non-negative int"),
        ({"transposable_pe_efficiency": 0.0}, "transposable_pe_efficiency"),
        ({"pruning_granularity": None}, "pruning_granularity"),
    ],
)
def test_bad_overrides_say_what_is_wrong(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        get_preset("hnpu-v2").with_overrides(**kw)


def test_dfa_needs_backward_unlocking() -> None:
    with pytest.raises(ValueError, match="backward_unlocking"):
        get_preset("hnpu-v1").with_overrides(algorithms=("bp", "dfa"))


def test_skips_and_slices_helpers() -> None:
    p = get_preset("hnpu-v1")
    assert [p.slices(b) for b in (1, 4, 5, 8, 12, 16, 32)] == [1, 1, 2, 2, 3, 4, 8]
    with pytest.raises(ValueError, match="unknown stage 'bwd'"):
        p.skips("bwd")
    assert set(STAGES) == {"ff", "ep", "wg", "update"}
    assert set(TRANSPOSE_MODES) == {"software", "transposable-pe", "transpose-sram"}


def test_as_dict_is_plain_data() -> None:
    d = get_preset("hnpu-v2").as_dict()
    assert d["name"] == "hnpu-v2" and d["skip_wg"] == sorted(d["skip_wg"])
    assert all(not isinstance(v, (set, frozenset)) for v in d.values())


def test_a_preset_can_be_built_from_its_fields() -> None:
    p = get_preset("hnpu-v1")
    kw = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.init}
    assert ChipPreset(**kw) == p
