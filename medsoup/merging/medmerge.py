"""MedMerge (Almakky et al. 2024): learnt kernel-level merging of two differently initialised backbones.

Two source backbones ``b`` and ``c`` of one CNN architecture (pre-trained on different tasks) are
merged kernel by kernel (Sec. 2 of the paper)::

    K_j = w_j * K_j(b) + (1 - w_j) * K_j(c),     w_j in [0, 1], one w_j per output channel,

The linear-probing (LP) stage learns ``w`` with the source kernels frozen, BatchNorm initialised as
the mean of the two sources and trainable, and a new linear head. :class:`MedMergeModel` does this
with a functional forward (``torch.func.functional_call``) over a *template* backbone whose
convolution weights were removed: the merged kernels are computed from the frozen sources
(buffers) and ``w`` at every call, so gradients reach only ``w``, BatchNorm and the head.
:func:`bake` then writes the merged weights into an ordinary model of the architecture, which is
fine-tuned like any other (a following run with ``init=<the MedMerge RunConfig>``).

Choices the paper leaves open, fixed here and compared in the ablations:

* how ``w`` stays in [0, 1]: ``"sigmoid"`` (``w = sigmoid(raw)``) or ``"clamp"``
  (``w = clamp(0.5 + raw, 0, 1)``, gradient zero outside [0, 1]); in both ``raw = 0`` is the
  equal merge ``w = 0.5``, so weight decay, if any, pulls towards the equal merge;
* ``w_scale``: the trained tensor is ``raw`` and ``w = sigmoid(w_scale * raw)`` (clamp:
  ``clamp(0.5 + w_scale * raw, 0, 1)``). The merge equation is unchanged; only how fast ``w`` can move is.
  Adam moves ``raw`` by about ``lr`` per step whatever the gradient's scale, so the logit of ``w``
  moves by at most about ``w_scale * lr`` per step: with ``w_scale = 1`` (the plain parametrisation), a
  short LP stage (tens of steps at lr 1e-3) leaves every ``w`` within a few thousandths of 0.5.
  ``w_scale`` is the same as an Adam learning rate ``w_scale * lr`` for ``w`` alone (weight decay 0);
* ``level="kernel"`` (the paper) or ``"parameter"`` (one ``w`` per weight entry, the variant the
  paper reports as no better); a convolution's bias, where present, belongs to its kernel;
* BatchNorm's ``num_batches_tracked`` is the maximum of the two sources (as in
  :func:`medsoup.merging.statedict.average`);
* two controls, not in the paper: ``w_trainable=False`` holds every ``w`` at its start (0.5: the plain
  average of the two sources' kernels) through the LP stage, and ``bn_source="b"`` or ``"c"`` starts
  BatchNorm from one source instead of the mean (:func:`initial_batchnorm`);
* "merging with zeros" (Fig. 4) uses a copy of source ``b`` whose convolution kernels are zero
  and whose BatchNorm is ``b``'s (:func:`zeroed_kernels`), so only the kernels differ.

The run layer builds a :class:`MedMergeModel` from two sources through
:class:`medsoup.runs.builders.MedMergeBuilder`; the chapter's runs (sources, FT, LP-FT, MedMerge LP -> FT)
and tables are in :mod:`medsoup.chapters.medmerge`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call

from medsoup.core.checkpoint import load_state_into
from medsoup.core.models import classifier_keys, conv_layers, create_model
from medsoup.merging.statedict import StateDict, average

PARAMETRISATIONS = ("sigmoid", "clamp")
MERGE_LEVELS = ("kernel", "parameter")
BN_SOURCES = ("mean", "b", "c")


class IncompatibleSourcesError(ValueError):
    """Two source backbones (or a source and the target architecture) do not have the same tensors."""


def check_pair(state_b: StateDict, state_c: StateDict, ignore: tuple[str, ...] = (),
               names: tuple[str, str] = ("source b", "source c")) -> None:
    """Raise :class:`IncompatibleSourcesError` naming the first key (in ``state_b``'s order, then
    ``state_c``'s) that is missing from one state or has another shape; keys in ``ignore`` (the
    classification heads, whose class counts differ) are skipped."""
    for key, tensor in state_b.items():
        if key in ignore:
            continue
        if key not in state_c:
            raise IncompatibleSourcesError(f"first mismatched key {key!r}: in {names[0]} but not in {names[1]} "
                                           "(different architectures?)")
        if tuple(tensor.shape) != tuple(state_c[key].shape):
            raise IncompatibleSourcesError(f"first mismatched key {key!r}: shape {tuple(tensor.shape)} in "
                                           f"{names[0]} vs {tuple(state_c[key].shape)} in {names[1]}")
    for key in state_c:
        if key not in state_b and key not in ignore:
            raise IncompatibleSourcesError(f"first mismatched key {key!r}: in {names[1]} but not in {names[0]} "
                                           "(different architectures?)")


def mix_kernels(w: torch.Tensor, k_b: torch.Tensor, k_c: torch.Tensor) -> torch.Tensor:
    """MedMerge's merged kernels (Sec. 2): ``theta_Kj = w_j theta_Kj(b) + (1 - w_j) theta_Kj(c)``.

    ``w`` has one value per output channel (shape ``(k_b.shape[0],)``: kernel level) or the shape
    of ``k_b`` (parameter level). Computed as one fused ``torch.lerp(k_c, k_b, w)``, which equals
    the paper's form and returns ``k_b`` at ``w = 1`` and ``k_c`` at ``w = 0`` exactly.
    """
    if k_b.shape != k_c.shape:
        raise ValueError(f"kernels of different shapes {tuple(k_b.shape)} and {tuple(k_c.shape)}")
    if w.shape != k_b.shape:
        if w.shape != k_b.shape[:1]:
            raise ValueError(f"w of shape {tuple(w.shape)} fits neither the kernels {tuple(k_b.shape)} "
                             f"nor their output channels ({k_b.shape[0]},)")
        w = w.reshape(-1, *([1] * (k_b.dim() - 1)))
    return torch.lerp(k_c, k_b, w)


def check_parametrisation(parametrisation: str) -> None:
    """Raise an error naming the valid choices unless ``parametrisation`` is one of them."""
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"unknown parametrisation {parametrisation!r}; valid: {', '.join(PARAMETRISATIONS)}")


def weight_values(raw: torch.Tensor, parametrisation: str, w_scale: float = 1.0) -> torch.Tensor:
    """``w`` in [0, 1] from the trained tensor: ``sigmoid(w_scale * raw)`` or
    ``clamp(0.5 + w_scale * raw, 0, 1)`` (``w_scale`` sets how fast ``w`` moves; module docstring)."""
    check_parametrisation(parametrisation)
    scaled = w_scale * raw
    return torch.sigmoid(scaled) if parametrisation == "sigmoid" else torch.clamp(0.5 + scaled, 0.0, 1.0)


def raw_values(w: torch.Tensor, parametrisation: str, w_scale: float = 1.0) -> torch.Tensor:
    """Inverse of :func:`weight_values` (``w = 1`` is ``raw = inf`` under the sigmoid)."""
    check_parametrisation(parametrisation)
    return (torch.logit(w) if parametrisation == "sigmoid" else w - 0.5) / w_scale


def merged_keys(model: nn.Module) -> dict[str, list[str]]:
    """``{conv module name: [its weight key, its bias key if any]}``: the tensors MedMerge merges."""
    return {name: [f"{name}.{p}" for p in ("weight", "bias") if getattr(conv, p) is not None]
            for name, conv in conv_layers(model)}


def initial_batchnorm(state_b: StateDict, state_c: StateDict, keys: list[str],
                      bn_source: str = "mean") -> dict[str, torch.Tensor]:
    """The BatchNorm tensors ``keys`` (affine parameters and running statistics) the LP stage starts from.

    ``"mean"`` is the paper's (Sec. 2: "we initialize the batch normalization layers for
    hat-theta as the mean of the corresponding layers in the aggregated models"), with
    ``num_batches_tracked`` the maximum (:func:`~medsoup.merging.statedict.average`); ``"b"`` or ``"c"``
    copies one source's, a control that keeps the merged kernels
    ``theta_Kj = w_j theta_Kj(b) + (1 - w_j) theta_Kj(c)`` and changes only where BatchNorm starts.
    """
    if bn_source not in BN_SOURCES:
        raise ValueError(f"unknown bn_source {bn_source!r}; valid: {', '.join(BN_SOURCES)}")
    if bn_source == "mean":
        return average([{k: state_b[k] for k in keys}, {k: state_c[k] for k in keys}])
    source = state_b if bn_source == "b" else state_c
    return {k: source[k].detach().clone() for k in keys}


def zeroed_kernels(state: StateDict, keys: list[str]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with the tensors ``keys`` (the convolution kernels) set to zero: the
    "zeros initialisation" of the paper's Fig. 4, with every other entry (BatchNorm) kept."""
    return {k: torch.zeros_like(v) if k in keys else v.clone() for k, v in state.items()}


class MedMergeModel(nn.Module):
    """The MedMerge LP-stage model: frozen sources, learnt ``w``, trainable BatchNorm and head.

    ``template`` is a freshly built model of the architecture (its head is the new linear head);
    its convolution weights are replaced by the merged kernels at every forward. ``architecture``
    (``name, num_classes, in_chans, img_size`` for :func:`~medsoup.core.models.create_model`) is what
    :func:`bake` builds. Parameters: ``w`` (raw values, 0 = equal merge; ``w_scale`` multiplies them
    before the sigmoid or clamp; held where they start, as a fixed equal merge, with ``w_trainable=False``),
    BatchNorm (started from :func:`initial_batchnorm` of ``bn_source``, trainable
    unless ``bn_trainable=False``, in which case it also stays in eval mode) and the head. The
    source kernels are non-persistent buffers: they move with ``.to()`` but are not trained,
    checkpointed or counted as parameters.
    """

    def __init__(self, template: nn.Module, state_b: StateDict, state_c: StateDict, architecture: dict,
                 level: str = "kernel", parametrisation: str = "sigmoid", bn_trainable: bool = True,
                 w_scale: float = 1.0, w_trainable: bool = True, bn_source: str = "mean"):
        super().__init__()
        if not w_scale > 0:
            raise ValueError(f"w_scale must be positive, got {w_scale!r}")
        if level not in MERGE_LEVELS:
            raise ValueError(f"unknown level {level!r}; valid: {', '.join(MERGE_LEVELS)}")
        check_parametrisation(parametrisation)
        head = classifier_keys(template)
        own = template.state_dict()
        check_pair(state_b, state_c, ignore=head)
        check_pair(own, state_b, ignore=head, names=("the target architecture", "source b"))
        self.architecture, self.level, self.parametrisation = dict(architecture), level, parametrisation
        self.bn_trainable, self.w_scale = bn_trainable, float(w_scale)
        self.groups = merged_keys(template)
        keys = [k for group in self.groups.values() for k in group]
        bns = {f"{name}.{k}" for name, m in template.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) for k in m.state_dict()}
        other = [k for k in own if k not in keys and k not in bns and k not in head]
        if other:
            raise ValueError(f"MedMerge merges convolution kernels, BatchNorm and a linear head; {other[0]!r} "
                             f"is none of these ({len(other)} such tensors): use a CNN with BatchNorm")
        template.load_state_dict(initial_batchnorm(state_b, state_c, sorted(bns), bn_source), strict=False)
        modules = dict(template.named_modules())
        for name in self.groups:
            for attribute in ("weight", "bias"):
                if getattr(modules[name], attribute) is not None:
                    modules[name].register_parameter(attribute, None)
        self.template = template
        for index, key in enumerate(keys):
            self.register_buffer(f"source_b_{index}", state_b[key].detach().clone(), persistent=False)
            self.register_buffer(f"source_c_{index}", state_c[key].detach().clone(), persistent=False)
        self._keys = keys
        shapes = ([state_b[group[0]].shape[:1] for group in self.groups.values()] if level == "kernel"
                  else [state_b[k].shape for k in keys])
        self.w = nn.ParameterList([nn.Parameter(torch.zeros(shape), requires_grad=w_trainable) for shape in shapes])
        for m in template.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(bn_trainable)
        self.train()

    def _w_index(self) -> list[int]:
        """Index into ``self.w`` of each merged key."""
        if self.level == "parameter":
            return list(range(len(self._keys)))
        return [i for i, group in enumerate(self.groups.values()) for _ in group]

    def weights(self) -> dict[str, torch.Tensor]:
        """``{conv name: w}`` with ``w`` in [0, 1] (parameter level: of the conv weight's shape)."""
        return {name: weight_values(raw, self.parametrisation, self.w_scale).detach()
                for name, raw in zip(self.groups, self.w)}

    @torch.no_grad()
    def set_weights(self, w: float | Mapping[str, Any]) -> None:
        """Set every ``w`` to one value in [0, 1], or per conv name (a value or a tensor)."""
        for name, raw in zip(self.groups, self.w):
            value = w[name] if isinstance(w, Mapping) else w
            raw.copy_(raw_values(torch.as_tensor(value, dtype=raw.dtype).expand_as(raw), self.parametrisation,
                                self.w_scale))

    def merged_tensors(self) -> dict[str, torch.Tensor]:
        """The merged kernel (and bias) of every convolution, differentiable in ``w``."""
        ws = [weight_values(raw, self.parametrisation, self.w_scale) for raw in self.w]
        return {key: mix_kernels(ws[w_index], getattr(self, f"source_b_{i}"), getattr(self, f"source_c_{i}"))
                for i, (key, w_index) in enumerate(zip(self._keys, self._w_index()))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, self.merged_tensors(), (x,), strict=False)

    def get_classifier(self) -> nn.Module:
        return self.template.get_classifier()

    def train(self, mode: bool = True) -> "MedMergeModel":
        super().train(mode)
        if not self.bn_trainable:
            for m in self.template.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


@torch.no_grad()
def baked_state(model: MedMergeModel) -> dict[str, torch.Tensor]:
    """The plain model's state dict: one pass over the template's state plus the merged kernels."""
    state = {k: v.detach().clone() for k, v in model.template.state_dict().items()}
    state.update(model.merged_tensors())
    return state


def bake(model: MedMergeModel) -> nn.Module:
    """An ordinary model of ``model.architecture`` holding the merged weights, BatchNorm and head."""
    arch = model.architecture
    plain = create_model(arch["name"], arch["num_classes"], arch["in_chans"], arch["img_size"])
    load_state_into(plain, baked_state(model))
    return plain.to(next(model.parameters()).device).train(model.training)


@torch.no_grad()
def recover_weights(merged: StateDict, state_b: StateDict, state_c: StateDict,
                    groups: Mapping[str, list[str]]) -> dict[str, torch.Tensor]:
    """Per-kernel ``w`` of a baked model, from its kernels and the two sources' (least squares,
    exact for a kernel-level merge): ``w_j = <K_j - K_j(c), K_j(b) - K_j(c)> / |K_j(b) - K_j(c)|^2``.

    Kernels identical in both sources carry no information and give NaN. Runs store the baked
    model only, so the chapter's heat maps of ``w`` are read back this way.
    """
    out = {}
    for name, keys in groups.items():
        flat = [torch.cat([s[k].double().reshape(s[k].shape[0], -1) for k in keys], dim=1)
                for s in (merged, state_b, state_c)]
        diff = flat[1] - flat[2]
        norm = (diff * diff).sum(dim=1)
        w = ((flat[0] - flat[2]) * diff).sum(dim=1) / norm
        out[name] = torch.where(norm > 0, w, torch.full_like(w, float("nan"))).float()
    return out
