"""FissionFusion's method table: each name's pool and souping function, and what each costs in evaluations."""

from __future__ import annotations

import pytest
import torch

from medsoup.chapters import fissionfusion_soups as soups


def _states(values):
    return [{"w": torch.tensor([float(v)])} for v in values]


def _score(calls):
    def score(state):
        calls.append(1)
        return -abs(float(state["w"]) - 2.0)  # best at w = 2
    return score


def test_methods_and_ablation_are_the_tables_keys_and_name_known_pools():
    assert soups.METHODS == ("GS(best)", "Uniform soup", "Greedy soup", "FGG(best)", "GoU", "GoG")
    assert soups.ABLATION == ("GS+HS(GoU)", "GS+HS(GoG)", "FGG+Uniform", "FGG+Greedy")
    assert tuple(soups.SOUPS) == soups.METHODS + soups.ABLATION + ("SWA",)
    assert {pool for pool, _ in soups.SOUPS.values()} == {"grid", "fgg", "grid by lr", "fgg groups", "swa"}
    with pytest.raises(ValueError, match="unknown method.*'Best soup'.*valid: GS\\(best\\)"):
        soups.soup_methods(None, None, "auc", methods=("Best soup",))


def test_best_and_uniform_charge_the_pool_as_recorded():
    pool = soups.Pool(_states([0, 2, 3]), [-2.0, 0.0, -1.0], upfront=3, scoring=2)
    calls = []
    state, evaluations, ingredients = soups.best_of(pool, _score(calls))
    assert float(state["w"]) == 2.0 and (evaluations, len(ingredients)) == (5, 1) and not calls
    state, evaluations, ingredients = soups.uniform_of(pool, _score(calls))
    assert float(state["w"]) == pytest.approx(5 / 3) and (evaluations, len(ingredients)) == (4, 3) and not calls


def test_greedy_and_hierarchical_add_the_soups_own_evaluations():
    pool = soups.Pool(_states([0, 2, 3]), [-2.0, 0.0, -1.0], scoring=3)
    calls = []
    state, evaluations, ingredients = soups.greedy_of(pool, _score(calls))
    # from w = 2: adding 3 gives 2.5 (-0.5, worse), adding 0 gives 1 (-1, worse): the soup is the best model
    assert float(state["w"]) == 2.0 and ingredients == {"1": 1.0} and evaluations == 3 + len(calls) == 5
    groups = soups.Pool([_states([1, 3]), _states([6, 8])], [[-1.0, -1.0], [-4.0, -6.0]], upfront=2)
    calls = []
    state, evaluations, ingredients = soups.hierarchical_of("uniform", groups, _score(calls))
    # local uniform soups w = 2 and w = 7; the top greedy soup keeps only the first (its 2 ingredients)
    assert float(state["w"]) == 2.0 and ingredients == {"0.0": 0.5, "0.1": 0.5} and evaluations == 2 + len(calls)
