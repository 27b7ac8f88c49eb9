"""Named protocols fill the notebooks' settings left at None; real data never gets the demo's settings by accident."""

import pytest

from bt_utils.models.tuning import TuningConfig
from bt_utils.protocols import DEMO_SHORTCUTS, PROTOCOLS, protocol_notes, protocol_values, resolve_protocol


def test_auto_runs_the_demo_settings_only_on_the_demo():
    assert resolve_protocol("auto", is_demo=True) == "demo"
    assert resolve_protocol("auto", is_demo=False) == "paper"
    assert resolve_protocol("demo", is_demo=False) == "demo"  # asked for explicitly
    with pytest.raises(ValueError, match="protocol='fast' is not valid"):
        resolve_protocol("fast", is_demo=True)


def test_values_left_at_none_come_from_the_protocol_and_explicit_values_win():
    name, values = protocol_values("auto", {"epochs": None, "encoder_lr": 1e-3, "other": None}, is_demo=False)
    assert name == "paper"
    assert values == {"epochs": 30, "encoder_lr": 1e-3, "other": None}


def test_the_paper_protocol_is_the_tuning_configs_default():
    defaults = TuningConfig()
    for key, value in PROTOCOLS["paper"].items():
        if hasattr(defaults, key):
            assert getattr(defaults, key) == value, key


def test_every_demo_shortcut_is_explained_and_differs_from_the_paper():
    changed = {key for key, value in PROTOCOLS["demo"].items() if PROTOCOLS["paper"][key] != value}
    assert set(PROTOCOLS["demo"]) == set(PROTOCOLS["paper"])
    assert changed - {"batch_size", "head_lr", "warmup_epochs", "encoder_lr"} <= set(DEMO_SHORTCUTS)
    assert set(DEMO_SHORTCUTS) <= changed


def test_notes_name_the_demo_shortcuts_taken_and_nothing_else():
    name, values = protocol_values("auto", {"epochs": None, "feature_mode": "reference", "n_permutations": None},
                                   is_demo=True)
    notes = protocol_notes(name, values)
    demo = PROTOCOLS["demo"]
    assert notes == [f"demo shortcut: epochs = {demo['epochs']}: {DEMO_SHORTCUTS['epochs']}",
                     f"demo shortcut: n_permutations = {demo['n_permutations']}: {DEMO_SHORTCUTS['n_permutations']}"]
    assert protocol_notes(*protocol_values("auto", {"epochs": None}, is_demo=False)) == []
