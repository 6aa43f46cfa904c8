"""One writer for every notebook's results file: envelope, rows, encoder, and where it may write."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medsoup.runs import results
from medsoup.runs.profiles import settings

TABLE = {"smoke": {"datasets": ("breastmnist",), "seeds": (0,)}, "cpu": {"datasets": ("a", "b"), "seeds": (0, 1)},
         "paper": {"datasets": ("a",), "seeds": (0, 1, 2)}}
ROWS = [{"chapter": "C", "method": "m", "role": "method", "dataset": "a", "seed": 0, "acc": np.float32(0.5)}]


@pytest.fixture
def reference_run(monkeypatch):
    monkeypatch.setenv(results.REFERENCE_ENV, "1")


def test_envelope_rows_and_one_encoder(tmp_path, reference_run):
    s = settings(TABLE, "cpu")
    path = results.write_results("10_x", s, rows=pd.DataFrame(ROWS), root=tmp_path,
                                 table=pd.DataFrame({"x": [1, 2]}), curve=np.arange(3), w=torch.tensor([0.25]))
    assert path == tmp_path / "10_x" / "cpu.json"
    record = json.loads(path.read_text())
    assert list(record)[:7] == [*results.ENVELOPE, "rows"]
    assert record["profile"] == "cpu" and record["reference"] is True and record["overrides"] == {}
    assert record["settings"] == {"datasets": ["a", "b"], "seeds": [0, 1]}
    assert record["code_version"].count("+") == 1 and record["written"][:2] == "20"
    assert record["rows"] == [{**ROWS[0], "acc": 0.5}]
    assert (record["table"], record["curve"], record["w"]) == ([{"x": 1}, {"x": 2}], [0, 1, 2], [0.25])
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["cpu.json"]  # no temporary file left
    assert results.load_results("cpu", {"X": "10_x", "Y": "20_y"}, tmp_path) == {"X": record, "Y": None}


def test_bad_rows_payload_and_values_are_refused(tmp_path, reference_run):
    s = settings(TABLE, "cpu")
    with pytest.raises(ValueError, match="results row 0 lacks seed"):
        results.write_results("x", s, rows=[{k: v for k, v in ROWS[0].items() if k != "seed"}], root=tmp_path)
    with pytest.raises(ValueError, match="payload name\\(s\\) profile are envelope fields"):
        results.write_results("x", s, rows=ROWS, root=tmp_path, profile="cpu")
    with pytest.raises(TypeError, match="cannot write a object into a results file"):
        results.write_results("x", s, rows=ROWS, root=tmp_path, thing=object())
    assert not (tmp_path / "x" / "cpu.json").exists()
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "cpu.json").write_text("{not json")
    with pytest.raises(ValueError, match="y/cpu.json is not valid JSON"):
        results.load_results("cpu", {"Y": "y"}, tmp_path)


def test_only_the_reference_run_writes_the_reference_file(tmp_path, monkeypatch):
    """Issue 12 item 3: a run with changed parameters, or any run outside the book runner, never
    overwrites results/<stem>/<profile>.json."""
    reference = tmp_path / "00_q" / "cpu.json"
    monkeypatch.setenv(results.REFERENCE_ENV, "1")
    assert results.write_results("00_q", settings(TABLE, "cpu"), rows=ROWS, root=tmp_path) == reference
    before = reference.read_bytes()
    # the book runner with the profile's values given explicitly (papermill passes lists) is still the reference
    assert results.results_path("00_q", settings(TABLE, "cpu", seeds=[0, 1]), tmp_path) == reference
    # the README's example: -p profile cpu -p dataset breastmnist
    changed = settings(TABLE, "cpu", datasets=("breastmnist",))
    other = results.write_results("00_q", changed, rows=ROWS, root=tmp_path)
    assert other.parent == tmp_path / "tmp" / "00_q" and other.name.startswith("cpu-") and other.suffix == ".json"
    assert json.loads(other.read_text())["overrides"] == {"datasets": ["breastmnist"]}
    assert json.loads(other.read_text())["reference"] is False
    # another override gets another file; the same override the same file
    assert results.results_path("00_q", settings(TABLE, "cpu", datasets=("b",)), tmp_path) != other
    assert results.results_path("00_q", settings(TABLE, "cpu", datasets=["breastmnist"]), tmp_path) == other
    # outside the book runner (an interactive session, papermill by hand, a batch job): never the reference
    monkeypatch.delenv(results.REFERENCE_ENV)
    interactive = results.write_results("00_q", settings(TABLE, "cpu"), rows=ROWS, root=tmp_path)
    assert interactive.parent == tmp_path / "tmp" / "00_q"
    assert reference.read_bytes() == before


def test_the_book_runner_marks_its_executions_as_reference_runs(monkeypatch, tmp_path):
    from medsoup.book import execute

    seen = []
    monkeypatch.setattr(execute, "execute_into", lambda *a, **k: seen.append(__import__("os").environ.get(results.REFERENCE_ENV)))
    monkeypatch.setattr(execute, "record_timing", lambda *a, **k: None)
    monkeypatch.delenv(results.REFERENCE_ENV, raising=False)
    execute.execute_notebooks("smoke", only=["90_reproducibility"], out_dir=tmp_path, force=True)
    assert seen == ["1"] and results.REFERENCE_ENV not in __import__("os").environ


def test_every_folder_comes_from_the_project_root_in_a_kernel_started_in_notebooks():
    """What JupyterLab's kernel (working directory ``notebooks/``) reads and writes is the project's."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = """if True:
        import json
        from medsoup.chapters import comparison, reproducibility
        from medsoup.core import data
        from medsoup.runs import results, storage
        print(json.dumps({
            "folders": [str(results.RESULTS_DIR), str(data.DEFAULT_ROOT), str(storage.DEFAULT_CACHE)],
            "tmp": str(results.results_path("00_quickstart", {"profile": "cpu", "overrides": {"seed": 1}})),
            "chapters": sorted(k for k, v in comparison.chapter_results("cpu").items() if v is not None),
            "timed": sorted(reproducibility.timings("cpu")["notebook"]),
            "torch pin": reproducibility.versions_table().loc["torch", "pinned in constraints.txt"]}))
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "notebooks", capture_output=True, text=True,
                          check=True)
    seen = json.loads(done.stdout)
    assert seen["folders"] == [str(ROOT / "results"), str(ROOT / "data"), str(ROOT / "runs")]
    assert seen["tmp"].startswith(str(ROOT / "results" / "tmp" / "00_quickstart" / "cpu-"))
    committed = json.loads((ROOT / "results" / "timings" / "cpu.json").read_text())
    from medsoup.chapters.comparison import CHAPTERS
    assert seen["timed"] == sorted(committed) and seen["chapters"] == sorted(CHAPTERS)  # the committed files
    assert seen["torch pin"] != "-"
