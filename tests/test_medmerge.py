"""MedMerge: the merge equation's endpoints, gradients only where intended, baking, bad pairs,
and the LP -> FT chain through the run layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsoup.chapters import inmerge, medmerge as mr
from medsoup.core.checkpoint import save_checkpoint
from medsoup.core.models import classifier_keys, create_model
from medsoup.core.train import fit
from medsoup.merging import medmerge as mm
from medsoup.runs import builders
from medsoup.runs.profiles import settings
from medsoup.runs.store import RunConfig, build_model, run
from tests.conftest import TINY_TRAIN, tiny

ARCH = {"name": "smallcnn", "num_classes": 3, "in_chans": 3, "img_size": 28}


def trained_like(num_classes: int, seed: int) -> nn.Module:
    """A smallcnn with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = create_model("smallcnn", num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(), m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def pair():
    return trained_like(2, 1), trained_like(5, 2)


def merged_model(pair, **options) -> mm.MedMergeModel:
    b, c = pair
    torch.manual_seed(0)
    return mm.MedMergeModel(create_model("smallcnn", 3), b.state_dict(), c.state_dict(), ARCH, **options)


def test_mix_kernels_endpoints_and_broadcast():
    kb, kc = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    assert torch.equal(mm.mix_kernels(torch.ones(4), kb, kc), kb)
    assert torch.equal(mm.mix_kernels(torch.zeros(4), kb, kc), kc)
    w = torch.tensor([0.0, 0.25, 0.5, 1.0])
    expected = torch.stack([w[j] * kb[j] + (1 - w[j]) * kc[j] for j in range(4)])
    assert torch.allclose(mm.mix_kernels(w, kb, kc), expected)
    assert torch.allclose(mm.mix_kernels(torch.full_like(kb, 0.25), kb, kc), 0.25 * kb + 0.75 * kc)
    with pytest.raises(ValueError, match="fits neither"):
        mm.mix_kernels(torch.ones(3), kb, kc)


@pytest.mark.parametrize("parametrisation", mm.PARAMETRISATIONS)
def test_parametrisations_start_at_half_and_stay_in_unit_interval(parametrisation):
    assert float(mm.weight_values(torch.zeros(()), parametrisation)) == 0.5
    w = mm.weight_values(torch.linspace(-50, 50, 101), parametrisation)
    assert w.min() >= 0 and w.max() <= 1
    back = mm.weight_values(mm.raw_values(torch.tensor([0.0, 0.3, 1.0]), parametrisation), parametrisation)
    assert torch.equal(back, torch.tensor([0.0, 0.3, 1.0]))
    with pytest.raises(ValueError, match="unknown parametrisation"):
        mm.weight_values(torch.zeros(1), "tanh")


@pytest.mark.parametrize("parametrisation", mm.PARAMETRISATIONS)
@pytest.mark.parametrize("level", mm.MERGE_LEVELS)
def test_w_one_gives_source_b_and_w_zero_gives_source_c(pair, parametrisation, level):
    x = torch.randn(6, 3, 28, 28)
    model = merged_model(pair, parametrisation=parametrisation, level=level).eval()
    for w, source in ((1.0, pair[0]), (0.0, pair[1])):
        model.set_weights(w)
        merged = model.merged_tensors()
        for key, tensor in merged.items():
            assert torch.equal(tensor, source.state_dict()[key]), key
        # with the source's own BatchNorm and head, the merged model *is* the source
        reference = trained_like(3, 0)
        own = {k: v for k, v in source.state_dict().items() if k not in classifier_keys(source)}
        reference.load_state_dict({**reference.state_dict(), **own})
        model.template.load_state_dict({k: v for k, v in reference.state_dict().items() if k not in merged},
                                       strict=False)
        assert torch.equal(model(x), reference(x))


def test_batchnorm_starts_as_mean_of_sources_and_head_is_new(pair):
    model = merged_model(pair)
    b, c = (p.state_dict() for p in pair)
    state = model.template.state_dict()
    for key in ("features.1.weight", "features.1.running_var", "features.18.bias"):
        assert torch.allclose(state[key], (b[key] + c[key]) / 2)
    assert state["head.weight"].shape == (3, 128)
    assert all(float(w.mean()) == 0.5 for w in model.weights().values())
    assert len(model.weights()) == 6 and model.weights()["features.0"].shape == (32,)


def test_only_w_batchnorm_and_head_get_gradients(pair):
    model = merged_model(pair).train()
    names = {n for n, _ in model.named_parameters()}
    assert names == ({f"w.{i}" for i in range(6)} | {f"template.features.{i}.{p}" for i in (1, 4, 8, 11, 15, 18)
                                                    for p in ("weight", "bias")} | {"template.head.weight", "template.head.bias"})
    assert not any("source" in n for n, _ in model.named_parameters())
    assert all(not b.requires_grad for n, b in model.named_buffers() if "source" in n)
    assert not any("source" in k for k in model.state_dict())  # sources are not checkpointed
    model(torch.randn(4, 3, 28, 28)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(b.grad is None for b in model.buffers())
    assert all(not isinstance(m, nn.Conv2d) or m.weight is None for m in model.modules())


def test_frozen_batchnorm_gets_no_gradient_and_keeps_statistics(pair):
    model = merged_model(pair, bn_trainable=False).train()
    before = {k: v.clone() for k, v in model.template.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"w.{i}" for i in range(6)} | {"template.head.weight", "template.head.bias"}
    model(torch.randn(4, 3, 28, 28)).sum().backward()
    assert all(torch.equal(v, model.template.state_dict()[k]) for k, v in before.items())


def test_parameter_level_has_one_w_per_weight_entry(pair):
    model = merged_model(pair, level="parameter")
    assert [tuple(w.shape) for w in model.w][:2] == [(32, 3, 3, 3), (32, 32, 3, 3)]


def test_baked_model_equals_merged_model(pair):
    model = merged_model(pair)
    with torch.no_grad():
        for raw in model.w:
            raw.normal_()
    x = torch.randn(8, 3, 28, 28)
    model.eval()
    baked = mm.bake(model).eval()
    assert type(baked) is type(pair[0]) and set(baked.state_dict()) == set(create_model("smallcnn", 3).state_dict())
    assert torch.allclose(baked(x), model(x), atol=1e-6)
    # and w can be read back from the baked kernels alone
    recovered = mm.recover_weights(baked.state_dict(), pair[0].state_dict(), pair[1].state_dict(), model.groups)
    for name, w in model.weights().items():
        assert torch.allclose(recovered[name], w, atol=1e-4)


def test_bad_pairs_name_the_first_mismatched_key(pair):
    b = pair[0].state_dict()
    other = create_model("smallcnn", 2, in_chans=1).state_dict()
    with pytest.raises(mm.IncompatibleSourcesError, match=r"'features\.0\.weight'.*\(32, 3, 3, 3\).*\(32, 1, 3, 3\)"):
        mm.check_pair(b, other)
    renamed = {("body." + k if k.startswith("features.4") else k): v for k, v in b.items()}
    with pytest.raises(mm.IncompatibleSourcesError, match=r"first mismatched key 'features\.4\.weight'"):
        mm.check_pair(b, renamed)
    resnet = create_model("resnet18", 2).state_dict()
    with pytest.raises(mm.IncompatibleSourcesError, match="first mismatched key 'features.0.weight'"):
        mm.MedMergeModel(create_model("smallcnn", 3), b, resnet, ARCH)
    # heads of different class counts are fine; a source that does not fit the target is not
    mm.check_pair(b, pair[1].state_dict(), ignore=("head.weight", "head.bias"))
    with pytest.raises(mm.IncompatibleSourcesError, match="target architecture"):
        mm.MedMergeModel(create_model("smallcnn", 3, in_chans=1), b, pair[1].state_dict(), ARCH)


def test_zeros_source_keeps_batchnorm_and_zeroes_kernels(pair):
    b = pair[0].state_dict()
    keys = [k for group in mm.merged_keys(pair[0]).values() for k in group]
    zeros = mm.zeroed_kernels(b, keys)
    assert all(zeros[k].abs().sum() == 0 for k in keys)
    assert torch.equal(zeros["features.1.running_mean"], b["features.1.running_mean"])


def test_fit_trains_w_and_leaves_sources_untouched(pair):
    data = tiny("breastmnist")
    model = merged_model(pair)
    model.template.reset_classifier(data.num_classes)
    sources = {n: b.clone() for n, b in model.named_buffers() if "source" in n}
    fit(model, data, TINY_TRAIN.replace(epochs=1, lr=1e-1, restore_best=False), progress=False)
    assert any(float((w - 0.5).abs().max()) > 0 for w in model.weights().values())
    assert all(torch.equal(b, sources[n]) for n, b in model.named_buffers() if "source" in n)
    assert all(p.requires_grad for p in model.parameters())


def test_builder_lp_then_ft_through_the_run_layer(run_cache):
    # The smoke settings on a smallcnn (two sources trained from scratch) so that the whole chain runs in seconds.
    s = dict(mr.MEDMERGE["smoke"], model="smallcnn", train_subset=32, batch_size=16, lp_epochs=1, ft_epochs=1,
             sources={"breastmnist": ("pneumoniamnist", "retinamnist")},
             source_recipe=dict(mr.MEDMERGE["smoke"]["source_recipe"], epochs=1, train_subset=32, init=None))
    final = mr.medmerge_run(s, "breastmnist", seed=0)
    lp = final.init
    assert lp.builder == "medmerge" and isinstance(lp.builder_params["source_b"], RunConfig)
    # the new head does not depend on whether the sources were cached (first call trains them)
    data = tiny("breastmnist")
    first, second = build_model(lp, data), build_model(lp, data)
    assert torch.equal(first.get_classifier().weight, second.get_classifier().weight)
    result = run(final, progress=False)
    assert 0 <= result.test["acc"] <= 1
    # the stored LP model is the baked plain model: one backbone, w recoverable from its kernels
    assert type(run(lp, progress=False).load_model()).__name__ == "SmallCNN"
    assert lp.builder_params["w_scale"] == s["w_scale"]
    w = mr.learnt_weights(s, "breastmnist", seed=0)
    # (NaN marks kernels identical in both sources: after one epoch from one shared init, dead ones)
    known = torch.cat([v[~v.isnan()] for v in w.values()])
    assert len(w) == 6 and len(known) > 400 and known.min() >= -1e-3 and known.max() <= 1 + 1e-3
    rows = mr.feature_map_rows(s, "breastmnist", 0, torch.randn(3, 28, 28))
    assert list(rows) == ["source b: pneumoniamnist", "source c: retinamnist", "MedMerge (merged, LP)"]
    assert [tuple(m.shape) for m in rows["MedMerge (merged, LP)"].values()] == [(32, 28, 28), (128, 7, 7)]


@pytest.mark.parametrize("parametrisation", mm.PARAMETRISATIONS)
def test_w_scale_keeps_the_merge_and_inverts(parametrisation):
    raw = torch.linspace(-0.01, 0.01, 5)
    assert torch.allclose(mm.weight_values(raw, parametrisation, 100.0), mm.weight_values(100 * raw, parametrisation))
    w = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(mm.weight_values(mm.raw_values(w, parametrisation, 50.0), parametrisation, 50.0), w)
    with pytest.raises(ValueError, match="w_scale must be positive"):
        merged_model((trained_like(2, 1), trained_like(5, 2)), w_scale=0.0)


def test_w_moves_with_w_scale_and_not_without(pair):
    """A few Adam steps at lr 1e-3 move raw w by about 1e-3 each: w stays within 0.005 of 0.5 at w_scale 1,
    and moves by more than 0.05 somewhere at w_scale 100 (a short LP stage, as in the cpu profile)."""
    data = tiny("breastmnist", n=64)
    shift = {}
    for scale in (1.0, 100.0):
        model = merged_model(pair, w_scale=scale)
        model.template.reset_classifier(data.num_classes)
        fit(model, data, TINY_TRAIN.replace(epochs=2, lr=1e-3, weight_decay=0.0, restore_best=False), progress=False)
        shift[scale] = max(float((w - 0.5).abs().max()) for w in model.weights().values())
    assert shift[1.0] < 0.005
    assert shift[100.0] > 0.05


def test_builder_passes_w_scale(run_cache):
    b, c = trained_like(2, 1), trained_like(5, 2)
    paths = [str(save_checkpoint(run_cache / name, model.state_dict(), {"architecture": ARCH}))
             for name, model in (("b", b), ("c", c))]
    config = RunConfig(dataset="breastmnist", builder="medmerge",
                       builder_params={"source_b": paths[0], "source_c": paths[1], "w_scale": 30.0})
    assert builders.MedMergeBuilder.build(config, tiny("breastmnist")).w_scale == 30.0


def test_cpu_profile_merges_imagenet_with_a_medical_lite0_and_lets_w_move():
    s = mr.MEDMERGE["cpu"]
    assert s["model"] == "tf_efficientnet_lite0" and len(s["seeds"]) >= 5 and s["train_subset"] is None
    for target in s["targets"]:
        b, c = s["sources"][target]
        assert b == "imagenet" and c not in s["targets"]
        source = mr.source_config(s, c)
        assert source.init == "imagenet" and source.model == s["model"] and source.train.seed == 0
        # source c trained to convergence: the full PneumoniaMNIST split, the recipe study's arm at the target's size
        assert source.dataset == "pneumoniamnist" and source.train_subset is None
        assert (source.size, source.file_size) == (s["size"], 28) == (64, 28)
        assert (source.train.epochs, source.train.lr, source.train.weight_decay, source.train.batch_size,
                source.train.schedule, source.train.augment) == (3, 1e-3, 1e-4, 64, "multistep", "medium")
        # FT from ImageNet is the InMerge chapter's backbone: the same run, trained once
        backbone = inmerge.backbone_run(settings(inmerge.INMERGE, "cpu"), target, 0)
        assert mr.ft_run(s, target, "imagenet", 0) == backbone
        assert mr.medmerge_lp_run(s, target, 0).builder_params["w_scale"] == s["w_scale"]
        assert mr.w_bound(s, target, 1.0) < 0.005 < 0.2 < mr.w_bound(s, target)
    assert [a for a, _, _ in mr.approaches(s, "breastmnist", 0)] == ["FT", "FT", "LP-FT", "LP-FT", "MedMerge",
                                                                  *mr.CONTROLS]
    assert s["ablation_seeds"] == (0, 1, 2) and set(s["ablation_ft"]) <= set(mr.ABLATIONS)
    assert list(mr.ablations(s, "breastmnist")) == list(mr.ABLATIONS)


def test_plain_sigmoid_ablation_is_the_default_where_w_scale_is_one():
    s = mr.MEDMERGE["paper"]
    assert "w_scale" not in mr.medmerge_lp_run(s, "pneumoniamnist", 0).builder_params
    assert "w_scale 1 (plain sigmoid)" not in mr.ablations(s, "pneumoniamnist")
    assert mr.medmerge_lp_run(s, "pneumoniamnist", 0, w_scale=1.0) == mr.medmerge_lp_run(s, "pneumoniamnist", 0)


def test_w_shift_is_per_seed_and_source_distance_is_relative():
    per_seed = [{"l": torch.tensor([0.6, 0.4, float("nan")])}, {"l": torch.tensor([0.4, 0.6, 0.5])}]
    assert mr.w_shift(per_seed) == pytest.approx({"l": (0.1 + (0.2 / 3)) / 2})
    assert mr.mean_learnt_weights(per_seed)["l"].tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_builder_rejects_unknown_options():
    config = RunConfig(dataset="breastmnist", builder="medmerge", builder_params={"source_b": "imagenet"})
    with pytest.raises(ValueError, match="missing \\['source_c'\\]"):
        builders.MedMergeBuilder.build(config, tiny("breastmnist"))
    config = config.replace(builder_params={"source_b": "x", "source_c": "y", "mix": 1})
    with pytest.raises(ValueError, match="unknown \\['mix'\\]"):
        builders.MedMergeBuilder.build(config, tiny("breastmnist"))


def test_paired_table_and_verdict_follow_the_numbers():
    import pandas as pd

    from medsoup.chapters import tables

    table = pd.DataFrame([tables.row("MedMerge", method, "baseline", "t", seed, {"f1": v}, approach=a, source="s")
                          for a, method, values in (("FT", "FT (s)", (0.5, 0.6, 0.55)), ("MedMerge", "MedMerge", (0.6, 0.7, 0.66)))
                          for seed, v in enumerate(values)])
    paired = tables.paired(table, tables.against_all(table, "MedMerge"), "f1")
    assert len(paired) == 1 and paired.difference[0] == pytest.approx(0.1033, abs=1e-3)
    text = tables.verdict(paired)
    assert paired.outcome[0] == "better"
    assert text.startswith("On t, MedMerge is better than FT (s) in test F1: +0.103 (95% CI [") and "n=3" in text


def test_method_names_say_which_source():
    s = {"sources": {"t": ("b-set", "c-set")}}
    assert [mr.method_name(s, "t", a, src) for a, src in (("FT", "scratch"), ("FT", "c-set"), ("LP-FT", "b-set"),
                                                          ("MedMerge", "b-set+c-set"))] == \
        ["FT (scratch)", "FT (source c)", "LP-FT (source b)", "MedMerge"]


def test_w_agreement_compares_favoured_source_with_better_ft():
    import pandas as pd

    s = {"sources": {"t": ("b", "c")}}
    table = pd.DataFrame([{"dataset": "t", "approach": "FT", "source": src, "seed": 0, "f1": f1}
                          for src, f1 in (("b", 0.7), ("c", 0.6))])
    assert mr.w_agrees_with_ft(s, table, {"t": [0.6, 0.7]}) == {"t": True}
    assert mr.w_agrees_with_ft(s, table, {"t": [0.4, 0.3]}) == {"t": False}


def test_fixed_w_control_keeps_the_plain_average_through_lp(pair):
    """w_trainable=False: w gets no gradient and stays at 0.5, so the baked kernels are (K_b + K_c) / 2."""
    data = tiny("breastmnist")
    model = merged_model(pair, w_trainable=False)
    model.template.reset_classifier(data.num_classes)
    assert {n for n, p in model.named_parameters() if p.requires_grad}.isdisjoint({f"w.{i}" for i in range(6)})
    fit(model, data, TINY_TRAIN.replace(epochs=1, restore_best=False), progress=False)
    assert all(torch.equal(w, torch.full_like(w, 0.5)) for w in model.weights().values())
    b, c = (p.state_dict() for p in pair)
    baked = mm.baked_state(model)
    for key in [k for group in model.groups.values() for k in group]:
        assert torch.allclose(baked[key], (b[key] + c[key]) / 2, atol=1e-7), key


@pytest.mark.parametrize("bn_source", ["b", "c"])
def test_batchnorm_from_one_source_keeps_the_merged_kernels(pair, bn_source):
    model = merged_model(pair, bn_source=bn_source)
    source = dict(zip("bc", (p.state_dict() for p in pair)))[bn_source]
    state = model.template.state_dict()
    for key in ("features.1.weight", "features.1.running_var", "features.18.bias", "features.4.num_batches_tracked"):
        assert torch.equal(state[key], source[key]), key
    kernels = model.merged_tensors()["features.0.weight"]
    assert torch.equal(kernels, merged_model(pair).merged_tensors()["features.0.weight"])
    with pytest.raises(ValueError, match="unknown bn_source 'a'; valid: mean, b, c"):
        merged_model(pair, bn_source="a")


def test_zeros_merge_needs_frozen_batchnorm_for_w_to_matter(pair):
    """Source c zeros: a merged kernel is w_j K_j(b), a per-channel scale. Trainable BatchNorm in training
    mode divides it out (w gets next to no gradient); frozen BatchNorm (eval mode) keeps it."""
    b = pair[0].state_dict()
    zeros = mm.zeroed_kernels(b, [k for group in mm.merged_keys(pair[0]).values() for k in group])
    x, y = torch.randn(16, 3, 28, 28), torch.randint(0, 3, (16,))
    grads = {}
    for trainable in (True, False):
        torch.manual_seed(0)
        model = mm.MedMergeModel(create_model("smallcnn", 3), b, zeros, ARCH, bn_trainable=trainable).train()
        nn.functional.cross_entropy(model(x), y).backward()
        grads[trainable] = sum(float(w.grad.abs().sum()) for w in model.w)
    assert grads[False] > 100 * grads[True]  # (not 0: BatchNorm's eps keeps a trace of the scale)


def test_builder_passes_the_controls(run_cache):
    b, c = trained_like(2, 1), trained_like(5, 2)
    paths = [str(save_checkpoint(run_cache / name, model.state_dict(), {"architecture": ARCH}))
             for name, model in (("b", b), ("c", c))]
    config = RunConfig(dataset="breastmnist", builder="medmerge",
                       builder_params={"source_b": paths[0], "source_c": paths[1], "w_trainable": False,
                                       "bn_source": "c"})
    model = builders.MedMergeBuilder.build(config, tiny("breastmnist"))
    assert not any(w.requires_grad for w in model.w)
    key = "features.1.running_mean"
    assert torch.equal(model.template.state_dict()[key], c.state_dict()[key])


def test_controls_change_one_builder_option_of_medmerge_and_smoke_keeps_a_small_source():
    s = mr.MEDMERGE["cpu"]
    rows = {a: config for a, _, config in mr.approaches(s, "breastmnist", 0)}
    medmerge = rows["MedMerge"]
    fixed, own_bn = rows["MedMerge, w fixed at 0.5"], rows["MedMerge, BN of source c"]
    for control, option in ((fixed, {"w_trainable": False}), (own_bn, {"bn_source": "c"})):
        assert control.train == medmerge.train and control.init.train == medmerge.init.train
        assert control.init.builder_params == {**medmerge.init.builder_params, **option}
    assert mr.method_name(s, "breastmnist", "MedMerge, BN of source c", "imagenet+pneumoniamnist") == \
        "MedMerge, BN of source c"
    # merging with zeros runs with BatchNorm frozen (trainable BatchNorm divides a per-channel scale out)
    assert mr.ABLATIONS["source b + zeros"] == {"source_c": "zeros", "bn_trainable": False}
    smoke = mr.source_config(mr.MEDMERGE["smoke"], "retinamnist")
    assert smoke.train_subset == 64 and smoke.train.epochs == 1


def test_alignment_note_says_when_align_then_average_is_the_half_weight_control(monkeypatch):
    s = dict(mr.MEDMERGE["cpu"], targets=("breastmnist",))
    monkeypatch.setattr(mr, "alignment_shift", lambda s, target: 0.0)
    assert "is align-then-average as well" in mr.alignment_note(s)
    monkeypatch.setattr(mr, "alignment_shift", lambda s, target: 0.125)
    note = mr.alignment_note(s)
    assert "12.5% on breastmnist" in note and "does not run it" in note
