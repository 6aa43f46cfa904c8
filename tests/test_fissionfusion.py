"""The chapter's experiment: summaries and verdicts over seeds; the whole pipeline on a tiny zoo."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medsoup.chapters import fissionfusion as ff, fissionfusion_soups as soups
from medsoup.chapters import tables
from medsoup.chapters.fissionfusion import FISSIONFUSION
from medsoup.chapters.fissionfusion_ensembles import ensembles
from medsoup.core.bn import evaluate_state, train_images
from medsoup.core.corruptions import corrupted
from medsoup.core.data import load_dataset
from medsoup.core.metrics import probability_metrics
from medsoup.core.models import create_model
from medsoup.figures.fissionfusion import curve_band, lmc_bands
from medsoup.merging.landscape import LMCCurve
from medsoup.runs.profiles import settings
from tests.conftest import real_file


def _rows():
    results, rows = {}, []
    for seed, (a, b) in enumerate([(0.70, 0.75), (0.72, 0.78), (0.71, 0.74)]):
        results = {m: soups.MethodResult({}, {"f1": v + 0.01}, {"f1": v}, 0, 1) for m, v in (("Greedy soup", a), ("GoG", b))}
        ood = {m: {"noise": {"f1": r.test["f1"] - 0.1}, "blur": {"f1": r.test["f1"] - 0.2}} for m, r in results.items()}
        rows += soups.long_rows("retinamnist", seed, False, results, ood)
    return pd.DataFrame(rows)


def test_long_rows_summary_and_verdict():
    rows = _rows()
    gog = tables.select(rows, "GoG")
    assert gog["f1"].tolist() == [0.75, 0.78, 0.74] and gog["role"].tolist() == ["method"] * 3
    assert gog["ood_f1"].tolist() == pytest.approx([0.60, 0.63, 0.59])
    assert gog["val_f1"].tolist() == pytest.approx([0.76, 0.79, 0.75])
    table = tables.summary_table(rows, {"retinamnist": "f1"})
    assert table.loc["GoG", "retinamnist"] == "0.757 ± 0.021 (n=3)"
    assert tables.summary_table(rows, ff.OOD_METRIC).loc["GoG", "retinamnist"] == "0.607 ± 0.021 (n=3)"
    sentence = tables.verdict(tables.paired(rows, [("GoG", "Greedy soup")], {"retinamnist": "f1"}))
    assert sentence.startswith("On retinamnist, GoG is better than Greedy soup in test F1")
    one = rows[rows["seed"] == 0]
    assert "on one seed, too few to test" in tables.verdict(tables.paired(one, [("GoG", "Greedy soup")], "f1"))


def test_barrier_rows_keep_the_numbers():
    barriers = [{"dataset": "d", "pair differs in": "seed", "BN": "BN recomputed", "barrier (f1)": 0.02,
                 "barrier (loss)": 0.005}]
    (row,) = ff.barrier_rows(barriers, 3)
    assert row["method"] == "interpolation, only seed differs" and row["seed"] == 3 and row["recalibrate"]
    assert row["split"] == ff.LANDSCAPE_SPLIT == "val"
    assert (row["barrier_metric"], row["barrier"], row["barrier_loss"]) == ("f1", 0.02, 0.005)


def test_barrier_rows_take_each_records_seed():
    barriers = [{"dataset": "d", "seed": s, "pair differs in": "learning rate", "BN": "BN recomputed",
                 "barrier (f1)": 0.1 * s, "barrier (loss)": 0.01 * s} for s in (0, 1)]
    rows = ff.barrier_rows(barriers)
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["method"] == ff.interpolation("learning rate")
    aligned = ff.barrier_rows([dict(barriers[0], aligned=True)])[0]["method"]
    assert aligned == ff.interpolation("learning rate", aligned=True) != rows[0]["method"]


def _states(*values):
    return [{"w": torch.tensor([float(v)])} for v in values]


def _score(state):  # best at w = 1
    return -abs(float(state["w"]) - 1.0)


def _result(souped):
    state, evaluations, weights = souped
    return soups.MethodResult(state, {}, {}, evaluations, len(weights), None, weights)


def test_soups_name_their_ingredients_and_weights():
    groups = [_states(0.9, 1.3, 0.5), _states(-2.0, -3.0)]
    labels = [["a0", "a1", "a2"], ["b0", "b1"]]
    scores = [[_score(x) for x in g] for g in groups]
    flat = soups.Pool([x for g in groups for x in g], [v for g in scores for v in g], [n for g in labels for n in g])
    nested = soups.Pool(groups, scores, labels)
    best = _result(soups.best_of(flat, _score))
    assert best.weights == {"a0": 1.0}
    uniform = _result(soups.uniform_of(flat, _score))
    assert uniform.weights == {n: 0.2 for n in ("a0", "a1", "a2", "b0", "b1")}
    greedy = _result(soups.greedy_of(flat, _score))
    assert greedy.weights == {"a0": 0.5, "a1": 0.5} and float(greedy.state["w"]) == pytest.approx(1.1)
    gog = _result(soups.hierarchical_of("greedy", nested, _score))
    assert gog.weights == {"a0": 0.5, "a1": 0.5} and soups.same_soup(gog, greedy)  # group b never helps
    gou = _result(soups.hierarchical_of("uniform", nested, _score))
    assert gou.weights == pytest.approx({"a0": 1 / 3, "a1": 1 / 3, "a2": 1 / 3})
    assert not soups.same_soup(gou, greedy) and not soups.same_soup(best, greedy)


def test_curve_band_is_mean_and_std_over_seeds():
    curves = [LMCCurve([0.0, 0.5, 1.0], [{"f1": v, "loss": 1 - v} for v in values]) for values in ([0.5, 0.4, 0.6], [0.7, 0.2, 0.6])]
    lam, mean, std = curve_band(curves, "f1")
    assert lam.tolist() == [0.0, 0.5, 1.0] and mean == pytest.approx([0.6, 0.3, 0.6])
    assert std == pytest.approx([0.1414214, 0.1414214, 0.0])
    assert curve_band(curves[:1], "f1")[2].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="different lambdas"):
        curve_band([curves[0], LMCCurve([0.0, 1.0], [{"f1": 0.0, "loss": 1.0}, {"f1": 1.0, "loss": 0.0}])], "f1")
    figure = lmc_bands({"d": {"only seed": {"BN recomputed": curves}}}, {"d": "f1"})
    assert len(figure.axes) == 2


@pytest.mark.slow
@pytest.mark.skipif(real_file("breastmnist") is None or real_file("pneumoniamnist") is None,
                    reason="offline MedMNIST files not available")
def test_pipeline_on_a_tiny_zoo():
    s = settings(FISSIONFUSION, "smoke")  # a smallcnn from a stand-in pre-training: the pipeline, cheaply
    s.update(model="smallcnn", pretrain_epochs=1, train_subset=64, source_subset=128, epochs=1, lrs=(1e-3,),
             augments=("heavy",), fgg_augment="heavy", grid_seeds=1)
    zoo = ff.generate_zoo(s, "breastmnist", 0)
    assert len(zoo.grid) == 1 and zoo.base[0].key == zoo.grid[0].key
    assert zoo.compute()["FGG"]["models"] == 1 + s["fgg_snapshots"]
    data = load_dataset("breastmnist", train_subset=64)
    results = soups.soup_methods(zoo, data, "auc", recalibrate=True, bn_images=32)
    assert set(results) == set(soups.METHODS + soups.ABLATION)
    assert results["Uniform soup"].ingredients == 1 and results["FGG+Uniform"].ingredients == 1 + s["fgg_snapshots"]
    assert results["FGG+Uniform"].weights == {"lr 0.001 base": 1 / 3, "lr 0.001 snapshot 0": 1 / 3,
                                              "lr 0.001 snapshot 1": 1 / 3}
    assert all(abs(sum(r.weights.values()) - 1) < 1e-12 for r in results.values())
    assert soups.same_soup(results["GoG"], results["FGG+Greedy"])  # one group: the same greedy soup
    model = create_model("smallcnn", 2)
    ood = soups.ood_metrics(model, results, data, ("gaussian_noise",), 3, recalibrate=True)
    batches = train_images(data, model, max_images=32)
    rows = soups.long_rows("breastmnist", 0, True, results, ood)
    assert len(rows) == len(results) and rows[0]["ood_auc"] == ood[rows[0]["method"]]["gaussian_noise"]["auc"]
    per_corruption = soups.ood_rows("breastmnist", 0, True, ood)
    assert len(per_corruption) == len(results) and per_corruption[0]["corruption"] == "gaussian_noise"
    # the shared loads, recalibrations and corrupted sets change no number: the straightforward evaluation agrees
    shifted = corrupted(data, "gaussian_noise", 3)
    for name, result in results.items():
        for split in ("val", "test"):
            assert _same(getattr(result, split), evaluate_state(model, result.state, data, split, batches)), name
        assert _same(ood[name]["gaussian_noise"], evaluate_state(model, result.state, shifted, "test", batches)), name
    stored = soups.soup_methods(zoo, data, "auc", methods=("GoG",))
    plain = soups.ood_metrics(model, stored, data, ("gaussian_noise",), 3)
    assert _same(plain["GoG"]["gaussian_noise"], evaluate_state(model, stored["GoG"].state, shifted, "test"))
    # each method's per-image test predictions give its test metrics; SWA is the zoo's SWA run; the ensembles
    for name, result in results.items():
        probs, targets = result.predictions
        assert _same(probability_metrics(data.task, targets, probs), {k: v for k, v in result.test.items() if k != "loss"})
    swa = soups.soup_methods(zoo, data, "auc", methods=("SWA",))["SWA"]
    assert swa.ingredients == 1 and all(torch.equal(v, zoo.swa.load_state()[k]) for k, v in swa.state.items())
    assert swa.test == pytest.approx(zoo.swa.test, rel=1e-4)  # stored BN: the run's (CPU evaluation layout aside)
    members = ensembles(zoo, data.task)
    assert members["GS ensemble"].ingredients == 1 and members["FGG ensemble"].ingredients == 1 + s["fgg_snapshots"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (x != x and y != y) for x, y in ((a[k], b[k]) for k in a))
