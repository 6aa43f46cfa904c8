"""The chapter's experiment: summaries and verdicts over seeds; the whole pipeline on a tiny zoo."""

from __future__ import annotations

import pytest

from medsoup.chapters import fissionfusion as ff
from medsoup.chapters.fissionfusion import FISSIONFUSION
from medsoup.core.data import load_dataset
from medsoup.core.models import create_model
from medsoup.runs.profiles import settings
from tests.conftest import real_file


def _rows():
    rows = []
    for seed, (a, b) in enumerate([(0.70, 0.75), (0.72, 0.78), (0.71, 0.74)]):
        for method, value in (("Greedy soup", a), ("GoG", b)):
            rows.append({"dataset": "retinamnist", "seed": seed, "recalibrate": False, "method": method,
                         "test": {"f1": value}, "ood": {"noise": {"f1": value - 0.1}, "blur": {"f1": value - 0.2}}})
    return rows


def test_values_summary_and_verdict():
    rows = _rows()
    assert ff.values(rows, "retinamnist", "GoG", "f1") == [0.75, 0.78, 0.74]
    assert ff.values(rows, "retinamnist", "GoG", "f1", split="ood") == pytest.approx([0.60, 0.63, 0.59])
    table = ff.summary_table(rows, ["retinamnist"], ["Greedy soup", "GoG"], {"retinamnist": "f1"})
    assert table["GoG"]["retinamnist"] == "0.757 ± 0.021 (n=3)"
    sentence = ff.verdict(rows, "retinamnist", "Greedy soup", "GoG", "f1")
    assert sentence.startswith("on retinamnist, GoG is better than Greedy soup")
    one = [r for r in rows if r["seed"] == 0]
    assert "on one seed, too few to test" in ff.verdict(one, "retinamnist", "Greedy soup", "GoG", "f1")


@pytest.mark.slow
@pytest.mark.skipif(real_file("breastmnist") is None or real_file("pneumoniamnist") is None,
                    reason="offline MedMNIST files not available")
def test_pipeline_on_a_tiny_zoo():
    s = settings(FISSIONFUSION, "smoke")
    s.update(train_subset=64, source_subset=128, epochs=1, lrs=(1e-3,), augments=("heavy",), grid_seeds=1)
    zoo = ff.generate_zoo(s, "breastmnist", 0)
    assert len(zoo.grid) == 1 and zoo.base[0].key == zoo.grid[0].key
    assert zoo.compute()["FGG"]["models"] == 1 + s["fgg_snapshots"]
    data = load_dataset("breastmnist", train_subset=64)
    results = ff.soup_methods(zoo, data, "auc", recalibrate=True)
    assert set(results) == set(ff.METHODS + ff.ABLATION)
    assert results["Uniform soup"].ingredients == 1 and results["FGG+Uniform"].ingredients == 1 + s["fgg_snapshots"]
    model = create_model("smallcnn", 2)
    ood = ff.ood_metrics(model, results, data, ("gaussian_noise",), 3, recalibrate=True)
    rows = ff.records("breastmnist", 0, True, results, ood)
    assert len(rows) == len(results) and "gaussian_noise" in rows[0]["ood"]
