"""Notebook parameters: unknown names refused with the declared ones, values of the wrong kind named."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsoup.book import batch, build, execute
from medsoup.chapters.inmerge import INMERGE
from medsoup.runs.profiles import settings

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "00_quickstart.ipynb"
COMPARISON = ROOT / "notebooks" / "40_comparison.ipynb"


def test_declared_parameters_come_from_the_parameters_cell():
    assert execute.declared_parameters(QUICKSTART) == ("profile", "dataset", "model", "epochs", "seed")


def test_each_notebook_gets_only_the_parameters_it_declares():
    shares = execute.parameters_per_notebook([QUICKSTART, COMPARISON], {"profile": "smoke", "metric": "acc", "seed": 1})
    assert shares == {QUICKSTART: {"profile": "smoke", "seed": 1}, COMPARISON: {"profile": "smoke", "metric": "acc"}}


def test_a_misspelled_parameter_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) 'datset' for 00_quickstart; the parameters "
                                         "cells declare: dataset, epochs, model, profile, seed"):
        execute.parameters_per_notebook([QUICKSTART], {"profile": "smoke", "datset": "retinamnist"})


def test_the_book_cli_refuses_an_unknown_parameter_before_executing(capsys, monkeypatch):
    monkeypatch.setattr(execute, "run_papermill", lambda *a, **k: pytest.fail("nothing may run"))
    status = build.main(["execute", "--profile", "smoke", "--only", "00_quickstart", "-p", "datset", "retinamnist"])
    assert status == 1
    assert "unknown parameter(s) 'datset'" in capsys.readouterr().err


def test_batch_refuses_an_unknown_grid_or_fixed_parameter(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) 'seeds' for 00_quickstart.*seed"):
        batch.make_jobs(QUICKSTART, {"seeds": [0, 1]}, tmp_path)
    with pytest.raises(ValueError, match="'lr'"):
        batch.make_jobs(QUICKSTART, {"seed": [0]}, tmp_path, {"profile": "smoke", "lr": 0.1})
    assert batch.main([str(QUICKSTART), "-p", "datset", "retinamnist", "--out", str(tmp_path)]) == 2
    assert "unknown parameter(s) 'datset'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides,pattern", [
    ({"datasets": "breastmnist"}, r"setting datasets expects a list such as \('breastmnist',\), got 'breastmnist', "
                                  r"a string \(a list is written \['breastmnist'\]\)"),
    ({"seeds": 3}, "setting seeds expects a list .* got 3, a whole number"),
    ({"seeds": [0, "a"]}, r"setting seeds\[1\] expects a whole number such as 0, got 'a', a string"),
    ({"backbone_epochs": 2.5}, "setting backbone_epochs expects a whole number such as 1, got 2.5, a number"),
    ({"lr": "fast"}, "setting lr expects a number such as 0.001, got 'fast', a string"),
])
def test_settings_of_the_wrong_kind_are_named(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        settings(INMERGE, "smoke", **overrides)


def test_settings_of_the_right_kind_pass():
    s = settings(INMERGE, "smoke", datasets=["retinamnist"], seeds=(1,), lr=1, backbone_epochs=3)
    assert (s["datasets"], s["seeds"], s["lr"], s["backbone_epochs"]) == (["retinamnist"], (1,), 1, 3)


def test_batch_summary_is_written_atomically_and_never_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.csv"
    victim.write_text("keep")
    (tmp_path / "summary.csv.tmp").symlink_to(victim)  # the old fixed temporary name
    (tmp_path / "summary.csv").symlink_to(victim)
    csv_path, _ = batch.write_summary([{"seed": 0, "status": "ok"}], tmp_path)
    assert victim.read_text() == "keep"
    assert not csv_path.is_symlink() and csv_path.read_bytes() == b"seed,status\r\n0,ok\r\n"
