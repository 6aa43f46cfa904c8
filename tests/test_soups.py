"""Uniform, greedy and hierarchical soups against literal and brute-force references."""

from __future__ import annotations

import itertools

import pytest
import torch

from medsoup.core.models import create_model
from medsoup.merging import statedict as sd
from medsoup.merging.soups import greedy_soup, hierarchical_soup, state_scorer, uniform_soup
from tests.conftest import tiny

TARGET = torch.tensor([1.0, -2.0, 0.5, 3.0])


def _toy_zoo(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": TARGET + 2.0 * torch.randn(4, generator=g), "count": torch.tensor(i)} for i in range(n)]


class CountingScore:
    """-||w - target||^2 (a convex toy 'validation score'), counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, state) -> float:
        self.calls += 1
        return -float(((state["w"] - TARGET) ** 2).sum())


def _reference_greedy(zoo, score):
    """Wortsman et al.'s Recipe 1, literally: sort by individual score, re-average from scratch."""
    individual = [score(s) for s in zoo]
    order = sorted(range(len(zoo)), key=lambda i: -individual[i])
    kept, best = [order[0]], individual[order[0]]
    for i in order[1:]:
        trial = score({"w": torch.stack([zoo[j]["w"] for j in kept + [i]]).mean(0)})
        if trial > best:
            kept, best = kept + [i], trial
    return kept, best


def test_uniform_soup_of_identical_models_is_that_model():
    state = create_model("smallcnn", 2, in_chans=1).state_dict()
    soup = uniform_soup([state, state, state])
    assert all(torch.allclose(soup[k].float(), v.float(), atol=1e-7) for k, v in state.items())


@pytest.mark.parametrize("seed", range(5))
def test_greedy_soup_matches_reference_and_brute_force_bounds(seed):
    zoo = _toy_zoo(6, seed)
    score = CountingScore()
    result = greedy_soup(zoo, score)
    kept, best = _reference_greedy(zoo, CountingScore())
    assert result.kept == kept
    assert result.score == pytest.approx(best)
    assert result.evaluations == score.calls == 2 * len(zoo) - 1
    assert torch.allclose(result.state["w"], torch.stack([zoo[i]["w"] for i in kept]).mean(0))
    # never worse than the best single model, never better than the best subset (brute force)
    subsets = [score({"w": torch.stack([zoo[i]["w"] for i in c]).mean(0)})
               for r in range(1, len(zoo) + 1) for c in itertools.combinations(range(len(zoo)), r)]
    assert max(result.candidate_scores) <= result.score <= max(subsets) + 1e-9


def test_greedy_soup_requires_strict_improvement_and_uses_given_scores():
    same = [{"w": TARGET.clone()} for _ in range(3)]
    result = greedy_soup(same, CountingScore(), candidate_scores=[0.0, 0.0, 0.0])
    assert result.kept == [0] and result.evaluations == 2


def test_greedy_soup_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        greedy_soup([], CountingScore())
    with pytest.raises(ValueError, match="candidate scores"):
        greedy_soup(_toy_zoo(3), CountingScore(), candidate_scores=[1.0])


def test_hierarchical_soup_uniform_and_greedy_levels():
    zoo = _toy_zoo(9)
    groups = [zoo[0:3], zoo[3:6], zoo[6:9]]
    score = CountingScore()
    gou = hierarchical_soup(groups, score, local="uniform")
    for g, local in zip(groups, gou.local):
        assert torch.allclose(local.state["w"], torch.stack([s["w"] for s in g]).mean(0))
    top = greedy_soup([r.state for r in gou.local], CountingScore())
    assert gou.top.kept == top.kept
    assert torch.allclose(gou.state["w"], top.state["w"])
    assert gou.evaluations == score.calls == 3 + 2
    gog = hierarchical_soup(groups, CountingScore(), local="greedy")
    for g, local in zip(groups, gog.local):
        assert local.kept == greedy_soup(g, CountingScore()).kept
    assert gog.score >= max(r.score for r in gog.local)
    with pytest.raises(ValueError, match="local soup"):
        hierarchical_soup(groups, score, local="mean")


def test_state_scorer_on_a_tiny_model():
    data = tiny(n=32)
    model = create_model("smallcnn", 2, in_chans=1)
    states = [create_model("smallcnn", 2, in_chans=1).state_dict() for _ in range(2)]
    for recalibrate in (False, True):
        score = state_scorer(model, data, "acc", recalibrate=recalibrate)
        values = [score(s) for s in states]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert score(states[0]) == values[0]  # deterministic, state reloaded each time
    result = greedy_soup(states, state_scorer(model, data, "acc"))
    assert result.evaluations == 3 and sd.is_float(result.state["head.weight"])


def _averaging_greedy(candidates, score_fn, candidate_scores):
    """The straightforward greedy soup: every candidate soup re-averaged from all kept states."""
    order = sorted(range(len(candidates)), key=lambda i: (-candidate_scores[i], i))
    kept, best = [order[0]], candidate_scores[order[0]]
    soup = dict(candidates[order[0]])
    for i in order[1:]:
        trial = sd.average([candidates[j] for j in kept + [i]])
        value = score_fn(trial)
        if value > best:
            kept, soup, best = kept + [i], trial, value
    return kept, soup, best


def _model_zoo(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    base = create_model("smallcnn", 2, in_chans=1).state_dict()
    g = torch.Generator().manual_seed(seed)
    return [{k: v + 0.05 * torch.randn(v.shape, generator=g) if sd.is_float(v) else v + i for k, v in base.items()}
            for i in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_greedy_running_sum_matches_re_averaging(seed):
    """The running sum (sum + new) / (k + 1) rounds differently from average's sum of theta_i / n: the
    candidate soups agree to within float32 rounding (relative 1e-6) and the selection is the same."""
    toy = _toy_zoo(12, seed)
    score = CountingScore()
    ours = greedy_soup(toy, score)
    kept, soup, best = _averaging_greedy(toy, CountingScore(), ours.candidate_scores)
    assert ours.kept == kept and ours.score == pytest.approx(best, rel=1e-6)
    assert torch.allclose(ours.state["w"], soup["w"], rtol=1e-6, atol=0) and torch.equal(ours.state["count"],
                                                                                          soup["count"])
    data = tiny(n=32)
    zoo = _model_zoo(6, seed)
    scorer = state_scorer(create_model("smallcnn", 2, in_chans=1), data, "acc")
    loss = state_scorer(create_model("smallcnn", 2, in_chans=1), data, "loss")
    for score_fn in (scorer, lambda s: -loss(s)):
        ours = greedy_soup(zoo, score_fn)
        kept, soup, best = _averaging_greedy(zoo, score_fn, ours.candidate_scores)
        assert ours.kept == kept and ours.score == pytest.approx(best, rel=1e-5)
        for key, value in soup.items():
            assert ours.state[key].dtype == value.dtype
            assert torch.allclose(ours.state[key].double(), value.double(), rtol=1e-6, atol=1e-7), key
