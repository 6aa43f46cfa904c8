"""medsoup.core.progress: a bar, with the point being evaluated, only where someone watches it;
nothing in CI logs, no warning or redraws in the book's pages."""

from __future__ import annotations

import ast
import importlib.util
import io
import sys
import types
from pathlib import Path

import pytest
import torch
from tqdm.std import tqdm as text_bar

from medsoup.core import progress as progress_module
from medsoup.core.models import create_model
from medsoup.core.progress import progress
from medsoup.merging.landscape import lmc_curve
from tests.conftest import tiny


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def no_setting(monkeypatch):
    monkeypatch.delenv("MEDSOUP_PROGRESS", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)


def _lmc(points=3):
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(create_model("smallcnn", 2, in_chans=1).state_dict())
    return lmc_curve(create_model("smallcnn", 2, in_chans=1), *states, tiny("breastmnist"), points=points)


def test_nothing_is_printed_without_a_terminal(capsys):
    assert not progress_module.watched()
    _lmc()
    assert capsys.readouterr() == ("", "")


def test_a_terminal_sees_the_bar_with_its_point_and_eta(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress_module.watched()
    _lmc()
    shown = terminal.getvalue()
    assert "LMC curve" in shown and "3/3" in shown and "c = +1.00, +0.00" in shown and "<" in shown  # elapsed<left
    bar = progress(range(3), desc="x")
    assert type(bar) is text_bar and not bar.disable
    assert list(bar) == [0, 1, 2]
    assert progress(range(2), enabled=False).disable


def test_a_kernel_without_ipywidgets_gets_no_bar_and_no_warning(monkeypatch, recwarn):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(progress_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real_find_spec(name, *a))
    bar = progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]
    assert not [w for w in recwarn if "IProgress" in str(w.message)]


@pytest.mark.skipif(importlib.util.find_spec("ipywidgets") is None, reason="needs ipywidgets (book extra)")
def test_a_kernel_with_ipywidgets_gets_a_widget_bar_unless_switched_off(monkeypatch):
    from tqdm.notebook import tqdm as widget_bar

    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert progress_module._bar_class() is widget_bar
    monkeypatch.setenv("MEDSOUP_PROGRESS", "0")  # what the book's executor sets for its kernels
    assert progress_module._bar_class() is None
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert progress(range(2)).disable


def test_only_the_progress_module_imports_tqdm():
    # One choice of bar: every other module goes through medsoup.core.progress (never tqdm.auto).
    package = Path(progress_module.__file__).resolve().parents[1]
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "tqdm" for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"core/progress.py"}
