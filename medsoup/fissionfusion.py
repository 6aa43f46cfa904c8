"""The FissionFusion chapter's experiment: generate the zoo, then every soup of Table 1 and its
appendix ablation, in-distribution and on corrupted test sets.

One call per (dataset, seed): :func:`generate_zoo` (cached, resumable runs through
:mod:`medsoup.runs`, any executor), :func:`soup_methods` (each method's state and metrics),
:func:`ood_metrics`. Without recalibration every state is evaluated with the BatchNorm statistics
it carries (averaged ones for soups, as the paper's code); with it, every state evaluated
(candidates, soups and single models alike) first gets its statistics recomputed on the clean
training split, so the effect of merging is not confused with the effect of recalibrating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medsoup import fgg
from medsoup.bn import evaluate_state, train_images
from medsoup.corruptions import corrupted
from medsoup.data import MedData
from medsoup.runs import RunResult, run, run_many
from medsoup.soups import greedy_soup, hierarchical_soup, state_scorer, uniform_soup
from medsoup.stats import paired_difference, summarise

#: Table 1's rows, then the appendix ablation's (A1).
METHODS = ("GS(best)", "Uniform soup", "Greedy soup", "FGG(best)", "GoU", "GoG")
ABLATION = ("GS+HS(GoU)", "GS+HS(GoG)", "FGG+Uniform", "FGG+Greedy")


@dataclass
class Zoo:
    """The grid-search models, FGG's base models (one per learning rate) and FGG's runs."""

    dataset: str
    seed: int
    lrs: tuple[float, ...]
    grid_seeds: int
    grid: list[RunResult]
    base: list[RunResult]
    fission: list[RunResult]

    def grid_groups(self) -> list[list[RunResult]]:
        """Grid-search runs grouped by learning rate (GS+HS in the ablation)."""
        return [[r for r in self.grid if r.config["train"]["lr"] == lr] for lr in self.lrs]

    def fgg_groups(self) -> list[list[dict[str, torch.Tensor]]]:
        """Per learning rate: theta_t followed by its snapshots."""
        return [[b.load_state()] + [f.load_artifact(a) for a in f.artifacts] for b, f in zip(self.base, self.fission)]

    def find(self, lr: float, augment: str, replicate: int = 0) -> RunResult:
        """The grid run with this learning rate, augmentation and seed replicate."""
        seed = self.seed * self.grid_seeds + replicate
        for r in self.grid:
            t = r.config["train"]
            if t["lr"] == lr and t["augment"] == augment and t["seed"] == seed:
                return r
        raise KeyError(f"no grid run with lr={lr}, augment={augment!r}, replicate={replicate}")

    def compute(self) -> dict[str, dict[str, float]]:
        """Epochs and wall time (s) spent generating each zoo (LP warm-up and pre-training, common
        to both, excluded; FGG's base runs counted even when the grid search shares them)."""
        def total(runs):
            return {"models": len(runs), "epochs": sum(len(r.history) for r in runs),
                    "wall_time": sum(r.wall_time for r in runs)}
        fission = total(self.fission)
        base = total(self.base)
        return {"GS": total(self.grid),
                "FGG": {"models": base["models"] + sum(len(f.artifacts) for f in self.fission),
                        "epochs": base["epochs"] + fission["epochs"],
                        "wall_time": base["wall_time"] + fission["wall_time"]}}


def generate_zoo(s: dict, dataset: str, seed: int, executor=None, progress: bool = False) -> Zoo:
    """Train (or load from the run cache) every model of one dataset and seed. The shared warm-up
    theta_0 is trained first, so parallel workers never train it twice."""
    run(fgg.warmup_run(s, dataset, seed), progress=progress)
    grid = run_many(fgg.grid_runs(s, dataset, seed), executor, progress=progress)
    base = run_many(fgg.base_runs(s, dataset, seed), executor, progress=progress)
    fission = run_many(fgg.fgg_runs(s, dataset, seed), executor, progress=progress)
    return Zoo(dataset, seed, tuple(s["lrs"]), s["grid_seeds"], grid, base, fission)


@dataclass
class MethodResult:
    state: dict[str, torch.Tensor]
    val: dict
    test: dict
    evaluations: int
    ingredients: int


def soup_methods(zoo: Zoo, data: MedData, metric: str, recalibrate: bool = False,
                 methods: tuple[str, ...] = METHODS + ABLATION) -> dict[str, MethodResult]:
    """Every method of Table 1 and the ablation, selected on validation ``metric``.

    ``evaluations``: validation evaluations each method spent beyond the runs' recorded scores
    (with ``recalibrate``, the candidates' own scores are recomputed too and counted).
    """
    model = zoo.grid[0].load_model()
    score = state_scorer(model, data, metric, recalibrate=recalibrate)
    bn = train_images(data, model) if recalibrate else False
    grid_states = [r.load_state() for r in zoo.grid]
    grid_scores = [score(s) for s in grid_states] if recalibrate else [r.val[metric] for r in zoo.grid]
    grid_evaluations = len(grid_states) if recalibrate else 0
    groups = zoo.fgg_groups()
    group_scores = [[score(g[0]) if recalibrate else b.val[metric]] + [score(s) for s in g[1:]]
                    for b, g in zip(zoo.base, groups)]
    snapshot_evaluations = sum(len(g) - (0 if recalibrate else 1) for g in groups)
    fgg_states = [s for g in groups for s in g]
    fgg_scores = [v for g in group_scores for v in g]
    by_lr = [[zoo.grid.index(r) for r in g] for g in zoo.grid_groups()]
    grid_groups = [[grid_states[i] for i in g] for g in by_lr]
    grid_group_scores = [[grid_scores[i] for i in g] for g in by_lr]

    def soup_result(state, evaluations, ingredients):
        val = evaluate_state(model, state, data, "val", bn)
        return MethodResult(state, val, evaluate_state(model, state, data, "test", bn), evaluations, ingredients)

    def single(states, scores, evaluations):
        return soup_result(states[max(range(len(states)), key=lambda i: scores[i])], evaluations, 1)

    out: dict[str, MethodResult] = {}
    for name in methods:
        if name == "GS(best)":
            out[name] = single(grid_states, grid_scores, grid_evaluations)
        elif name == "FGG(best)":
            out[name] = single(fgg_states, fgg_scores, snapshot_evaluations)
        elif name == "Uniform soup":
            out[name] = soup_result(uniform_soup(grid_states), 1, len(grid_states))
        elif name == "FGG+Uniform":
            out[name] = soup_result(uniform_soup(fgg_states), snapshot_evaluations + 1, len(fgg_states))
        elif name == "Greedy soup":
            soup = greedy_soup(grid_states, score, grid_scores)
            out[name] = soup_result(soup.state, grid_evaluations + soup.evaluations, len(soup.kept))
        elif name == "FGG+Greedy":
            soup = greedy_soup(fgg_states, score, fgg_scores)
            out[name] = soup_result(soup.state, snapshot_evaluations + soup.evaluations, len(soup.kept))
        elif name in ("GoU", "GoG"):
            soup = hierarchical_soup(groups, score, "uniform" if name == "GoU" else "greedy", group_scores)
            kept = sum(len(soup.local[i].kept) for i in soup.top.kept)
            out[name] = soup_result(soup.state, snapshot_evaluations + soup.evaluations, kept)
        elif name in ("GS+HS(GoU)", "GS+HS(GoG)"):
            soup = hierarchical_soup(grid_groups, score, "uniform" if "GoU" in name else "greedy", grid_group_scores)
            kept = sum(len(soup.local[i].kept) for i in soup.top.kept)
            out[name] = soup_result(soup.state, grid_evaluations + soup.evaluations, kept)
        else:
            raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS + ABLATION)}")
    return out


def ood_metrics(model, results: dict[str, MethodResult], data: MedData, corruptions: tuple[str, ...],
                severity: int, recalibrate: bool = False) -> dict[str, dict[str, dict]]:
    """Test metrics of each method's state (loaded into ``model``) on each corrupted test set.
    With ``recalibrate``, BatchNorm statistics are recomputed on the clean training split first,
    as in :func:`soup_methods`."""
    bn = train_images(data, model) if recalibrate else False
    out: dict[str, dict[str, dict]] = {name: {} for name in results}
    for corruption in corruptions:
        shifted = corrupted(data, corruption, severity)
        for name, result in results.items():
            out[name][corruption] = evaluate_state(model, result.state, shifted, "test", bn)
    return out


def records(dataset: str, seed: int, recalibrate: bool, results: dict[str, MethodResult],
            ood: dict[str, dict[str, dict]] | None = None) -> list[dict]:
    """Flat JSON-ready rows (one per method) of :func:`soup_methods` (and :func:`ood_metrics`)."""
    def clean(metrics):
        return {k: v for k, v in metrics.items() if k != "auc_per_label"}
    return [{"dataset": dataset, "seed": seed, "recalibrate": recalibrate, "method": name,
             "val": clean(r.val), "test": clean(r.test), "evaluations": r.evaluations, "ingredients": r.ingredients,
             **({"ood": {c: clean(m) for c, m in ood[name].items()}} if ood and name in ood else {})}
            for name, r in results.items()]


def values(rows: list[dict], dataset: str, method: str, metric: str, recalibrate: bool = False,
           split: str = "test") -> list[float]:
    """Per-seed values (in seed order) of one method's ``split`` ``metric``; ``split="ood"`` gives
    the mean over corruptions."""
    chosen = sorted((r for r in rows if r["dataset"] == dataset and r["method"] == method
                     and r["recalibrate"] == recalibrate), key=lambda r: r["seed"])
    if split == "ood":
        return [sum(m[metric] for m in r["ood"].values()) / len(r["ood"]) for r in chosen]
    return [r[split][metric] for r in chosen]


def summary_table(rows: list[dict], datasets, methods, metric_of: dict[str, str], recalibrate: bool = False,
                  split: str = "test") -> dict[str, dict[str, str]]:
    """``{method: {dataset: "mean ± std (n)"}}`` of each dataset's metric over seeds."""
    table = {}
    for method in methods:
        table[method] = {}
        for dataset in datasets:
            found = values(rows, dataset, method, metric_of[dataset], recalibrate, split)
            if found:
                table[method][dataset] = str(summarise(found))
    return table


def verdict(rows: list[dict], dataset: str, a: str, b: str, metric: str, recalibrate: bool = False,
            split: str = "test", recalibrate_b: bool | None = None) -> str:
    """A sentence comparing method ``b`` with ``a`` on ``dataset`` over the same seeds (paired);
    ``recalibrate_b`` (default: ``recalibrate``) compares a method with itself across BN settings."""
    recalibrate_b = recalibrate if recalibrate_b is None else recalibrate_b
    label_b = b + (" with BN recomputed" if recalibrate_b and not recalibrate else "")
    d = paired_difference(values(rows, dataset, a, metric, recalibrate, split),
                          values(rows, dataset, b, metric, recalibrate_b, split))
    return f"on {dataset}, {d.describe(label_b, a, metric)}"
