"""The InMerge chapter: settings per profile, the protocol and its result tables.

The protocol: a backbone run, then from it an InMerge fine-tuning run and a baseline run that
continues training for the same number of epochs without merging (same seed, so the same batches).
Every number comes from :func:`medsoup.runs.store.run` (cached); the method itself is :mod:`medsoup.merging.inmerge`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medsoup.chapters.baselines import LITE0_CPU_RECIPES
from medsoup.chapters.tables import paired, row, with_group_labels
from medsoup.core.train import TrainConfig
from medsoup.core.models import create_model
from medsoup.merging.inmerge import check_params, forward_conv_layers
from medsoup.merging.kernels import KINDS, layer_kind
from medsoup.runs.profiles import CPU_DATASETS, for_dataset
from medsoup.runs.store import RunConfig, run_key, run_many

#: The paper's settings (Wang et al., Sec. 4.1-4.3): Table 2 on PathMNIST, DermaMNIST and BloodMNIST at 64 px
#: with an ImageNet VGG19, batch 1024, SGD with a multi-step schedule, 20 backbone + 5 merging epochs, five runs;
#: alpha 0.8, L_s 10, p 0.3, tau 0.3. lr 0.01 and weight decay 1e-4 are those it gives for ChestX-ray14; the rate
#: of the merging phase (``finetune_lr``) is not stated. The ablations (Sec. 4.3) are on chest X-rays (ChestMNIST
#: here), the architectures as (model, L_s, init); ``chest`` adds the Table 1 analogue (ChestMNIST per-disease AUC,
#: ``chest_epochs`` = backbone and merging epochs, 30 + 10 as on ChestX-ray14). ``main_quantiles`` and
#: ``quantiles`` are per-layer quantile thresholds (``tau_quantile``, not in the paper) run beside the fixed
#: tau in the main table and in the threshold ablation.
_PAPER: dict[str, Any] = dict(
    datasets=("pathmnist", "dermamnist", "bloodmnist"), model="vgg19", size=64, file_size=None, init="imagenet",
    train_subset=None,
    seeds=(0, 1, 2, 3, 4), backbone_epochs=20, merge_epochs=5, batch_size=1024, optimizer="sgd", lr=1e-2,
    finetune_lr=1e-3, weight_decay=1e-4, augment="medium", alpha=0.8, first_layer=10, p=0.3, tau=0.3,
    main_quantiles=(), ablation_datasets=("chestmnist",), ablation_seeds=(0, 1, 2), alphas=(0.5, 0.6, 0.7, 0.8, 0.9),
    ps=(0.1, 0.3, 0.5, 0.7), first_layers=(0, 5, 10, 15), taus=(0.1, 0.3, 0.5, 0.7), quantiles=(),
    dissimilar_tau=0.5, architectures=(("vgg19", 10, "imagenet"), ("vgg16", 10, "imagenet"), ("resnet34", 30, "imagenet")),
    architecture_dataset="chestmnist", chest=True, chest_epochs=(30, 10), schedule="multistep", recipes={})

#: A 2-core machine without a GPU: the ImageNet network that runs offline, fine-tuned on every training image
#: with each dataset's recipe (:data:`~medsoup.chapters.baselines.LITE0_CPU_RECIPES`, measured by
#: ``benchmarks/recipe_study.py`` to reach MedMNIST v2's level), which is the backbone; then the arms train
#: ``merge_epochs`` more at a tenth of the rate. Cost, from the recipe study's one-thread seconds per epoch
#: (BreastMNIST 64 px ~5.7 s, RetinaMNIST 28 px ~9.7 s): notebook 10 trains 5 seeds x (backbones 114 + 97 s,
#: 3 arms x (5 x 5.7 + 3 x 9.7) s) = about 1,900 s of one core; notebook 11 (BreastMNIST, 3 seeds, 9 new settings
#: of 5 epochs) about 770 s, plus the from-scratch smallcnn. PneumoniaMNIST (64 px, ~47 s an epoch) would add 2,100 s: cut from the cpu
#: reference run's two-hour budget (issue 23), it stays in the gpu profile.
_CPU: dict[str, Any] = dict(
    _PAPER,
    datasets=("breastmnist", "retinamnist"),  # two offline datasets instead of Path/Derma/Blood (PneumoniaMNIST: cost)
    model="tf_efficientnet_lite0",  # the ImageNet network available offline (medsoup.core.pretrained); VGG19 is
    # too slow on two cores, and a network trained from scratch has almost no kernel pairs above tau 0.3 (notebook 11)
    size=28,  # the input size where a dataset's recipe names none (each of the three does, below)
    train_subset=None,  # every training image: the recipe study's models reach MedMNIST v2's level only so
    backbone_epochs=10,  # where a recipe names none (each does): the paper's backbone + merging split is 20 + 5
    merge_epochs=3,
    schedule="multistep",
    # Per dataset: the recipe's input size, epochs and schedule for the backbone, and arms of several epochs
    # (9 BreastMNIST, 17 RetinaMNIST steps an epoch): 45 and 51 steps of merging (PneumoniaMNIST, 74 steps an
    # epoch, would take 2 epochs: its recipe is kept here for a run that adds it to ``datasets``).
    recipes={dataset: dict(size=r["size"], file_size=r["file_size"], backbone_epochs=r["epochs"],
                           schedule=r["schedule"], merge_epochs=merge)
             for (dataset, r), merge in zip(LITE0_CPU_RECIPES.items(), (2, 5, 3))},
    batch_size=64,  # the recipe study's batch
    optimizer="adamw",  # the recipe study's optimiser, rate and weight decay
    lr=1e-3,
    finetune_lr=1e-4,  # a tenth of lr, as the paper profile's 1e-3 is of its 1e-2: the backbone's multi-step
    # schedule ends at lr / 100, so the arms still learn at this rate (their training loss is in the runs' history)
    first_layer=33,  # L_s "the deeper layers": blocks.5, blocks.6 and conv_head, 16 of Lite0's 49 convs (notebook 10)
    main_quantiles=(0.5,),  # a per-layer median threshold beside tau 0.3: merges in pointwise layers too
    ablation_datasets=("breastmnist",),  # one dataset (merging happens on all three), its 546 images the cheapest
    # the paper grid's lowest and its default; 0.95 (a weaker merge than its grid has) was cut from the two-hour
    # budget (issue 23): in the first two cold cpu runs it scored as the baseline (ACC difference .000, AUC .001)
    alphas=(0.5, 0.8),
    ps=(0.3, 1.0),  # the paper's default and p = 1 (a merge attempt for every kernel); 0.1 only weakens it
    # every conv, the last three stages, the default; 46 (the last block and conv_head) was cut from the budget:
    # it scored as the baseline in the first two cold cpu runs (ACC difference -.002, AUC -.003)
    first_layers=(0, 24, 33),
    taus=(0.3,),  # the paper's tau; other fixed values are replaced by quantiles (below), which merge in every layer
    quantiles=(0.25, 0.5, 0.75, 0.9),  # per-layer quantile thresholds: about 1 - q of drawn pairs merge
    architectures=(("tf_efficientnet_lite0", 33, "imagenet"), ("smallcnn", 4, None)),  # Lite0 vs a from-scratch
    # smallcnn (its last stage, L_s 4 of 6): a cheap contrast with nearly orthogonal kernels; no ResNet-18 (slow)
    architecture_dataset="breastmnist",  # instead of ChestMNIST
    chest=False,  # ChestMNIST is not available offline
    chest_epochs=(2, 1),  # not used without chest
)

#: One CUDA GPU, offline: the cpu profile's Lite0 at its ImageNet resolution, 10 seeds, longer phases. Not yet
#: measured on a GPU: sized by an estimate of ~4,000 training images/s for Lite0 at 224 px in bfloat16 on an H100,
#: (2,000 + 546 + 1,080 images) x (8 + 3 x 2 epochs) x 10 seeds = 508,000 image-passes, about 2 minutes.
_GPU: dict[str, Any] = dict(
    _CPU,
    size=224,  # Lite0's ImageNet resolution (stride-2 stem as pre-trained) ...
    file_size=28,  # ... from the offline 28 px files, resized on the GPU (medsoup.core.data.load_dataset)
    datasets=CPU_DATASETS,  # the three offline datasets
    recipes={},  # one recipe for every dataset (not yet measured on a GPU)
    train_subset=2000,  # at most 2000 training images (PneumoniaMNIST has 4708; the others fewer)
    lr=3e-4,  # the rates of the cpu profile before its recipe study (not yet measured on a GPU)
    finetune_lr=3e-5,
    seeds=tuple(range(10)),  # 10 seeds
    backbone_epochs=8,  # 8 + 2 epochs instead of 3 + 1 (the paper's 20 + 5 would not fit the GPU book's 15 minutes)
    merge_epochs=2,
    batch_size=128,
    ablation_seeds=(0, 1, 2, 3, 4),  # five seeds for the ablations
    alphas=(0.5, 0.8, 0.95),  # the settings the cpu profile cut for its budget
    first_layers=(0, 24, 33, 46),
)

#: Continuous integration: each code path of notebooks 10 and 11 in about a minute each; its numbers mean
#: nothing. Lite0 itself (not only the smallcnn) so that the depthwise merge counts and L_s 33 are exercised;
#: the ablation grids keep one or two points, most of them runs notebook 10 already made.
_SMOKE: dict[str, Any] = dict(
    _CPU,
    datasets=("breastmnist",),  # the smallest offline dataset
    recipes={},  # the code paths only: 28 px, the epochs below
    train_subset=64,  # one step per epoch at batch 64
    seeds=(0, 1),  # two seeds: the fewest with which a paired difference is tested
    backbone_epochs=1,  # 1 + 1 epochs: the protocol's two phases, each as short as it gets
    ablation_seeds=(0, 1),  # the main table's seeds: its backbones and baselines are reused
    alphas=(0.8,),  # the default only: its runs are notebook 10's, so only p = 1 and the dissimilar
    ps=(0.3, 1.0),  # setting train new arms (each Lite0 run costs seconds even at 64 images)
    first_layers=(33,),
    quantiles=(0.5,),
)

#: Settings per profile: ``paper`` is the reference, ``cpu`` and ``smoke`` state what they change and why.
#: ``first_layer`` is L_s for ``model``; ``architectures`` gives each architecture of the architecture
#: ablation with its L_s and init; ``main_quantiles`` are quantile thresholds run beside the paper's tau in the
#: main table.
INMERGE: dict[str, dict[str, Any]] = {"smoke": _SMOKE, "cpu": _CPU, "gpu": _GPU, "paper": _PAPER}


def inmerge_params(s: dict, seed: int, **overrides) -> dict[str, Any]:
    """The ``InMerge`` keyword parameters of settings ``s`` (L_s, alpha, p, tau), seeded by the run's seed."""
    params = dict(alpha=s["alpha"], first_layer=s["first_layer"], p=s["p"], tau=s["tau"], seed=seed)
    params.update(overrides)
    check_params(params["alpha"], params["p"], params["tau"], params["first_layer"])
    if not 0.0 <= params.get("tau_quantile", 0.0) <= 1.0:
        raise ValueError(f"InMerge tau_quantile must lie in [0, 1], got {params['tau_quantile']!r}")
    return params


def architecture_settings(s: dict, architecture: Sequence) -> dict[str, Any]:
    """Settings ``s`` with the model, L_s and init of one ``(model, first_layer, init)`` entry of
    ``s["architectures"]``; everything else (recipe, epochs) unchanged."""
    model, first_layer, init = architecture
    return dict(s, model=model, first_layer=first_layer, init=init)


def initial_layers(s: dict) -> list[tuple[str, Any]]:
    """``(name, Conv2d)`` of the mergeable convolutions of ``s["model"]`` as training starts (``s["init"]``:
    the ImageNet weights, or a random initialisation), in forward order; the head is irrelevant here."""
    model = create_model(s["model"], 2, 3, s["size"], pretrained=s["init"])
    return forward_conv_layers(model, torch.zeros(1, 3, s["size"], s["size"]))


def phases(s: dict) -> str:
    """The backbone and merging epochs, input size and schedule of each dataset of ``s``, for the text:
    ``"3 + 2 epochs at 64 px, multistep (pneumoniamnist); ..."``."""
    parts = []
    for dataset in s["datasets"]:
        r = for_dataset(s, dataset)
        parts.append(f"{r['backbone_epochs']} + {r['merge_epochs']} epochs at {r['size']} px, {r['schedule']} ({dataset})")
    return "; ".join(parts)


def backbone_run(s: dict, dataset: str, seed: int, model: str | None = None) -> RunConfig:
    """The backbone :class:`~medsoup.runs.store.RunConfig`: ``backbone_epochs`` of training with the
    ``schedule`` (multi-step: x0.1 at 50 % and 75 %), at the dataset's recipe (:func:`for_dataset`)."""
    s = for_dataset(s, dataset)
    train = TrainConfig(epochs=s["backbone_epochs"], batch_size=s["batch_size"], optimizer=s["optimizer"],
                        lr=s["lr"], weight_decay=s["weight_decay"], augment=s["augment"], schedule=s["schedule"],
                        milestones=(0.5, 0.75), select_metric="auc", seed=seed)
    return RunConfig(dataset=dataset, size=s["size"], file_size=s["file_size"], model=model or s["model"], init=s["init"],
                     train=train, train_subset=s["train_subset"])


def finetune_run(s: dict, dataset: str, seed: int, model: str | None = None,
                 merge: dict | None = None) -> RunConfig:
    """``merge_epochs`` more from the backbone at the constant ``finetune_lr``: with InMerge when
    ``merge`` holds its parameters, the baseline when it is None. Both arms see the same batches."""
    backbone = backbone_run(s, dataset, seed, model)
    train = backbone.train.replace(epochs=for_dataset(s, dataset)["merge_epochs"], lr=s["finetune_lr"],
                                   schedule="constant")
    callbacks = (("inmerge", merge),) if merge is not None else ()
    return backbone.replace(init=backbone, train=train, callbacks=callbacks)


def pair_layer(layers: Sequence[tuple[str, Any]], first_layer: int) -> int:
    """Index of the layer whose kernel pairs the chapter draws: the first merged depthwise layer (its
    kernels are single k x k filters, drawn as they are), else the first merged layer."""
    kinds = [layer_kind(conv) for _, conv in layers]
    return next((i for i in range(first_layer, len(layers)) if kinds[i] == "depthwise"), first_layer)


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
    ``inmerge`` test metrics, the mean ``merge_rate`` and those per layer kind
    (:func:`merge_rates_by_kind`), and the ``runs`` (RunResults).
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
                        **merge_rates_by_kind(merged.history),
                        "runs": {"baseline": base, "inmerge": merged}})
    return records


#: The method and reference labels of the chapter's long rows.
METHOD, BASELINE = "InMerge", "fine-tuning, no merging"
#: The comparison every InMerge table makes: InMerge against the baseline on the same seeds.
PAIR = ({"method": METHOD}, {"method": BASELINE, "label": "the baseline"})
#: Merge rates of an InMerge run: all merged layers, then per layer kind (:func:`merge_rates_by_kind`).
MERGE_COLUMNS = ("merge_rate", *(f"merge_rate_{kind}" for kind in KINDS))
#: The columns of a :func:`sweep` record that are not settings of the variant.
_MEASURED = ("dataset", "seed", "baseline", "inmerge", *MERGE_COLUMNS, "runs")


def paper_setting(s: dict) -> str:
    """The label of the paper's setting in the chapter's sweep (the comparison page reads these rows)."""
    return f"tau={s['tau']} (paper)"


def quantile_setting(q: float) -> str:
    """The label of a per-layer quantile threshold ``tau_quantile = q``."""
    return f"tau=quantile {q}"


def main_variants(s: dict) -> dict[str, dict]:
    """The main table's InMerge variants: the paper's tau, then each of ``s["main_quantiles"]``."""
    return {paper_setting(s): {}, **{quantile_setting(q): {"tau_quantile": q} for q in s["main_quantiles"]}}


def long_rows(records: Sequence[dict], **columns) -> pd.DataFrame:
    """The chapter's long rows (:mod:`medsoup.chapters.tables`) of :func:`sweep` records: per record
    a baseline row and an InMerge row with its ``merge_rate``, both carrying ``model``, ``setting``,
    the variant's overrides (``alpha``, ``p``, ...) and the constant ``columns`` (e.g. ``ablation=``)."""
    out = []
    for r in records:
        extra = {**{k: v for k, v in r.items() if k not in _MEASURED}, **columns}
        out.append(row("InMerge", BASELINE, "baseline", r["dataset"], r["seed"], r["baseline"], **extra))
        out.append(row("InMerge", METHOD, "method", r["dataset"], r["seed"], r["inmerge"], **extra,
                       **{k: r[k] for k in MERGE_COLUMNS if k in r}))
    return pd.DataFrame(out)


def versus_baseline(records: Sequence[dict], metrics: Sequence[str] = ("acc", "auc"),
                    by: str | Sequence[str] = "dataset", family: str = "this table") -> pd.DataFrame:
    """InMerge against the baseline per group of ``by`` (:func:`medsoup.chapters.tables.paired` over
    :func:`long_rows`, one family of comparisons named ``family``), with the mean merge rates
    (:data:`MERGE_COLUMNS`) of the InMerge runs."""
    return paired(long_rows(records), [PAIR], list(metrics), by=by, extra=MERGE_COLUMNS, family=family)


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
    """How many settings of :func:`versus_baseline` raise or lower ``metric`` at Benjamini-Hochberg
    adjusted p < 0.05 over the table's family (its ``outcome``), how many more only before adjustment,
    and the largest mean changes in each direction with their setting and p-values."""
    rows = table[table["metric"] == metric]
    up, down = int((rows["outcome"] == "better").sum()), int((rows["outcome"] == "worse").sum())
    nominal = int(((rows["outcome"] == "no significant difference") & (rows["nominal"] != rows["outcome"])).sum())
    text = (f"Of {len(rows)} settings, {up} raise test {metric.upper()} significantly over the baseline and "
            f"{down} lower it (adjusted p < 0.05 over the {int(table['family'].max())} comparisons of "
            f"{table['family_name'].iloc[0]}); {nominal} more differ{'s' if nominal == 1 else ''} only before adjustment "
            f"(seeds per setting: {rows['n'].min()}).")
    named = with_group_labels(rows)
    high, low = named.loc[rows["difference"].idxmax()], named.loc[rows["difference"].idxmin()]
    text += " The mean change ranges from " + " to ".join(
        f"{r['difference']:+.4f} ({r['group']}; p = {r['p_value']:.3f}, adjusted p = {r['p_adjusted']:.3f})"
        for r in (low, high)) + "."
    if "merge_rate" in rows and rows["merge_rate"].notna().all():
        inert = int((rows["merge_rate"] == 0).sum())
        text += (f" In {inert} of them no kernel was merged at all (no selected pair passed the threshold), so"
                 f" InMerge there is the baseline; the mean merge rate ranges from {100 * rows['merge_rate'].min():.2f}%"
                 f" to {100 * rows['merge_rate'].max():.2f}% of kernel draws")
        for kind in KINDS:
            column = rows.get(f"merge_rate_{kind}")
            if column is not None and column.notna().any():
                text += (f"; {_KIND_NAMES[kind]} layers {100 * column.min():.2f}% to {100 * column.max():.2f}%")
        text += "."
    return text


#: How the prose names each layer kind.
_KIND_NAMES = {"depthwise": "depthwise", "other": "pointwise and other"}


def merge_rate_sentence(rate: float, depthwise: float = float("nan"), other: float = float("nan")) -> str:
    """What a mean merge rate (merged kernels / kernel draws) means for the comparison, with the rates
    of the depthwise and of the other merged layers where given (not NaN)."""
    if rate == 0:
        return ("No kernel was merged in any step (no selected pair passed the threshold), so the InMerge "
                "runs are the baseline runs: any difference above is zero.")
    text = f"On average {100 * rate:.2f}% of the kernel draws in the merged layers ended in a merge (at most p of them can)"
    kinds = [(kind, value) for kind, value in (("depthwise", depthwise), ("other", other)) if not np.isnan(value)]
    if kinds:
        text += ": " + " and ".join(f"{100 * value:.2f}% in the {_KIND_NAMES[kind]} layers" for kind, value in kinds)
    return text + "."


def merge_rates_by_kind(history: Sequence[dict]) -> dict[str, float]:
    """``merge_rate_<kind>`` for each of :data:`~medsoup.merging.kernels.KINDS`: kernels merged / kernels
    drawn in the merged layers of that kind over all epochs of an InMerge run (NaN where none is merged)."""
    out = {}
    for kind in KINDS:
        counts = [h.get("inmerge_by_kind", {}).get(kind, {}) for h in history]
        draws = sum(c.get("draws", 0) for c in counts)
        out[f"merge_rate_{kind}"] = sum(c.get("merged", 0) for c in counts) / draws if draws else float("nan")
    return out


def merge_rates(history: Sequence[dict]) -> np.ndarray:
    """``inmerge_rate`` per epoch of an InMerge run's history."""
    return np.array([h["inmerge_rate"] for h in history])
