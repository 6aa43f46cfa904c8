"""Profiles every notebook honours: ``smoke`` (CI, minutes), ``cpu`` (a 2-core machine, the three
offline MedMNIST datasets at 28 px), ``gpu`` (one CUDA GPU, the same offline datasets resized to
224 px for the ImageNet EfficientNet-Lite0, more seeds) and ``paper`` (a GPU with network access,
the papers' datasets, models and settings).

Each chapter keeps a table ``{profile: {setting: value}}``; notebooks take flat parameters where
``None`` means "the profile's value", and :func:`settings` merges the two.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

PROFILES = ("smoke", "cpu", "gpu", "paper")
CPU_DATASETS = ("pneumoniamnist", "breastmnist", "retinamnist")


def resolve_profile(profile: str) -> str:
    """``auto`` is ``gpu`` with a CUDA GPU and ``cpu`` without one; ``paper`` runs only when asked
    (it needs files and weights an offline machine does not have)."""
    if profile == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: auto, {', '.join(PROFILES)}")
    return profile


_KINDS = {"list": "list", "bool": "boolean", "int": "whole number", "number": "number", "str": "string"}


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "int"
    return type(value).__name__


def check_kind(name: str, value: Any, example: Any) -> None:
    """Refuse an override of another kind than the profile's value ``example`` (a string where a
    list is expected, a fraction where a whole number is), naming the setting; a None example
    accepts anything."""
    if example is None:
        return
    expected, got = _kind(example), _kind(value)
    if got == expected or (expected == "number" and got == "int"):
        if expected == "list" and example:
            for index, item in enumerate(value):
                check_kind(f"{name}[{index}]", item, example[0])
        return
    hint = f" (a list is written [{example[0]!r}])" if expected == "list" and example else ""
    raise ValueError(f"setting {name} expects a {_KINDS.get(expected, expected)} such as {example!r}, "
                     f"got {value!r}, a {_KINDS.get(got, got)}{hint}")


def settings(table: dict[str, dict[str, Any]], profile: str, choices: Mapping[str, Sequence] | None = None,
             **overrides) -> dict[str, Any]:
    """The profile's settings from ``table`` with every non-None override applied.

    An override the table does not know raises an error listing the known settings; so does a
    setting named in ``choices`` (setting -> its valid values) whose value is not one of them. The result
    also holds ``profile`` and ``overrides``: the settings that differ from the profile's row (a
    list and a tuple of the same values do not differ), so :func:`medsoup.runs.results.write_results`
    can tell a reference run from a run with changed parameters.
    """
    resolved = resolve_profile(profile)
    if resolved not in table:
        raise ValueError(f"profile {resolved!r} has no settings in this table; it has: {', '.join(table)}")
    base = dict(table[resolved])
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(base))}")
    for name, value in overrides.items():
        if value is not None:
            check_kind(name, value, base[name])
    changed = {k: v for k, v in overrides.items() if v is not None and _canonical(v) != _canonical(base[k])}
    base.update(changed)
    for name, valid in (choices or {}).items():
        if base[name] not in valid:
            raise ValueError(f"unknown {name} {base[name]!r}; valid: {', '.join(map(str, valid))}")
    base["profile"] = resolved
    base["overrides"] = changed
    return base


def for_dataset(s: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """Settings ``s`` for one dataset: the entries of ``s["recipes"][dataset]`` (setting -> value, e.g.
    the input size and epochs a dataset's recipe needs) replace the profile's, except the settings the
    caller overrode (``s["overrides"]``: an explicit parameter wins over every dataset's recipe). A
    table without ``recipes``, or a dataset without one, gives ``s`` unchanged."""
    recipe = dict((s.get("recipes") or {}).get(dataset, {}))
    unknown = sorted(set(recipe) - set(s))
    if unknown:
        raise ValueError(f"the recipe of {dataset} names unknown setting(s) {', '.join(unknown)}")
    overridden = set(s.get("overrides", {}))
    return {**s, **{name: value for name, value in recipe.items() if name not in overridden}}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)
