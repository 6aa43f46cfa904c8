"""Every reference to the package in prose resolves.

Scanned: ``README.md``, ``data/README.md``, ``book/*.md``, the markdown cells and the code comments
of ``notebooks/*.ipynb``, and the docstrings and comments of ``medsoup/**/*.py``. A reference is any
dotted name ``medsoup.<...>``: in backticks (``medsoup.runs.run``, ``medsoup.runs.run(cfg)``), as the
target of a Sphinx role (:func:`~medsoup.runs.run`) or in plain text; and every
``python -m medsoup...`` command. Each name must be an importable module or an attribute of one
(``module.attr``, ``module.Class.method``); each ``python -m`` target must be runnable (a module,
or a package with ``__main__``). A file named by its path in the repository (``medsoup/core/train.py``,
``notebooks/00_quickstart.ipynb``) must exist.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import json
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: A dotted name of the package, not part of a longer name or a path (``x.medsoup.y``, ``a/medsoup.y``).
_NAME = re.compile(r"(?<![\w./-])(medsoup(?:\.[A-Za-z_]\w*)+)")
#: A file path under one of the repository's source folders, with its suffix (not a ``<placeholder>``).
_PATH = re.compile(r"(?<![\w./<-])((?:medsoup|tests|benchmarks|notebooks|book|data)/[\w./-]*\.[A-Za-z]+)(?![\w<])")
_COMMAND = re.compile(r"python3?\s+-m\s+(medsoup(?:\.[A-Za-z_]\w*)*)")


def _notebook_prose(path: Path) -> str:
    """The markdown cells of a notebook, and the comments of its code cells."""
    parts = []
    for cell in json.loads(path.read_text())["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            parts.append(text)
        elif cell["cell_type"] == "code":
            parts.extend(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    return "\n".join(parts)


def _module_prose(path: Path) -> str:
    """The docstrings of a module, its classes and its functions, and its comments."""
    source = path.read_text()
    tree = ast.parse(source)
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    docs = [doc for n in nodes if (doc := ast.get_docstring(n, clean=False))]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return "\n".join(docs + [t.string for t in tokens if t.type == tokenize.COMMENT])


def _sources() -> dict[str, str]:
    files = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "data" / "README.md",
                                        *sorted((ROOT / "book").glob("*.md"))] if p.exists()}
    files |= {p: _notebook_prose(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    files |= {p: _module_prose(p) for p in sorted((ROOT / "medsoup").rglob("*.py"))}
    return {str(p.relative_to(ROOT)): text for p, text in files.items()}


def references() -> list[tuple[str, str, str]]:
    """``(file, kind, name)`` for every reference found; kind is ``"name"``, ``"command"`` or ``"path"``."""
    found = set()
    for where, text in _sources().items():
        found |= {(where, "name", m.group(1)) for m in _NAME.finditer(text)}
        found |= {(where, "command", m.group(1)) for m in _COMMAND.finditer(text)}
        found |= {(where, "path", m.group(1)) for m in _PATH.finditer(text)}
    return sorted(found)


def resolves(name: str) -> bool:
    """Whether ``name`` is an importable module or an attribute (path) of one."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def runnable(module: str) -> bool:
    """Whether ``python -m module`` runs something: a module, or a package with ``__main__``."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package
        return importlib.util.find_spec(module + ".__main__") is not None
    return True


def test_the_scan_finds_references():
    # Guards the scanner itself: the README names the run store and its command.
    refs = references()
    assert ("README.md", "command", "medsoup.runs") in refs
    assert any(kind == "name" and where.startswith("medsoup/") for where, kind, _ in refs)
    assert any(kind == "name" and where.startswith("notebooks/") for where, kind, _ in refs)
    assert ("README.md", "path", "tests/browser/check_book.py") in refs


def test_resolver_rejects_stale_names():
    assert resolves("medsoup.runs.store.RunConfig")
    assert resolves("medsoup.runs.run_many")
    assert not resolves("medsoup.fgg.FISSIONFUSION")
    assert not resolves("medsoup.runs.store.no_such_function")
    assert runnable("medsoup.book") and runnable("medsoup.book.batch")
    assert not runnable("medsoup.chapters") and not runnable("medsoup.fissionfusion")


def test_every_reference_resolves():
    check = {"name": resolves, "command": runnable, "path": lambda path: (ROOT / path).is_file()}
    stale = [f"{where}: {name}" for where, kind, name in references() if not check[kind](name)]
    assert not stale, "references to names or files that do not exist:\n" + "\n".join(stale)
