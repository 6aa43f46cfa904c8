"""Model soups: uniform, greedy (Wortsman et al. 2022) and hierarchical (FissionFusion, Sec. 2).

A soup is a pure function of candidate state dicts and a ``score_fn(state) -> float`` where
higher is better (validation ACC, macro F1, recall or AUC; the score may recalibrate BatchNorm
first, see :func:`state_scorer`). Every score computed is counted in ``evaluations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from medsoup.core.bn import StateEvaluator
from medsoup.core.data import MedData
from medsoup.core.progress import progress
from medsoup.merging.statedict import StateDict, average, check_compatible, is_float

ScoreFn = Callable[[StateDict], float]
LOCAL = ("uniform", "greedy")


def uniform_soup(states: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """The uniform soup: the average of all ``states`` (Wortsman et al. 2022, Eq. 1)."""
    return average(states)


@dataclass
class SoupResult:
    """A greedy soup: its state, the kept candidate indices (in the order added), its score,
    every candidate's own score, and how many times ``score_fn`` was called."""

    state: dict[str, torch.Tensor]
    kept: list[int]
    score: float
    candidate_scores: list[float]
    evaluations: int


def greedy_soup(candidates: Sequence[StateDict], score_fn: ScoreFn,
                candidate_scores: Sequence[float] | None = None) -> SoupResult:
    """Greedy soup (Wortsman et al. 2022, Recipe 1), as FissionFusion's code runs it.

    Candidates are sorted by their own score (descending, ties by index); the soup starts as the
    best one; each next candidate is added, in one pass, only if the average of the kept
    ingredients plus it scores strictly higher than the soup so far. ``candidate_scores`` (e.g.
    the runs' recorded validation scores) saves the ``len(candidates)`` individual evaluations.
    Each candidate soup is ``(sum of the kept + theta_new) / (k + 1)`` from a running sum. When only
    the best candidate is kept, the result's state holds that candidate's tensors (not copies).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("greedy_soup needs at least one candidate")
    evaluations = 0
    if candidate_scores is None:
        candidate_scores = [score_fn(c) for c in candidates]
        evaluations += len(candidates)
    elif len(candidate_scores) != len(candidates):
        raise ValueError(f"{len(candidate_scores)} candidate scores for {len(candidates)} candidates")
    scores = [float(s) for s in candidate_scores]
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    kept = [order[0]]
    soup = dict(candidates[order[0]])  # its tensors, so a state already scored is recognised as such
    best = scores[order[0]]
    total = _RunningSum.of(candidates[order[0]])
    bar = progress(order[1:], desc="greedy soup", leave=False)
    for index in bar:
        bar.set_postfix_str(f"candidate {index}, {len(kept)} kept, best {best:.4f}")
        trial_total = total.plus(candidates[index])
        trial = trial_total.mean()
        score = float(score_fn(trial))
        evaluations += 1
        if score > best:
            kept, soup, best, total = kept + [index], trial, score, trial_total
    return SoupResult(soup, kept, best, scores, evaluations)


class _RunningSum:
    """The kept ingredients' element-wise sum (float entries, in float64 for float32 models, as
    :func:`~medsoup.merging.statedict.weighted_sum`) and maximum (integer entries), so that a greedy
    candidate soup ``(sum + theta_new) / (k + 1)`` costs one addition, not a re-average of all k kept
    states. Summing before dividing rounds differently from ``average`` (which adds ``theta_i / n``):
    in float64 the two differ by about 1e-16 relative, so the float32 soups agree to an ulp."""

    def __init__(self, entries: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype], count: int):
        self.entries, self.dtypes, self.count = entries, dtypes, count

    @classmethod
    def of(cls, state: StateDict) -> "_RunningSum":
        return cls({k: v.to(_accumulator(v)) if is_float(v) else v for k, v in state.items()},
                   {k: v.dtype for k, v in state.items()}, 1)

    def plus(self, state: StateDict) -> "_RunningSum":
        """The sum with ``state`` added (a new object; this one is unchanged)."""
        check_compatible([self.entries, state])
        entries = {k: v + state[k].to(v.dtype) if is_float(v) else torch.maximum(v, state[k])
                   for k, v in self.entries.items()}
        return _RunningSum(entries, self.dtypes, self.count + 1)

    def mean(self) -> dict[str, torch.Tensor]:
        return {k: (v / self.count).to(self.dtypes[k]) if is_float(v) else v.clone() for k, v in self.entries.items()}


def _accumulator(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype in (torch.float32, torch.float64) else tensor.dtype


@dataclass
class HierarchicalResult:
    """A hierarchical soup: the top-level greedy soup over the per-group (local) soups."""

    state: dict[str, torch.Tensor]
    score: float
    local: list[SoupResult]
    top: SoupResult
    evaluations: int


def hierarchical_soup(groups: Sequence[Sequence[StateDict]], score_fn: ScoreFn, local: str = "uniform",
                      group_scores: Sequence[Sequence[float]] | None = None) -> HierarchicalResult:
    """Hierarchical Souping (FissionFusion, Sec. 2, "fusion").

    Each group (an FGG base model theta_t and its snapshots, or the grid-search runs sharing one
    learning rate) is first souped locally, uniformly (``local="uniform"``: GoU,
    ``theta_sp_t = (sum_i theta_t^i + theta_t) / (m + 1)``) or greedily (``local="greedy"``:
    GoG); a greedy soup over the local soups gives theta_sp. ``group_scores`` optionally gives
    the members' known scores (used by local greedy soups).
    """
    if local not in LOCAL:
        raise ValueError(f"unknown local soup {local!r}; valid: {', '.join(LOCAL)}")
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("hierarchical_soup needs non-empty groups")
    locals_, evaluations = [], 0
    for g, members in enumerate(groups):
        if local == "greedy":
            result = greedy_soup(members, score_fn, None if group_scores is None else group_scores[g])
        else:
            state = uniform_soup(members)
            result = SoupResult(state, list(range(len(members))), float(score_fn(state)), [], 1)
        evaluations += result.evaluations
        locals_.append(result)
    top = greedy_soup([r.state for r in locals_], score_fn, [r.score for r in locals_])
    return HierarchicalResult(top.state, top.score, locals_, top, evaluations + top.evaluations)


def state_scorer(model: nn.Module, data: MedData, metric: str, split: str = "val",
                 recalibrate: bool = False) -> ScoreFn:
    """``score_fn(state)``: ``metric`` of ``state`` on ``split``, loaded into ``model`` (reused,
    overwritten), after BatchNorm recalibration on the training split if ``recalibrate``
    (a :meth:`StateEvaluator.scorer <medsoup.core.bn.StateEvaluator.scorer>`)."""
    return StateEvaluator(model, data, recalibrate).scorer(metric, split)
