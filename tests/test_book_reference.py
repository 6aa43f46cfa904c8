"""Committed reference executions: published only when up to date, shown with a note when stale."""

from __future__ import annotations

import nbformat
import pytest

from medsoup.book import execute, reference


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A tiny book root: one notebook with a parameters cell, a medsoup/ folder and constraints."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "medsoup").mkdir()
    (tmp_path / "medsoup" / "core.py").write_text("X = 1\n")
    (tmp_path / "constraints.txt").write_text("torch==2.0\n")
    (tmp_path / "_config.yml").write_text("title: t\n")
    params = nbformat.v4.new_code_cell('profile = "auto"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title\n\nintro"), params,
                                         nbformat.v4.new_code_cell("print(profile)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "10_page.ipynb")
    monkeypatch.setattr(execute, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(reference, "repo_root", lambda: tmp_path)
    return tmp_path


def _execute(root, profile="cpu"):
    """What execute_notebooks leaves: an executed copy (here with an output) and its stamp."""
    source = root / "notebooks" / "10_page.ipynb"
    nb = nbformat.read(source, as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{profile}\n")]
    (root / execute.EXECUTED_DIR).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, root / execute.EXECUTED_DIR / source.name)
    stamp = execute.notebook_stamp(source, {"profile": profile}, "python3", root)
    (root / execute.EXECUTED_DIR / "10_page.stamp").write_text(stamp + "\n")


def test_publish_refuses_executions_of_other_sources_or_profiles(project):
    with pytest.raises(ValueError, match="not executed at profile 'cpu'.*10_page"):
        reference.publish("cpu")  # nothing executed
    _execute(project, profile="smoke")
    with pytest.raises(ValueError, match="10_page"):
        reference.publish("cpu")
    _execute(project)
    (copy,) = reference.publish("cpu")
    assert copy == project / "book/reference/cpu/10_page.ipynb" and (copy.parent / "10_page.stamp").is_file()


def test_show_copies_up_to_date_executions_with_their_stamp(project):
    _execute(project)
    reference.publish("cpu")
    for name in ("10_page.ipynb", "10_page.stamp"):
        (project / execute.EXECUTED_DIR / name).unlink()
    assert reference.show("cpu") == {"10_page": True}
    shown = nbformat.read(project / execute.EXECUTED_DIR / "10_page.ipynb", as_version=4)
    assert shown.cells[2].outputs[0]["text"] == "cpu\n"
    assert not any(reference.STALE_TAG in c.metadata.get("tags", []) for c in shown.cells)
    assert (project / execute.EXECUTED_DIR / "10_page.stamp").is_file()  # execute would skip it


def test_show_marks_an_execution_older_than_its_sources_and_leaves_it_unstamped(project):
    _execute(project)
    reference.publish("cpu")
    (project / "medsoup" / "core.py").write_text("X = 2\n")  # the code changed after the reference run
    assert reference.show("cpu") == {"10_page": False}
    shown = nbformat.read(project / execute.EXECUTED_DIR / "10_page.ipynb", as_version=4)
    assert shown.cells[0].source.startswith("# Title")  # the note comes under the page title
    assert reference.STALE_TAG in shown.cells[1].metadata["tags"]
    assert "bash run.sh book --profile cpu" in shown.cells[1].source
    assert shown.cells[3].outputs[0]["text"] == "cpu\n"  # the recorded outputs are still shown
    assert not (project / execute.EXECUTED_DIR / "10_page.stamp").exists()  # execute runs it again


def test_show_without_reference_names_the_missing_notebooks(project):
    with pytest.raises(FileNotFoundError, match="no committed reference execution at profile 'gpu' for 10_page"):
        reference.show("gpu")
