"""In-Model Merging: the per-layer step (Eq. (3)-(4)), layer order, the callback, and the regressions
of the paper's public code (REFERENCE.md section 2)."""

import math

import pytest
import torch
from torch import nn

from medsoup.core.models import create_model
from medsoup.core.train import Callback, TrainConfig, evaluate, fit
from medsoup.merging.inmerge import (InMerge, forward_conv_layers, merge_kernels, merge_layers, mergeable_convs,
                                     quantile_taus)
from medsoup.merging.kernels import (fraction_above, kind_summary, layer_kind, off_diagonal, pairwise_cosine,
                                     similarities_by_kind)
from tests.conftest import StopAfter, tiny


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_data():
    return tiny("breastmnist", n=64)


def conv_weights(model):
    return [conv.weight.detach().clone() for _, conv in mergeable_convs(model)]


# --- merge_kernels ---------------------------------------------------------------------------

def test_nothing_changes_with_p_zero_or_tau_one():
    weight = torch.randn(16, 4, 3, 3)
    weight[1] = weight[0]  # identical kernels: cosine 1 up to rounding, still not > 1
    for kwargs in (dict(p=0.0, tau=-1.0), dict(p=1.0, tau=1.0)):
        new, n = merge_kernels(weight, alpha=0.5, generator=gen(), **kwargs)
        assert torch.equal(new, weight) and int(n) == 0


def test_p1_tau_minus1_alpha_half_gives_mean_with_a_partner_from_the_original_weights():
    weight = torch.randn(12, 3, 3, 3)
    before = weight.clone()
    new, n = merge_kernels(weight, alpha=0.5, p=1.0, tau=-1.0, generator=gen(1))
    assert torch.equal(weight, before), "the input weight must be left unchanged"
    assert int(n) == 12
    flat, new_flat = before.reshape(12, -1), new.reshape(12, -1)
    for i in range(12):
        partner = 2 * new_flat[i] - flat[i]  # new = (K_i + K_j) / 2 with K_j read before the step
        distance = (flat - partner).norm(dim=1)
        j = int(distance.argmin())
        assert j != i and distance[j] < 1e-5


def test_merge_reads_weights_before_the_step_even_when_partners_merge():
    # two kernels, both always selected and always each other's partner: a sequential in-place
    # loop would make K_1 from the already merged K_0; Algorithm 1 (W' <- W) must not.
    weight = torch.tensor([[1.0, 0.0], [0.8, 0.6]]).reshape(2, 2, 1, 1)
    new, n = merge_kernels(weight, alpha=0.8, p=1.0, tau=0.0, generator=gen())
    expected = torch.tensor([[0.96, 0.12], [0.84, 0.48]]).reshape(2, 2, 1, 1)
    assert int(n) == 2 and torch.allclose(new, expected)


def test_dissimilar_merges_only_pairs_below_tau():
    weight = torch.tensor([[1.0, 0.0], [-1.0, 0.1]]).reshape(2, 2, 1, 1)  # cosine about -0.995
    assert int(merge_kernels(weight, 0.8, 1.0, 0.3, gen())[1]) == 0
    assert int(merge_kernels(weight, 0.8, 1.0, 0.3, gen(), dissimilar=True)[1]) == 2


def test_merged_fraction_is_p_times_fraction_of_pairs_above_tau():
    torch.manual_seed(0)
    weight = torch.randn(32, 2, 1, 1)  # low dimension: similarities spread over [-1, 1]
    tau, p, trials = 0.3, 0.3, 400
    expected = p * fraction_above(pairwise_cosine(weight), tau)
    g = gen(5)
    merged = sum(int(merge_kernels(weight, 0.8, p, tau, g)[1]) for _ in range(trials)) / (32 * trials)
    # draws of different kernels are independent: binomial standard error, 5 sigma
    sigma = math.sqrt(expected * (1 - expected) / (32 * trials))
    assert 0.05 < expected < 0.25
    assert abs(merged - expected) < 5 * sigma


def test_same_generator_seed_gives_same_merge():
    weight = torch.randn(20, 3, 3, 3)
    a, b = merge_kernels(weight, 0.8, 0.5, -0.2, gen(3)), merge_kernels(weight, 0.8, 0.5, -0.2, gen(3))
    assert torch.equal(a[0], b[0]) and int(a[1]) == int(b[1])


def test_merge_layers_in_place_matches_the_pure_function():
    conv = nn.Conv2d(3, 24, 3).to(memory_format=torch.channels_last)
    expected, n = merge_kernels(conv.weight, 0.7, 0.6, -0.3, gen(9))
    counts = merge_layers([("c", conv)], 0, 0.7, 0.6, -0.3, gen(9))
    assert torch.equal(conv.weight, expected) and int(counts["c"]) == int(n) > 0


@pytest.mark.parametrize("kwargs, name", [(dict(alpha=1.5), "alpha"), (dict(p=-0.1), "p"), (dict(tau=2.0), "tau")])
def test_bad_parameters_name_the_problem(kwargs, name):
    with pytest.raises(ValueError, match=f"InMerge {name} must lie"):
        merge_kernels(torch.randn(4, 1, 3, 3), **{"alpha": 0.8, "p": 0.3, "tau": 0.3, **kwargs})


# --- layer order and merge_layers --------------------------------------------------------------

class ReversedRegistration(nn.Module):
    """Registers its convolutions in the opposite order of the forward pass."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(4, 4, 3, padding=1)
        self.early = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.late(self.early(x))


def test_layers_are_ordered_by_forward_call_not_registration():
    order = forward_conv_layers(ReversedRegistration(), torch.randn(1, 3, 8, 8))
    assert [name for name, _ in order] == ["early", "late"]


def test_forward_order_leaves_batchnorm_statistics_and_mode_alone():
    model = create_model("smallcnn", 2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward_conv_layers(model, torch.randn(2, 3, 28, 28))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name, n_conv", [("resnet18", 20), ("densenet121", 120)])
def test_resnet_and_densenet_conv_layers_are_all_reachable_and_merged(name, n_conv):
    # the public code merged only ResNet conv2s and, for DenseNet, nothing at all
    model = create_model(name, 2, 3, 28)
    layers = forward_conv_layers(model, torch.randn(1, 3, 28, 28))
    assert len(layers) == n_conv == len(mergeable_convs(model))
    before = [conv.weight.detach().clone() for _, conv in layers]
    counts = merge_layers(layers, 0, alpha=0.5, p=1.0, tau=-1.0, generator=gen())
    assert len(counts) == n_conv
    for (layer, conv), old in zip(layers, before):
        assert int(counts[layer]) == conv.weight.shape[0]
        assert not torch.equal(conv.weight, old), f"{layer} was not merged"


def test_vgg_classifier_convolutions_are_not_counted():
    model = create_model("vgg11_bn", 2, 3, 28)
    names = [name for name, _ in mergeable_convs(model)]
    assert len(names) == 8 and not any(n.startswith("pre_logits") for n in names)


def test_layers_below_first_layer_are_never_changed():
    model = create_model("smallcnn", 2)
    layers = forward_conv_layers(model, torch.randn(1, 3, 28, 28))
    before = conv_weights(model)
    counts = merge_layers(layers, 4, alpha=0.5, p=1.0, tau=-1.0, generator=gen())
    after = conv_weights(model)
    assert list(counts) == [name for name, _ in layers[4:]]
    assert all(torch.equal(b, a) for b, a in zip(before[:4], after[:4]))
    assert not any(torch.equal(b, a) for b, a in zip(before[4:], after[4:]))


# --- the callback in fit -----------------------------------------------------------------------

class Spy(Callback):
    """Copies the conv weights after the last step of each epoch and again after validation."""

    def __init__(self, steps_per_epoch):
        self.steps_per_epoch, self.after_step, self.after_eval = steps_per_epoch, [], []

    def on_step_end(self, model, step):
        if (step + 1) % self.steps_per_epoch == 0:
            self.after_step.append(conv_weights(model))

    def on_epoch_end(self, model, epoch, record):
        self.after_eval.append(conv_weights(model))


def probe_config(**changes):
    # linear probing: only the head learns, so conv weights change by merging alone
    values = dict(epochs=2, batch_size=32, linear_probe=True, bn_trainable=False, augment="none",
                  restore_best=False, seed=0, device="cpu")
    return TrainConfig(**{**values, **changes})


def test_callback_merges_only_in_training_never_in_evaluation():
    torch.manual_seed(0)
    model, data = create_model("smallcnn", 2), tiny_data()
    before = conv_weights(model)
    merge, spy = InMerge(alpha=0.5, first_layer=4, p=1.0, tau=-1.0, seed=0), Spy(steps_per_epoch=2)
    result = fit(model, data, probe_config(), callbacks=[merge, spy], progress=False)
    for after_step, after_eval in zip(spy.after_step, spy.after_eval):
        assert all(torch.equal(a, b) for a, b in zip(after_step, after_eval)), "validation changed weights"
    final = conv_weights(model)
    assert all(torch.equal(b, a) for b, a in zip(before[:4], final[:4]))
    assert not any(torch.equal(b, a) for b, a in zip(before[4:], final[4:]))
    record = result.history[0]
    assert record["inmerge_rate"] == pytest.approx(1.0)
    assert record["inmerge_merged"] == {name: 2 * conv.weight.shape[0] for name, conv in mergeable_convs(model)[4:]}
    weights = conv_weights(model)
    evaluate(model, data, "val")
    evaluate(model, data, "test")
    assert all(torch.equal(a, b) for a, b in zip(weights, conv_weights(model)))


def test_first_layer_beyond_the_model_is_an_error():
    with pytest.raises(ValueError, match="only 6 conv layers"):
        fit(create_model("smallcnn", 2), tiny_data(), probe_config(epochs=1), [InMerge(first_layer=10)],
            progress=False)


def test_quantile_thresholds_are_each_layers_own_similarity_quantiles():
    torch.manual_seed(0)
    layers = mergeable_convs(create_model("smallcnn", 2))
    taus = quantile_taus(layers, 2, 0.9)
    assert len(taus) == len(layers) - 2
    for (_, conv), tau in zip(layers[2:], taus):
        sims = off_diagonal(pairwise_cosine(conv.weight.detach()))
        assert tau == pytest.approx(float(torch.quantile(sims.double(), 0.9)))
        assert float((sims > tau).double().mean()) == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError, match="tau_quantile"):
        quantile_taus(layers, 2, 1.5)
    with pytest.raises(ValueError, match="tau_quantile"):
        InMerge(tau_quantile=-0.1)
    with pytest.raises(ValueError, match="2 thresholds for 4 merged layers"):
        merge_layers(layers, 2, tau=[0.1, 0.2], generator=gen())


def test_a_median_threshold_merges_about_half_of_the_drawn_pairs_in_every_layer():
    torch.manual_seed(0)
    model, data = create_model("smallcnn", 2), tiny_data()
    merge = InMerge(alpha=0.8, first_layer=2, p=1.0, tau_quantile=0.5, seed=0)
    record = fit(model, data, probe_config(epochs=1), [merge], progress=False).history[0]
    assert set(record["inmerge_tau"]) == {name for name, _ in mergeable_convs(model)[2:]}
    assert 0.35 < record["inmerge_rate"] < 0.65  # pairs drawn at random: about half pass a median threshold
    fixed = InMerge(alpha=0.8, first_layer=2, p=1.0, tau=0.3, seed=0)
    torch.manual_seed(0)
    assert fit(create_model("smallcnn", 2), data, probe_config(epochs=1), [fixed],
               progress=False).history[0]["inmerge_rate"] < 0.05  # a from-scratch smallcnn: nearly orthogonal kernels


@pytest.mark.parametrize("threshold", [dict(tau=-0.5), dict(tau_quantile=0.7)])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, threshold):
    config = TrainConfig(epochs=3, batch_size=32, augment="minimal", seed=0, device="cpu", restore_best=False)
    data = tiny_data()
    params = dict(alpha=0.8, first_layer=2, p=0.5, seed=7, **threshold)

    torch.manual_seed(0)
    whole = create_model("smallcnn", 2)
    fit(whole, data, config, [InMerge(**params)], checkpoint=tmp_path / "a", progress=False)

    torch.manual_seed(0)
    broken = create_model("smallcnn", 2)
    with pytest.raises(KeyboardInterrupt):
        fit(broken, data, config, [InMerge(**params), StopAfter(2)], checkpoint=tmp_path / "b", progress=False)
    torch.manual_seed(0)
    resumed = create_model("smallcnn", 2)
    result = fit(resumed, data, config, [InMerge(**params)], checkpoint=tmp_path / "b", progress=False)
    assert len(result.history) == 3
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


class DepthwiseNet(nn.Module):
    """A tiny network with a full, a depthwise and a pointwise convolution (in that forward order)."""

    def __init__(self):
        super().__init__()
        self.full = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.pointwise(self.depthwise(self.full(x))).mean((2, 3)))

    def get_classifier(self):
        return self.head


def test_layer_kinds_split_depthwise_from_pointwise_and_full_convolutions():
    net = DepthwiseNet()
    assert [layer_kind(conv) for _, conv in mergeable_convs(net)] == ["other", "depthwise", "other"]
    assert layer_kind(nn.Conv2d(8, 8, 3, groups=2)) == "other"  # grouped, not depthwise
    sims = similarities_by_kind(mergeable_convs(net))
    assert set(sims) == {"depthwise", "other"}
    assert sims["depthwise"].size == 8 * 7 // 2 and sims["other"].size == 8 * 7 // 2 + 6 * 5 // 2
    table = kind_summary({"all": sims}, 0.3)
    assert list(table["kind"]) == ["depthwise", "other"] and (table["above_tau"].between(0, 1)).all()


def test_callback_counts_draws_selections_and_merges_per_layer_kind():
    torch.manual_seed(0)
    net, data = DepthwiseNet(), tiny_data()
    with torch.no_grad():  # every depthwise kernel the same filter: all its pairs have similarity 1
        net.depthwise.weight.copy_(torch.randn(1, 1, 3, 3).expand(8, 1, 3, 3))
    merge = InMerge(alpha=0.8, first_layer=1, p=0.5, tau=0.99, seed=0)
    record = fit(net, data, probe_config(epochs=1), [merge], progress=False).history[0]
    steps = 2  # 64 images at batch 32
    kinds = record["inmerge_by_kind"]
    assert kinds["depthwise"]["draws"] == steps * 8 and kinds["other"]["draws"] == steps * 6
    assert 0 < kinds["depthwise"]["selected"] < steps * 8 and 0 < kinds["other"]["selected"] < steps * 6
    assert kinds["depthwise"]["merged"] == kinds["depthwise"]["selected"]  # identical kernels always pass
    assert kinds["other"]["merged"] == 0  # random pointwise kernels never reach similarity 0.99
    assert record["inmerge_merged"] == {"depthwise": kinds["depthwise"]["merged"], "pointwise": 0}
    assert record["inmerge_rate"] == pytest.approx(kinds["depthwise"]["merged"] / (steps * 14))
