"""Batch reruns: grid expansion, job names, glue scraping, summary, executors, cached reruns."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import pytest

from medsoup.book import batch

ROOT = Path(__file__).resolve().parents[1]


def test_expand_grid_is_the_cartesian_product_first_key_slowest():
    points = batch.expand_grid({"dataset": ["a", "b"], "seed": [0, 1, 2]})
    assert points == [{"dataset": d, "seed": s} for d in ("a", "b") for s in (0, 1, 2)]
    assert batch.expand_grid({}) == [{}]


@pytest.mark.parametrize("grid", [{"seed": []}, {"dataset": "breastmnist"}, {"not a name": [1]}, {"seed": 3}])
def test_expand_grid_rejects_bad_grids(grid):
    with pytest.raises(ValueError, match="grid parameter"):
        batch.expand_grid(grid)


def test_job_names_carry_the_parameters_and_are_file_safe():
    assert batch.job_name("00_quickstart", {"dataset": "breastmnist", "seed": 1}) == \
        "00_quickstart__dataset=breastmnist__seed=1"
    assert batch.job_name("nb", {"lr": 1e-3, "seeds": [0, 1], "model": "a/b c"}) == "nb__lr=0.001__seeds=0-1__model=a-b-c"
    assert batch.job_name("nb", {}) == "nb"


def test_make_jobs_rejects_clashing_names_and_duplicated_parameters(tmp_path):
    source = ROOT / "notebooks" / "00_quickstart.ipynb"
    with pytest.raises(ValueError, match="share an output name"):
        batch.make_jobs(source, {"model": ["a/b", "a b"]}, tmp_path)
    with pytest.raises(ValueError, match="both in the grid and in base_parameters"):
        batch.make_jobs(source, {"seed": [0]}, tmp_path, {"seed": 1})
    with pytest.raises(FileNotFoundError, match="not found"):
        batch.make_jobs(tmp_path / "missing.ipynb", {"seed": [0]}, tmp_path)
    jobs = batch.make_jobs(source, {"seed": [0, 1]}, tmp_path, {"profile": "smoke"})
    assert [j.parameters for j in jobs] == [{"profile": "smoke", "seed": 0}, {"profile": "smoke", "seed": 1}]
    assert jobs[1].output == tmp_path / "00_quickstart__seed=1.ipynb"


def _tiny_notebook(path: Path) -> Path:
    """A notebook without torch: parameters, glued scalars and a figure-like object, a results file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "cpu"\nx = 1\nname = "a"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import json, pathlib\nfrom myst_nb import glue\n"
        "assert x != 'boom', 'asked to fail'\n"
        "glue('square', x * x, display=False)\nglue('label', f'{name}-{profile}', display=False)\n"
        "glue('shown', 0.5)\nglue('obj', object(), display=False)\n"
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, 1])\nglue('fig', fig, display=False)\n"
        "from medsoup.runs.results import RESULTS_DIR\n"  # where medsoup writes results: the job's own folder
        "(RESULTS_DIR / 'tiny').mkdir(parents=True, exist_ok=True)\n"
        "(RESULTS_DIR / 'tiny' / 'out.json').write_text(json.dumps({'x': x}))")]
    nbformat.write(nb, str(path))
    return path


def test_run_batch_executes_names_scrapes_and_summarises(tmp_path, monkeypatch):
    # The real stamp also hashes medsoup/'s sources, which may change under a test on a shared
    # checkout; this one keeps the notebook and its parameters.
    monkeypatch.setattr(batch, "notebook_stamp", lambda source, params, kernel, root: repr((source.read_bytes(),
                                                                                              sorted(params.items()))))
    source = _tiny_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    # processes, not threads: papermill changes the process's working directory for each job;
    # forked, so that they see the patched stamp
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        rows = batch.run_batch(source, {"x": [2, 3, "boom"], "name": ["b"]}, pool, out, {"profile": "smoke"},
                               progress=False)
    assert [r["job"] for r in rows] == ["tiny__x=2__name=b", "tiny__x=3__name=b", "tiny__x=boom__name=b"]
    assert [r["status"] for r in rows[:2]] == ["ok", "ok"]
    assert rows[2]["status"].startswith("failed") and "asked to fail" in rows[2]["status"]
    assert (rows[0]["square"], rows[1]["square"], rows[0]["label"], rows[0]["shown"]) == (4, 9, "b-smoke", 0.5)
    assert "obj" not in rows[0] and "fig" not in rows[0]  # not literals: left out
    # the kernel plots inline even though the tests run with MPLBACKEND=Agg: glued figures are PNGs
    assert os.environ["MPLBACKEND"] == "Agg"
    executed = nbformat.read(str(out / "tiny__x=2__name=b.ipynb"), as_version=4)
    figures = [o for c in executed.cells for o in c.get("outputs", [])
               if o.get("metadata", {}).get("scrapbook", {}).get("name") == "fig"]
    assert "application/papermill.record/image/png" in figures[0]["data"]
    # each job wrote its own results file in its own folder, not in the project's results/
    assert json.loads((out / "tiny__x=3__name=b" / "results/tiny/out.json").read_text()) == {"x": 3}
    assert rows[1]["results"] == "results/tiny/out.json"
    with open(out / "summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [t["square"] for t in table] == ["4", "9", ""]
    markdown = (out / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| x | name | job | status |") and len(markdown) == 2 + 3

    # a rerun with nothing changed loads every finished job, and reruns the failed one
    again = batch.run_batch(source, {"x": [2, 3, "boom"], "name": ["b"]}, None, out, {"profile": "smoke"},
                            progress=False)
    assert [r["status"] for r in again[:2]] == ["cached", "cached"] and again[1]["square"] == 9
    assert again[2]["status"].startswith("failed")


def test_cli_rejects_a_parameter_without_values(capsys):
    with pytest.raises(SystemExit):
        batch.main(["notebooks/00_quickstart.ipynb", "-p", "seed"])
    assert "needs at least one value" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_over_a_two_point_grid_at_smoke(tmp_path):
    """The real quickstart at the smoke profile, two seeds: two executed notebooks and a summary."""
    out = tmp_path / "batch"
    status = batch.main(["notebooks/00_quickstart.ipynb", "-p", "dataset", "breastmnist", "-p", "seed", "0", "1",
                         "--profile", "smoke", "--out", str(out)])
    assert status == 0
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["job"] for r in rows] == ["00_quickstart__dataset=breastmnist__seed=0",
                                        "00_quickstart__dataset=breastmnist__seed=1"]
    for row in rows:
        # a batch job is not the reference run: its results file is results/tmp/... in the job's folder
        (written,) = row["results"].split(";")
        assert written.startswith("results/tmp/00_quickstart/smoke-")
        record = json.loads((out / row["job"] / written).read_text())
        assert record["seed"] == int(row["seed"]) and record["profile"] == "smoke" and not record["reference"]
        assert float(row["test_auc"]) == pytest.approx(record["test"]["auc"], abs=1e-9)
        assert (out / f"{row['job']}.ipynb").is_file()
