"""In-Model Merging (InMerge, Wang et al.): merge similar kernels of one CNN during training.

At every training iteration (Algorithm 1), in every convolution layer at index ``>= L_s``
(``first_layer``), each kernel ``K_i`` is selected with probability ``p`` (Eq. (4)), paired with a
uniformly drawn ``K_j, j != i``, and replaced by ``alpha K_i + (1 - alpha) K_j`` when
``sim(vec K_i, vec K_j) > tau`` (Eq. (3), similarity of Eq. (2)). All merges of a layer read the
weights as they were before the step (``W' <- W``). Paper defaults: alpha 0.8, L_s 10 (VGG19),
p 0.3, tau 0.3.

Choices the paper leaves open, and what its public code got wrong (REFERENCE.md section 2):

* Layers are indexed from 0 in *forward* (call) order over every ``nn.Conv2d`` of the network,
  recorded with forward hooks on the first training batch; ``first_layer = L_s`` leaves the first
  ``L_s`` layers untouched ("the first L_s shallow layers are excluded"). ResNet shortcut and
  DenseNet convolutions count like any other (the public code merged only ResNet ``conv2``s and
  no DenseNet layer at all). The one exception: timm's VGG writes the fully connected fc6/fc7
  classifier layers as convolutions (``pre_logits``); torchvision's VGG19, the paper's, has them
  as ``nn.Linear``, so they are not counted and VGG19 has the paper's 16 conv layers.
* L_s per architecture follows one rule, "merge the last stage only", which reproduces the
  paper's VGG16 (L_s 10 of 13) and ResNet34 (30 of 36, the last stage but its first conv)
  choices: smallcnn 4 (of 6), VGG11 6 (of 8), ResNet18 15 (of 20); VGG19's 10 also merges the
  last two convs of stage 4.
* Merging is a :class:`~medsoup.train.Callback` acting after the optimiser step; evaluation never
  calls it, so validation and test leave the weights unchanged (the public code merged in
  evaluation too). The optimiser's moment estimates are left as they are.
* One vectorised pass per layer, no ``.item()``: merge counts stay tensors until the epoch ends.
* ``dissimilar=True`` merges pairs with ``sim < tau`` instead: the paper's "Dissimilar" ablation.

The chapter's profile table :data:`INMERGE` and the protocol helpers are at the end: a backbone
run, then from it an InMerge fine-tuning run and a baseline run that continues training for the
same number of epochs without merging (same seed, so the same batches).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from medsoup.models import conv_layers
from medsoup.profiles import CPU_DATASETS
from medsoup.stats import paired_difference, summarise
from medsoup.train import Callback, TrainConfig

Layers = Sequence[tuple[str, nn.Conv2d]]
#: Module-name prefixes of convolutions that are fully connected classifier layers (timm VGG).
CLASSIFIER_PREFIXES = ("pre_logits.",)


def mergeable_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of ``model`` in registration order, less classifier layers written as convolutions."""
    return [(name, m) for name, m in conv_layers(model) if not name.startswith(CLASSIFIER_PREFIXES)]


def check_params(alpha: float, p: float, tau: float, first_layer: int = 0) -> None:
    """Raise ``ValueError`` naming the first parameter outside its valid range."""
    for name, value, low, high in (("alpha", alpha, 0.0, 1.0), ("p", p, 0.0, 1.0), ("tau", tau, -1.0, 1.0)):
        if not low <= value <= high:
            raise ValueError(f"InMerge {name} must lie in [{low:g}, {high:g}], got {value!r}")
    if int(first_layer) != first_layer or first_layer < 0:
        raise ValueError(f"InMerge first_layer (L_s) must be an integer >= 0, got {first_layer!r}")


def _draw(n: int, p: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected kernels (Eq. (4)) and their partners ``j = (i + u) mod n``, ``u`` uniform in
    ``1..n-1`` (uniform over ``j != i``); always ``2 n`` draws from the CPU ``generator``."""
    selected = torch.rand(n, generator=generator) < p
    partner = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
    rows = selected.nonzero().squeeze(1)  # host tensors: no device synchronisation
    return rows, partner[rows]


def _merged_rows(flat: torch.Tensor, rows: torch.Tensor, partners: torch.Tensor, alpha: float, tau: float,
                 dissimilar: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """New values of kernel rows ``rows`` of ``flat`` (Eq. (3)) and how many of them merged."""
    own, other = flat[rows], flat[partners]
    norms = own.norm(dim=1) * other.norm(dim=1)
    sim = ((own * other).sum(dim=1) / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)  # Eq. (2)
    merge = (sim < tau) if dissimilar else (sim > tau)
    return torch.where(merge[:, None], torch.lerp(other, own, alpha), own), merge.sum()


def merge_kernels(weight: torch.Tensor, alpha: float = 0.8, p: float = 0.3, tau: float = 0.3,
                  generator: torch.Generator | None = None, dissimilar: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One InMerge step on one layer: ``(new_weight, n_merged)``, the input left unchanged.

    Kernel ``i`` (``weight[i]``) is selected with probability ``p`` (Eq. (4)), paired with
    ``j = (i + u) mod n``, ``u`` uniform in ``1..n-1`` (uniform over ``j != i``), and becomes
    ``alpha K_i + (1 - alpha) K_j`` if ``sim(k_i, k_j) > tau`` (Eq. (3) with the cosine of
    Eq. (2); ``< tau`` with ``dissimilar``), every merge reading the original ``weight``
    (Algorithm 1's ``W' <- W``). Random numbers come from ``generator`` (a CPU generator; the
    global one if None): always ``2 n`` draws, whatever ``p`` and ``tau``. Only the selected
    kernels are compared. ``n_merged`` is a 0-d int64 tensor on the weight's device, so no host
    synchronisation happens here.
    """
    check_params(alpha, p, tau)
    new = weight.detach().clone()
    return new, _merge_in_place(new, alpha, p, tau, generator, dissimilar)


def _merge_in_place(weight: torch.Tensor, alpha: float, p: float, tau: float,
                    generator: torch.Generator | None, dissimilar: bool) -> torch.Tensor:
    n = weight.shape[0]
    if n < 2:
        return torch.zeros((), dtype=torch.int64, device=weight.device)
    rows, partners = _draw(n, p, generator)
    rows, partners = rows.to(weight.device), partners.to(weight.device)
    flat = weight.reshape(n, -1)  # a view unless the weight is stored non-contiguously
    values, n_merged = _merged_rows(flat, rows, partners, alpha, tau, dissimilar)
    flat[rows] = values  # every value above was computed from the weights before the step
    if flat.data_ptr() != weight.data_ptr():
        weight.copy_(flat.view(weight.shape))
    return n_merged


def merge_layers(layers: Layers, first_layer: int, alpha: float = 0.8, p: float = 0.3, tau: float = 0.3,
                 generator: torch.Generator | None = None, dissimilar: bool = False) -> dict[str, torch.Tensor]:
    """:func:`merge_kernels` applied in place to every layer of ``layers`` at index ``>= first_layer``.

    ``layers`` is the network's ``(name, Conv2d)`` list in forward order (see
    :func:`forward_conv_layers`); returns layer name -> number of kernels merged (0-d tensors),
    for the merged layers only. Same random draws and results as :func:`merge_kernels`, without
    copying whole weights.
    """
    check_params(alpha, p, tau, first_layer)
    counts = {}
    with torch.no_grad():
        for name, conv in list(layers)[first_layer:]:
            counts[name] = _merge_in_place(conv.weight, alpha, p, tau, generator, dissimilar)
    return counts


class ConvCallOrder:
    """Records the order in which a model calls its mergeable convolutions (first call of each).

    Forward hooks are registered on construction and removed by :meth:`stop`, which returns the
    ``(name, module)`` list; the hooks only read, they change nothing.
    """

    def __init__(self, model: nn.Module):
        self.order: list[tuple[str, nn.Conv2d]] = []
        seen: set[int] = set()

        def hook(name):
            def record(module, inputs, output):
                if id(module) not in seen:
                    seen.add(id(module))
                    self.order.append((name, module))
            return record

        self.handles = [m.register_forward_hook(hook(name)) for name, m in mergeable_convs(model)]

    def stop(self) -> list[tuple[str, nn.Conv2d]]:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return self.order


@torch.no_grad()
def forward_conv_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Conv2d]]:
    """``(name, Conv2d)`` of every mergeable convolution ``model`` calls on ``example``, in call order.

    The forward pass runs in evaluation mode (BatchNorm statistics untouched) and the model's
    mode is restored afterwards.
    """
    was_training = model.training
    recorder = ConvCallOrder(model)
    try:
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        order = recorder.stop()
    return order


class InMerge(Callback):
    """Algorithm 1 as a training callback: one :func:`merge_layers` call after every optimiser step.

    The layer order is recorded during the first training batch's forward pass. Each epoch
    record gets ``inmerge_merged`` (layer name -> kernels merged during the epoch) and
    ``inmerge_rate`` (merged kernels / kernel draws in the merged layers). The callback's own
    generator (seeded by ``seed``) is saved by ``state_dict`` so a resumed run merges exactly as
    an uninterrupted one.
    """

    def __init__(self, alpha: float = 0.8, first_layer: int = 10, p: float = 0.3, tau: float = 0.3,
                 seed: int = 0, dissimilar: bool = False):
        check_params(alpha, p, tau, first_layer)
        self.alpha, self.first_layer, self.p, self.tau = alpha, int(first_layer), p, tau
        self.dissimilar = bool(dissimilar)
        self.generator = torch.Generator().manual_seed(seed)
        self.layers: list[tuple[str, nn.Conv2d]] | None = None
        self._recorder: ConvCallOrder | None = None
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._merged: dict[str, torch.Tensor] = {}
        self._draws = 0

    def on_fit_start(self, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        n_conv = len(mergeable_convs(model))
        if self.first_layer >= n_conv:
            raise ValueError(f"InMerge first_layer (L_s) is {self.first_layer} but the model has only {n_conv} "
                             f"conv layers, so nothing would ever be merged; choose L_s < {n_conv}")
        self.layers = None
        self._recorder = ConvCallOrder(model)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.layers is None:
            self.layers = self._recorder.stop()
        counts = merge_layers(self.layers, self.first_layer, self.alpha, self.p, self.tau, self.generator,
                              self.dissimilar)
        for name, count in counts.items():
            self._merged[name] = self._merged.get(name, 0) + count
        self._draws += sum(conv.weight.shape[0] for _, conv in self.layers[self.first_layer:])

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None:
        merged = {name: int(count) for name, count in self._merged.items()}
        record["inmerge_merged"] = merged
        record["inmerge_rate"] = sum(merged.values()) / self._draws if self._draws else 0.0
        self._reset_counts()

    def on_fit_end(self, model: nn.Module) -> None:
        if self._recorder is not None:
            self._recorder.stop()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


# --- The chapter: profiles, protocol and result tables -------------------------------------------

_SMOKE = dict(datasets=("breastmnist",), model="smallcnn", size=28, init=None, train_subset=192, seeds=(0, 1),
              backbone_epochs=2, merge_epochs=1, batch_size=64, optimizer="adamw", lr=1e-3, finetune_lr=1e-4,
              weight_decay=1e-4, augment="medium", alpha=0.8, first_layer=4, p=0.3, tau=0.3,
              ablation_datasets=("breastmnist",), ablation_seeds=(0, 1), alphas=(0.5, 0.8), ps=(0.3, 1.0),
              first_layers=(0, 4, 5), taus=(0.0, 0.3), dissimilar_tau=0.5, extra_taus=(0.0,),
              architectures=(("smallcnn", 4),), architecture_dataset="breastmnist", chest=False,
              chest_epochs=(2, 1))

#: Settings per profile. ``first_layer`` is L_s for ``model``; ``architectures`` pairs each
#: architecture of the architecture ablation with its L_s; ``extra_taus`` are thresholds run beside
#: the paper's tau in the main table (a small CNN trained from scratch has almost no kernel pairs
#: above 0.3 in its deep layers, so tau 0.3 merges nothing there); ``chest`` adds the Table 1 analogue
#: (ChestMNIST per-disease AUC, ``chest_epochs`` = backbone and merging epochs), on ``paper`` only
#: because ChestMNIST is not available offline.
INMERGE: dict[str, dict[str, Any]] = {
    "smoke": _SMOKE,
    "cpu": {**_SMOKE, "datasets": CPU_DATASETS, "train_subset": None, "seeds": (0, 1, 2, 3, 4),
            "backbone_epochs": 20, "merge_epochs": 5, "batch_size": 128,
            "ablation_datasets": ("breastmnist", "retinamnist"), "ablation_seeds": (0, 1, 2),
            "alphas": (0.5, 0.8, 0.95), "ps": (0.1, 0.3, 1.0), "first_layers": (0, 1, 2, 3, 4, 5),
            "taus": (-1.0, 0.0, 0.1, 0.3, 0.5),
            "architectures": (("smallcnn", 4), ("resnet18", 15))},
    "paper": {**_SMOKE, "datasets": ("pathmnist", "dermamnist", "bloodmnist"), "model": "vgg19", "size": 64,
              "init": "imagenet", "train_subset": None, "seeds": (0, 1, 2, 3, 4), "backbone_epochs": 20,
              "merge_epochs": 5, "batch_size": 1024, "optimizer": "sgd", "lr": 1e-2, "finetune_lr": 1e-3,
              "first_layer": 10, "ablation_datasets": ("chestmnist",), "ablation_seeds": (0, 1, 2),
              "alphas": (0.5, 0.6, 0.7, 0.8, 0.9), "ps": (0.1, 0.3, 0.5, 0.7), "first_layers": (0, 5, 10, 15),
              "taus": (0.1, 0.3, 0.5, 0.7), "architectures": (("vgg19", 10), ("vgg16", 10), ("resnet34", 30)),
              "architecture_dataset": "chestmnist", "extra_taus": (), "chest": True, "chest_epochs": (30, 10)},
}


def inmerge_params(s: dict, seed: int, **overrides) -> dict[str, Any]:
    """The ``InMerge`` keyword parameters of settings ``s`` (L_s, alpha, p, tau), seeded by the run's seed."""
    params = dict(alpha=s["alpha"], first_layer=s["first_layer"], p=s["p"], tau=s["tau"], seed=seed)
    params.update(overrides)
    check_params(params["alpha"], params["p"], params["tau"], params["first_layer"])
    return params


def backbone_run(s: dict, dataset: str, seed: int, model: str | None = None):
    """The backbone :class:`~medsoup.runs.RunConfig`: ``backbone_epochs`` of multi-step training."""
    from medsoup.runs import RunConfig

    train = TrainConfig(epochs=s["backbone_epochs"], batch_size=s["batch_size"], optimizer=s["optimizer"],
                        lr=s["lr"], weight_decay=s["weight_decay"], augment=s["augment"], schedule="multistep",
                        milestones=(0.5, 0.75), select_metric="auc", seed=seed)
    return RunConfig(dataset=dataset, size=s["size"], model=model or s["model"], init=s["init"],
                     train=train, train_subset=s["train_subset"])


def finetune_run(s: dict, dataset: str, seed: int, model: str | None = None, merge: dict | None = None):
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
    from medsoup.runs import run_key, run_many

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


def comparison(records: Sequence[dict], metrics: Sequence[str] = ("acc", "auc"),
               by: str | Sequence[str] = "dataset") -> pd.DataFrame:
    """Baseline vs InMerge per group: mean +- std over seeds and the paired difference with its 95% CI.

    ``records`` (e.g. from :func:`sweep`) hold the ``by`` keys, ``seed``, and the ``baseline`` and
    ``inmerge`` test metrics measured on the same seed; ``merge_rate`` is averaged when present.
    """
    keys = (by,) if isinstance(by, str) else tuple(by)
    table = []
    for group in dict.fromkeys(tuple(r[k] for k in keys) for r in records):
        mine = sorted((r for r in records if tuple(r[k] for k in keys) == group), key=lambda r: r["seed"])
        for metric in metrics:
            base = [r["baseline"][metric] for r in mine]
            merged = [r["inmerge"][metric] for r in mine]
            b, m, d = summarise(base), summarise(merged), paired_difference(base, merged)
            row = dict(zip(keys, group))
            row.update({"metric": metric, "n": b.n, "baseline": b.mean, "baseline_std": b.std, "inmerge": m.mean,
                        "inmerge_std": m.std, "diff": d.mean, "ci_low": d.low, "ci_high": d.high,
                        "p_value": d.p_value, "significant": d.significant})
            if all("merge_rate" in r for r in mine):
                row["merge_rate"] = float(np.mean([r["merge_rate"] for r in mine]))
            table.append(row)
    return pd.DataFrame(table)


def per_label_auc(records: Sequence[dict], label_names: Sequence[str]) -> pd.DataFrame:
    """Table 1 analogue: per-label test AUC (mean over seeds) of baseline and InMerge, one row per label
    and a final ``average`` row, from multi-label records holding ``auc_per_label``."""
    base = np.array([r["baseline"]["auc_per_label"] for r in records], dtype=float)
    merged = np.array([r["inmerge"]["auc_per_label"] for r in records], dtype=float)
    table = pd.DataFrame({"label": list(label_names), "baseline": np.nanmean(base, 0), "inmerge": np.nanmean(merged, 0)})
    table.loc[len(table)] = ["average", table["baseline"].mean(), table["inmerge"].mean()]
    table["diff"] = table["inmerge"] - table["baseline"]
    return table


def _group_name(row: pd.Series, keys: Sequence[str]) -> str:
    return ", ".join(str(row[k]) if k == "dataset" else f"{k} {row[k]}" for k in keys)


def verdict(table: pd.DataFrame, metric: str = "auc", by: str | Sequence[str] = "dataset") -> str:
    """One sentence per group of :func:`comparison` saying whether InMerge helped, from the CI."""
    keys = (by,) if isinstance(by, str) else tuple(by)
    sentences = []
    for _, r in table[table["metric"] == metric].iterrows():
        ci = f"{r['diff']:+.3f} (95% CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], n={r['n']})"
        if r["n"] < 2:
            outcome = f"changes test {metric.upper()} by {r['diff']:+.3f} on a single seed, too few to judge"
        elif r["significant"]:
            outcome = f"{'raises' if r['diff'] > 0 else 'lowers'} test {metric.upper()} by {ci}"
        else:
            outcome = f"makes no significant difference to test {metric.upper()}: {ci}"
        sentences.append(f"On {_group_name(r, keys)}, InMerge {outcome}.")
    return " ".join(sentences)


def tally(table: pd.DataFrame, metric: str = "auc") -> str:
    """How many settings of :func:`comparison` raise or lower ``metric`` significantly (95% CI)."""
    rows = table[table["metric"] == metric]
    up = int((rows["significant"] & (rows["diff"] > 0)).sum())
    down = int((rows["significant"] & (rows["diff"] < 0)).sum())
    best = rows.loc[rows["diff"].idxmax()]
    return (f"Of {len(rows)} settings, {up} raise test {metric.upper()} significantly over the baseline and "
            f"{down} lower it; the largest mean change is {best['diff']:+.3f} "
            f"(seeds per setting: {rows['n'].min()}).")


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
