"""BatchNorm recalibration: recompute running statistics after a merge.

Averaging or interpolating weights leaves BatchNorm's running mean/variance describing none of
the merged networks' activations. Garipov et al. (2018) and Izmailov et al. (SWA, 2018) recompute
them with one pass over the training data; FissionFusion's public code has the helper but never
calls it. :func:`recalibrate_bn` does that pass in place on the given model: statistics reset,
``momentum=None`` (a cumulative average over batches, as ``torch.optim.swa_utils.update_bn``),
only BatchNorm layers in training mode (dropout and the like stay off), no deep copy.
:class:`StateEvaluator` evaluates many states with one model, loading (and recalibrating) each
state once however many splits or corrupted test sets it is evaluated on. Both lay the model out for
many evaluation passes first (:func:`for_evaluation`).
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from medsoup.core.checkpoint import load_state_into
from medsoup.core.data import MedData
from medsoup.core.train import evaluate, model_in_chans


#: Batch size of the evaluation passes here on a CPU: with channels-last weights measured faster on two
#: cores than :func:`~medsoup.core.train.evaluate`'s default of 512 for smallcnn, resnet18 and Lite0 at
#: 28 px (Lite0's stride-1 stem keeps 32 x 28 x 28 floats per image in its first layers). On other
#: devices that default is kept.
CPU_EVALUATION_BATCH = 128


def for_evaluation(model: nn.Module) -> dict[str, int]:
    """Lay ``model`` out, in place, for many evaluation passes on its device; return the keyword
    arguments of :func:`~medsoup.core.train.evaluate` for them.

    On a CPU: channels-last weights (its convolutions' output follows them; the inputs need no
    change) and :data:`CPU_EVALUATION_BATCH`; measured together about 2x faster than contiguous
    weights in batches of 512 for Lite0 at 28 px (``benchmarks/bench_fissionfusion_eval.py``). The
    numbers differ from those only in float rounding (~1e-6 on a logit). Other devices: unchanged,
    no arguments. Call it before taking references to the model's tensors: the layout replaces them.
    The training loop's per-epoch validation does not use it, so the run cache's numbers stay as
    they were trained.
    """
    if next(model.parameters()).device.type != "cpu":
        return {}
    model.to(memory_format=torch.channels_last)
    return {"batch_size": CPU_EVALUATION_BATCH}


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def train_images(data: MedData, model: nn.Module, batch_size: int = 256,
                 max_images: int | None = None) -> list[torch.Tensor]:
    """The normalised training images as a list of batches (no augmentation), to reuse across
    many recalibrations; ``max_images`` keeps the first that many."""
    batches, seen = [], 0
    for images, _ in data.batches("train", batch_size, in_chans=model_in_chans(model, data)):
        if max_images is not None:
            images = images[:max_images - seen]
        batches.append(images)
        seen += len(images)
        if max_images is not None and seen >= max_images:
            break
    return batches


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: MedData | Iterable[torch.Tensor],
                   batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm layer's running statistics of ``model`` in place; return it.

    ``batches``: a :class:`MedData` (its training split, no augmentation) or an iterable of
    normalised image batches (e.g. from :func:`train_images`). The model's weights, its
    train/eval mode and each layer's momentum are left as they were.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return model
    if isinstance(batches, MedData):
        batches = train_images(batches, model, batch_size)
    device = next(model.parameters()).device
    modes = [m.training for m in model.modules()]
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    count = 0
    for images in batches:
        model(images.to(device))
        count += 1
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    for module, mode in zip(model.modules(), modes):
        module.training = mode
    if count == 0:
        raise ValueError("no training batches to recalibrate BatchNorm statistics on")
    return model


def evaluate_state(model: nn.Module, state: Mapping[str, torch.Tensor], data: MedData, split: str = "val",
                   recalibrate: bool | MedData | Iterable[torch.Tensor] = False) -> dict:
    """Metrics of ``state`` loaded into ``model`` (overwritten, reused, laid out by
    :func:`for_evaluation`) on ``split``.

    ``recalibrate``: False, True (recompute BN statistics on ``data``'s training split), or the
    batches/data to recompute them on.
    """
    options = for_evaluation(model)
    load_state_into(model, state)
    if recalibrate is not False:
        recalibrate_bn(model, data if recalibrate is True else recalibrate)
    return evaluate(model, data, split, **options)


def bn_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm buffer of ``model`` (running mean/var, batch counters), by state-dict key."""
    names = {id(m): name for name, m in model.named_modules()}
    return {f"{names[id(layer)]}.{key}": buffer.detach().clone()
            for layer in batchnorm_layers(model) for key, buffer in layer.named_buffers(recurse=False)}


class StateEvaluator:
    """Metrics of many states with one ``model`` (reused, overwritten, laid out by
    :func:`for_evaluation`) on ``data``.

    ``recalibrate``: False, True (BatchNorm statistics recomputed on ``data``'s training split
    before a state is evaluated) or the batches to recompute them on. A state is loaded, and
    recalibrated, once for consecutive evaluations of it (several splits, corrupted copies of the
    data), and its metrics on ``data``'s own splits are remembered while its tensors live, so a
    state scored during a soup and evaluated again afterwards costs one pass. States are recognised
    by the identity of their tensors (do not change a state's tensors in place between calls); a
    model written to in between (``load_state_dict``, an optimiser step: anything that bumps its
    tensors' version counters, which writes through ``.data`` do not) is reloaded.
    """

    def __init__(self, model: nn.Module, data: MedData,
                 recalibrate: bool | Iterable[torch.Tensor] = False):
        self.model, self.data = model, data
        self.options = for_evaluation(model)
        self.batches = (train_images(data, model) if recalibrate is True
                        else None if recalibrate is False else list(recalibrate))
        self._loaded: tuple | None = None
        self._known: dict[tuple, tuple[list, dict]] = {}

    def load(self, state: Mapping[str, torch.Tensor],
             statistics: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """Load ``state`` into the model and recalibrate it (or load its known ``statistics``,
        from :func:`bn_statistics`), unless it is the state loaded last; return the model."""
        key = _identity(state)
        if self._loaded is None or not _alive(self._loaded[:2], key) or self._loaded[2] != self._versions():
            load_state_into(self.model, state)
            if statistics is not None:
                self.model.load_state_dict(statistics, strict=False)
            elif self.batches is not None:
                recalibrate_bn(self.model, self.batches)
            self._loaded = (key, [weakref.ref(t) for t in state.values()], self._versions())
        return self.model

    def _versions(self) -> tuple[int, ...]:
        """The model tensors' in-place modification counters: they change if anything else writes into it."""
        return tuple(t._version for t in self.model.state_dict().values())

    def metrics(self, state: Mapping[str, torch.Tensor], split: str = "val", data: MedData | None = None) -> dict:
        """:func:`~medsoup.core.train.evaluate` of ``state`` on ``split`` of ``data`` (default: the
        evaluator's data, whose results are remembered)."""
        if data is not None and data is not self.data:
            return evaluate(self.load(state), data, split, **self.options)
        key = (_identity(state), split)
        known = self._known.get(key)
        if known is not None and _alive((key[0], known[0]), key[0]):
            return dict(known[1])
        metrics = evaluate(self.load(state), self.data, split, **self.options)
        self._known = {k: v for k, v in self._known.items() if all(r() is not None for r in v[0])}
        self._known[key] = ([weakref.ref(t) for t in state.values()], metrics)
        return dict(metrics)

    def scorer(self, metric: str, split: str = "val") -> Callable[[Mapping[str, torch.Tensor]], float]:
        """``score(state)``: ``metric`` of ``state`` on ``split``."""
        return lambda state: float(self.metrics(state, split)[metric])


def _identity(state: Mapping[str, torch.Tensor]) -> tuple:
    return tuple((k, id(v)) for k, v in state.items())


def _alive(entry: tuple, key: tuple) -> bool:
    """Whether ``entry`` (identity key, weak references) still names the live tensors of ``key``."""
    recorded, refs = entry
    return recorded == key and all(r() is not None for r in refs)
