"""Progress bars a person can follow and CI logs do not fill: tqdm with an ETA, shown only where
someone watches.

A bar is drawn when stderr is a terminal, or inside a Jupyter kernel that can draw a widget
(``ipywidgets`` installed, as in JupyterLab). Elsewhere (pytest, ``run.sh``, CI, papermill executing
the book without widgets) it is disabled, so nothing is printed per step.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Iterable

from tqdm.auto import tqdm


def watched() -> bool:
    """Whether a progress bar would be seen: a terminal on stderr, or a notebook kernel with widgets."""
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    kernel = shell is not None and getattr(shell.get_ipython(), "kernel", None) is not None
    return kernel and importlib.util.find_spec("ipywidgets") is not None


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None,
             enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, desc, total)`` with an ETA, redrawn at most once a second, disabled unless
    ``enabled`` and :func:`watched`; ``set_postfix`` on it names the item being worked on."""
    return tqdm(iterable, desc=desc, total=total, disable=not (enabled and watched()), mininterval=1.0,
                dynamic_ncols=True, **kwargs)
