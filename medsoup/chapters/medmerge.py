"""The MedMerge chapter's runs: sources, FT, LP-FT and MedMerge LP -> FT, and their tables.

Every number comes from :func:`medsoup.runs.store.run` (cached). For each target dataset two sources
are trained (or, in the ``paper`` profile, taken from ImageNet) with :func:`~medsoup.chapters.baselines.baseline_run`
and then, per seed:

* **FT**: fine-tune from one source (also from scratch, as a reference);
* **LP-FT** (Kumar et al. 2022): linear probe (head and BatchNorm) from one source, then FT;
* **MedMerge**: the MedMerge LP stage (``builder="medmerge"``) from both sources, then FT of the
  baked model.

The LP stages share one train config (BatchNorm trainable in both), so LP-FT and MedMerge differ
only by the learnt merge; the FT stages share another.
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from medsoup.chapters.baselines import BASELINE, baseline_run
from medsoup.chapters.tables import row, scalars
from medsoup.core.checkpoint import load_metadata
from medsoup.core.models import conv_layers, create_model
from medsoup.core.train import TrainConfig
from medsoup.merging.medmerge import merged_keys, recover_weights
from medsoup.runs.builders import source_state
from medsoup.runs.profiles import CPU_DATASETS
from medsoup.runs.store import RunConfig, RunResult, run, run_many

#: Sources per target: each target's sources are the two other offline datasets (cpu, smoke), or
#: ImageNet plus the same-modality MedMNIST dataset as in the paper (ChestMNIST -> PneumoniaMNIST).
LEAVE_ONE_OUT = {t: tuple(d for d in CPU_DATASETS if d != t) for t in CPU_DATASETS}

#: The paper's settings (Almakky et al., Sec. 3): DenseNet-121 at 224 px, AdamW 1e-4 (LP) and 1e-5 (FT), 50
#: epochs each. Its generic + same-modality sources are approached by ImageNet and a ChestMNIST model
#: (initialised from ImageNet as the paper's medical sources, 20 epochs of the baseline recipe) for the
#: PneumoniaMNIST target.
_PAPER: dict[str, Any] = dict(
    model="densenet121", size=224, targets=("pneumoniamnist",),
    sources={"pneumoniamnist": ("imagenet", "chestmnist")},
    source_recipe=dict(BASELINE["paper"], epochs=20, init="imagenet"), seeds=(0, 1, 2), train_subset=None,
    batch_size=64, lp_epochs=50, lp_lr=1e-4, ft_epochs=50, ft_lr=1e-5, ablation_targets=("pneumoniamnist",))

#: A 2-core machine without a GPU: no ImageNet weights and only three datasets offline.
_CPU: dict[str, Any] = dict(
    _PAPER,
    model="smallcnn",  # a few seconds per epoch on two cores at 28 px
    size=28,  # the one size all three offline datasets have
    targets=CPU_DATASETS,  # every offline dataset is a target ...
    sources=LEAVE_ONE_OUT,  # ... with the two others as sources (no ImageNet weights offline)
    source_recipe=BASELINE["cpu"],  # sources trained from scratch by the book's baseline recipe
    # Targets keep at most 1000 training images (stratified; BreastMNIST has 546, RetinaMNIST 1080,
    # PneumoniaMNIST 4708): transfer matters where target data is scarce, and it fits two cores.
    train_subset=1000,
    batch_size=128,  # the baseline recipe's batch
    # lr 10x the paper's: sources trained from scratch on 28 px images, and 10-20 epochs, not 50.
    lp_epochs=10,
    lp_lr=1e-3,
    ft_epochs=20,
    ft_lr=1e-4,
    ablation_targets=("retinamnist",),  # the ablations (notebook 31) on one target
)

#: Continuous integration: notebooks 30 and 31 in a few minutes; their numbers mean nothing.
_SMOKE: dict[str, Any] = dict(
    _CPU,
    targets=("breastmnist",),  # the smallest offline dataset, one seed, 256 training images, 2 + 2 epochs
    source_recipe=BASELINE["smoke"],  # the baseline's smoke sources (2 epochs on 256 images)
    seeds=(0,),
    train_subset=256,
    batch_size=64,  # four steps per epoch on the 256 images
    lp_epochs=2,
    ft_epochs=2,
    ablation_targets=("breastmnist",),  # the main table's target
)

#: Settings per profile: ``paper`` is the reference, ``cpu`` and ``smoke`` state what they change and why.
MEDMERGE: dict[str, dict[str, Any]] = {"smoke": _SMOKE, "cpu": _CPU, "paper": _PAPER}

#: Ablations of the MedMerge LP stage (builder options); "zeros" merges source b with zeros.
ABLATIONS: dict[str, dict[str, Any]] = {
    "MedMerge (sigmoid, kernel, BN trainable)": {},
    "clamp instead of sigmoid": {"parametrisation": "clamp"},
    "parameter level": {"level": "parameter"},
    "BN frozen during LP": {"bn_trainable": False},
    "source b + zeros": {"source_c": "zeros"},
}


def source_config(s: dict, spec: str) -> Any:
    """``"imagenet"`` or the RunConfig of a source trained on dataset ``spec`` (seed 0)."""
    if spec == "imagenet":
        return spec
    recipe = dict(s["source_recipe"], model=s["model"], size=s["size"])
    config = baseline_run(recipe, spec, seed=0)
    return config.replace(init=recipe["init"]) if recipe.get("init") else config


def stage_train(s: dict, stage: str, seed: int, linear_probe: bool = False) -> TrainConfig:
    """AdamW, constant lr, no augmentation (as in the paper), best epoch by validation AUC.
    Weight decay 0 in LP (w should move only where the loss says), AdamW's default 0.01 in FT."""
    return TrainConfig(epochs=s[f"{stage}_epochs"], lr=s[f"{stage}_lr"], batch_size=s["batch_size"],
                       optimizer="adamw", weight_decay=0.0 if stage == "lp" else 0.01, schedule="constant",
                       augment="none", select_metric="auc", linear_probe=linear_probe, seed=seed)


def _target(s: dict, target: str, init: Any, train: TrainConfig, **builder) -> RunConfig:
    return RunConfig(dataset=target, size=s["size"], model=s["model"], init=init, train=train,
                     train_subset=s["train_subset"], **builder)


def ft_run(s: dict, target: str, source: str | None, seed: int) -> RunConfig:
    """FT from a source (``None``: from scratch)."""
    init = None if source is None else source_config(s, source)
    return _target(s, target, init, stage_train(s, "ft", seed))


def lp_ft_run(s: dict, target: str, source: str, seed: int) -> RunConfig:
    """LP-FT: the FT RunConfig whose ``init`` is the LP run from ``source``."""
    lp = _target(s, target, source_config(s, source), stage_train(s, "lp", seed, linear_probe=True))
    return _target(s, target, lp, stage_train(s, "ft", seed))


def medmerge_lp_run(s: dict, target: str, seed: int, **options) -> RunConfig:
    """The MedMerge LP stage from the target's two sources; ``options`` are builder options
    (``source_c="zeros"`` merges source b with zeros)."""
    source_b, source_c = s["sources"][target]
    params = {"source_b": source_config(s, source_b), "source_c": source_config(s, source_c), **options}
    return _target(s, target, None, stage_train(s, "lp", seed), builder="medmerge", builder_params=params)


def medmerge_run(s: dict, target: str, seed: int, **options) -> RunConfig:
    """MedMerge LP -> FT: the FT RunConfig whose ``init`` is :func:`medmerge_lp_run`."""
    return _target(s, target, medmerge_lp_run(s, target, seed, **options), stage_train(s, "ft", seed))


def approaches(s: dict, target: str, seed: int) -> list[tuple[str, str, RunConfig]]:
    """``(approach, source, final RunConfig)`` for Table 1 on one target and seed."""
    b, c = s["sources"][target]
    rows = [("FT", "scratch", ft_run(s, target, None, seed))]
    for source in (b, c):
        rows.append(("FT", source, ft_run(s, target, source, seed)))
    for source in (b, c):
        rows.append(("LP-FT", source, lp_ft_run(s, target, source, seed)))
    rows.append(("MedMerge", f"{b}+{c}", medmerge_run(s, target, seed)))
    return rows


#: The ablation every other one is compared with.
DEFAULT_ABLATION = next(iter(ABLATIONS))


def method_name(s: dict, target: str, approach: str, source: str) -> str:
    """The method label of an approach row: ``"FT (scratch)"``, ``"LP-FT (source b)"``, ``"MedMerge"``
    (sources by their role for the target, so the label means the same on every target)."""
    if approach == "MedMerge":
        return approach
    sources = s["sources"][target]
    return f"{approach} ({'source ' + 'bc'[sources.index(source)] if source in sources else source})"


def _collect(entries: list[tuple[Any, RunConfig]], executor=None) -> list[tuple[Any, RunConfig, RunResult]]:
    return [(labels, config, r) for (labels, config), r in zip(entries, run_many([c for _, c in entries], executor))]


def collect_table(s: dict, executor=None) -> pd.DataFrame:
    """The chapter's long rows (:mod:`medsoup.chapters.tables`), one per (target, approach, source,
    seed): test ACC, macro F1, AUC (and recall), ``val_auc``, ``approach`` and ``source`` (runs as needed)."""
    entries = [((target, approach, source), config) for target in s["targets"] for seed in s["seeds"]
               for approach, source, config in approaches(s, target, seed)]
    return pd.DataFrame([row("MedMerge", method_name(s, t, approach, source), "method" if approach == "MedMerge" else "baseline",
                             t, config.train.seed, r.test, val_auc=r.val["auc"], approach=approach, source=source)
                         for (t, approach, source), config, r in _collect(entries, executor)])


def collect_ablations(s: dict, executor=None) -> pd.DataFrame:
    """Long rows, one per (target, ablation, seed): test metrics after FT (method: the ablation's
    name), ``val_auc``, and the LP stage's test metrics as ``lp_*``."""
    entries = [((target, name), medmerge_run(s, target, seed, **options))
               for target in s["ablation_targets"] for seed in s["seeds"] for name, options in ABLATIONS.items()]
    return pd.DataFrame([row("MedMerge", name, "reference" if name == DEFAULT_ABLATION else "ablation", target,
                             config.train.seed, r.test, val_auc=r.val["auc"],
                             **scalars(run(config.init, progress=False).test, "lp_"))
                         for (target, name), config, r in _collect(entries, executor)])


def learnt_weights(s: dict, target: str, seed: int, **options) -> dict[str, torch.Tensor]:
    """Per-kernel ``w`` of a finished MedMerge LP run, recovered from its baked model
    (:func:`~medsoup.merging.medmerge.recover_weights`); ``w`` near 1 favours source b."""
    config = medmerge_lp_run(s, target, seed, **options)
    result = run(config, progress=False)
    arch = load_metadata(result.model_stem)["architecture"]
    params = config.builder_params
    state_b = source_state(params["source_b"], arch)
    state_c = source_state(params["source_c"], arch, like=state_b)
    template = create_model(arch["name"], arch["num_classes"], arch["in_chans"], arch["img_size"])
    return recover_weights(result.load_state(), state_b, state_c, merged_keys(template))


def source_model(s: dict, spec: str) -> nn.Module:
    """A source backbone as a model (its own head); ImageNet weights for ``"imagenet"``."""
    config = source_config(s, spec)
    if config == "imagenet":
        return create_model(s["model"], 1000, 3, s["size"], pretrained="imagenet")
    return run(config, progress=False).load_model()


@torch.no_grad()
def conv_outputs(model: nn.Module, images: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named modules (e.g. the first and the last convolution) for ``images``, in eval mode."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, out.detach().clone()))
             for n in names]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return captured


def mean_learnt_weights(s: dict, target: str, **options) -> dict[str, torch.Tensor]:
    """Per-kernel ``w`` averaged over the profile's seeds (NaN kernels ignored)."""
    per_seed = [learnt_weights(s, target, seed, **options) for seed in s["seeds"]]
    return {name: torch.stack([w[name] for w in per_seed]).nanmean(dim=0) for name in per_seed[0]}


def feature_map_rows(s: dict, target: str, seed: int, image: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Outputs of the first and the last convolution for one image (C, H, W) through source b,
    source c and the merged model of the MedMerge LP stage (before FT): the paper's Fig. 3."""
    source_b, source_c = s["sources"][target]
    models = {f"source b: {source_b}": source_model(s, source_b), f"source c: {source_c}": source_model(s, source_c),
              "MedMerge (merged, LP)": run(medmerge_lp_run(s, target, seed), progress=False).load_model()}
    rows = {}
    for label, model in models.items():
        convs = [name for name, _ in conv_layers(model)]
        outputs = conv_outputs(model, image[None], (convs[0], convs[-1]))
        rows[label] = {"low level (conv 1)": outputs[convs[0]][0],
                       f"high level (conv {len(convs)})": outputs[convs[-1]][0]}
    return rows


def w_agrees_with_ft(s: dict, table: pd.DataFrame, layer_means: dict[str, list[float]]) -> dict[str, bool]:
    """Per target: is the source favoured by the mean learnt ``w`` (above 0.5: source b) the one
    whose plain FT reached the higher mean test F1? (The paper's Fig. 2 / Table 1 reading.)"""
    ft = table[table.approach == "FT"].groupby(["dataset", "source"]).f1.mean()
    out = {}
    for target, means in layer_means.items():
        b, c = s["sources"][target]
        favoured = b if sum(means) / len(means) > 0.5 else c
        out[target] = favoured == (b if ft[(target, b)] > ft[(target, c)] else c)
    return out
