"""The results file every notebook records: one envelope, one row shape, one writer, one reader.

A notebook ends with ``write_results(stem, s, rows=..., **payload)``. The file holds the envelope
(``profile``, ``reference``, ``settings``, ``overrides``, ``code_version``, ``written``), the
chapter's long per-seed ``rows`` (:data:`ROW_KEYS` first, then metric columns such as ``acc``,
``auc``, ``f1`` and extra columns such as ``merge_rate`` or ``recalibrate``, as model-soups'
``*_results.jsonl`` share one row shape) and the chapter's own ``payload`` (figures' data, cost).

Where it goes: ``results/<stem>/<profile>.json`` are the committed reference results, written only
by the reference run: the book runner (``python -m medsoup.book execute``, which sets
:data:`REFERENCE_ENV` for the kernel) with the profile's settings unchanged (``s["overrides"]``
empty, see :func:`medsoup.runs.profiles.settings`). Any other run (a papermill ``-p`` override, an
edited parameters cell, an interactive session, a batch job) writes
``results/tmp/<stem>/<profile>-<hash of its overrides>.json`` (git-ignored) instead, so it can
never overwrite a reference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsoup.core.checkpoint import atomic_write_text
from medsoup.core.paths import project_folder
from medsoup.runs.provenance import code_version

#: The environment variable the book runner sets to ``"1"`` for the notebooks it executes.
REFERENCE_ENV = "MEDSOUP_REFERENCE_RUN"
#: The columns every row starts with; metric and extra columns follow.
ROW_KEYS = ("chapter", "method", "role", "dataset", "seed")
#: What the envelope holds besides ``rows`` and the payload.
ENVELOPE = ("profile", "reference", "settings", "overrides", "code_version", "written")
#: The environment variable naming another results folder (``python -m medsoup.book.batch`` gives each job its own).
RESULTS_ENV = "MEDSOUP_RESULTS"
#: Where results are written: ``$MEDSOUP_RESULTS``, else ``results/`` of the project
#: (:func:`medsoup.core.paths.project_folder`), whatever the working directory (a kernel JupyterLab starts in
#: ``notebooks/`` writes there too).
RESULTS_DIR = Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else project_folder("results")


def timings_path(profile: str, root: str | Path = RESULTS_DIR) -> Path:
    """``<results>/timings/<profile>.json``: each notebook's execution wall time for ``profile``
    (written by the book's executor, read by the reproducibility page)."""
    return Path(root) / "timings" / f"{profile}.json"


def to_json(value: Any) -> Any:
    """The JSON encoder of every results file (``json.dumps(default=to_json)``): tables become
    lists of records, numpy and torch values plain numbers or lists, paths strings. Anything
    else is refused by name, never written as its ``str``."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        return value.to_dict(orient="records")
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write a {type(value).__name__} into a results file: {value!r}")


def is_reference(s: Mapping[str, Any]) -> bool:
    """True for the reference run: executed by the book runner with the profile's settings unchanged."""
    return os.environ.get(REFERENCE_ENV) == "1" and not s.get("overrides")


def results_path(stem: str, s: Mapping[str, Any], root: str | Path = RESULTS_DIR) -> Path:
    """``<root>/<stem>/<profile>.json`` for the reference run, otherwise
    ``<root>/tmp/<stem>/<profile>-<8 hex digits of the overrides' hash>.json``."""
    profile = s["profile"]
    if is_reference(s):
        return Path(root) / stem / f"{profile}.json"
    text = json.dumps(dict(s.get("overrides") or {}), sort_keys=True, default=to_json)
    return Path(root) / "tmp" / stem / f"{profile}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.json"


def check_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` as a list of dicts, each holding every key of :data:`ROW_KEYS` (a clear error otherwise)."""
    records = rows.to_dict(orient="records") if hasattr(rows, "to_dict") else [dict(r) for r in rows]
    for i, row in enumerate(records):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"results row {i} lacks {', '.join(missing)}; every row needs {', '.join(ROW_KEYS)}")
    return records


def clock(seconds: float | None = None) -> str:
    """Local time as results and timings record it (``2026-12-07T02:37:52+0000``): ``seconds`` since the epoch,
    or now."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def write_results(stem: str, s: Mapping[str, Any], *, rows: Sequence[Mapping[str, Any]], root: str | Path = RESULTS_DIR,
                  path: str | Path | None = None, **payload) -> Path:
    """Write one notebook's results file atomically and return its path (see the module docstring).

    ``s``: the settings from :func:`medsoup.runs.profiles.settings` (``profile`` and ``overrides``
    included); ``rows``: the long per-seed rows (a DataFrame or a list of dicts); ``payload``: the
    chapter's other records, under names that do not clash with the envelope. ``path``: write there
    instead of :func:`results_path` (a record its command places, such as ``results/baselines.json``);
    its ``reference`` is then True when ``s`` has no overrides.
    """
    clash = sorted(set(payload) & set(ENVELOPE))
    if clash:
        raise ValueError(f"payload name(s) {', '.join(clash)} are envelope fields; envelope: {', '.join(ENVELOPE)}")
    reference = is_reference(s) if path is None else not s.get("overrides")
    record = {"profile": s["profile"], "reference": reference,
              "settings": {k: v for k, v in s.items() if k not in ("profile", "overrides")},
              "overrides": dict(s.get("overrides") or {}), "code_version": code_version(),
              "written": clock(), "rows": check_rows(rows), **payload}
    path = results_path(stem, s, root) if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, default=to_json))
    return path


def load_results(profile: str, stems: Mapping[str, str], root: str | Path = RESULTS_DIR) -> dict[str, dict | None]:
    """``{label: record}`` of the reference results ``<root>/<stem>/<profile>.json`` for each
    ``label: stem`` of ``stems``; None where the file does not exist. A file without ``rows``
    (an older format) is refused by name."""
    out = {}
    for label, stem in stems.items():
        path = Path(root) / stem / f"{profile}.json"
        if not path.is_file():
            out[label] = None
            continue
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); execute its notebook again to rewrite it") from err
        if not isinstance(record, dict) or "rows" not in record:
            raise ValueError(f"{path} is not a results file of this version (no 'rows'); "
                             f"execute its notebook again to rewrite it")
        out[label] = record
    return out
