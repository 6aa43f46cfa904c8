"""The MedMerge chapter's runs: sources, FT, LP-FT and MedMerge LP -> FT, and their tables.

Every number comes from :func:`medsoup.runs.store.run` (cached). For each target dataset source b is
ImageNet and source c a backbone fine-tuned from ImageNet on another medical dataset
(:func:`~medsoup.chapters.baselines.baseline_run`, seed 0), as in the paper; then, per seed:

* **FT**: fine-tune from one source (a new head: the source's is never kept);
* **LP-FT** (Kumar et al. 2022): linear probe (head and BatchNorm) from one source, then FT;
* **MedMerge**: the MedMerge LP stage (``builder="medmerge"``) from both sources, then FT of the
  baked model;
* two controls (:data:`CONTROLS`), MedMerge with one thing changed: ``w`` held at 0.5 (the plain average
  of the sources' kernels) and BatchNorm from source c instead of the mean of the two.

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
from medsoup.core.data import load_dataset
from medsoup.core.models import conv_layers, create_model
from medsoup.core.train import TrainConfig
from medsoup.merging.align import moved_share, permutation_spec, weight_matching
from medsoup.merging.medmerge import merged_keys, recover_weights
from medsoup.runs.builders import source_state
from medsoup.runs.store import RunConfig, RunResult, run, run_many

#: Ablations of the MedMerge LP stage (builder options); "zeros" merges source b with zeros (with
#: BatchNorm frozen, see below), and ``w_scale=1`` is the plain sigmoid (``w`` then barely moves in a short LP stage).
ABLATIONS: dict[str, dict[str, Any]] = {
    "MedMerge (sigmoid, kernel, BN trainable)": {},
    "clamp instead of sigmoid": {"parametrisation": "clamp"},
    "parameter level": {"level": "parameter"},
    "BN frozen during LP": {"bn_trainable": False},
    # BatchNorm frozen (source b's, in eval mode): a zero source c makes each merged kernel w_j K_j(b), a
    # per-channel scale that trainable BatchNorm in training mode divides out, leaving w no gradient.
    "source b + zeros": {"source_c": "zeros", "bn_trainable": False},
    "w_scale 1 (plain sigmoid)": {"w_scale": 1.0},
}

#: The ablation every other one is compared with.
DEFAULT_ABLATION = next(iter(ABLATIONS))

#: Controls beside MedMerge in Table 1 (builder options of its LP stage; FT as MedMerge's). "w fixed at 0.5":
#: the same merged model with every ``w`` held at its start, the plain average of the two sources' kernels,
#: so what the learnt ``w`` adds is MedMerge minus it. "BN of source c": the learnt merge with BatchNorm
#: (parameters and statistics) started from source c instead of the mean of the two sources. Source c because
#: its BatchNorm was fitted to medical images through this chapter's input pipeline (size, grey channel
#: repeated), the kind of input the target task feeds it, where source b's (ImageNet) was fitted to natural
#: colour images at 224 px; BatchNorm stays trainable, as in MedMerge, so only where it starts differs.
CONTROLS: dict[str, dict[str, Any]] = {
    "MedMerge, w fixed at 0.5": {"w_trainable": False},
    "MedMerge, BN of source c": {"bn_source": "c"},
}

#: The paper's settings (Almakky et al., Sec. 3): DenseNet-121 at 224 px, AdamW 1e-4 (LP) and 1e-5 (FT), 50
#: epochs each, w trained as it is (``w_scale`` 1). Its generic + same-modality sources are approached by
#: ImageNet and a ChestMNIST model (initialised from ImageNet as the paper's medical sources, 20 epochs of the
#: baseline recipe) for the PneumoniaMNIST target. Ablations: each one after LP and after FT.
_PAPER: dict[str, Any] = dict(
    model="densenet121", size=224, file_size=None, targets=("pneumoniamnist",),
    sources={"pneumoniamnist": ("imagenet", "chestmnist")},
    source_recipe=dict(BASELINE["paper"], epochs=20, init="imagenet"), seeds=(0, 1, 2), train_subset=None,
    source_file_size=None, batch_size=64, lp_epochs=50, lp_lr=1e-4, ft_epochs=50, ft_lr=1e-5, ft_schedule="constant",
    ft_augment="none", ft_weight_decay=0.01, w_scale=1.0,
    ablation_targets=("pneumoniamnist",), ablation_seeds=(0, 1, 2), ablation_ft=tuple(ABLATIONS))

#: The cpu targets: the two small offline datasets (546 and 1080 training images), where transfer matters.
CPU_TARGETS = ("breastmnist", "retinamnist")

#: A 2-core machine without a GPU: ImageNet Lite0 offline on BreastMNIST, every training image at its recipe
#: (:data:`~medsoup.chapters.baselines.LITE0_CPU_RECIPES`: 64 px, 20 cosine epochs reach MedMNIST v2's level).
#: Cost from the recipe study's one-thread ~5.7 s an epoch: 5 seeds x (7 FT x 20 + 5 LP x 2 epochs) ~ 4,300 s of
#: one core, less the 5 FT runs from ImageNet that notebook 10 already trained (the same runs), plus source c
#: (~140 s). RetinaMNIST as a second target (28 px, its own 28 px source c) would add as much: cut from the cpu
#: reference run's two-hour budget (issue 23); the gpu profile keeps it.
_CPU: dict[str, Any] = dict(
    _PAPER,
    model="tf_efficientnet_lite0",  # ImageNet weights offline (medsoup.core.pretrained)
    size=64,  # BreastMNIST's recipe size: its official 64 px file
    targets=("breastmnist",),  # scarce target data (546 training images), where transfer matters
    # Source b ImageNet as in the paper; source c Lite0 fine-tuned from ImageNet on PneumoniaMNIST (X-ray): the
    # one other offline medical dataset, so not the target's modality (no same-modality source is offline).
    sources={t: ("imagenet", "pneumoniamnist") for t in CPU_TARGETS},
    # Source c trained to convergence on its source task (issue 23): Lite0 from ImageNet (seed 0) on the full
    # PneumoniaMNIST training split at 64 px from its 28 px file, 3 epochs, AdamW lr 1e-3, weight decay 1e-4,
    # batch 64, lr x0.1 at 50% and 75% (multistep), medium augmentation: the recipe benchmarks/recipe_study.py
    # picked for PneumoniaMNIST (test AUC and ACC over seeds 0-2 in benchmarks/results/recipe_study.txt: within
    # issue 23's bar of MedMNIST v2's ResNet-18 (28)), at the target's input size, so both sources saw 64 px.
    source_recipe=dict(_PAPER["source_recipe"], epochs=3, train_subset=None, lr=1e-3, batch_size=64,
                       weight_decay=1e-4, augment="medium"),
    source_file_size=28,  # PneumoniaMNIST's offline file, upsampled to 64 px
    seeds=(0, 1, 2, 3, 4),  # five seeds per paired comparison (issue 10)
    train_subset=None,  # every training image
    lp_epochs=2,  # 2 LP epochs (18 steps) for the head (LP-FT) or w and BatchNorm (MedMerge)
    lp_lr=1e-3,  # 10x the paper's: 18 LP steps, not 50 epochs, for the new head
    # FT is the target's recipe (20 epochs, AdamW 1e-3 cosine, weight decay 1e-4, medium augmentation): the
    # paper's 1e-5 constant rate barely moves a Lite0 in a budget two cores allow, and FT from ImageNet is then
    # the recipe measured to reach MedMNIST v2's level (and the same runs as notebook 10's backbones).
    ft_epochs=20,
    ft_lr=1e-3,
    ft_schedule="cosine",
    ft_augment="medium",
    ft_weight_decay=1e-4,
    # Adam moves raw w by ~lp_lr a step, so w's logit by ~w_scale * lp_lr: at w_scale 1, 18 steps leave w
    # within 0.0045 of 0.5; at 100 its logit may move up to 1.8 (w in [0.14, 0.86]).
    w_scale=100.0,
    ablation_targets=("breastmnist",),  # the one target
    ablation_seeds=(0, 1, 2),  # three seeds, shared with notebook 30's runs (run-cache hits for the default)
    # Every ablation after LP (the stage it changes). Fine-tuned too: the default (notebook 30's runs) and the three
    # whose LP model sat at the constant classifier in the cold runs of 2026-12-06/07 (test ACC over seeds 0-2: clamp
    # .737, source b + zeros .731, w_scale 1 .733; predicting the majority class scores .731), so that they are
    # compared where they learnt something. Not 'parameter level' (.761) and 'BN frozen during LP' (.774): each
    # FT costs 104-121 s of one core a seed (those nine runs, two one-thread workers side by side), and with these
    # nine the cpu reference run's recorded time is 118.3 min of its two hours (issue 23; page 90), leaving no room
    # for six more; the gpu profile fine-tunes every ablation.
    ablation_ft=("MedMerge (sigmoid, kernel, BN trainable)", "clamp instead of sigmoid", "source b + zeros",
                 "w_scale 1 (plain sigmoid)"),
)

#: One CUDA GPU, offline: the cpu profile's Lite0 at its ImageNet resolution, every target image, 10 seeds,
#: longer stages. Not yet measured on a GPU: sized by an estimate of ~4,000 training images/s for Lite0 at
#: 224 px in bfloat16 on an H100: 2 targets x 10 seeds x (7 FT x 10 + 5 LP x 5 epochs) x ~810 images = 1.5 M
#: image-passes, about 6 minutes, plus source c (5 epochs of 4,708 images).
_GPU: dict[str, Any] = dict(
    _CPU,
    size=224,  # Lite0's ImageNet resolution (stride-2 stem as pre-trained) ...
    file_size=28,  # ... from the offline 28 px files, resized on the GPU (medsoup.core.data.load_dataset)
    source_file_size=None,  # every source from its 28 px file, as the targets
    targets=CPU_TARGETS,  # both small offline datasets
    source_recipe=dict(_CPU["source_recipe"], epochs=5, batch_size=128),  # the 28 px recipe (5 epochs), batch 128
    seeds=tuple(range(10)),  # 10 seeds per paired comparison
    train_subset=None,  # every target training image (546 and 1080)
    batch_size=128,
    lp_epochs=5,  # 5 LP + 10 FT epochs
    ft_epochs=10,
    ft_lr=3e-4,  # constant, no augmentation, AdamW's default weight decay (not yet measured on a GPU)
    ft_schedule="constant",
    ft_augment="none",
    ft_weight_decay=0.01,
    ablation_seeds=(0, 1, 2, 3, 4),  # five seeds for the ablations
    ablation_ft=tuple(ABLATIONS),  # every ablation fine-tuned too
)

#: Continuous integration: notebooks 30 and 31 in about a minute each; their numbers mean nothing.
_SMOKE: dict[str, Any] = dict(
    _CPU,
    targets=("breastmnist",),  # the smallest offline dataset
    # Source c on RetinaMNIST, one step: its validation and test splits (120 + 400 images) take a third of
    # PneumoniaMNIST's (524 + 624) to evaluate, which dominates a one-step run.
    sources={"breastmnist": ("imagenet", "retinamnist")},
    # Its own small source recipe (the cpu one trains on every PneumoniaMNIST image): one epoch on 64 images.
    source_recipe=dict(_CPU["source_recipe"], epochs=1, train_subset=64),
    # One seed: the code path only (tests/test_medmerge.py tests paired differences over seeds). Each Lite0 run
    # costs a few seconds of evaluation and checkpoints, and CI executes every notebook.
    seeds=(0,),
    size=28,  # both sources' and the target's 28 px files
    source_file_size=None,
    # The cpu model (Lite0, so smoke runs the cpu code path: ImageNet weights, 49 merged convolutions) on
    # 64 images: one step per epoch at batch 64, about a second each on two cores.
    train_subset=64,
    lp_epochs=1,
    ft_epochs=1,
    ablation_seeds=(0,),  # one seed: each ablation's code path only
    ablation_ft=(DEFAULT_ABLATION,),  # the FT path once: the other ablations' FT is the same code
)

#: Settings per profile: ``paper`` is the reference, ``cpu`` and ``smoke`` state what they change and why.
MEDMERGE: dict[str, dict[str, Any]] = {"smoke": _SMOKE, "cpu": _CPU, "gpu": _GPU, "paper": _PAPER}


def source_config(s: dict, spec: str) -> Any:
    """``"imagenet"`` or the RunConfig of a source trained on dataset ``spec`` (seed 0)."""
    if spec == "imagenet":
        return spec
    recipe = dict(s["source_recipe"], model=s["model"], size=s["size"],
                  file_size=s["file_size"] if s["source_file_size"] is None else s["source_file_size"])
    config = baseline_run(recipe, spec, seed=0)
    return config.replace(init=recipe["init"]) if recipe.get("init") else config


def stage_train(s: dict, stage: str, seed: int, linear_probe: bool = False) -> TrainConfig:
    """AdamW, best epoch by validation AUC. LP: constant lr, no augmentation (as in the paper) and weight
    decay 0 (w should move only where the loss says); FT: the profile's ``ft_schedule``, ``ft_augment`` and
    ``ft_weight_decay`` (the paper's: constant, none, AdamW's default 0.01)."""
    if stage == "lp":
        regime = dict(weight_decay=0.0, schedule="constant", augment="none")
    else:
        regime = dict(weight_decay=s["ft_weight_decay"], schedule=s["ft_schedule"], augment=s["ft_augment"])
    return TrainConfig(epochs=s[f"{stage}_epochs"], lr=s[f"{stage}_lr"], batch_size=s["batch_size"],
                       optimizer="adamw", select_metric="auc", linear_probe=linear_probe, seed=seed, **regime)


def _target(s: dict, target: str, init: Any, train: TrainConfig, **builder) -> RunConfig:
    return RunConfig(dataset=target, size=s["size"], file_size=s["file_size"], model=s["model"], init=init, train=train,
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
    """The MedMerge LP stage from the target's two sources with the profile's ``w_scale``; ``options``
    are builder options (``source_c="zeros"`` merges source b with zeros). ``w_scale`` 1 is left out of
    the builder's parameters (its default), so a run does not depend on how the plain sigmoid is asked for."""
    source_b, source_c = s["sources"][target]
    params = {"source_b": source_config(s, source_b), "source_c": source_config(s, source_c),
              "w_scale": s["w_scale"], **options}
    if float(params["w_scale"]) == 1.0:
        del params["w_scale"]
    return _target(s, target, None, stage_train(s, "lp", seed), builder="medmerge", builder_params=params)


def medmerge_run(s: dict, target: str, seed: int, **options) -> RunConfig:
    """MedMerge LP -> FT: the FT RunConfig whose ``init`` is :func:`medmerge_lp_run`."""
    return _target(s, target, medmerge_lp_run(s, target, seed, **options), stage_train(s, "ft", seed))


def approaches(s: dict, target: str, seed: int) -> list[tuple[str, str, RunConfig]]:
    """``(approach, source, final RunConfig)`` for Table 1 on one target and seed: FT and LP-FT from
    each source, MedMerge (the paper's rows; FT from scratch is no transfer baseline and is left out) and
    the :data:`CONTROLS`."""
    b, c = s["sources"][target]
    rows = []
    for source in (b, c):
        rows.append(("FT", source, ft_run(s, target, source, seed)))
    for source in (b, c):
        rows.append(("LP-FT", source, lp_ft_run(s, target, source, seed)))
    rows.append(("MedMerge", f"{b}+{c}", medmerge_run(s, target, seed)))
    for name, options in CONTROLS.items():
        rows.append((name, f"{b}+{c}", medmerge_run(s, target, seed, **options)))
    return rows


def method_name(s: dict, target: str, approach: str, source: str) -> str:
    """The method label of an approach row: ``"FT (scratch)"``, ``"LP-FT (source b)"``, ``"MedMerge"``, a
    control's name (sources by their role for the target, so the label means the same on every target)."""
    if approach == "MedMerge" or approach in CONTROLS:
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
    roles = {"MedMerge": "method", **dict.fromkeys(CONTROLS, "control")}
    return pd.DataFrame([row("MedMerge", method_name(s, t, approach, source), roles.get(approach, "baseline"),
                             t, config.train.seed, r.test, val_auc=r.val["auc"], approach=approach, source=source)
                         for (t, approach, source), config, r in _collect(entries, executor)])


def ablations(s: dict, target: str) -> dict[str, dict[str, Any]]:
    """The :data:`ABLATIONS` that differ from the default at this profile (``w_scale 1`` is the
    default where the profile's ``w_scale`` is 1)."""
    default = medmerge_lp_run(s, target, 0)
    return {name: options for name, options in ABLATIONS.items()
            if name == DEFAULT_ABLATION or medmerge_lp_run(s, target, 0, **options) != default}


def collect_ablations(s: dict, executor=None) -> pd.DataFrame:
    """Long rows, one per (target, ablation, seed, stage): ``stage`` "LP" (the merged model with its
    linear head, every ablation) or "FT" (after fine-tuning, the ablations in ``s["ablation_ft"]``), its
    test metrics (method: the ablation's name) and ``val_auc``."""
    entries = []
    for target in s["ablation_targets"]:
        for seed in s["ablation_seeds"]:
            for name, options in ablations(s, target).items():
                entries.append(((target, name, "LP"), medmerge_lp_run(s, target, seed, **options)))
                if name in s["ablation_ft"]:
                    entries.append(((target, name, "FT"), medmerge_run(s, target, seed, **options)))
    return pd.DataFrame([row("MedMerge", name, "reference" if name == DEFAULT_ABLATION else "ablation", target,
                             config.train.seed, r.test, val_auc=r.val["auc"], stage=stage)
                         for (target, name, stage), config, r in _collect(entries, executor)])


def _sources(s: dict, target: str, **options) -> tuple[dict, dict, nn.Module]:
    """Source b's and source c's state dicts of the target's MedMerge LP runs, and a model of their
    architecture (untrained, 1000 classes) for the merged kernel groups or a permutation spec."""
    config = medmerge_lp_run(s, target, 0, **options)
    arch = {"name": s["model"], "num_classes": 1000, "in_chans": config.in_chans, "img_size": s["size"]}
    params = config.builder_params
    state_b = source_state(params["source_b"], arch)
    state_c = source_state(params["source_c"], arch, like=state_b)
    return state_b, state_c, create_model(arch["name"], 1000, arch["in_chans"], arch["img_size"])


def alignment_shift(s: dict, target: str) -> float:
    """The share of source c's channels that weight matching (:func:`medsoup.merging.align.weight_matching`,
    Ainsworth et al. 2023) permutes to align them with source b's. At 0 the sources' channels already
    correspond, so "align, then average" is the plain average of the two: the control "MedMerge, w fixed
    at 0.5" (:data:`CONTROLS`) is then that baseline as well. Only the backbones are matched: the sources'
    classifiers answer different tasks (MedMerge merges no head)."""
    state_b, state_c, model = _sources(s, target)
    head = "classifier."
    spec = permutation_spec(model).without(head)
    backbone_b, backbone_c = ({k: v for k, v in state.items() if not k.startswith(head)} for state in (state_b, state_c))
    return moved_share(weight_matching(spec, backbone_b, backbone_c))


def alignment_note(s: dict) -> str:
    """What permutation alignment would change before averaging the two sources, per target, as a sentence
    (:func:`alignment_shift`): where it moves no channel, the "w fixed at 0.5" control is align-then-average."""
    shares = {target: alignment_shift(s, target) for target in s["targets"]}
    if all(share == 0 for share in shares.values()):
        return (f"Weight matching permutes none of source c's channels ({', '.join(shares)}): the two sources' "
                "channels already correspond (source c is a fine-tune of source b), so aligning before averaging "
                "changes nothing and the control \"MedMerge, w fixed at 0.5\" is align-then-average as well.")
    moved = "; ".join(f"{share:.1%} on {target}" for target, share in shares.items())
    return (f"Weight matching permutes some of source c's channels ({moved}): align-then-average differs from "
            "the \"w fixed at 0.5\" control there, and this profile does not run it.")


def learnt_weights(s: dict, target: str, seed: int, sources: tuple | None = None,
                   **options) -> dict[str, torch.Tensor]:
    """Per-kernel ``w`` of a finished MedMerge LP run, recovered from its baked model
    (:func:`~medsoup.merging.medmerge.recover_weights`); ``w`` near 1 favours source b. ``sources``:
    :func:`_sources`'s result, when already loaded."""
    state_b, state_c, model = sources or _sources(s, target, **options)
    result = run(medmerge_lp_run(s, target, seed, **options), progress=False)
    return recover_weights(result.load_state(), state_b, state_c, merged_keys(model))


def seed_weights(s: dict, target: str, seeds: Iterable[int] | None = None,
                 **options) -> list[dict[str, torch.Tensor]]:
    """:func:`learnt_weights` of each seed (the profile's seeds unless given), the sources loaded once."""
    sources = _sources(s, target, **options)
    return [learnt_weights(s, target, seed, sources, **options) for seed in (seeds or s["seeds"])]


def mean_learnt_weights(per_seed: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-kernel ``w`` averaged over seeds (:func:`seed_weights`; NaN kernels ignored)."""
    return {name: torch.stack([w[name] for w in per_seed]).nanmean(dim=0) for name in per_seed[0]}


def w_shift(per_seed: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """How far ``w`` moved from its 0.5 start: per layer, the mean over kernels and seeds of
    ``|w - 0.5|`` (per seed, so moves in opposite directions on two seeds do not cancel)."""
    return {name: float(torch.stack([(w[name] - 0.5).abs().nanmean() for w in per_seed]).mean())
            for name in per_seed[0]}


def w_bound(s: dict, target: str, w_scale: float | None = None) -> float:
    """The largest ``|w - 0.5|`` the LP stage allows if Adam moves raw ``w`` by at most ``lp_lr`` a step
    (Adam's step is about ``lr`` whatever the gradient's scale): ``sigmoid(w_scale * lp_lr * steps) - 0.5``."""
    n = s["train_subset"] or len(load_dataset(target, s["size"], file_size=s["file_size"]).splits["train"])
    steps = s["lp_epochs"] * -(-n // s["batch_size"])
    scale = s["w_scale"] if w_scale is None else w_scale
    return float(torch.sigmoid(torch.tensor(scale * s["lp_lr"] * steps)) - 0.5)


def source_distance(s: dict, target: str) -> float:
    """``|K(b) - K(c)| / |K(b)|`` over every merged kernel of the target's two sources: how different
    the backbones MedMerge merges are (0: one network, where ``w`` cannot matter)."""
    state_b, state_c, model = _sources(s, target)
    keys = [k for group in merged_keys(model).values() for k in group]
    diff = sum(float((state_b[k].double() - state_c[k].double()).pow(2).sum()) for k in keys)
    return (diff / sum(float(state_b[k].double().pow(2).sum()) for k in keys)) ** 0.5


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
