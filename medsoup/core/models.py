"""``create_model``: timm's VGG, ResNet, DenseNet, EfficientNet and DeiT families plus a small CPU CNN.

Adaptations for small MedMNIST images keep every parameter shape of the timm model, so ImageNet
weights and medsoup checkpoints load unchanged:

* ResNet, DenseNet: the stem convolution runs with stride 1; at 28 px the stem max-pool is
  removed as well (as in MedMNIST v2's ResNets), at 64 px it is kept.
* VGG: at 28 px the last max-pool is removed (28 -> 14 -> 7 -> 3 -> 1), otherwise unchanged;
  timm's ``pre_logits`` block pools small maps up to its 7x7 window itself.
* EfficientNet: at 28 px the stem convolution runs with stride 1 (final feature map 2x2, as at
  64 px with the stride-2 stem); at 64 px unchanged.
* DeiT: patch size 4 at 28 px and 8 at 64 px (timm resamples pretrained patch embeddings and
  position embeddings to the new grid).
* ``smallcnn``: three stages of two 3x3 conv + BN + ReLU blocks (32, 64, 128 channels), global
  average pooling and a linear head; a few seconds per epoch on two CPU cores at 28 px.

``pretrained="imagenet"`` goes through timm's Hugging Face hub loading, except for
EfficientNet-Lite0, whose ImageNet weights come offline from a registry package
(:mod:`medsoup.core.pretrained`).
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from medsoup.core.checkpoint import load_checkpoint, load_state_into
from medsoup.core.pretrained import LITE0_MODELS, PretrainedWeightsError, adapt_stem, imagenet_lite0_state

FAMILIES = ("smallcnn", "vgg", "resnet", "densenet", "efficientnet", "deit")


class SmallCNN(nn.Module):
    """A VGG-style CNN for quick CPU runs (6 conv layers with BatchNorm)."""

    def __init__(self, num_classes: int, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                channels = width
            if stage < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.head.in_features, num_classes)


def family_of(name: str) -> str:
    """The family of a model name; timm's TF ports (``tf_`` prefix) belong to their family."""
    for family in FAMILIES:
        if name.removeprefix("tf_").startswith(family):
            return family
    raise ValueError(f"unknown model {name!r}; valid families: {', '.join(FAMILIES)} (e.g. smallcnn, "
                     f"vgg19_bn, resnet18, densenet121, tf_efficientnet_lite0, deit_tiny_patch16_224)")


def check_model_name(name: str) -> str:
    """Return the family of ``name`` after checking, offline, that the model exists."""
    family = family_of(name)
    if family == "smallcnn" and name != "smallcnn":
        raise ValueError(f"unknown model {name!r}; the small CNN is called 'smallcnn'")
    if family != "smallcnn" and not timm.is_model(name):
        close = (timm.list_models(f"{name.rstrip('0123456789')}*") or timm.list_models(f"{family}*"))[:20]
        raise ValueError(f"unknown model {name!r}; timm models of this family include: {', '.join(close)}")
    return family


def _adapt_to_size(model: nn.Module, family: str, img_size: int) -> None:
    if img_size >= 128:
        return
    if family == "resnet":
        model.conv1.stride = (1, 1)
        if img_size == 28:
            model.maxpool = nn.Identity()
    elif family == "densenet":
        model.features.conv0.stride = (1, 1)
        if img_size == 28:
            model.features.pool0 = nn.Identity()
    elif family == "efficientnet" and img_size == 28:
        model.conv_stem.stride = (1, 1)
    elif family == "vgg" and img_size == 28:
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        model.features[pools[-1]] = nn.Identity()


def classifier_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys of the model's classification head."""
    head = model.get_classifier()
    ids = {id(t) for t in head.state_dict(keep_vars=True).values()}
    return tuple(k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids)


def reset_head(model: nn.Module) -> None:
    """Initialise a linear classifier as ``torch.nn.Linear`` does, U(+-1/sqrt(fan_in)).

    timm's EfficientNet initialises its classifier with U(+-1/sqrt(fan_out)) (``_init_weight_goog``):
    for a 2-class head over Lite0's 1280 features that is U(+-0.71), initial logits of order 10 and a
    first-epoch training loss of 3.5-6.4 measured on the offline datasets, where log(2) = 0.69 is
    expected; the short fine-tuning budgets then spend their steps shrinking the head.
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        head.reset_parameters()


def _timm_model(name: str, family: str, num_classes: int, in_chans: int, img_size: int,
                imagenet: bool) -> nn.Module:
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    if family == "deit":
        kwargs.update(img_size=img_size, patch_size={28: 4, 64: 8}.get(img_size, 16))
    if not imagenet:
        model = timm.create_model(name, pretrained=False, **kwargs)
        reset_head(model)
        return model
    if name in LITE0_MODELS:
        model = timm.create_model(name, pretrained=False, **kwargs)
        reset_head(model)  # replaced by the ImageNet head when it fits (1000 classes)
        _load_backbone(model, adapt_stem(imagenet_lite0_state(), in_chans), keep_fitting_head=True)
        return model
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
        if num_classes != model.pretrained_cfg.get("num_classes", 1000):
            reset_head(model)  # a new head: timm initialised it with the architecture's own scheme
        return model
    except Exception as error:
        hint = ("HF_HUB_OFFLINE is set, so only a local Hugging Face cache is consulted"
                if offline else "is there a network? set HF_HUB_OFFLINE=1 to fail at once when there is not")
        raise PretrainedWeightsError(
            f"ImageNet weights for {name} could not be loaded through timm ({hint}): "
            f"{type(error).__name__}: {error!s:.300}. Put the weights in the Hugging Face cache "
            "(HF_HOME), train from scratch (pretrained=None), or start from a medsoup checkpoint "
            "(pretrained='path/to/model.safetensors').") from None


def create_model(name: str, num_classes: int, in_chans: int = 3, img_size: int = 28,
                 pretrained: str | os.PathLike | None = None) -> nn.Module:
    """Build a classifier for ``img_size`` px images with ``num_classes`` outputs.

    ``pretrained``: ``None`` (random init), ``"imagenet"`` or the path of a medsoup checkpoint of
    the same architecture. ImageNet weights come offline for ``tf_efficientnet_lite0`` and
    ``efficientnet_lite0`` (:mod:`medsoup.core.pretrained`; the TF variant is the measured match)
    and through timm's hub loading otherwise (fails with :class:`PretrainedWeightsError` offline);
    the ImageNet classifier is kept only for 1000 classes. A checkpoint gives the backbone only:
    every transfer starts from a fresh head, seeded like a model without ``pretrained``.
    """
    family = check_model_name(name)
    if img_size not in (28, 64, 128, 224):
        raise ValueError(f"unsupported img_size {img_size}; valid: 28, 64, 128, 224")
    imagenet = pretrained == "imagenet"
    if family == "smallcnn":
        if imagenet:
            raise PretrainedWeightsError("smallcnn has no ImageNet weights; use pretrained=None or a checkpoint")
        model = SmallCNN(num_classes, in_chans)
    else:
        model = _timm_model(name, family, num_classes, in_chans, img_size, imagenet)
        _adapt_to_size(model, family, img_size)
    if pretrained is not None and not imagenet:
        load_pretrained(model, pretrained)
    return model


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], keep_fitting_head: bool) -> None:
    """Copy ``state`` into ``model``; its head only if ``keep_fitting_head`` and the shapes fit."""
    own = model.state_dict()
    head = classifier_keys(model)
    fits = keep_fitting_head and all(k in state and state[k].shape == own[k].shape for k in head)
    load_state_into(model, state, ignore=() if fits else head)


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a medsoup checkpoint's backbone into ``model``, keeping the model's own fresh head.

    The source's head belongs to another task even when the class counts match, so it is never
    loaded (FT and LP-FT baselines start from a new head, as MedMerge does)."""
    state, _ = load_checkpoint(Path(path))
    _load_backbone(model, state, keep_fitting_head=False)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of ``model`` as ``(name, module)``, in forward (registration) order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
