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
* Merging is a :class:`~medsoup.core.train.Callback` acting after the optimiser step; evaluation never
  calls it, so validation and test leave the weights unchanged (the public code merged in
  evaluation too). The optimiser's moment estimates are left as they are.
* One vectorised pass per layer, no ``.item()``: merge counts stay tensors until the epoch ends.
* Merge counts are kept per layer kind (:func:`~medsoup.merging.kernels.layer_kind`): depthwise convolutions (one input
  channel per kernel, ``groups == in_channels``, as in EfficientNet) and all others (pointwise 1x1
  and full convolutions). Their kernels differ in kind (a single k x k filter vs a vector over
  channels), and so do their similarity distributions, hence how often a fixed ``tau`` passes.
* ``dissimilar=True`` merges pairs with ``sim < tau`` instead: the paper's "Dissimilar" ablation.
* ``tau_quantile=q`` (not in the paper) replaces the fixed ``tau`` by one threshold per merged layer:
  the ``q``-quantile of that layer's pairwise kernel similarities (Eq. (2)) when training starts, so
  about ``1 - q`` of the drawn pairs pass in every layer (``q`` of them with ``dissimilar``). A fixed
  ``tau = 0.3`` merges almost nothing in a network whose kernels are nearly orthogonal (a smallcnn
  trained from scratch) and, in an ImageNet EfficientNet-Lite0, mostly its depthwise layers.

The chapter's settings, protocol and result tables are in :mod:`medsoup.chapters.inmerge`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from medsoup.core.models import conv_layers
from medsoup.core.train import Callback
from medsoup.merging.kernels import layer_kind, off_diagonal, pairwise_cosine

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
    return new, _merge_in_place(new, alpha, p, tau, generator, dissimilar)[0]


def _merge_in_place(weight: torch.Tensor, alpha: float, p: float, tau: float,
                    generator: torch.Generator | None, dissimilar: bool) -> tuple[torch.Tensor, int]:
    """Merge ``weight`` in place; ``(n_merged, n_selected)``, the first a 0-d device tensor."""
    n = weight.shape[0]
    if n < 2:
        return torch.zeros((), dtype=torch.int64, device=weight.device), 0
    rows, partners = _draw(n, p, generator)
    rows, partners = rows.to(weight.device), partners.to(weight.device)
    flat = weight.reshape(n, -1)  # a view unless the weight is stored non-contiguously
    values, n_merged = _merged_rows(flat, rows, partners, alpha, tau, dissimilar)
    flat[rows] = values  # every value above was computed from the weights before the step
    if flat.data_ptr() != weight.data_ptr():
        weight.copy_(flat.view(weight.shape))
    return n_merged, int(rows.numel())


def merge_layers(layers: Layers, first_layer: int, alpha: float = 0.8, p: float = 0.3,
                 tau: float | Sequence[float] = 0.3, generator: torch.Generator | None = None,
                 dissimilar: bool = False) -> dict[str, torch.Tensor]:
    """:func:`merge_kernels` applied in place to every layer of ``layers`` at index ``>= first_layer``.

    ``layers`` is the network's ``(name, Conv2d)`` list in forward order (see
    :func:`forward_conv_layers`); ``tau`` is one threshold for every merged layer or one per merged
    layer (:func:`quantile_taus`). Returns layer name -> number of kernels merged (0-d tensors),
    for the merged layers only. Same random draws and results as :func:`merge_kernels`, without
    copying whole weights.
    """
    return {name: merged for name, (merged, _) in
            _merge_layers(layers, first_layer, alpha, p, tau, generator, dissimilar).items()}


def _merge_layers(layers: Layers, first_layer: int, alpha: float, p: float, tau: float | Sequence[float],
                  generator: torch.Generator | None, dissimilar: bool) -> dict[str, tuple[torch.Tensor, int]]:
    """:func:`merge_layers` returning layer name -> ``(n_merged, n_selected)``."""
    merged = list(layers)[first_layer:]
    taus = [tau] * len(merged) if isinstance(tau, (int, float)) else list(tau)
    if len(taus) != len(merged):
        raise ValueError(f"InMerge got {len(taus)} thresholds for {len(merged)} merged layers")
    for value in taus:
        check_params(alpha, p, value, first_layer)
    counts = {}
    with torch.no_grad():
        for (name, conv), layer_tau in zip(merged, taus):
            counts[name] = _merge_in_place(conv.weight, alpha, p, layer_tau, generator, dissimilar)
    return counts


@torch.no_grad()
def quantile_taus(layers: Layers, first_layer: int, q: float) -> list[float]:
    """Per merged layer, the ``q``-quantile of its pairwise kernel similarities (Eq. (2), all pairs
    ``i != j``): a threshold that a fraction of about ``1 - q`` of uniformly drawn pairs passes."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"InMerge tau_quantile must lie in [0, 1], got {q!r}")
    taus = []
    for _, conv in list(layers)[first_layer:]:
        similarities = off_diagonal(pairwise_cosine(conv.weight.detach().float().cpu())).double().numpy()
        taus.append(float(np.quantile(similarities, q)) if similarities.size else 1.0)
    return taus


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
    record gets ``inmerge_merged`` (layer name -> kernels merged during the epoch),
    ``inmerge_rate`` (merged kernels / kernel draws in the merged layers), ``inmerge_by_kind``
    (each layer kind of :func:`~medsoup.merging.kernels.layer_kind` among the merged layers ->
    ``{"draws", "selected", "merged"}``: kernels drawn, kernels selected with probability p whose
    pair was compared, kernels merged), and with
    ``tau_quantile`` also ``inmerge_tau`` (layer name -> its threshold, fixed at the first step).
    The callback's own generator (seeded by ``seed``) and those thresholds are saved by
    ``state_dict``, so a resumed run merges exactly as an uninterrupted one.
    """

    def __init__(self, alpha: float = 0.8, first_layer: int = 10, p: float = 0.3, tau: float = 0.3,
                 seed: int = 0, dissimilar: bool = False, tau_quantile: float | None = None):
        check_params(alpha, p, tau, first_layer)
        if tau_quantile is not None and not 0.0 <= tau_quantile <= 1.0:
            raise ValueError(f"InMerge tau_quantile must lie in [0, 1], got {tau_quantile!r}")
        self.alpha, self.first_layer, self.p, self.tau = alpha, int(first_layer), p, tau
        self.tau_quantile = tau_quantile
        self.taus: list[float] | None = None  # per merged layer, with tau_quantile
        self.dissimilar = bool(dissimilar)
        self.generator = torch.Generator().manual_seed(seed)
        self.layers: list[tuple[str, nn.Conv2d]] | None = None
        self._recorder: ConvCallOrder | None = None
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._merged: dict[str, torch.Tensor] = {}
        self._selected: dict[str, int] = {}
        self._steps = 0

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
        if self.tau_quantile is not None and self.taus is None:
            self.taus = quantile_taus(self.layers, self.first_layer, self.tau_quantile)
        counts = _merge_layers(self.layers, self.first_layer, self.alpha, self.p,
                               self.tau if self.taus is None else self.taus, self.generator, self.dissimilar)
        for name, (count, selected) in counts.items():
            self._merged[name] = self._merged.get(name, 0) + count
            self._selected[name] = self._selected.get(name, 0) + selected
        self._steps += 1

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None:
        merged = {name: int(count) for name, count in self._merged.items()}
        by_kind: dict[str, dict[str, int]] = {}
        for name, conv in (self.layers or [])[self.first_layer:] if self._steps else []:
            counts = by_kind.setdefault(layer_kind(conv), {"draws": 0, "selected": 0, "merged": 0})
            counts["draws"] += self._steps * conv.weight.shape[0]
            counts["selected"] += self._selected[name]
            counts["merged"] += merged[name]
        draws = sum(c["draws"] for c in by_kind.values())
        record["inmerge_merged"] = merged
        record["inmerge_rate"] = sum(merged.values()) / draws if draws else 0.0
        record["inmerge_by_kind"] = by_kind
        if self.taus is not None:
            record["inmerge_tau"] = {name: tau for (name, _), tau in zip(self.layers[self.first_layer:], self.taus)}
        self._reset_counts()

    def on_fit_end(self, model: nn.Module) -> None:
        if self._recorder is not None:
            self._recorder.stop()

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"generator": self.generator.get_state()}
        if self.taus is not None:
            state["taus"] = torch.tensor(self.taus, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if "taus" in state:
            self.taus = state["taus"].tolist()
