"""Progress bars: the package's one choice of tqdm, drawn only where someone watches.

``tqdm.auto`` warns (``TqdmWarning: IProgress not found``) as soon as it is imported in a Jupyter
kernel without ``ipywidgets``, and plain tqdm there writes every redraw of the bar to stderr,
which an executed notebook keeps as output: both end up in the book's pages. CI logs should not
fill with redraws either. So:

- outside a Jupyter kernel: tqdm's text bar on stderr when stderr is a terminal, else no bar
  (pytest, ``run.sh``, CI);
- in a Jupyter kernel with ``ipywidgets`` (the ``book`` extra installs it, so that ``tqdm.auto``,
  imported by dependencies such as ``huggingface_hub``, does not warn): tqdm's widget bar;
- in a Jupyter kernel without ``ipywidgets``: no bar;
- with ``MEDSOUP_PROGRESS=0`` in the environment: no bar (``python -m medsoup.book execute``
  sets it for the notebooks it executes: a page of the book is no place for a progress bar).

Bars show the time left, redraw at most once a second, and name the item in hand through
``set_postfix_str``. ``write`` prints a line without breaking a bar in progress (``tqdm.write``).
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
        return _text_bar if sys.stderr is not None and sys.stderr.isatty() else None
    if importlib.util.find_spec("ipywidgets") is None:
        return None
    from tqdm.notebook import tqdm as widget_bar

    return widget_bar


def watched() -> bool:
    """Whether a bar would be drawn in this process (see the module docstring)."""
    return _bar_class() is not None


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, *,
             enabled: bool = True, **kwargs: Any) -> _text_bar:
    """``tqdm(iterable, desc, total)`` of the right kind for this process; a disabled bar (it
    iterates, draws nothing) when ``enabled`` is false or no bar is watched."""
    cls = _bar_class()
    return (cls or _text_bar)(iterable, desc=desc, total=total, disable=not enabled or cls is None,
                              mininterval=1.0, dynamic_ncols=True, **kwargs)
