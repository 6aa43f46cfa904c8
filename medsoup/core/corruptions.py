"""Corrupted test sets for out-of-distribution evaluation, as tensor operations.

MedMNIST-C (``medmnistc`` on PyPI, Di Salvo et al. 2024) is the natural source, but version 0.1.0
pins ``medmnist==3.0.1`` (we use 3.0.2), ``scikit-image==0.23.2`` and needs ImageMagick through
``wand``; it is therefore not a dependency. This module re-implements a subset of its
corruptions with the same formulas (images in [0, 1]) and severity tables taken from its
RetinaMNIST / PneumoniaMNIST entries; blur is re-parametrised as a Gaussian sigma in pixels for
28 px images (MedMNIST-C's kernel sizes are meant for 224 px). Severity runs 1..5.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from medsoup.core.data import MedData, Split

SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.16, 0.20),   # std of additive noise
    "speckle_noise": (0.10, 0.15, 0.20, 0.25, 0.30),    # std of multiplicative noise
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.08),    # fraction of salt-and-pepper pixels
    "gaussian_blur": (0.5, 0.75, 1.0, 1.25, 1.5),       # sigma in pixels (28 px images)
    "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),       # PIL ImageEnhance.Brightness factor
    "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),         # PIL ImageEnhance.Contrast factor
    "pixelate": (0.8, 0.6, 0.5, 0.4, 0.35),             # down-scaling factor (box filter)
}
CORRUPTIONS = tuple(SEVERITIES)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _gray_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean of the luminance (PIL's ``L`` conversion), as ImageEnhance.Contrast uses."""
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * weights).sum(1, keepdim=True)
    return x.mean(dim=(1, 2, 3), keepdim=True)


def corrupt(images: torch.Tensor, name: str, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Corrupted copy of uint8 images (N, C, H, W); the same ``seed`` gives the same noise."""
    if name not in SEVERITIES:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    c = SEVERITIES[name][severity - 1]
    g = torch.Generator().manual_seed(seed)
    x = images.float().cpu() / 255.0
    if name == "gaussian_noise":
        x = x + torch.randn(x.shape, generator=g) * c
    elif name == "speckle_noise":
        x = x + x * torch.randn(x.shape, generator=g) * c
    elif name == "impulse_noise":
        u = torch.rand(x.shape, generator=g)
        x = torch.where(u < c / 2, 0.0, torch.where(u > 1 - c / 2, 1.0, x))
    elif name == "gaussian_blur":
        x = _gaussian_blur(x, c)
    elif name == "brightness_down":
        x = x * c
    elif name == "contrast_down":
        mean = _gray_mean(x)
        x = mean + c * (x - mean)
    elif name == "pixelate":
        h, w = x.shape[-2:]
        small = F.adaptive_avg_pool2d(x, (max(1, int(h * c)), max(1, int(w * c))))
        x = F.interpolate(small, size=(h, w), mode="nearest")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).to(images.device)


#: Corrupted data sets made so far: (id of the original images, corruption, severity, split, seed) ->
#: (weak reference to the original images, the corrupted MedData); entries go when the images do.
_MADE: dict[tuple, tuple[weakref.ref, MedData]] = {}


def corrupted(data: MedData, name: str, severity: int = 3, split: str = "test", seed: int = 0) -> MedData:
    """``data`` with ``split``'s images corrupted (labels and the other splits shared, unchanged).

    Made once per images tensor, corruption, severity and seed, on the data's device: a later call
    for the same (not modified in place) images returns the same object."""
    original = data.splits[split]
    key = (id(original.images), name, severity, split, seed)
    made = _MADE.get(key)
    if made is not None and made[0]() is original.images and _same_except(made[1], data, split):
        return made[1]
    splits = dict(data.splits)
    splits[split] = Split(corrupt(original.images, name, severity, seed), original.labels)
    out = MedData(data.name, data.size, data.task, data.label_names, splits)
    for stale in [k for k, (ref, _) in _MADE.items() if ref() is None]:
        del _MADE[stale]
    _MADE[key] = (weakref.ref(original.images), out)
    return out


def _same_except(made: MedData, data: MedData, split: str) -> bool:
    """Whether ``made`` holds ``data``'s metadata, labels and every split but ``split``, as the same objects."""
    return ((made.name, made.size, made.task, made.label_names) == (data.name, data.size, data.task, data.label_names)
            and made.splits.keys() == data.splits.keys()
            and all(made.splits[k].labels is s.labels and (k == split or made.splits[k].images is s.images)
                    for k, s in data.splits.items()))
