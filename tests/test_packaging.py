"""Packaging: the built wheel holds every module, each imports from it outside the source tree, and
every third-party library medsoup imports is declared (core dependencies, or the book extra for
``medsoup.book``)."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medsoup"


def _modules_on_disk() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (no isolation, no dependencies) from a copy of the checkout's package files."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "medsoup", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("medsoup-*.whl")
    return built


def test_no_package_source_is_ignored_by_git():
    """A source file that .gitignore hides is missing from every clean clone and from its wheel."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "medsoup"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert [name for name in listed if name.endswith(".py")] == []


def test_wheel_holds_every_module_and_each_imports_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    on_disk = _modules_on_disk()
    in_wheel = sorted(".".join(p.relative_to(site).with_suffix("").parts).removesuffix(".__init__")
                      for p in (site / "medsoup").rglob("*.py"))
    assert in_wheel == on_disk
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    script = (
        "import importlib, sys\n"
        f"names = {[name for name in on_disk if not name.endswith('.__main__')]!r}\n"
        "for name in names:  # every module but __main__, which runs a command line\n"
        "    importlib.import_module(name)\n"
        "import medsoup\n"
        "print(medsoup.__file__)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-P", "-c", script], cwd=run_dir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip()).parent == site / "medsoup"


def _third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "medsoup"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_library_is_declared(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(archive.read(metadata)).get_all("Requires-Dist")
    core, book = set(), set()
    for requirement in requires:
        name = _canonical(re.match(r"[A-Za-z0-9_.-]+", requirement).group())
        (book if "extra == \"book\"" in requirement else core if "extra" not in requirement else set()).add(name)
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        declared = core | book if path.relative_to(PACKAGE).parts[0] == "book" else core
        for module in sorted(_third_party_imports(path)):
            names = {_canonical(d) for d in distributions.get(module, [module])}
            if not names & declared:
                missing.append(f"{path.relative_to(ROOT)} imports {module} ({', '.join(sorted(names))})")
    assert missing == []


def test_the_public_door_is_lazy():
    # ``import medsoup`` imports no heavy library (medsoup.book relies on it to start fast); each
    # re-exported name resolves, on first use, to the object of its module.
    code = ("import sys, medsoup; heavy = [m for m in ('torch', 'pandas', 'timm') if m in sys.modules]; "
            "print(heavy); medsoup.run; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["[]", "True"]

    import medsoup
    from medsoup.core.data import load_dataset
    from medsoup.core.models import create_model
    from medsoup.core.train import TrainConfig, fit
    from medsoup.runs.store import RunConfig, run, run_many
    assert (medsoup.run, medsoup.run_many, medsoup.RunConfig, medsoup.TrainConfig, medsoup.fit,
            medsoup.load_dataset, medsoup.create_model) == (run, run_many, RunConfig, TrainConfig, fit,
                                                            load_dataset, create_model)
    assert set(medsoup.__all__) == {"__version__", *medsoup._PUBLIC}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = medsoup.nope


def _bash_array(script: Path, name: str) -> set[str]:
    """The words of ``NAME=( ... )`` in a bash script, comments dropped."""
    body = re.search(rf"^{name}=\((.*?)\)", script.read_text(), re.S | re.M).group(1)
    return {_canonical(word) for line in body.splitlines() for word in line.split("#")[0].split()}


def test_the_gpu_session_kit_covers_the_dependencies_at_pinned_versions():
    """benchmarks/device/pack.sh carries what the GPU machine's image lacks: with what the image holds
    it covers every core dependency and the notebooks' kernel (papermill, ipykernel, myst-nb's glue),
    and each carried package has its tested version in constraints.txt."""
    script = ROOT / "benchmarks" / "device" / "pack.sh"
    carried, image = _bash_array(script, "PACKAGES"), _bash_array(script, "IMAGE_HOLDS")
    pins = {_canonical(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    assert sorted(carried - pins) == []
    assert carried.isdisjoint(image)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    core = {_canonical(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in requires}
    kernel = {"papermill", "ipykernel", "nbformat", "myst-nb", "docutils"}
    assert sorted((core | kernel) - carried - image) == []
