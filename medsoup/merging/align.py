"""Permutation alignment by weight matching (Ainsworth, Hayase and Srinivasa, "Git Re-Basin", ICLR 2023).

Permuting the output channels of a layer, and the input channels of every layer that reads them, changes
no output of a network. Two networks trained from different seeds compute similar features in different
channel orders, so their plain average mixes unrelated channels; aligning one to the other first can
put them in one basin (the paper finds it does for wide enough networks trained long enough). Weight
matching (Sec. 3.2) picks the permutations ``pi`` of model B that maximise the summed inner products
with model A's weights,

    argmax_pi  sum_l < W_l^A, P_l W_l^B P_{l-1}^T >_F          (Sec. 3.2: min ||theta_A - pi(theta_B)||^2)

by coordinate descent (Algorithm 1): each permutation ``P_l`` in turn, the others fixed, is a linear
assignment problem (``scipy.optimize.linear_sum_assignment``) over the cost
``sum_{W touching P_l} W^A (P W^B P^T)^T``, until no permutation improves.

A :class:`PermutationSpec` says, for every state-dict key, which permutation acts on each axis.
:func:`permutation_spec` builds it from the model's modules (smallcnn, timm ResNet, timm EfficientNet
including Lite0; see its docstring for the keys each permutation touches); :func:`weight_matching`
finds the permutations, :func:`apply_permutation` applies them, :func:`align` does both,
:func:`align_then_average` averages the aligned states and :func:`moved_share` says how far from the identity
the permutations are.

BatchNorm: a convolution's output permutation also acts on its BatchNorm's weight, bias, running mean and
running variance, so a permuted state computes exactly what the original does in eval mode. The running
statistics take no part in the matching (they describe activations, not weights). After an average, the
averaged running statistics describe no network's activations: as for every merge in medsoup, the caller
recomputes them (:func:`medsoup.core.bn.recalibrate_bn`, ``evaluate_state(..., recalibrate=True)`` or a
``StateEvaluator(..., recalibrate=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from torch import nn

from medsoup.core.models import SmallCNN
from medsoup.merging.statedict import StateDict, average

#: BatchNorm buffers permuted with their channels but left out of the matching objective.
STATISTICS = ("running_mean", "running_var")


@dataclass(frozen=True)
class PermutationSpec:
    """Which permutation acts on which axis of which state-dict entry.

    ``sizes``: permutation name -> number of channels it permutes (a permutation is named after the
    convolution whose output channels it orders). ``axes``: state-dict key -> one entry per axis of the
    tensor, a permutation name or ``None`` (not permuted); every key of the model is listed, unpermuted
    ones with ``None`` only.
    """

    sizes: dict[str, int]
    axes: dict[str, tuple[str | None, ...]]

    def keys_of(self, perm: str) -> list[tuple[str, int]]:
        """The ``(key, axis)`` pairs that permutation ``perm`` acts on."""
        if perm not in self.sizes:
            raise ValueError(f"unknown permutation {perm!r}")
        return [(key, axis) for key, axes in self.axes.items() for axis, p in enumerate(axes) if p == perm]

    def without(self, prefix: str) -> "PermutationSpec":
        """The spec without the keys starting with ``prefix`` (e.g. ``"classifier."``: models trained on
        different tasks share only their backbone); its permutations act on what is left."""
        return PermutationSpec(dict(self.sizes), {k: v for k, v in self.axes.items() if not k.startswith(prefix)})

    def check(self, state: StateDict) -> None:
        """Raise ``ValueError`` naming the keys of ``state`` that do not fit the spec."""
        missing = sorted(set(self.axes) - set(state))
        extra = sorted(set(state) - set(self.axes))
        if missing or extra:
            raise ValueError(f"state does not match the permutation spec: missing {missing[:5]}, extra {extra[:5]}")
        for key, axes in self.axes.items():
            shape = tuple(state[key].shape)
            if len(shape) != len(axes) or any(p is not None and shape[i] != self.sizes[p] for i, p in enumerate(axes)):
                raise ValueError(f"{key} has shape {shape}, the spec expects axes {axes} with sizes "
                                 f"{[self.sizes.get(p) for p in axes]}")


class _SpecBuilder:
    """Collects the axes of a model's keys while its modules are walked in forward order."""

    def __init__(self, model: nn.Module):
        self.state = model.state_dict()
        self.sizes: dict[str, int] = {}
        self.axes: dict[str, tuple[str | None, ...]] = {}

    def conv(self, name: str, module: nn.Conv2d, source: str | None, out: str | None = None) -> str:
        """A convolution reading channels ordered by ``source`` (``None``: the image); return the
        permutation of its output: ``out`` when given (a residual stream), ``source`` for a depthwise
        convolution (its channels follow its input's), else a new one named ``name``."""
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f"{name} is a {type(module).__name__}, not a Conv2d: unsupported architecture")
        depthwise = module.groups > 1
        if depthwise and not module.groups == module.in_channels == module.out_channels:
            raise ValueError(f"{name}: grouped convolutions other than depthwise ones are not supported")
        if depthwise:
            if out is not None and out != source:
                raise ValueError(f"{name}: a depthwise convolution cannot change its channels' permutation")
            out = source
        elif out is None:
            out = name
            self.sizes[out] = module.out_channels
        elif self.sizes[out] != module.out_channels:
            raise ValueError(f"{name} writes {module.out_channels} channels into a stream of {self.sizes[out]}")
        self.axes[f"{name}.weight"] = (out, None if depthwise else source) + (None,) * (module.weight.dim() - 2)
        if module.bias is not None:
            self.axes[f"{name}.bias"] = (out,)
        return out

    def norm(self, name: str, perm: str) -> None:
        """A BatchNorm over channels ordered by ``perm``: weight, bias and running statistics follow it."""
        for entry in ("weight", "bias") + STATISTICS:
            self.axes[f"{name}.{entry}"] = (perm,)
        self.axes[f"{name}.num_batches_tracked"] = ()

    def conv_norm(self, name: str, conv: str, norm: str, module: nn.Module, source: str | None,
                  out: str | None = None) -> str:
        """``module.<conv>`` then ``module.<norm>``, named under ``name``; return the output permutation."""
        perm = self.conv(f"{name}{conv}", getattr(module, conv), source, out)
        self.norm(f"{name}{norm}", perm)
        return perm

    def linear(self, name: str, module: nn.Linear, source: str) -> None:
        """A classifier reading pooled channels ordered by ``source``; its outputs stay in class order."""
        self.axes[f"{name}.weight"] = (None, source)
        if module.bias is not None:
            self.axes[f"{name}.bias"] = (None,)

    def spec(self) -> PermutationSpec:
        """The spec, after checking that every key of the model was reached by the walk."""
        unreached = [k for k in self.state if k not in self.axes]
        if unreached:
            raise ValueError(f"permutation spec: no rule for {len(unreached)} keys, e.g. {unreached[:5]} "
                             "(a module this walk does not know, such as squeeze-excitation)")
        spec = PermutationSpec(dict(self.sizes), dict(self.axes))
        spec.check(self.state)
        return spec


def _smallcnn(builder: _SpecBuilder, model: SmallCNN) -> None:
    perm = None
    for index, module in enumerate(model.features):
        if isinstance(module, nn.Conv2d):
            perm = builder.conv(f"features.{index}", module, perm)
        elif isinstance(module, nn.BatchNorm2d):
            builder.norm(f"features.{index}", perm)
    builder.linear("head", model.head, perm)


def _resnet(builder: _SpecBuilder, model: ResNet) -> None:
    stream = builder.conv_norm("", "conv1", "bn1", model, None)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}."
            out = stream
            if block.downsample is not None:
                if not (isinstance(block.downsample, nn.Sequential) and len(block.downsample) == 2):
                    raise ValueError(f"{name}downsample: only a convolution and a BatchNorm are supported")
                out = builder.conv_norm(f"{name}downsample.", "0", "1", block.downsample, stream)
            convs = ["conv1", "conv2"] + (["conv3"] if hasattr(block, "conv3") else [])
            perm = stream
            for conv in convs:
                perm = builder.conv_norm(name, conv, f"bn{conv[-1]}", block, perm, out if conv == convs[-1] else None)
            stream = out
    builder.linear("fc", model.fc, stream)


#: The (convolution, BatchNorm) pairs of timm's EfficientNet blocks, in forward order.
_EFFICIENTNET_BLOCKS = {DepthwiseSeparableConv: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
                        InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))}


def _efficientnet(builder: _SpecBuilder, model: EfficientNet) -> None:
    stream = builder.conv_norm("", "conv_stem", "bn1", model, None)
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            layers = _EFFICIENTNET_BLOCKS.get(type(block))
            if layers is None:
                raise ValueError(f"blocks.{i}.{j}: EfficientNet block {type(block).__name__} is not supported")
            perm = stream
            for conv, norm in layers:
                last = (conv, norm) == layers[-1]
                perm = builder.conv_norm(f"blocks.{i}.{j}.", conv, norm, block, perm,
                                         stream if last and block.has_skip else None)
            stream = perm
    head = builder.conv_norm("", "conv_head", "bn2", model, stream)
    builder.linear("classifier", model.classifier, head)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutations of ``model``'s channels that leave its function unchanged, from its modules.

    * ``smallcnn``: one permutation per convolution (named ``features.<i>``), acting on that
      convolution's output axis, its BatchNorm ``features.<i+1>`` and the input axis of the next
      convolution (or of ``head.weight`` for the last one).
    * timm ResNet (BasicBlock or Bottleneck): one permutation per residual stream, i.e. per stage:
      ``conv1`` (the stem, shared by ``layer1``) and ``layer<s>.0.downsample.0`` for the later stages;
      it acts on the stem or downsample convolution's output and BatchNorm, the output axis of every
      block's last convolution and its BatchNorm in the stage, the input axis of every block's first
      convolution and downsample convolution reading the stream, and ``fc.weight``'s input axis after
      the last stage. Inside a block, one permutation per other convolution (``layer<s>.<b>.conv1``,
      and ``conv2`` in a Bottleneck) over its output, BatchNorm and the next convolution's input.
    * timm EfficientNet (Lite0's depthwise-separable and inverted-residual blocks, no
      squeeze-excitation): the stem ``conv_stem`` starts a stream; a block with a skip connection writes
      its projection (``conv_pwl``, or ``conv_pw`` of a depthwise-separable block) into the stream it
      reads, a block without one starts a new stream named after that projection. An inverted residual's
      expansion permutation ``blocks.<i>.<j>.conv_pw`` acts on the expansion's output, ``bn1``, the
      depthwise ``conv_dw`` (whose channels follow it: its output axis; its input axis has size 1),
      ``bn2`` and the projection's input axis. ``conv_head`` has its own permutation over its output,
      ``bn2`` and ``classifier.weight``'s input axis.

    Every BatchNorm's ``weight``, ``bias``, ``running_mean`` and ``running_var`` follow their
    convolution's output permutation. Any other model, or a block with modules this walk does not know,
    raises ``ValueError``.
    """
    builder = _SpecBuilder(model)
    if isinstance(model, SmallCNN):
        _smallcnn(builder, model)
    elif isinstance(model, ResNet):
        _resnet(builder, model)
    elif isinstance(model, EfficientNet):
        _efficientnet(builder, model)
    else:
        raise ValueError(f"no permutation spec for {type(model).__name__}; supported: smallcnn, timm ResNet, "
                         "timm EfficientNet (e.g. tf_efficientnet_lite0)")
    return builder.spec()


def _permuted(spec: PermutationSpec, perms: Mapping[str, torch.Tensor], key: str, value: torch.Tensor,
              skip_axis: int | None = None) -> torch.Tensor:
    """``value`` with every permuted axis but ``skip_axis`` reindexed: along an axis of permutation
    ``p``, entry ``i`` of the result is entry ``perms[p][i]`` of ``value``."""
    for axis, perm in enumerate(spec.axes[key]):
        if perm is not None and axis != skip_axis:
            value = value.index_select(axis, perms[perm].to(value.device))
    return value


def _check_perms(spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> None:
    if set(perms) != set(spec.sizes):
        raise ValueError(f"permutations do not match the spec: missing {sorted(set(spec.sizes) - set(perms))[:5]}, "
                         f"extra {sorted(set(perms) - set(spec.sizes))[:5]}")
    for name, perm in perms.items():
        if not torch.equal(torch.sort(torch.as_tensor(perm).cpu()).values, torch.arange(spec.sizes[name])):
            raise ValueError(f"permutation {name!r} is not a permutation of range({spec.sizes[name]})")


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, torch.Tensor],
                      state: StateDict) -> dict[str, torch.Tensor]:
    """A new state: ``state`` with each permutation applied to every axis it acts on (entries the spec
    leaves alone are copied). The result computes the same function as ``state``."""
    spec.check(state)
    _check_perms(spec, perms)
    perms = {name: torch.as_tensor(perm, dtype=torch.long) for name, perm in perms.items()}
    return {key: _permuted(spec, perms, key, value.detach()).clone() for key, value in state.items()}


def weight_matching(spec: PermutationSpec, state_a: StateDict, state_b: StateDict, max_iter: int = 100,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Permutations of ``state_b``'s channels that bring its weights closest to ``state_a``'s.

    Algorithm 1 of Ainsworth et al. (2023): starting from the identity, visit the permutations in a
    random order (``seed``); for permutation ``P`` with the others fixed, solve the linear assignment
    ``max_P <P, C>`` with ``C = sum_{(W, axis) touching P} W^A_(axis) (W^B_(axis))^T``, where ``W_(axis)``
    is the tensor with ``axis`` first and the rest flattened and ``W^B`` has every other permutation
    applied (the objective of Sec. 3.2, in the module docstring). A permutation is replaced only when it
    raises the objective; the loop stops after a pass without improvement or ``max_iter`` passes. Entries
    of every float key the spec permutes count, except BatchNorm running statistics.

    Returns ``{name: LongTensor}``: ``apply_permutation(spec, perms, state_b)`` is ``state_b``'s
    function-preserving copy aligned to ``state_a``.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    spec.check(state_a)
    spec.check(state_b)
    differ = [k for k in spec.axes if state_a[k].shape != state_b[k].shape]
    if differ:
        raise ValueError(f"the two states differ in shape at {differ[:5]}: models of different tasks share only their "
                         f"backbone; match it with spec.without(<the head's prefix>)")
    keys = [k for k, axes in spec.axes.items() if any(axes) and not k.endswith(STATISTICS)]
    a = {k: state_a[k].detach().cpu().double() for k in keys}
    b = {k: state_b[k].detach().cpu().double() for k in keys}
    touching = {p: [(k, axis) for k, axis in spec.keys_of(p) if k in a] for p in spec.sizes}
    perms = {p: torch.arange(n) for p, n in spec.sizes.items()}
    names = sorted(spec.sizes)
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        improved = False
        for index in rng.permutation(len(names)):
            name = names[index]
            n = spec.sizes[name]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for key, axis in touching[name]:
                w_b = _permuted(spec, perms, key, b[key], skip_axis=axis)
                cost += a[key].movedim(axis, 0).reshape(n, -1) @ w_b.movedim(axis, 0).reshape(n, -1).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            cols = torch.as_tensor(cols, dtype=torch.long)
            rows = torch.arange(n)
            old, new = float(cost[rows, perms[name]].sum()), float(cost[rows, cols].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[name], improved = cols, True
        if not improved:
            break
    return perms


def moved_share(perms: Mapping[str, torch.Tensor]) -> float:
    """The share of all channels that ``perms`` move: 0 for identities, ``1 - 1/n`` expected for random ones."""
    moved = sum(int((torch.as_tensor(p) != torch.arange(len(p))).sum()) for p in perms.values())
    return moved / sum(len(p) for p in perms.values())


def align(spec: PermutationSpec, reference: StateDict, state: StateDict, max_iter: int = 100,
          seed: int = 0) -> dict[str, torch.Tensor]:
    """``state`` permuted to match ``reference`` (:func:`weight_matching`, then
    :func:`apply_permutation`); it computes the same function as ``state``."""
    return apply_permutation(spec, weight_matching(spec, reference, state, max_iter, seed), state)


def align_then_average(spec: PermutationSpec, states: Sequence[StateDict], max_iter: int = 100,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """The uniform average of ``states`` after aligning each of ``states[1:]`` to ``states[0]``
    (Ainsworth et al. 2023: the midpoint of the aligned models, where they measure the barrier).

    BatchNorm running statistics are permuted with their channels and averaged; they do not describe
    the merged network's activations, so recompute them before evaluating it
    (:func:`medsoup.core.bn.recalibrate_bn`)."""
    states = list(states)
    if len(states) < 2:
        raise ValueError(f"align_then_average needs at least two states, got {len(states)}")
    return average([states[0]] + [align(spec, states[0], s, max_iter, seed) for s in states[1:]])
