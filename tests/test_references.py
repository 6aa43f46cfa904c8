"""Reference lines (constant classifier, smallcnn recipe, MedMNIST v2) and arms set against them; the
baselines record in the results envelope."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from medsoup.chapters import baselines, collapse, references, tables
from medsoup.core import data as md
from medsoup.runs.results import ENVELOPE
from tests.conftest import real_file


def _data(name="breastmnist", size=28):
    arrays = md.synthetic_arrays(name, size, n_per_split=20, seed=0)
    arrays["train_labels"] = np.array([1] * 15 + [0] * 5).reshape(-1, 1)
    arrays["test_labels"] = np.array([1] * 12 + [0] * 8).reshape(-1, 1)
    return md.from_arrays(name, size, arrays)


def _record(path, **summary):
    """A baselines record with the per-dataset summaries only (what the reference lines read)."""
    path.write_text(json.dumps({"rows": [], "datasets": summary}))
    return path


@pytest.fixture
def lines(tmp_path, monkeypatch):
    monkeypatch.setattr(references, "load_dataset", lambda name, size: _data(name, size))
    smallcnn = {m: {"mean": v, "std": 0.01, "n": 3} for m, v in (("acc", 0.87), ("auc", 0.91), ("f1", 0.8))}
    return references.reference_lines(["breastmnist"], baselines=_record(tmp_path / "b.json", breastmnist=smallcnn))


def test_reference_lines_are_the_constant_classifier_the_recipe_and_the_published_numbers(lines):
    table = lines.set_index("reference")
    assert list(table.index) == list(references.LINES)
    constant = table.loc[references.CONSTANT]
    assert constant[["acc", "auc", "f1"]].tolist() == pytest.approx([0.6, 0.5, 0.375])  # 12 of 20 in class 1
    assert {k: constant[k] for k in ("acc", "auc", "f1")} == pytest.approx(collapse.majority_scores(_data()))
    assert table.loc[references.SMALLCNN, ["auc", "auc_std", "n"]].tolist() == [0.91, 0.01, 3]
    published = table.loc[references.PUBLISHED]
    assert (published["acc"], published["auc"]) == (baselines.PUBLISHED_RESNET18_28["breastmnist"]["acc"],
                                                    baselines.PUBLISHED_RESNET18_28["breastmnist"]["auc"])
    assert math.isnan(published["f1"])


def test_reference_lines_leave_out_what_is_not_there(tmp_path, monkeypatch):
    monkeypatch.setattr(references, "load_dataset", lambda name, size: _data(name, size))
    table = references.reference_lines(["breastmnist"], baselines=tmp_path / "absent.json")
    assert list(table["reference"]) == [references.CONSTANT, references.PUBLISHED]
    (tmp_path / "old.json").write_text(json.dumps({"recipe": {}}))
    with pytest.raises(ValueError, match="no 'datasets' summaries"):
        references.reference_lines(["breastmnist"], baselines=tmp_path / "old.json")
    with pytest.raises(ValueError, match="at least one dataset"):
        references.reference_lines([])


def test_against_references_gives_each_arms_margin_above_each_line(lines):
    rows = pd.DataFrame([tables.row("M", m, "method", "breastmnist", s, {"acc": acc, "auc": auc})
                         for m, values in (("A", ((0.6, 0.5), (0.6, 0.5), (0.7, 0.62))), ("B", ((0.9, 0.95), (0.8, 0.93))))
                         for s, (acc, auc) in enumerate(values)])
    table = references.against_references(rows, lines).set_index(["metric", "method"])
    a, b, mean = table.loc[("acc", "A")], table.loc[("auc", "B")], (0.6 + 0.6 + 0.7) / 3
    assert (a["seeds"], a["at constant"], a["mean"]) == (3, 2, pytest.approx(mean))
    assert a["− constant"] == pytest.approx(mean - 0.6)
    assert a["− smallcnn recipe"] == pytest.approx(mean - 0.87)
    assert b["− MedMNIST v2"] == pytest.approx(0.94 - baselines.PUBLISHED_RESNET18_28["breastmnist"]["auc"])
    assert b["at constant"] == 0
    f1 = references.against_references(rows.assign(f1=0.5), lines, metrics=("f1",)).iloc[0]
    assert math.isnan(f1["− MedMNIST v2"])  # MedMNIST v2 publishes no F1
    sentence = references.reference_sentence(table.reset_index(), "auc")
    assert sentence.startswith("On breastmnist, the best arm in test AUC, B (0.940), scores +0.440 against the constant "
                               "classifier (0.500), +0.030 against the smallcnn recipe (0.910), ")
    assert "1 of 2 arms score exactly the constant classifier's AUC" in sentence
    below = baselines.PUBLISHED_RESNET18_28["breastmnist"]["auc"] > 0.54  # A's mean AUC, under the published line
    assert sentence.endswith("in at least one seed. Below MedMNIST v2's ResNet-18 (28): A (0.540).") and below
    with pytest.raises(ValueError, match="no reference line for metric"):
        references.against_references(rows, lines, metrics=("loss",))


@pytest.mark.skipif(real_file("breastmnist") is None, reason="breastmnist.npz not available")
def test_baselines_record_is_a_results_envelope_the_reference_lines_read(tmp_path):
    out = tmp_path / "baselines.json"
    baselines.main(["--profile", "smoke", "--out", str(out)])
    record = json.loads(out.read_text())
    assert set(ENVELOPE) <= set(record) and record["profile"] == "smoke" and record["reference"]
    assert [(r["dataset"], r["seed"], r["role"]) for r in record["rows"]] == [("breastmnist", 0, "baseline")]
    entry = record["datasets"]["breastmnist"]
    assert entry["auc"]["mean"] == record["rows"][0]["auc"] and entry["auc"]["n"] == 1
    lines = references.reference_lines(["breastmnist"], baselines=out).set_index("reference")
    assert lines.loc[references.SMALLCNN, "auc"] == record["rows"][0]["auc"]


def test_the_committed_baselines_record_is_an_envelope_with_its_summaries():
    record = json.loads(references.BASELINES_FILE.read_text())
    assert set(ENVELOPE) <= set(record) and record["profile"] == "cpu"
    for dataset, entry in record["datasets"].items():
        aucs = [r["auc"] for r in record["rows"] if r["dataset"] == dataset]
        assert entry["auc"]["mean"] == pytest.approx(np.mean(aucs)) and entry["auc"]["n"] == len(aucs)
