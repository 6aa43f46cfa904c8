"""What the reproducibility page shows: versions (installed and pinned), every chapter's profile
table, and the recorded wall times and machine of a profile's run; and the short settings table
each chapter shows at its top."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pandas as pd

from medsoup.core.paths import project_folder
from medsoup.runs.provenance import PACKAGES, package_versions
from medsoup.runs.results import RESULTS_DIR, timings_path

#: Chapter -> its settings table ``{profile: {setting: value}}`` as "module:attribute".
PROFILE_TABLES = {"Baseline (quickstart)": "medsoup.chapters.baselines:BASELINE", "InMerge": "medsoup.chapters.inmerge:INMERGE",
                  "FissionFusion": "medsoup.chapters.fissionfusion:FISSIONFUSION", "MedMerge": "medsoup.chapters.medmerge:MEDMERGE"}
#: The book's toolchain, beside the libraries of :data:`medsoup.runs.provenance.PACKAGES`.
TOOLCHAIN = ("jupyter-book", "myst-nb", "papermill", "matplotlib", "pandas", "dask", "selenium")


def pinned_versions(constraints: str | Path) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` (or ``===``) lines of a constraints file."""
    pins = {}
    for line in Path(constraints).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)={2,3}([^\s;#]+)", line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def versions_table(constraints: str | Path = project_folder("constraints.txt")) -> pd.DataFrame:
    """Installed and pinned version of Python, the libraries and the book's toolchain (pins read
    from ``constraints``, default the project's ``constraints.txt``)."""
    installed = package_versions(PACKAGES + TOOLCHAIN)
    pins = pinned_versions(constraints)
    return pd.DataFrame([{"package": name, "installed": version,
                          "pinned in constraints.txt": pins.get(name.lower(), "(interpreter)" if name == "python" else "-")}
                         for name, version in installed.items()]).set_index("package")


def _short(value) -> str:
    if isinstance(value, dict):
        return "per target" if all(isinstance(v, (tuple, list)) for v in value.values()) else "{...}"
    if isinstance(value, (tuple, list)):
        text = ", ".join(_short(v) for v in value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def profile_table(name: str) -> pd.DataFrame:
    """One chapter's settings: one row per setting, one column per profile (values abbreviated)."""
    module, attribute = PROFILE_TABLES[name].split(":")
    table = getattr(importlib.import_module(module), attribute)
    settings = list(dict.fromkeys(k for profile in table.values() for k in profile))
    return pd.DataFrame({profile: [_short(values.get(k, "")) for k in settings] for profile, values in table.items()},
                        index=pd.Index(settings, name="setting"))


def settings_table(settings: dict) -> pd.DataFrame:
    """The settings one chapter runs with, one row each, values abbreviated as in
    :func:`profile_table` (a dict of settings, e.g. sources per target, as ``key: value; ...``)."""
    def cell(value) -> str:
        if isinstance(value, dict):
            return "; ".join(f"{k}: {_short(v)}" for k, v in value.items())
        return _short(value)

    return pd.DataFrame({"value": [cell(v) for v in settings.values()]},
                        index=pd.Index(list(settings), name="setting"))


def _timings_record(profile: str, root: str | Path) -> dict:
    path = timings_path(profile, root)
    return json.loads(path.read_text()) if path.is_file() else {}


def timings(profile: str, root: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """The execution wall time of each notebook recorded by ``medsoup.book.execute`` for ``profile``
    (empty when none was recorded)."""
    record = _timings_record(profile, root)
    columns = ["notebook", "minutes", "started", "finished", "execution", "side by side", "cpu cores", "torch threads",
               "GPU"]
    return pd.DataFrame([{"notebook": name, "minutes": entry["seconds"] / 60, "started": entry.get("started"),
                          "finished": entry["finished"], "execution": entry.get("execution"),
                          "side by side": entry.get("jobs", 1),
                          "cpu cores": entry["machine"].get("cpu_count"), "torch threads": entry["machine"].get("torch_threads"),
                          "GPU": entry["machine"].get("gpu", "none")} for name, entry in record.items()],
                        columns=columns)


def wall_minutes(times: pd.DataFrame) -> float:
    """The recorded executions' wall time in minutes: for each execute call (``execution``) the span from
    its notebooks' first start to their last finish (notebooks executed side by side overlap), summed over
    the calls; an entry recorded without its call or its start (written before they were kept) adds its own
    minutes. A notebook re-executed alone after a full run thus adds its own time, not the gap between."""
    tagged = times["execution"].notna() & times["started"].notna()
    seconds = sum((pd.to_datetime(call["finished"]).max() - pd.to_datetime(call["started"]).min()).total_seconds()
                  for _, call in times[tagged].groupby("execution"))
    return float(seconds / 60 + times.loc[~tagged, "minutes"].sum())


def reference_machine(profile: str, root: str | Path = RESULTS_DIR) -> dict | None:
    """The machine of the most recent notebook execution recorded for ``profile``, if any."""
    record = _timings_record(profile, root)
    return max(record.values(), key=lambda e: e["finished"])["machine"] if record else None
