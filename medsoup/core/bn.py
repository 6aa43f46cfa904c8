"""BatchNorm recalibration: recompute running statistics after a merge.

Averaging or interpolating weights leaves BatchNorm's running mean/variance describing none of
the merged networks' activations. Garipov et al. (2018) and Izmailov et al. (SWA, 2018) recompute
them with one pass over the training data; FissionFusion's public code has the helper but never
calls it. :func:`recalibrate_bn` does that pass in place on the given model: statistics reset,
``momentum=None`` (a cumulative average over batches, as ``torch.optim.swa_utils.update_bn``),
only BatchNorm layers in training mode (dropout and the like stay off), no deep copy.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from medsoup.core.checkpoint import load_state_into
from medsoup.core.data import MedData
from medsoup.core.train import evaluate, model_in_chans


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
    """Metrics of ``state`` loaded into ``model`` (overwritten, reused) on ``split``.

    ``recalibrate``: False, True (recompute BN statistics on ``data``'s training split), or the
    batches/data to recompute them on.
    """
    load_state_into(model, state)
    if recalibrate is not False:
        recalibrate_bn(model, data if recalibrate is True else recalibrate)
    return evaluate(model, data, split)
