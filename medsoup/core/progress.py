"""Progress bars: the package's one choice of tqdm.

``tqdm.auto`` warns (``TqdmWarning: IProgress not found``) as soon as it is imported in a Jupyter
kernel without ``ipywidgets``, and plain tqdm there writes every redraw of the bar to stderr,
which an executed notebook keeps as output: both end up in the book's pages. So:

- in a terminal (no Jupyter kernel): tqdm's text bar on stderr;
- in a Jupyter kernel with ``ipywidgets`` (the ``book`` extra installs it, so that ``tqdm.auto``,
  imported by dependencies such as ``huggingface_hub``, does not warn): tqdm's widget bar;
- in a Jupyter kernel without ``ipywidgets``: no bar;
- with ``MEDSOUP_PROGRESS=0`` in the environment: no bar (``python -m medsoup.book execute``
  sets it for the notebooks it executes: a page of the book is no place for a progress bar).

``write`` prints a line without breaking a bar in progress (``tqdm.write``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.std import tqdm as _text_bar

write = _text_bar.write


def _bar_class() -> type | None:
    """The tqdm class for this process, or None when no bar should be drawn."""
    if os.environ.get("MEDSOUP_PROGRESS") == "0":
        return None
    if "ipykernel" not in sys.modules:
        return _text_bar
    if importlib.util.find_spec("ipywidgets") is None:
        return None
    from tqdm.notebook import tqdm as widget_bar

    return widget_bar


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> _text_bar:
    """``tqdm(iterable, **kwargs)`` of the right kind for this process (see the module docstring);
    a disabled bar (it iterates, draws nothing) when ``enabled`` is false or no bar fits."""
    cls = _bar_class()
    return (cls or _text_bar)(iterable, disable=not enabled or cls is None, **kwargs)
