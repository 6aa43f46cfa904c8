"""Where a number came from: code version, package versions and machine."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import torch

import medsoup

PACKAGES = ("torch", "torchvision", "timm", "medmnist", "numpy", "scikit-learn", "safetensors")


def _module_path(root: Path, module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = root / relative / "__init__.py"
    return package if package.exists() else (root / relative).with_suffix(".py")


def _medsoup_imports(path: Path) -> set[str]:
    """The ``medsoup.*`` modules one source file imports (read with :mod:`ast`, never executed)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("medsoup."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "medsoup":
            found.add(node.module)
            # ``from medsoup.core import checkpoint`` imports a module, ``from medsoup.core.data import x`` a name
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def source_closure(modules: Iterable[str]) -> list[Path]:
    """The medsoup source files of ``modules`` and of every medsoup module they import, transitively."""
    root = Path(medsoup.__file__).parent
    seen: set[Path] = set()
    pending = [_module_path(root, m) for m in modules]
    while pending:
        path = pending.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        pending.extend(_module_path(root, m) for m in _medsoup_imports(path))
    return sorted(seen)


def code_text(path: Path) -> str:
    """The code of one source file: :func:`ast.dump` of its tree without docstrings.

    Comments never reach the tree and line numbers are not dumped, so neither a comment, a
    docstring nor blank lines count; the leading string of the module, of each class and of each
    function is dropped. ``ast.dump``'s format may change between Python minor versions, and a
    key with it.
    """
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_digest(root: Path, paths: Iterable[Path] | None = None) -> str:
    """sha256 (hex) over the :func:`code_text` of ``paths`` (default: every ``*.py`` under ``root``),
    each with its path relative to ``root``, so that moving a module changes the digest too."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py") if paths is None else paths):
        for part in (path.relative_to(root).as_posix(), code_text(path)):
            data = part.encode()
            digest.update(f"{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def code_version(modules: tuple[str, ...] | None = None) -> str:
    """``<version>+<12 hex digits>``: the package version and the :func:`code_digest` of medsoup sources.

    With ``modules=None`` every source file is hashed (what a book execution records). With a tuple
    of module names only their :func:`source_closure` is: the run cache keys a run on the modules
    that can change its numbers, so editing a table or a figure does not retrain anything, and
    neither does a comment or a docstring.
    """
    root = Path(medsoup.__file__).parent
    digest = code_digest(root, None if modules is None else source_closure(modules))
    return f"{medsoup.__version__}+{digest[:12]}"


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """``{"python": version, name: version or "not installed"}`` for the distributions ``names``."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict[str, str | int]:
    """Processor, core count, threads torch uses, and the accelerator if any."""
    record: dict[str, str | int] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                                    "cpu_count": os.cpu_count() or 0, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
    return record
