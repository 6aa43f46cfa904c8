"""medsoup.core.progress draws a bar only where it can be drawn without noise."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
from tqdm.std import tqdm as text_bar

from medsoup.core import progress as progress_module
from medsoup.core.progress import progress


@pytest.fixture(autouse=True)
def no_setting(monkeypatch):
    monkeypatch.delenv("MEDSOUP_PROGRESS", raising=False)


def test_a_terminal_gets_a_text_bar_that_iterates(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
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
