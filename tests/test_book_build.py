"""medsoup.book.execute's page-shaping step: papermill's injected cell is folded in the page."""

from __future__ import annotations

import nbformat

from medsoup.book.execute import FOLD_TAG, INJECTED_TAG, fold_injected_parameters


def test_fold_injected_parameters_tags_only_papermills_cell_once(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters", "remove-cell"]}),
        nbformat.v4.new_code_cell('profile = "smoke"', metadata={"tags": [INJECTED_TAG]}),
        nbformat.v4.new_markdown_cell("# text")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    fold_injected_parameters(path)
    fold_injected_parameters(path)  # idempotent
    tags = [cell.metadata.get("tags", []) for cell in nbformat.read(path, as_version=4).cells]
    assert tags == [["parameters", "remove-cell"], [INJECTED_TAG, FOLD_TAG], []]  # others untouched
