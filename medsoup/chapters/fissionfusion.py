"""The FissionFusion chapter's experiment: generate the zoo, then every soup of Table 1 and its
appendix ablation, in-distribution and on corrupted test sets.

One call per (dataset, seed): :func:`generate_zoo` (cached, resumable runs through
:mod:`medsoup.runs.store`, any executor), :func:`soup_methods` (each method's state and metrics),
:func:`ood_metrics`. Without recalibration every state is evaluated with the BatchNorm statistics
it carries (averaged ones for soups, as the paper's code); with it, every state evaluated
(candidates, soups and single models alike) first gets its statistics recomputed on the clean
training split, so the effect of merging is not confused with the effect of recalibrating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medsoup.core.bn import evaluate_state, train_images
from medsoup.core.corruptions import corrupted
from medsoup.core.data import MedData
from medsoup.core.progress import progress
from medsoup.core.stats import paired_difference, summarise
from medsoup.core.train import TrainConfig
from medsoup.merging.fgg import fgg_epochs
from medsoup.merging.soups import greedy_soup, hierarchical_soup, state_scorer, uniform_soup
from medsoup.runs.profiles import CPU_DATASETS
from medsoup.runs.store import RunConfig, RunResult, run, run_many

#: The metric each dataset is selected and reported by, after the paper's analogue (APTOS: F1,
#: RSNA Pneumonia: F1); BreastMNIST uses AUC, its 78 validation images make F1 very coarse.
METRIC = {"retinamnist": "f1", "pneumoniamnist": "f1", "breastmnist": "auc"}
#: The dataset the stand-in "pre-trained" model is trained on, for each target dataset.
SOURCE = {"breastmnist": "pneumoniamnist", "retinamnist": "pneumoniamnist", "pneumoniamnist": "retinamnist"}

FISSIONFUSION: dict[str, dict] = {
    "smoke": dict(datasets=("breastmnist",), seeds=(0,), grid_seeds=2, model="smallcnn", size=28,
                  train_subset=128, source_subset=512, pretrain_epochs=1, lp_epochs=1, lp_lr=1e-3,
                  epochs=2, lrs=(1e-3, 1e-4), augments=("medium", "heavy"), batch_size=64,
                  weight_decay=1e-4, fgg_augment="heavy", fgg_snapshots=2, fgg_cycle_epochs=2.0,
                  fgg_lr_max=1e-4, fgg_lr_min=1e-7, corruptions=("gaussian_noise", "contrast_down"),
                  severity=3, grid_points=5, lmc_points=5, bn_images=512),
    "cpu": dict(datasets=CPU_DATASETS, seeds=(0, 1, 2), grid_seeds=2, model="smallcnn", size=28,
                train_subset=1000, source_subset=2000, pretrain_epochs=8, lp_epochs=3, lp_lr=1e-3,
                epochs=6, lrs=(3e-3, 1e-3, 3e-4, 1e-4), augments=("medium", "heavy"),
                batch_size=128, weight_decay=1e-4, fgg_augment="heavy", fgg_snapshots=5,
                fgg_cycle_epochs=1.0, fgg_lr_max=1e-4, fgg_lr_min=1e-7,
                corruptions=("gaussian_noise", "speckle_noise", "gaussian_blur", "brightness_down",
                             "contrast_down", "pixelate"),
                severity=3, grid_points=11, lmc_points=11, bn_images=1024),
    "paper": dict(datasets=CPU_DATASETS, seeds=(0, 1, 2), grid_seeds=2, model="resnet50", size=224,
                  train_subset=None, source_subset=None, pretrain_epochs=0, lp_epochs=10, lp_lr=1e-3,
                  epochs=50, lrs=(1e-3, 5e-4, 1e-4, 5e-5, 1e-5, 5e-6, 1e-6, 1e-7),
                  augments=("minimal", "medium", "heavy"), batch_size=128, weight_decay=1e-4,
                  fgg_augment="heavy", fgg_snapshots=5, fgg_cycle_epochs=4.0, fgg_lr_max=1e-5,
                  fgg_lr_min=1e-8,
                  corruptions=("gaussian_noise", "speckle_noise", "gaussian_blur", "brightness_down",
                               "contrast_down", "pixelate"),
                  severity=3, grid_points=21, lmc_points=21, bn_images=None),
}


#: Table 1's rows, then the appendix ablation's (A1).
METHODS = ("GS(best)", "Uniform soup", "Greedy soup", "FGG(best)", "GoU", "GoG")
ABLATION = ("GS+HS(GoU)", "GS+HS(GoG)", "FGG+Uniform", "FGG+Greedy")


def _train(s: dict, dataset: str, **changes) -> TrainConfig:
    base = dict(epochs=s["epochs"], batch_size=s["batch_size"], optimizer="adamw", weight_decay=s["weight_decay"],
                schedule="cosine", select_metric=METRIC.get(dataset, "auc"))
    return TrainConfig(**{**base, **changes})


def pretrain_run(s: dict, dataset: str) -> RunConfig | str:
    """The stand-in pre-trained model: trained from scratch on ``SOURCE[dataset]`` (cpu/smoke), or
    ``"imagenet"`` when the profile's ``pretrain_epochs`` is 0 (paper)."""
    if s["pretrain_epochs"] == 0:
        return "imagenet"
    source = SOURCE[dataset]
    train = _train(s, source, epochs=s["pretrain_epochs"], lr=1e-3, augment="medium", schedule="multistep",
                   select_metric="auc", seed=0)
    return RunConfig(dataset=source, size=s["size"], model=s["model"], train=train, train_subset=s["source_subset"])


def warmup_run(s: dict, dataset: str, seed: int) -> RunConfig:
    """theta_0: linear probing (head only, BatchNorm frozen) on top of the pre-trained model."""
    train = _train(s, dataset, epochs=s["lp_epochs"], lr=s["lp_lr"], linear_probe=True, bn_trainable=False,
                   augment="none", seed=seed)
    return RunConfig(dataset=dataset, size=s["size"], model=s["model"], init=pretrain_run(s, dataset),
                     train=train, train_subset=s["train_subset"])


def grid_run(s: dict, dataset: str, seed: int, lr: float, augment: str, replicate: int) -> RunConfig:
    """One grid-search model: full fine-tuning from theta_0 (AdamW, cosine)."""
    return warmup_run(s, dataset, seed).replace(
        init=warmup_run(s, dataset, seed),
        train=_train(s, dataset, lr=lr, augment=augment, seed=seed * s["grid_seeds"] + replicate))


def grid_runs(s: dict, dataset: str, seed: int) -> list[RunConfig]:
    """The grid search of model soups: learning rates x augmentations x ``grid_seeds`` seeds."""
    return [grid_run(s, dataset, seed, lr, augment, r)
            for lr in s["lrs"] for augment in s["augments"] for r in range(s["grid_seeds"])]


def base_runs(s: dict, dataset: str, seed: int) -> list[RunConfig]:
    """FGG's theta_t: one model per learning rate, ``fgg_augment`` and one seed (these are also
    grid-search models when ``fgg_augment`` is in the grid, and then come from the run cache)."""
    return [grid_run(s, dataset, seed, lr, s["fgg_augment"], 0) for lr in s["lrs"]]


def fgg_run(s: dict, base: RunConfig) -> RunConfig:
    """The fission stage from one base model: cyclical rate between ``fgg_lr_max`` (alpha_1) and
    ``fgg_lr_min`` (alpha_2), snapshots at its minima, the last iterate kept (no best-epoch restore)."""
    cycle = s["fgg_cycle_epochs"]
    train = base.train.replace(epochs=fgg_epochs(s["fgg_snapshots"], cycle), schedule="cyclical",
                               lr=s["fgg_lr_max"], min_lr=s["fgg_lr_min"], cycle_epochs=cycle,
                               augment=s["fgg_augment"], restore_best=False)
    return base.replace(init=base, train=train, callbacks=(("cycle_snapshots", {"cycle_epochs": cycle}),))


def fgg_runs(s: dict, dataset: str, seed: int) -> list[RunConfig]:
    return [fgg_run(s, base) for base in base_runs(s, dataset, seed)]


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
    run(warmup_run(s, dataset, seed), progress=progress)
    grid = run_many(grid_runs(s, dataset, seed), executor, progress=progress)
    base = run_many(base_runs(s, dataset, seed), executor, progress=progress)
    fission = run_many(fgg_runs(s, dataset, seed), executor, progress=progress)
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
    bar = progress(methods, desc=f"soups ({'BN recalibrated' if recalibrate else 'stored BN'})")
    for name in bar:
        bar.set_postfix_str(name)
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
    bar = progress(desc="OOD evaluation", total=len(corruptions) * len(results))
    for corruption in corruptions:
        shifted = corrupted(data, corruption, severity)
        for name, result in results.items():
            bar.set_postfix_str(f"{corruption}: {name}")
            out[name][corruption] = evaluate_state(model, result.state, shifted, "test", bn)
            bar.update()
    bar.close()
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
