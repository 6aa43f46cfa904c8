"""Normalisation and augmentation of whole batches as tensors (no per-image PIL).

Levels, mirroring FissionFusion's minimal / medium / heavy grid at MedMNIST scale:

* ``none``: normalisation only;
* ``minimal``: random translation of up to 1/16 of the side (the 90-100 % random crop);
* ``medium``: horizontal flip and translation of up to 1/8 of the side;
* ``heavy``: ``medium`` plus per-image brightness/contrast jitter and random erasing of one
  box (a tensor stand-in for RandAugment N=2, M=15).

Random numbers come from a seeded :class:`torch.Generator`, so a seed fixes every batch. They are
drawn on the generator's device: a CPU generator gives the same numbers as ever (copied to the
batch's device), a generator on the batch's CUDA device draws there, with no host copy or wait.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENT_LEVELS = ("none", "minimal", "medium", "heavy")


def normalise(images: torch.Tensor, in_chans: int | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] as MedMNIST's ``Normalize(mean=.5, std=.5)``.

    With ``in_chans=3`` a grayscale batch is repeated to three channels.
    """
    x = images.float().div_(127.5).sub_(1.0)
    if in_chans is not None and in_chans != x.shape[1]:
        if x.shape[1] == 1 and in_chans == 3:
            return x.expand(-1, 3, -1, -1).contiguous()
        raise ValueError(f"cannot turn {x.shape[1]}-channel images into {in_chans} channels")
    return x


def draw_device(generator: torch.Generator | None) -> torch.device:
    """Where random numbers are drawn: the generator's device; the CPU for torch's global generator."""
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(shape: int | tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=draw_device(generator)).to(device)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2."""
    flip = _uniform(len(x), generator, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels per axis (reflect padding, then a crop)."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator,
                            device=draw_device(generator)).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness and contrast jitter of relative size ``strength``."""
    b = len(x)
    brightness = (_uniform(b, generator, x.device) * 2 - 1) * strength
    contrast = 1 + (_uniform(b, generator, x.device) * 2 - 1) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]).clamp_(-1, 1)


def random_erase(x: torch.Tensor, max_fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one random box per image, each side up to ``max_fraction`` of the image side."""
    b, _, h, w = x.shape
    u = _uniform((4, b), generator, x.device)
    box_h = (u[0] * max_fraction * h).long() + 1
    box_w = (u[1] * max_fraction * w).long() + 1
    top = (u[2] * (h - box_h + 1)).long()
    left = (u[3] * (w - box_w + 1)).long()
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(mask, 0.0)


def augment_batch(x: torch.Tensor, level: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply augmentation ``level`` (one of :data:`AUGMENT_LEVELS`) to a normalised float batch."""
    side = x.shape[-1]
    if level == "none":
        return x
    if level == "minimal":
        return random_translate(x, max(1, side // 16), generator)
    if level == "medium":
        return random_translate(random_flip(x, generator), max(1, side // 8), generator)
    if level == "heavy":
        x = random_translate(random_flip(x, generator), max(1, side // 8), generator)
        return random_erase(jitter(x, 0.2, generator), 0.4, generator)
    raise ValueError(f"unknown augmentation level {level!r}; valid levels: {AUGMENT_LEVELS}")
