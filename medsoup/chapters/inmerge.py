"""The InMerge chapter: settings per profile, the protocol and its result tables.

The protocol: a backbone run, then from it an InMerge fine-tuning run and a baseline run that
continues training for the same number of epochs without merging (same seed, so the same batches).
Every number comes from :func:`medsoup.runs.store.run` (cached); the method itself is :mod:`medsoup.merging.inmerge`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medsoup.chapters.tables import paired, row
from medsoup.core.train import TrainConfig
from medsoup.merging.inmerge import check_params
from medsoup.runs.profiles import CPU_DATASETS
from medsoup.runs.store import RunConfig, run_key, run_many

#: The paper's settings (Wang et al., Sec. 4.1-4.3): Table 2 on PathMNIST, DermaMNIST and BloodMNIST at 64 px
#: with an ImageNet VGG19, batch 1024, SGD with a multi-step schedule, 20 backbone + 5 merging epochs, five runs;
#: alpha 0.8, L_s 10, p 0.3, tau 0.3. lr 0.01 and weight decay 1e-4 are those it gives for ChestX-ray14; the rate
#: of the merging phase (``finetune_lr``) is not stated. The ablations (Sec. 4.3) are on chest X-rays (ChestMNIST
#: here), the architectures with their L_s; ``chest`` adds the Table 1 analogue (ChestMNIST per-disease AUC,
#: ``chest_epochs`` = backbone and merging epochs, 30 + 10 as on ChestX-ray14).
_PAPER: dict[str, Any] = dict(
    datasets=("pathmnist", "dermamnist", "bloodmnist"), model="vgg19", size=64, init="imagenet", train_subset=None,
    seeds=(0, 1, 2, 3, 4), backbone_epochs=20, merge_epochs=5, batch_size=1024, optimizer="sgd", lr=1e-2,
    finetune_lr=1e-3, weight_decay=1e-4, augment="medium", alpha=0.8, first_layer=10, p=0.3, tau=0.3,
    ablation_datasets=("chestmnist",), ablation_seeds=(0, 1, 2), alphas=(0.5, 0.6, 0.7, 0.8, 0.9),
    ps=(0.1, 0.3, 0.5, 0.7), first_layers=(0, 5, 10, 15), taus=(0.1, 0.3, 0.5, 0.7), dissimilar_tau=0.5,
    extra_taus=(), architectures=(("vgg19", 10), ("vgg16", 10), ("resnet34", 30)),
    architecture_dataset="chestmnist", chest=True, chest_epochs=(30, 10))

#: A 2-core machine without a GPU: no ImageNet weights and no ChestMNIST offline.
_CPU: dict[str, Any] = dict(
    _PAPER,
    datasets=CPU_DATASETS,  # the three offline datasets instead of Path/Derma/Blood
    model="smallcnn",  # trained from scratch (init None below): a few seconds per epoch on two cores
    size=28,  # the one size all three offline datasets have
    init=None,  # no ImageNet weights offline (and none exist for the smallcnn)
    batch_size=128,  # the baseline recipe's batch (BASELINE)
    optimizer="adamw",  # the baseline recipe's optimizer and rate, for a network trained from scratch
    lr=1e-3,
    finetune_lr=1e-4,  # a tenth of lr, as the paper profile's 1e-3 is of its 1e-2
    first_layer=4,  # "merge the last stage" (notebook 10): the smallcnn's two 128-channel convolutions
    ablation_datasets=("breastmnist", "retinamnist"),  # the two smaller offline datasets (546, 1080 images)
    alphas=(0.5, 0.8, 0.95),  # the paper grid's lowest and default, and 0.95, a weaker merge than its grid has
    ps=(0.1, 0.3, 1.0),  # the paper grid's lowest and default, and p = 1: a merge attempt for every kernel
    first_layers=(0, 1, 2, 3, 4, 5),  # every convolution of the 6-layer smallcnn
    taus=(-1.0, 0.0, 0.1, 0.3, 0.5),  # adds tau 0 and -1 (every selected pair merges), see extra_taus; drops 0.7
    extra_taus=(0.0,),  # almost no kernel pairs of a from-scratch smallcnn pass tau 0.3: run tau 0 beside it
    architectures=(("smallcnn", 4), ("resnet18", 15)),  # each with its "last stage" L_s (notebook 10)
    architecture_dataset="breastmnist",  # instead of ChestMNIST
    chest=False,  # ChestMNIST is not available offline
    chest_epochs=(2, 1),  # not used without chest
)

#: Continuous integration: each code path of notebooks 10 and 11 in minutes; its numbers mean nothing.
_SMOKE: dict[str, Any] = dict(
    _CPU,
    datasets=("breastmnist",),  # the smallest offline dataset
    train_subset=192,  # three steps per epoch at the batch below
    seeds=(0, 1),  # two seeds: the fewest with which a paired difference is tested
    backbone_epochs=2,  # 2 + 1 epochs: the protocol's two phases, each as short as it gets
    merge_epochs=1,
    batch_size=64,
    ablation_datasets=("breastmnist",),  # the ablations on the main table's dataset and seeds
    ablation_seeds=(0, 1),
    alphas=(0.5, 0.8),  # a few points of each cpu grid
    ps=(0.3, 1.0),
    first_layers=(0, 4, 5),
    taus=(0.0, 0.3),
    architectures=(("smallcnn", 4),),  # no ResNet-18: the slowest part of the cpu ablations
)

#: Settings per profile: ``paper`` is the reference, ``cpu`` and ``smoke`` state what they change and why.
#: ``first_layer`` is L_s for ``model``; ``architectures`` pairs each architecture of the architecture
#: ablation with its L_s; ``extra_taus`` are thresholds run beside the paper's tau in the main table.
INMERGE: dict[str, dict[str, Any]] = {"smoke": _SMOKE, "cpu": _CPU, "paper": _PAPER}


def inmerge_params(s: dict, seed: int, **overrides) -> dict[str, Any]:
    """The ``InMerge`` keyword parameters of settings ``s`` (L_s, alpha, p, tau), seeded by the run's seed."""
    params = dict(alpha=s["alpha"], first_layer=s["first_layer"], p=s["p"], tau=s["tau"], seed=seed)
    params.update(overrides)
    check_params(params["alpha"], params["p"], params["tau"], params["first_layer"])
    return params


def backbone_run(s: dict, dataset: str, seed: int, model: str | None = None) -> RunConfig:
    """The backbone :class:`~medsoup.runs.store.RunConfig`: ``backbone_epochs`` of multi-step training."""
    train = TrainConfig(epochs=s["backbone_epochs"], batch_size=s["batch_size"], optimizer=s["optimizer"],
                        lr=s["lr"], weight_decay=s["weight_decay"], augment=s["augment"], schedule="multistep",
                        milestones=(0.5, 0.75), select_metric="auc", seed=seed)
    return RunConfig(dataset=dataset, size=s["size"], model=model or s["model"], init=s["init"],
                     train=train, train_subset=s["train_subset"])


def finetune_run(s: dict, dataset: str, seed: int, model: str | None = None,
                 merge: dict | None = None) -> RunConfig:
    """``merge_epochs`` more from the backbone at the constant ``finetune_lr``: with InMerge when
    ``merge`` holds its parameters, the baseline when it is None. Both arms see the same batches."""
    backbone = backbone_run(s, dataset, seed, model)
    train = backbone.train.replace(epochs=s["merge_epochs"], lr=s["finetune_lr"], schedule="constant")
    callbacks = (("inmerge", merge),) if merge is not None else ()
    return backbone.replace(init=backbone, train=train, callbacks=callbacks)


def protocol(s: dict, dataset: str, seed: int, model: str | None = None, **merge_overrides) -> dict[str, Any]:
    """``{"backbone", "baseline", "inmerge"}`` RunConfigs of one dataset and seed."""
    return {"backbone": backbone_run(s, dataset, seed, model),
            "baseline": finetune_run(s, dataset, seed, model),
            "inmerge": finetune_run(s, dataset, seed, model, inmerge_params(s, seed, **merge_overrides))}


def sweep(s: dict, variants: Mapping[str, dict], datasets: Sequence[str], seeds: Sequence[int],
          model: str | None = None, executor=None, progress: bool = True) -> list[dict]:
    """Run the protocol for every dataset, seed and InMerge variant; one record per combination.

    ``variants``: label -> InMerge parameter overrides (e.g. ``{"p=1": {"p": 1.0}}``). Backbones
    run first, then the fine-tuning runs (a baseline is shared by all variants of its seed). A
    record holds ``dataset``, ``seed``, ``setting`` (the label), the overrides, the ``baseline`` and
    ``inmerge`` test metrics, the mean ``merge_rate`` and the ``runs`` (RunResults).
    """
    jobs = [(d, seed, label, protocol(s, d, seed, model, **params))
            for d in datasets for seed in seeds for label, params in variants.items()]
    for arms in (("backbone",), ("baseline", "inmerge")):
        unique = {run_key(p[a]): p[a] for *_, p in jobs for a in arms}
        done = dict(zip(unique, run_many(list(unique.values()), executor, progress=progress)))
    records = []
    for d, seed, label, p in jobs:
        base, merged = done[run_key(p["baseline"])], done[run_key(p["inmerge"])]
        records.append({"dataset": d, "model": model or s["model"], "seed": seed, "setting": label, **variants[label],
                        "baseline": base.test, "inmerge": merged.test,
                        "merge_rate": float(merge_rates(merged.history).mean()),
                        "runs": {"baseline": base, "inmerge": merged}})
    return records


#: The method and reference labels of the chapter's long rows.
METHOD, BASELINE = "InMerge", "fine-tuning, no merging"
#: The comparison every InMerge table makes: InMerge against the baseline on the same seeds.
PAIR = ({"method": METHOD}, {"method": BASELINE, "label": "the baseline"})
#: The columns of a :func:`sweep` record that are not settings of the variant.
_MEASURED = ("dataset", "seed", "baseline", "inmerge", "merge_rate", "runs")


def paper_setting(s: dict) -> str:
    """The label of the paper's setting in the chapter's sweep (the comparison page reads these rows)."""
    return f"tau={s['tau']} (paper)"


def long_rows(records: Sequence[dict], **columns) -> pd.DataFrame:
    """The chapter's long rows (:mod:`medsoup.chapters.tables`) of :func:`sweep` records: per record
    a baseline row and an InMerge row with its ``merge_rate``, both carrying ``model``, ``setting``,
    the variant's overrides (``alpha``, ``p``, ...) and the constant ``columns`` (e.g. ``ablation=``)."""
    out = []
    for r in records:
        extra = {**{k: v for k, v in r.items() if k not in _MEASURED}, **columns}
        out.append(row("InMerge", BASELINE, "baseline", r["dataset"], r["seed"], r["baseline"], **extra))
        out.append(row("InMerge", METHOD, "method", r["dataset"], r["seed"], r["inmerge"], **extra,
                       **{k: r[k] for k in ("merge_rate",) if k in r}))
    return pd.DataFrame(out)


def versus_baseline(records: Sequence[dict], metrics: Sequence[str] = ("acc", "auc"),
                    by: str | Sequence[str] = "dataset") -> pd.DataFrame:
    """InMerge against the baseline per group of ``by`` (:func:`medsoup.chapters.tables.paired` over
    :func:`long_rows`), with the mean ``merge_rate`` of the InMerge runs."""
    return paired(long_rows(records), [PAIR], list(metrics), by=by, extra=("merge_rate",))


def per_label_auc(records: Sequence[dict], label_names: Sequence[str]) -> pd.DataFrame:
    """Table 1 analogue: per-label test AUC (mean over seeds) of baseline and InMerge, one row per label
    and a final ``average`` row, from multi-label records holding ``auc_per_label``."""
    base = np.array([r["baseline"]["auc_per_label"] for r in records], dtype=float)
    merged = np.array([r["inmerge"]["auc_per_label"] for r in records], dtype=float)
    table = pd.DataFrame({"label": list(label_names), "baseline": np.nanmean(base, 0), "inmerge": np.nanmean(merged, 0)})
    table.loc[len(table)] = ["average", table["baseline"].mean(), table["inmerge"].mean()]
    table["diff"] = table["inmerge"] - table["baseline"]
    return table


def tally(table: pd.DataFrame, metric: str = "auc") -> str:
    """How many settings of :func:`versus_baseline` raise or lower ``metric`` significantly (95% CI), and
    how many of the raw significant ones keep an adjusted p-value below 0.05 (Benjamini-Hochberg over
    the table's comparisons)."""
    rows = table[table["metric"] == metric]
    up, down = int((rows["outcome"] == "better").sum()), int((rows["outcome"] == "worse").sum())
    best = rows.loc[rows["difference"].idxmax()]
    text = (f"Of {len(rows)} settings, {up} raise test {metric.upper()} significantly over the baseline and "
            f"{down} lower it; the largest mean change is {best['difference']:+.4f} "
            f"(seeds per setting: {rows['n'].min()}).")
    if up + down:
        text += (f" Adjusted for the {int(table['family'].max())} comparisons of the table (Benjamini-Hochberg), "
                 f"{int(((rows['outcome'] != 'no significant difference') & (rows['p_adjusted'] < 0.05)).sum())} "
                 f"of these {up + down} keep p < 0.05.")
    if "merge_rate" in rows and rows["merge_rate"].notna().all():
        inert = int((rows["merge_rate"] == 0).sum())
        text += (f" In {inert} of them no kernel was merged at all (no selected pair passed the threshold), so"
                 f" InMerge there is the baseline; the mean merge rate ranges from {100 * rows['merge_rate'].min():.2f}%"
                 f" to {100 * rows['merge_rate'].max():.2f}% of kernel draws.")
    return text


def merge_rate_sentence(rate: float) -> str:
    """What a mean merge rate (merged kernels / kernel draws) means for the comparison."""
    if rate == 0:
        return ("No kernel was merged in any step (no selected pair passed the threshold), so the InMerge "
                "runs are the baseline runs: any difference above is zero.")
    return (f"On average {100 * rate:.2f}% of the kernel draws in the merged layers ended in a merge "
            f"(at most p of them can).")


def merge_rates(history: Sequence[dict]) -> np.ndarray:
    """``inmerge_rate`` per epoch of an InMerge run's history."""
    return np.array([h["inmerge_rate"] for h in history])
