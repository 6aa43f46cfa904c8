"""FissionFusion's Table 1 over one zoo: every soup of the table and its appendix ablation, SWA, each
method's validation and test metrics (calibration included) and per-image test predictions, on clean and
corrupted test sets, and their long rows (the zoo's output ensembles are in
:mod:`medsoup.chapters.fissionfusion_ensembles`).

:func:`soup_methods` builds each method's soup from the pools of a :class:`~medsoup.chapters.fissionfusion.Zoo`
(dispatched by the :data:`SOUPS` table) and evaluates it; :func:`ood_metrics` evaluates those soups on
corrupted test sets. Without recalibration every state is evaluated with the BatchNorm statistics it
carries (averaged ones for soups, as the paper's code); with it, every state evaluated (candidates, soups
and single models alike) first gets its statistics recomputed on the clean training split, so the effect
of merging is not confused with the effect of recalibrating.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from medsoup.chapters.fissionfusion import Zoo
from medsoup.chapters.tables import row, scalars
from medsoup.core.bn import StateEvaluator, bn_statistics, train_images
from medsoup.core.corruptions import corrupted
from medsoup.core.data import MedData
from medsoup.core.metrics import compute_metrics, probabilities
from medsoup.core.progress import progress
from medsoup.core.train import NonFiniteLossError, loss_fn, predict
from medsoup.merging.soups import ScoreFn, greedy_soup, hierarchical_soup, uniform_soup


@dataclass
class MethodResult:
    """One method's soup ``state``, its metrics, evaluations and ingredients; ``statistics``: its
    recomputed BatchNorm buffers when :func:`soup_methods` recalibrated (reused by :func:`ood_metrics`);
    ``weights``: each ingredient's name (:meth:`Zoo.grid_labels`, :meth:`Zoo.fgg_labels`) and its weight
    in the soup (the weights sum to 1); ``predictions``: per-image test ``(probabilities, targets)``
    (softmax, or sigmoid scores for multi-label). An output ensemble has no ``state`` (empty) and no
    validation metrics."""

    state: dict[str, torch.Tensor]
    val: dict
    test: dict
    evaluations: int
    ingredients: int
    statistics: dict[str, torch.Tensor] | None = None
    weights: dict[str, float] = field(default_factory=dict)
    predictions: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class Pool:
    """The candidates one method soups: ``states`` (flat, or one list per group) and their validation
    ``scores`` in the same shape, with the evaluations it costs: ``upfront``, spent by every method on
    the pool (the FGG pools: the snapshots' scores, which no run recorded, and with recalibration the
    base models' too), and ``scoring``, spent only by a method that reads the scores (the grid pools,
    with recalibration: the runs' scores recomputed). ``labels``: the candidates' names, in the
    shape of ``states``."""

    states: list
    scores: list
    labels: list | None = None
    upfront: int = 0
    scoring: int = 0

    def __post_init__(self):
        if self.labels is None:  # the candidates' positions ("0", "1", ...; "0.1" for group 0's second member)
            self.labels = [[f"{g}.{i}" for i in range(len(group))] if isinstance(group, (list, tuple)) else str(g)
                           for g, group in enumerate(self.states)]


Souped = tuple[dict[str, torch.Tensor], int, dict[str, float]]  # (state, evaluations, ingredient -> weight)
Soup = Callable[[Pool, ScoreFn], Souped]


def best_of(pool: Pool, score: ScoreFn) -> Souped:
    """The candidate with the best validation score (GS(best), FGG(best))."""
    best = max(range(len(pool.states)), key=lambda i: pool.scores[i])
    return pool.states[best], pool.upfront + pool.scoring, {pool.labels[best]: 1.0}


def uniform_of(pool: Pool, score: ScoreFn) -> Souped:
    """The uniform soup of every candidate; one evaluation, of the soup."""
    return uniform_soup(pool.states), pool.upfront + 1, {name: 1 / len(pool.labels) for name in pool.labels}


def greedy_of(pool: Pool, score: ScoreFn) -> Souped:
    """The greedy soup of the candidates, in order of their scores."""
    soup = greedy_soup(pool.states, score, pool.scores)
    return soup.state, pool.upfront + pool.scoring + soup.evaluations, {pool.labels[i]: 1 / len(soup.kept)
                                                                        for i in soup.kept}


def hierarchical_of(local: str, pool: Pool, score: ScoreFn) -> Souped:
    """Hierarchical souping of the pool's groups, each ``local``-ly ("uniform": GoU, "greedy": GoG),
    then greedily across groups; the ingredients are those of the groups the top soup kept, each
    weighted 1 / (groups kept) x 1 / (its group's members kept)."""
    soup = hierarchical_soup(pool.states, score, local, pool.scores)
    weights = {pool.labels[g][i]: 1 / len(soup.top.kept) / len(soup.local[g].kept)
               for g in soup.top.kept for i in soup.local[g].kept}
    return soup.state, pool.upfront + pool.scoring + soup.evaluations, weights


def same_soup(a: MethodResult, b: MethodResult, tolerance: float = 1e-9) -> bool:
    """Whether two methods built the same soup: the same ingredients with the same weights (e.g. GoG
    and FGG+Greedy when GoG keeps one group, or both keep only the best model)."""
    return a.weights.keys() == b.weights.keys() and all(abs(a.weights[k] - b.weights[k]) <= tolerance
                                                       for k in a.weights)


#: Table 1's methods: name -> (the pool it soups, how). Pools: "grid" (the grid-search runs), "fgg" (FGG's
#: base models and snapshots), "grid by lr" (the grid grouped by learning rate), "fgg groups" (each base
#: model with its snapshots).
TABLE1: dict[str, tuple[str, Soup]] = {
    "GS(best)": ("grid", best_of),
    "Uniform soup": ("grid", uniform_of),
    "Greedy soup": ("grid", greedy_of),
    "FGG(best)": ("fgg", best_of),
    "GoU": ("fgg groups", partial(hierarchical_of, "uniform")),
    "GoG": ("fgg groups", partial(hierarchical_of, "greedy")),
}
#: The appendix ablation's methods (A1), as :data:`TABLE1`.
APPENDIX_A1: dict[str, tuple[str, Soup]] = {
    "GS+HS(GoU)": ("grid by lr", partial(hierarchical_of, "uniform")),
    "GS+HS(GoG)": ("grid by lr", partial(hierarchical_of, "greedy")),
    "FGG+Uniform": ("fgg", uniform_of),
    "FGG+Greedy": ("fgg", greedy_of),
}
#: Beyond the paper: SWA's final model (the pool "swa": the zoo's SWA run), evaluated as a single model.
REFERENCES: dict[str, tuple[str, Soup]] = {"SWA": ("swa", best_of)}
SOUPS = {**TABLE1, **APPENDIX_A1, **REFERENCES}
#: Table 1's rows, then the appendix ablation's.
METHODS = tuple(TABLE1)
ABLATION = tuple(APPENDIX_A1)


def evaluate_on_test(evaluator: StateEvaluator, state: dict[str, torch.Tensor], data: MedData
                     ) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """The test metrics of ``state`` (those of :func:`~medsoup.core.train.evaluate`) and its per-image
    test ``(probabilities, targets)``, from one pass of the evaluator's model."""
    logits, targets = predict(evaluator.load(state), data, "test", **evaluator.options)
    if not torch.isfinite(logits).all():
        raise NonFiniteLossError(f"a soup's outputs on the test split are not finite "
                                 f"({int((~torch.isfinite(logits)).sum())} of {logits.numel()} values)")
    metrics = {**compute_metrics(data.task, targets, logits), "loss": float(loss_fn(data, logits, targets))}
    return metrics, (probabilities(logits, data.task), targets)


def soup_methods(zoo: Zoo, data: MedData, metric: str, recalibrate: bool = False,
                 methods: tuple[str, ...] = METHODS + ABLATION, bn_images: int | None = None) -> dict[str, MethodResult]:
    """Every method of Table 1, the ablation and SWA (:data:`SOUPS`), selected on validation ``metric``,
    with its test metrics and per-image test predictions (:func:`evaluate_on_test`).

    ``recalibrate``: every state evaluated (candidates, soups, single models) first gets its BatchNorm
    statistics recomputed on (at most ``bn_images`` of) the clean training images; otherwise it
    keeps those it carries (averaged ones for a soup, as the paper's code).
    ``evaluations``: validation evaluations each method spent beyond the runs' recorded scores
    (with ``recalibrate``, the candidates' own scores are recomputed too and counted; see :class:`Pool`).
    """
    unknown = [name for name in methods if name not in SOUPS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SOUPS)}")
    model = zoo.grid[0].load_model()
    batches = train_images(data, model, max_images=bn_images) if recalibrate else False
    evaluator = StateEvaluator(model, data, batches)
    score = evaluator.scorer(metric)
    grid_states = [r.load_state() for r in zoo.grid]
    grid_scores = [score(s) for s in grid_states] if recalibrate else [r.val[metric] for r in zoo.grid]
    grid_evaluations = len(grid_states) if recalibrate else 0
    groups = zoo.fgg_groups({r.key: state for r, state in zip(zoo.grid, grid_states)})
    group_scores = [[score(g[0]) if recalibrate else b.val[metric]] + [score(s) for s in g[1:]]
                    for b, g in zip(zoo.base, groups)]
    snapshot_evaluations = sum(len(g) - (0 if recalibrate else 1) for g in groups)
    by_lr = [[zoo.grid.index(r) for r in g] for g in zoo.grid_groups()]
    grid_labels, fgg_labels = zoo.grid_labels(), zoo.fgg_labels()
    pools = {"grid": Pool(grid_states, grid_scores, grid_labels, scoring=grid_evaluations),
             "fgg": Pool([s for g in groups for s in g], [v for g in group_scores for v in g],
                         [name for g in fgg_labels for name in g], upfront=snapshot_evaluations),
             "grid by lr": Pool([[grid_states[i] for i in g] for g in by_lr],
                                [[grid_scores[i] for i in g] for g in by_lr],
                                [[grid_labels[i] for i in g] for g in by_lr], scoring=grid_evaluations),
             "fgg groups": Pool(groups, group_scores, fgg_labels, upfront=snapshot_evaluations),
             "swa": Pool([zoo.swa.load_state()], [zoo.swa.val[metric]], [_label_swa(zoo.swa.config["train"])])}
    out: dict[str, MethodResult] = {}
    bar = progress(methods, desc=f"soups ({'BN recalibrated' if recalibrate else 'stored BN'})")
    for name in bar:
        bar.set_postfix_str(name)
        pool, soup = SOUPS[name]
        state, evaluations, weights = soup(pools[pool], score)
        val = evaluator.metrics(state, "val")  # remembered when the soup scored this very state
        test, predictions = evaluate_on_test(evaluator, state, data)  # still loaded (and recalibrated) from val
        statistics = bn_statistics(evaluator.load(state)) if recalibrate else None  # loaded unless both were known
        out[name] = MethodResult(state, val, test, evaluations, len(weights), statistics, weights, predictions)
    return out


def _label_swa(train: dict) -> str:
    return f"SWA lr {train['lr']:g} then {train['lr'] * train['gamma']:g}, {train['augment']}, seed {train['seed']}"


def ood_metrics(model, results: dict[str, MethodResult], data: MedData, corruptions: tuple[str, ...],
                severity: int, recalibrate: bool = False) -> dict[str, dict[str, dict]]:
    """Test metrics of each method's state (loaded into ``model``) on each corrupted test set.
    With ``recalibrate``, BatchNorm statistics are recomputed on the clean training split first,
    as in :func:`soup_methods` (or taken from its results' ``statistics``), once per method; each
    corrupted test set is made once (:func:`~medsoup.core.corruptions.corrupted` caches it)."""
    shifted = {corruption: corrupted(data, corruption, severity) for corruption in corruptions}
    known = all(r.statistics is not None for r in results.values())
    evaluator = StateEvaluator(model, data, recalibrate and not known)
    out: dict[str, dict[str, dict]] = {name: {} for name in results}
    bar = progress(desc="OOD evaluation", total=len(corruptions) * len(results))
    for name, result in results.items():
        evaluator.load(result.state, result.statistics if recalibrate and known else None)
        for corruption, shifted_data in shifted.items():
            bar.set_postfix_str(f"{name}: {corruption}")
            out[name][corruption] = evaluator.metrics(result.state, "test", shifted_data)
            bar.update()
    bar.close()
    return out


#: The methods built on FGG's zoo (the chapter's methods); the others are the model soups' baselines.
FGG_METHODS = ("FGG(best)", "GoU", "GoG", "FGG+Uniform", "FGG+Greedy")


def long_rows(dataset: str, seed: int, recalibrate: bool, results: dict[str, MethodResult],
              ood: dict[str, dict[str, dict]] | None = None) -> list[dict]:
    """The chapter's long rows (:mod:`medsoup.chapters.tables`), one per method of :func:`soup_methods`:
    test metrics, ``val_*`` metrics, ``ood_*`` (mean over the corrupted test sets of
    :func:`ood_metrics`), ``recalibrate``, ``evaluations``, ``ingredients`` and ``kept`` (each
    ingredient's name and weight)."""
    out = []
    for name, r in results.items():
        shifted = list(ood[name].values()) if ood and name in ood else []
        mean_ood = {k: sum(m[k] for m in shifted) / len(shifted) for k in scalars(shifted[0])} if shifted else {}
        out.append({**row("FissionFusion", name, _role(name), dataset, seed, r.test), **scalars(r.val, "val_"),
                    **scalars(mean_ood, "ood_"), "recalibrate": recalibrate, "evaluations": r.evaluations,
                    "ingredients": r.ingredients, "kept": "; ".join(f"{k} ({w:.3g})" for k, w in r.weights.items())})
    return out


def bn_recheck_kinds(rows, methods) -> dict[str, int]:
    """What the BatchNorm re-check's pairs (each method of ``methods`` with statistics recomputed against
    averaged, per dataset and seed, in :func:`long_rows` ``rows``) compare: ``pairs`` in all, ``single``
    where both sides are one model (no weights averaged: the difference is that of the running
    statistics carried from training), ``different`` where the two settings kept different ingredients
    (the greedy choices differ, so the difference is not that of the statistics alone)."""
    mine = rows[rows["method"].isin(list(methods))]
    recomputed = mine["recalibrate"].astype(bool)
    both = mine[recomputed].merge(mine[~recomputed], on=["dataset", "seed", "method"], suffixes=("", "_averaged"))
    return {"pairs": len(both), "single": int(((both["ingredients"] == 1) & (both["ingredients_averaged"] == 1)).sum()),
            "different": int((both["kept"] != both["kept_averaged"]).sum())}


def _role(method: str) -> str:
    return "method" if method in FGG_METHODS else "baseline"


def ood_rows(dataset: str, seed: int, recalibrate: bool, ood: dict[str, dict[str, dict]]) -> list[dict]:
    """One long row per method and corruption (column ``corruption``) of :func:`ood_metrics`."""
    return [row("FissionFusion", name, _role(name), dataset, seed, metrics,
                recalibrate=recalibrate, corruption=corruption)
            for name, per in ood.items() for corruption, metrics in per.items()]
