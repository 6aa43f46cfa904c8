"""Where medsoup's folders are: the checkout it is used from, or the environment.

``data/``, ``runs/`` and ``results/`` are folders of the project, not of the package: they are
found from the project root (the folder holding medsoup's ``pyproject.toml``), looked for above
the package's own files (an editable install or a checkout on ``sys.path``) and then above the
working directory, or named by the environment (``MEDSOUP_DATA``, ``MEDSOUP_RUNS``). Nothing here
depends on how deep a module sits in the package.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PROJECT_MARKER = 'name = "medsoup"'


def _is_project(folder: Path) -> bool:
    marker = folder / "pyproject.toml"
    try:
        return marker.is_file() and PROJECT_MARKER in marker.read_text()
    except OSError:
        return False


@lru_cache(maxsize=None)
def _project_above(start: Path) -> Path | None:
    return next((folder for folder in (start, *start.parents) if _is_project(folder)), None)


def project_root() -> Path | None:
    """The medsoup checkout in use: above this package's files, else above the working directory;
    None for an installed package used outside a checkout."""
    return _project_above(Path(__file__).resolve().parent) or _project_above(Path.cwd().resolve())


def project_folder(name: str) -> Path:
    """``<project root>/<name>``, or ``./<name>`` outside a checkout."""
    root = project_root()
    return root / name if root is not None else Path(name)
