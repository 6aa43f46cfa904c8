"""The reference executions a reader sees without running anything.

A book runner's execution at a profile (``python -m medsoup.book execute --profile cpu``) is the
reference run of that profile: its results files are committed (:mod:`medsoup.runs.results`) and so
are its executed notebooks, by ``publish``, under ``book/reference/<profile>/`` (each with the
stamp it was executed under). ``show`` copies them into ``book/executed/``, the folder the book is
built from, so a fresh clone renders the whole book, with the reference run's numbers and figures,
in the time of a build:

    python -m medsoup.book publish --profile cpu   # after executing every notebook at cpu
    python -m medsoup.book show                    # the committed cpu executions, then the build

A reference execution whose stamp no longer matches the sources (a notebook, the ``medsoup/``
code, the parameters or ``constraints.txt`` changed since: :func:`medsoup.book.execute.notebook_stamp`)
is still shown, under a note at the top of its page saying when and by which code version it was
executed and how to re-execute it; it gets no stamp in ``book/executed/``, so the next ``execute``
at that profile runs it again. An up-to-date one gets its stamp, and ``execute`` skips it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medsoup.book.execute import (EXECUTED_DIR, STAMP_SUFFIX, notebook_paths, notebook_stamp, parameters_per_notebook,
                                   repo_root)

REFERENCE_DIR = "book/reference"
#: The profile whose executions ``show`` uses unless told otherwise: the one every committed
#: chapter result is recorded at.
DEFAULT_PROFILE = "cpu"
#: The tag of the note ``show`` puts on a page whose reference execution predates its sources.
STALE_TAG = "medsoup-stale-reference"


def reference_dir(profile: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / REFERENCE_DIR / profile


def _read_stamp(folder: Path, stem: str) -> str:
    """The stamp recorded beside an executed notebook; "" when there is none."""
    path = folder / (stem + STAMP_SUFFIX)
    return path.read_text().strip() if path.is_file() else ""


def _current_stamp(source: Path, profile: str, kernel_name: str, root: Path) -> str:
    share = parameters_per_notebook([source], {"profile": profile})[source]
    return notebook_stamp(source, share, kernel_name, root)


def publish(profile: str, kernel_name: str = "python3") -> list[Path]:
    """Copy every executed notebook of ``book/executed/`` that is up to date at ``profile`` (its
    stamp equals the one its sources give now) into :func:`reference_dir`; returns the copies.

    Raises ``ValueError`` naming the notebooks that are missing or out of date, so a reference set
    never mixes executions of different sources or profiles.
    """
    root = repo_root()
    executed = root / EXECUTED_DIR
    stale = []
    for source in notebook_paths():
        if not (executed / source.name).is_file() or \
                _read_stamp(executed, source.stem) != _current_stamp(source, profile, kernel_name, root):
            stale.append(source.stem)
    if stale:
        raise ValueError(f"not executed at profile {profile!r} with the current sources: {', '.join(stale)}; "
                         f"run `python -m medsoup.book execute --profile {profile}` first")
    out = reference_dir(profile, root)
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in notebook_paths():
        for name in (source.name, source.stem + STAMP_SUFFIX):
            shutil.copyfile(executed / name, out / name)
        copies.append(out / source.name)
    return copies


def _stale_note(profile: str, timing: dict | None) -> str:
    when = (f" on {timing['finished']} by medsoup {timing['code_version']} ({timing['seconds']:.0f} s)"
            if timing else "")
    return (":::{note}\n"
            f"This page is the committed reference execution at the `{profile}` profile{when}. Its sources "
            "(this notebook, the `medsoup` code or the pinned versions) have changed since, so its numbers may "
            f"differ from what the current code gives: `bash run.sh book --profile {profile}` re-executes it.\n"
            ":::")


def show(profile: str = DEFAULT_PROFILE, kernel_name: str = "python3") -> dict[str, bool]:
    """Copy the committed reference executions of ``profile`` into ``book/executed/``; returns
    ``{notebook: up to date}``. Raises ``FileNotFoundError`` when a notebook has none."""
    import nbformat

    from medsoup.runs.results import timings_path

    root = repo_root()
    folder = reference_dir(profile, root)
    missing = [s.stem for s in notebook_paths() if not (folder / s.name).is_file()]
    if missing:
        raise FileNotFoundError(f"no committed reference execution at profile {profile!r} for "
                                f"{', '.join(missing)} (in {folder}); execute them with "
                                f"`bash run.sh book --profile {profile}`")
    timings_file = timings_path(profile, root / "results")
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    executed = root / EXECUTED_DIR
    executed.mkdir(parents=True, exist_ok=True)
    fresh = {}
    for source in notebook_paths():
        stamp = _read_stamp(folder, source.stem)
        fresh[source.stem] = stamp == _current_stamp(source, profile, kernel_name, root)
        nb = nbformat.read(folder / source.name, as_version=4)
        if not fresh[source.stem]:
            note = nbformat.v4.new_markdown_cell(_stale_note(profile, timings.get(source.stem)))
            note.metadata["tags"] = [STALE_TAG]
            first_heading = next((i + 1 for i, c in enumerate(nb.cells)
                                  if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), 0)
            nb.cells.insert(first_heading, note)
        nbformat.write(nb, executed / source.name)
        stamp_file = executed / (source.stem + STAMP_SUFFIX)
        if fresh[source.stem]:
            stamp_file.write_text(stamp + "\n")
        else:
            stamp_file.unlink(missing_ok=True)
    return fresh
