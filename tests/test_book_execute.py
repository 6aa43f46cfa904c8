"""The book runner's executions in a real kernel: a failure keeps the last good page, only reference
executions record their time, kernels run torch with $MEDSOUP_THREADS threads from the project root."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest

from medsoup.book import execute
from tests.conftest import ROOT
from tests.test_book_reference import project  # noqa: F401  (the tiny book root fixture)


def _notebook(root):
    """A page that prints its kernel's thread settings and working directory, and fails when asked
    through the environment (so that a failing execution needs no parameter)."""
    params = nbformat.v4.new_code_cell('profile = "auto"\nlabel = "x"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"), params,
        nbformat.v4.new_code_cell('import os\nprint(os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"], '
                                  'os.getcwd(), label)'),
        nbformat.v4.new_code_cell('assert os.environ.get("TEST_PAGE_FAILS") != "1", "asked to fail"')])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "notebooks" / "10_page.ipynb")


def _printed(path) -> str:
    cells = nbformat.read(path, as_version=4).cells
    return "".join(o["text"] for c in cells for o in c.get("outputs", []) if o.get("name") == "stdout").strip()


def test_failures_keep_the_last_good_page_and_only_reference_executions_are_timed(project, monkeypatch):
    _notebook(project)
    out = project / execute.EXECUTED_DIR
    timings = project / "results" / "timings" / "smoke.json"
    monkeypatch.delenv(execute.THREADS_ENV, raising=False)
    (page,) = execute.execute_notebooks("smoke", out_dir=out)
    assert _printed(page) == f"1 1 {project} x"  # one torch thread by default, the project root as cwd
    assert list(json.loads(timings.read_text())) == ["10_page"]
    assert sorted(p.name for p in out.iterdir()) == ["10_page.ipynb", "10_page.stamp"]  # no partial copy left
    good, timed = page.read_bytes(), timings.read_bytes()

    monkeypatch.setenv(execute.THREADS_ENV, "3")
    monkeypatch.setenv("TEST_PAGE_FAILS", "1")
    with pytest.raises(execute.NotebookExecutionError, match=r"failed in cell .*asked to fail.*failed/10_page.ipynb"
                                                              r".*keeps the last good execution"):
        execute.execute_notebooks("smoke", out_dir=out, force=True)
    assert page.read_bytes() == good and not (out / "10_page.stamp").exists()
    failed = out / execute.FAILED_DIR / "10_page.ipynb"
    assert _printed(failed) == f"3 3 {project} x" and "asked to fail" in failed.read_text()
    assert timings.read_bytes() == timed

    monkeypatch.delenv("TEST_PAGE_FAILS")
    execute.execute_notebooks("smoke", parameters={"label": "y"}, out_dir=out)  # the README's -p example
    assert _printed(page) == f"3 3 {project} y" and not failed.exists()
    assert timings.read_bytes() == timed  # a -p execution records no time
    assert sorted(p.name for p in out.iterdir()) == ["10_page.ipynb", "10_page.stamp", execute.FAILED_DIR]


@pytest.mark.parametrize("threads", ["0", "two", "-1", ""])
def test_a_bad_thread_count_is_refused_before_anything_runs(project, monkeypatch, threads):
    monkeypatch.setattr(execute, "run_papermill", lambda *a, **k: pytest.fail("nothing may run"))
    monkeypatch.setenv(execute.THREADS_ENV, threads)
    with pytest.raises(ValueError, match=rf"\$MEDSOUP_THREADS={threads!r} is not a number of threads"):
        execute.execute_notebooks("smoke", out_dir=project / execute.EXECUTED_DIR)


@pytest.mark.slow
def test_the_reproducibility_page_runs_in_a_kernel_started_in_notebooks(tmp_path):
    """As JupyterLab runs it (working directory ``notebooks/``): the pins, the committed timings."""
    import papermill

    papermill.execute_notebook(str(ROOT / "notebooks" / "90_reproducibility.ipynb"), str(tmp_path / "90.ipynb"),
                               parameters={"profile": "cpu"}, cwd=str(ROOT / "notebooks"), progress_bar=False)
    text = (tmp_path / "90.ipynb").read_text()
    assert "constraints.txt" in text and "00_quickstart" in text
    assert not (ROOT / "notebooks" / "results").exists()


def test_kernels_keep_the_chance_warning_out_of_the_pages(monkeypatch):
    """A run at chance warns in an interactive session; in a kernel of the book's runner the filter hides it
    (the pages show every arm against the majority-class score instead)."""
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    code = ("from medsoup.core.train import TrainConfig, warn_if_at_chance; "
            "warn_if_at_chance({'auc': 0.5, 'acc': 0.7}, TrainConfig()); print('ran')")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "ChanceLevelWarning: the trained model is at chance level" in plain.stderr
    env = {**os.environ, **execute.kernel_environment()}
    kernel = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert kernel.stdout.strip() == "ran" and "ChanceLevelWarning" not in kernel.stderr


def _page(root, stem, code, reads_results=False):
    params = nbformat.v4.new_code_cell('profile = "auto"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {stem}"), params,
                                         nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if reads_results:
        nb.metadata["medsoup"] = {"reads_results": True}
    nbformat.write(nb, root / "notebooks" / f"{stem}.ipynb")


def test_side_by_side_execution_keeps_each_chapter_in_order_and_the_readers_last(project):
    (project / "notebooks" / "10_page.ipynb").unlink()
    # each page leaves a file in the project root (the kernels' cwd) and checks those it must follow
    _page(project, "10_first", 'open("10", "w").close()')
    _page(project, "11_second", 'import os\nassert os.path.exists("10")\nopen("11", "w").close()')
    _page(project, "20_other", 'open("20", "w").close()')
    _page(project, "40_reader", 'import os\nassert all(os.path.exists(n) for n in ("10", "11", "20"))',
          reads_results=True)
    sources = execute.notebook_paths()
    chains, readers = execute.execution_order(sources)
    assert [[s.stem for s in chain] for chain in chains] == [["10_first", "11_second"], ["20_other"]]
    assert [s.stem for s in readers] == ["40_reader"]
    out = project / execute.EXECUTED_DIR
    pages = execute.execute_notebooks("smoke", out_dir=out, jobs=3)  # 3 asked, 2 chains: 2 side by side
    assert [p.stem for p in pages] == ["10_first", "11_second", "20_other", "40_reader"]
    assert all((out / f"{p.stem}.stamp").is_file() for p in pages)
    timed = json.loads((project / "results" / "timings" / "smoke.json").read_text())
    assert sorted(timed) == ["10_first", "11_second", "20_other", "40_reader"]
    # each time is recorded with the notebooks that shared the cores: the chains' two, the reader's one (alone)
    assert {name: entry["jobs"] for name, entry in timed.items()} == {"10_first": 2, "11_second": 2, "20_other": 2,
                                                                     "40_reader": 1}
    assert all(entry["started"] <= entry["finished"] for entry in timed.values())
    assert timed["10_first"]["finished"] <= timed["11_second"]["started"]  # one chapter in order
    assert len({entry["execution"] for entry in timed.values()}) == 1  # one execute call: one span
    with pytest.raises(ValueError, match="jobs must be a whole number >= 1"):
        execute.execute_notebooks("smoke", out_dir=out, jobs=0)
