"""The chapters' settings tables: one row per profile with the paper row's settings; FGG epochs per profile."""

from __future__ import annotations

import importlib
import math

import pytest

from medsoup.chapters.reproducibility import PROFILE_TABLES
from medsoup.core.schedules import cycle_length, is_cycle_minimum
from medsoup.merging.fgg import fgg_epochs
from medsoup.runs.profiles import PROFILES, settings


def _table(name):
    module, attribute = PROFILE_TABLES[name].split(":")
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.parametrize("name", sorted(PROFILE_TABLES))
def test_every_profile_has_the_papers_settings_in_the_same_order(name):
    table = _table(name)
    assert tuple(table) == PROFILES
    for profile in PROFILES:  # a misspelt override would add a setting the paper row does not have
        assert list(table[profile]) == list(table["paper"]), profile
        assert settings(table, profile)["profile"] == profile


def _minima(epochs: int, cycle_epochs: float, steps_per_epoch: int = 10) -> int:
    cycle = cycle_length(cycle_epochs, steps_per_epoch)
    return sum(is_cycle_minimum(i, cycle) for i in range(1, epochs * steps_per_epoch + 1))


@pytest.mark.parametrize("profile", PROFILES)
def test_fgg_epochs_of_each_profile_give_its_snapshots(profile):
    s = settings(_table("FissionFusion"), profile)
    epochs = fgg_epochs(s["fgg_snapshots"], s["fgg_cycle_epochs"])
    steps_per_epoch = math.ceil((s["train_subset"] or 1080) / s["batch_size"])  # paper: all of RetinaMNIST's 1080
    assert _minima(epochs, s["fgg_cycle_epochs"], steps_per_epoch) == s["fgg_snapshots"]


def test_paper_fgg_trains_18_epochs_where_the_papers_17_hold_four_snapshots():
    s = settings(_table("FissionFusion"), "paper")
    assert (s["fgg_snapshots"], s["fgg_cycle_epochs"]) == (5, 4.0)
    assert fgg_epochs(5, 4.0) == 18
    assert _minima(17, 4.0) == 4 and _minima(18, 4.0) == 5


def test_a_datasets_recipe_replaces_the_profiles_settings_unless_overridden():
    from medsoup.runs.profiles import for_dataset
    table = {"cpu": {"size": 28, "epochs": 10, "recipes": {"breastmnist": {"size": 64, "epochs": 20}}}}
    s = settings(table, "cpu")
    assert (for_dataset(s, "breastmnist")["size"], for_dataset(s, "breastmnist")["epochs"]) == (64, 20)
    assert for_dataset(s, "retinamnist")["size"] == 28  # no recipe: the profile's value
    assert for_dataset(settings(table, "cpu", epochs=3), "breastmnist")["epochs"] == 3  # the caller's value wins
    with pytest.raises(ValueError, match="the recipe of breastmnist names unknown setting.*lr"):
        for_dataset({"size": 28, "recipes": {"breastmnist": {"lr": 1.0}}}, "breastmnist")
