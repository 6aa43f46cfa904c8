"""create_model: families, small-image adaptations, pretrained=imagenet offline, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsoup.core import checkpoint as ckpt
from medsoup.core import models


@pytest.mark.parametrize("in_chans", [1, 3])
def test_smallcnn_shapes(in_chans):
    model = models.create_model("smallcnn", 5, in_chans)
    assert model(torch.randn(2, in_chans, 28, 28)).shape == (2, 5)
    assert len(models.conv_layers(model)) == 6
    assert models.classifier_keys(model) == ("head.weight", "head.bias")


@pytest.mark.parametrize("name,size,head", [
    ("resnet18", 28, "fc.weight"),
    ("resnet18", 64, "fc.weight"),
    ("deit_tiny_patch16_224", 28, "head.weight"),
    ("deit_tiny_patch16_224", 64, "head.weight"),
    ("vgg11", 28, "head.fc.weight"),
    ("tf_efficientnet_lite0", 28, "classifier.weight"),
    ("efficientnet_lite0", 64, "classifier.weight"),
    pytest.param("densenet121", 28, "classifier.weight", marks=pytest.mark.slow),
    pytest.param("vgg11", 64, "head.fc.weight", marks=pytest.mark.slow),
])
def test_timm_models_at_small_sizes(name, size, head):
    model = models.create_model(name, 3, 3, size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 3)
    assert models.classifier_keys(model)[0] == head
    assert len(models.conv_layers(model)) >= 1
    if name.startswith("deit"):
        assert model.patch_embed.proj.kernel_size == {28: (4, 4), 64: (8, 8)}[size]
    if "efficientnet" in name:
        assert model.conv_stem.stride == {28: (1, 1), 64: (2, 2)}[size]
        assert model.forward_features(torch.randn(1, 3, size, size)).shape[-2:] == (2, 2)


def test_resnet_28px_adaptation_keeps_parameter_shapes():
    import timm

    adapted = models.create_model("resnet18", 2, 3, 28)
    assert adapted.conv1.stride == (1, 1) and isinstance(adapted.maxpool, nn.Identity)
    at64 = models.create_model("resnet18", 2, 3, 64)
    assert at64.conv1.stride == (1, 1) and isinstance(at64.maxpool, nn.MaxPool2d)
    plain = timm.create_model("resnet18", num_classes=2)
    assert {k: v.shape for k, v in adapted.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


@pytest.mark.parametrize("name,pattern", [
    ("alexnet", "'alexnet'.*smallcnn, vgg, resnet, densenet, efficientnet, deit"),
    ("tf_alexnet", "'tf_alexnet'.*valid families"),
    ("efficientnet_lite9", "'efficientnet_lite9'.*efficientnet_lite0"),
    ("resnet7", "'resnet7'.*resnet18"),
    ("smallcnn2", "'smallcnn2'.*'smallcnn'"),
])
def test_unknown_model_names_it_and_lists_valid(name, pattern):
    with pytest.raises(ValueError, match=pattern):
        models.create_model(name, 2)


def test_unsupported_image_size():
    with pytest.raises(ValueError, match="img_size 32.*28, 64, 128, 224"):
        models.create_model("smallcnn", 2, img_size=32)


def test_imagenet_weights_fail_fast_and_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.PretrainedWeightsError, match="resnet18.*HF_HUB_OFFLINE"):
        models.create_model("resnet18", 2, pretrained="imagenet")
    with pytest.raises(models.PretrainedWeightsError, match="smallcnn has no ImageNet weights"):
        models.create_model("smallcnn", 2, pretrained="imagenet")


def test_family_of_knows_timm_tf_ports():
    assert models.family_of("tf_efficientnet_lite0") == models.family_of("efficientnet_b0") == "efficientnet"


def test_pretrained_checkpoint_loads_backbone_and_a_fresh_head(tmp_path):
    """Regression: with equal class counts (Breast <-> Pneumonia) the source's head was kept, so
    FT and LP-FT from a source started from another task's classifier."""
    source = models.create_model("smallcnn", 2)
    ckpt.save_checkpoint(tmp_path / "source", source.state_dict())
    torch.manual_seed(7)
    same = models.create_model("smallcnn", 2, pretrained=tmp_path / "source.safetensors")
    torch.manual_seed(7)
    fresh = models.create_model("smallcnn", 2)
    for key, value in source.state_dict().items():
        if key.startswith("head."):
            assert not torch.equal(same.state_dict()[key], value), key
            assert torch.equal(same.state_dict()[key], fresh.state_dict()[key]), key
        else:
            assert torch.equal(same.state_dict()[key], value), key
    other = models.create_model("smallcnn", 5, pretrained=tmp_path / "source")
    assert other.head.weight.shape == (5, 128)
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(other.state_dict()[key], value), key


def test_checkpoint_of_another_architecture_names_mismatched_keys(tmp_path):
    ckpt.save_checkpoint(tmp_path / "resnet", models.create_model("resnet18", 2).state_dict())
    with pytest.raises(ckpt.CheckpointError) as error:
        models.create_model("smallcnn", 2, pretrained=tmp_path / "resnet")
    message = str(error.value)
    assert "another architecture" in message
    assert "missing in checkpoint" in message and "features.0.weight" in message
    assert "not in model" in message and "conv1.weight" in message


def test_checkpoint_with_other_channel_count_names_the_shape_mismatch(tmp_path):
    ckpt.save_checkpoint(tmp_path / "gray", models.create_model("smallcnn", 2, in_chans=1).state_dict())
    with pytest.raises(ckpt.CheckpointError, match=r"features.0.weight: checkpoint \(32, 1, 3, 3\) vs model \(32, 3, 3, 3\)"):
        models.create_model("smallcnn", 2, in_chans=3, pretrained=tmp_path / "gray")


@pytest.mark.parametrize("pretrained", [None, "imagenet"])
def test_a_new_timm_head_has_torch_linear_scale_not_timms_fan_out_init(pretrained):
    # timm's EfficientNet gives a 2-class head U(+-1/sqrt(2)); over 1280 features that starts training at
    # a loss of 3.5-6.4 instead of log 2 (measured): medsoup's heads are U(+-1/sqrt(fan_in)) as nn.Linear's.
    model = models.create_model("tf_efficientnet_lite0", 2, 3, 28, pretrained=pretrained)
    head = model.get_classifier()
    assert head.weight.abs().max() <= 1 / head.in_features ** 0.5
    assert head.weight.abs().max() > 0.5 / head.in_features ** 0.5  # initialised, not zeroed
