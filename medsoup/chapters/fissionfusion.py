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
from functools import partial
from typing import Any, Callable

import torch

from medsoup.chapters.tables import row, scalars
from medsoup.core.bn import StateEvaluator, bn_statistics
from medsoup.core.corruptions import corrupted
from medsoup.core.data import MedData
from medsoup.core.progress import progress
from medsoup.core.train import TrainConfig
from medsoup.merging.fgg import fgg_epochs
from medsoup.merging.soups import ScoreFn, greedy_soup, hierarchical_soup, uniform_soup
from medsoup.runs.profiles import CPU_DATASETS
from medsoup.runs.store import RunConfig, RunResult, run, run_many

#: The metric each dataset is selected and reported by, after the paper's analogue (APTOS: F1,
#: RSNA Pneumonia: F1); BreastMNIST uses AUC, its 78 validation images make F1 very coarse.
METRIC = {"retinamnist": "f1", "pneumoniamnist": "f1", "breastmnist": "auc"}
#: Each dataset's metric on the corrupted test sets (mean over corruptions) in the long rows.
OOD_METRIC = {dataset: f"ood_{metric}" for dataset, metric in METRIC.items()}
#: The dataset the stand-in "pre-trained" model is trained on, for each target dataset.
SOURCE = {"breastmnist": "pneumoniamnist", "retinamnist": "pneumoniamnist", "pneumoniamnist": "retinamnist"}

#: The corruptions (:mod:`medsoup.core.corruptions`) evaluated at the cpu and paper profiles.
_CORRUPTIONS = ("gaussian_noise", "speckle_noise", "gaussian_blur", "brightness_down", "contrast_down", "pixelate")

#: The paper's settings (Sanjeev et al., Sec. 3, and its public code): an ImageNet ResNet-50 at 224 px, a
#: 10-epoch linear-probe warm-up, a grid of 8 learning rates x 3 augmentations x 2 seeds fine-tuned for 50
#: epochs (AdamW, cosine, batch 128), FGG from one base model per learning rate (heavy augmentation, one seed)
#: with 5 snapshots, 4 epochs per cycle, alpha_1 = 1e-5, alpha_2 = 1e-8. The paper trains FGG for 17 epochs,
#: which at 4 epochs per cycle hold only 4 cycle minima (epochs 2, 6, 10, 14; the fifth ends epoch 18), so
#: this profile trains ``fgg_epochs(5, 4.0)`` = 18, a departure listed in notebook 20. Datasets: RetinaMNIST
#: for APTOS, PneumoniaMNIST for RSNA Pneumonia, and BreastMNIST (:data:`METRIC`), at 224 px.
_PAPER: dict[str, Any] = dict(
    datasets=CPU_DATASETS, seeds=(0, 1, 2), grid_seeds=2, model="resnet50", size=224, train_subset=None,
    source_subset=None, pretrain_epochs=0, lp_epochs=10, lp_lr=1e-3, epochs=50,
    lrs=(1e-3, 5e-4, 1e-4, 5e-5, 1e-5, 5e-6, 1e-6, 1e-7), augments=("minimal", "medium", "heavy"), batch_size=128,
    weight_decay=1e-4, fgg_augment="heavy", fgg_snapshots=5, fgg_cycle_epochs=4.0, fgg_lr_max=1e-5,
    fgg_lr_min=1e-8, corruptions=_CORRUPTIONS, severity=3, grid_points=21, lmc_points=21, bn_images=None)

#: A 2-core machine without a GPU: no ImageNet weights offline, so a stand-in "pre-trained" smallcnn
#: (:func:`pretrain_run`), and a smaller grid.
_CPU: dict[str, Any] = dict(
    _PAPER,
    model="smallcnn",  # a few seconds per epoch on two cores; no ImageNet weights needed
    size=28,  # the one size all three offline datasets have
    train_subset=1000,  # at most 1000 training images (stratified; PneumoniaMNIST has 4708, RetinaMNIST 1080)
    source_subset=2000,  # the stand-in pre-training on 2000 images of SOURCE[dataset]
    pretrain_epochs=8,  # > 0: pre-train the stand-in from scratch instead of loading ImageNet weights
    lp_epochs=3,  # 3 warm-up epochs instead of 10
    epochs=6,  # 6 epochs per grid model instead of 50 (16 models per dataset and seed on two cores)
    lrs=(3e-3, 1e-3, 3e-4, 1e-4),  # 4 rates from 3e-3 to 1e-4 instead of 8 from 1e-3 to 1e-7
    augments=("medium", "heavy"),  # 2 augmentation levels instead of 3
    fgg_cycle_epochs=1.0,  # 1 epoch per cycle: 5 snapshots in fgg_epochs(5, 1.0) = 5 epochs, not 18
    fgg_lr_max=1e-4,  # FGG's range moved up tenfold to suit a small network trained for few epochs
    fgg_lr_min=1e-7,
    grid_points=11,  # 11 x 11 landscapes and 11-point LMC curves instead of 21: each point is a validation pass
    lmc_points=11,
    bn_images=1024,  # BatchNorm recomputed on at most 1024 training images at each point, not all
)

#: Continuous integration: each code path of notebooks 20 and 21 in minutes; its numbers mean nothing.
_SMOKE: dict[str, Any] = dict(
    _CPU,
    datasets=("breastmnist",),  # the smallest offline dataset, one seed, 128 training images
    seeds=(0,),
    train_subset=128,
    source_subset=512,
    pretrain_epochs=1,  # the shortest stand-in pre-training and warm-up; 2 epochs per grid model
    lp_epochs=1,
    epochs=2,
    lrs=(1e-3, 1e-4),  # a 2 x 2 x 2 grid
    batch_size=64,  # two steps per epoch on the 128 images
    fgg_snapshots=2,  # 2 snapshots at 2 epochs per cycle: fgg_epochs(2, 2.0) = 3 FGG epochs
    fgg_cycle_epochs=2.0,
    corruptions=("gaussian_noise", "contrast_down"),  # one noise and one intensity corruption
    grid_points=5,  # a 5 x 5 landscape and 5-point LMC curves
    lmc_points=5,
    bn_images=512,  # half the cpu value's BatchNorm images per point
)

#: Settings per profile: ``paper`` is the reference, ``cpu`` and ``smoke`` state what they change and why.
FISSIONFUSION: dict[str, dict] = {"smoke": _SMOKE, "cpu": _CPU, "paper": _PAPER}


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
    """One method's soup ``state``, its metrics, evaluations and ingredients; ``statistics``: its
    recomputed BatchNorm buffers when :func:`soup_methods` recalibrated (reused by :func:`ood_metrics`)."""

    state: dict[str, torch.Tensor]
    val: dict
    test: dict
    evaluations: int
    ingredients: int
    statistics: dict[str, torch.Tensor] | None = None


@dataclass
class Pool:
    """The candidates one method soups: ``states`` (flat, or one list per group) and their validation
    ``scores`` in the same shape, with the evaluations it costs: ``upfront``, spent by every method on
    the pool (the FGG pools: the snapshots' scores, which no run recorded, and with recalibration the
    base models' too), and ``scoring``, spent only by a method that reads the scores (the grid pools,
    with recalibration: the runs' scores recomputed)."""

    states: list
    scores: list
    upfront: int = 0
    scoring: int = 0


Souped = tuple[dict[str, torch.Tensor], int, int]  # (state, evaluations, ingredients)
Soup = Callable[[Pool, ScoreFn], Souped]


def best_of(pool: Pool, score: ScoreFn) -> Souped:
    """The candidate with the best validation score (GS(best), FGG(best))."""
    best = max(range(len(pool.states)), key=lambda i: pool.scores[i])
    return pool.states[best], pool.upfront + pool.scoring, 1


def uniform_of(pool: Pool, score: ScoreFn) -> Souped:
    """The uniform soup of every candidate; one evaluation, of the soup."""
    return uniform_soup(pool.states), pool.upfront + 1, len(pool.states)


def greedy_of(pool: Pool, score: ScoreFn) -> Souped:
    """The greedy soup of the candidates, in order of their scores."""
    soup = greedy_soup(pool.states, score, pool.scores)
    return soup.state, pool.upfront + pool.scoring + soup.evaluations, len(soup.kept)


def hierarchical_of(local: str, pool: Pool, score: ScoreFn) -> Souped:
    """Hierarchical souping of the pool's groups, each ``local``-ly ("uniform": GoU, "greedy": GoG),
    then greedily across groups; the ingredients are those of the groups the top soup kept."""
    soup = hierarchical_soup(pool.states, score, local, pool.scores)
    kept = sum(len(soup.local[i].kept) for i in soup.top.kept)
    return soup.state, pool.upfront + pool.scoring + soup.evaluations, kept


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
SOUPS = {**TABLE1, **APPENDIX_A1}
#: Table 1's rows, then the appendix ablation's.
METHODS = tuple(TABLE1)
ABLATION = tuple(APPENDIX_A1)


def soup_methods(zoo: Zoo, data: MedData, metric: str, recalibrate: bool = False,
                 methods: tuple[str, ...] = METHODS + ABLATION) -> dict[str, MethodResult]:
    """Every method of Table 1 and the ablation (:data:`SOUPS`), selected on validation ``metric``.

    ``evaluations``: validation evaluations each method spent beyond the runs' recorded scores
    (with ``recalibrate``, the candidates' own scores are recomputed too and counted; see :class:`Pool`).
    """
    unknown = [name for name in methods if name not in SOUPS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SOUPS)}")
    model = zoo.grid[0].load_model()
    evaluator = StateEvaluator(model, data, recalibrate)
    score = evaluator.scorer(metric)
    grid_states = [r.load_state() for r in zoo.grid]
    grid_scores = [score(s) for s in grid_states] if recalibrate else [r.val[metric] for r in zoo.grid]
    grid_evaluations = len(grid_states) if recalibrate else 0
    groups = zoo.fgg_groups()
    group_scores = [[score(g[0]) if recalibrate else b.val[metric]] + [score(s) for s in g[1:]]
                    for b, g in zip(zoo.base, groups)]
    snapshot_evaluations = sum(len(g) - (0 if recalibrate else 1) for g in groups)
    by_lr = [[zoo.grid.index(r) for r in g] for g in zoo.grid_groups()]
    pools = {"grid": Pool(grid_states, grid_scores, scoring=grid_evaluations),
             "fgg": Pool([s for g in groups for s in g], [v for g in group_scores for v in g],
                         upfront=snapshot_evaluations),
             "grid by lr": Pool([[grid_states[i] for i in g] for g in by_lr],
                                [[grid_scores[i] for i in g] for g in by_lr], scoring=grid_evaluations),
             "fgg groups": Pool(groups, group_scores, upfront=snapshot_evaluations)}
    out: dict[str, MethodResult] = {}
    bar = progress(methods, desc=f"soups ({'BN recalibrated' if recalibrate else 'stored BN'})")
    for name in bar:
        bar.set_postfix_str(name)
        pool, soup = SOUPS[name]
        state, evaluations, ingredients = soup(pools[pool], score)
        val = evaluator.metrics(state, "val")  # remembered when the soup scored this very state
        test = evaluator.metrics(state, "test")  # the state stays loaded (and recalibrated) from val
        statistics = bn_statistics(evaluator.load(state)) if recalibrate else None  # loaded unless both were known
        out[name] = MethodResult(state, val, test, evaluations, ingredients, statistics)
    return out


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
    :func:`ood_metrics`), ``recalibrate``, ``evaluations`` and ``ingredients``."""
    out = []
    for name, r in results.items():
        shifted = list(ood[name].values()) if ood and name in ood else []
        mean_ood = {k: sum(m[k] for m in shifted) / len(shifted) for k in scalars(shifted[0])} if shifted else {}
        out.append({**row("FissionFusion", name, _role(name), dataset, seed, r.test), **scalars(r.val, "val_"),
                    **scalars(mean_ood, "ood_"), "recalibrate": recalibrate, "evaluations": r.evaluations,
                    "ingredients": r.ingredients})
    return out


def _role(method: str) -> str:
    return "method" if method in FGG_METHODS else "baseline"


def ood_rows(dataset: str, seed: int, recalibrate: bool, ood: dict[str, dict[str, dict]]) -> list[dict]:
    """One long row per method and corruption (column ``corruption``) of :func:`ood_metrics`."""
    return [row("FissionFusion", name, _role(name), dataset, seed, metrics,
                recalibrate=recalibrate, corruption=corruption)
            for name, per in ood.items() for corruption, metrics in per.items()]


def bn_pairs(methods) -> list[tuple[dict, dict]]:
    """Selector pairs (:func:`medsoup.chapters.tables.paired`): each method with its BatchNorm
    statistics recomputed against the same method with the averaged ones."""
    return [({"method": m, "recalibrate": True, "label": f"{m} with BN recomputed"},
             {"method": m, "recalibrate": False, "label": m}) for m in methods]


def barrier_rows(barriers: list[dict], seed: int) -> list[dict]:
    """Long rows of the landscape notebook's barrier records (``dataset``, ``pair differs in``, ``BN``,
    ``barrier (<metric>)``, ``barrier (loss)``): method ``interpolation, only <kind> differs``,
    ``recalibrate``, ``barrier_metric``, ``barrier`` and ``barrier_loss``."""
    out = []
    for b in barriers:
        metric = next(k[len("barrier ("):-1] for k in b if k.startswith("barrier (") and k != "barrier (loss)")
        out.append(row("FissionFusion", f"interpolation, only {b['pair differs in']} differs", "measurement",
                       b["dataset"], seed, recalibrate=b["BN"] == "BN recomputed", barrier_metric=metric,
                       barrier=b[f"barrier ({metric})"], barrier_loss=b["barrier (loss)"]))
    return out
