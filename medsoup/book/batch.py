"""Batch reruns: one notebook over a grid of parameters, and a summary table of what each run glued.

    python -m medsoup.book.batch notebooks/00_quickstart.ipynb -p dataset breastmnist retinamnist \\
        -p seed 0 1 --profile smoke [--workers N | --dask-scheduler ADDRESS]

:func:`run_batch` expands ``grid`` (``{parameter: [values]}``) into its cartesian product and runs
one papermill job per point. Each job is named by its parameters,
``<stem>__dataset=breastmnist__seed=1``, and owns, under ``out_dir`` (default
``results/batch/<stem>``):

* ``<name>.ipynb``: the executed notebook;
* ``<name>/``: the kernel's working directory and its results folder (``$MEDSOUP_RESULTS``), so the
  results file the notebook writes (a batch job is never the reference run:
  ``results/tmp/<stem>/<profile>-<hash>.json``, see :mod:`medsoup.runs.results`) lands in
  ``<name>/results/...`` and jobs never overwrite each other or the reference results (a notebook that
  reads other notebooks' results, such as ``40_comparison``, reads that folder too);
* ``<name>.stamp``: the hash of (notebook, parameters, ``medsoup/`` sources, constraints); a job whose
  stamp matches is not run again, so a batch can be resumed or extended cheaply.

The summary (``summary.csv`` and ``summary.md`` in ``out_dir``) has one row per job: its parameters,
status, wall time and every scalar the notebook glued with ``myst_nb.glue`` (read back from the
executed notebook's outputs, where glue stores them as ``application/papermill.record/*`` data with
``metadata.scrapbook.name``). Run caches (``MEDSOUP_RUNS``) are shared, so runs a grid point has in
common with an earlier job are loaded, not retrained.

Jobs go to ``executor.submit`` like :func:`medsoup.runs.store.run_many`: sequential by default, any
``concurrent.futures.Executor`` of processes, or a ``dask.distributed.Client`` for a cluster (whose
workers see the same file system). Not threads: papermill changes the process's working directory
while it runs a notebook.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import itertools
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsoup.book.build import parse_value
from medsoup.book.execute import (NotebookExecutionError, environment, notebook_stamp, parameters_per_notebook, repo_root,
                                   run_papermill)
from medsoup.runs.results import RESULTS_ENV

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` as dicts, the first parameter varying slowest.

    Every parameter needs a non-empty list of values (a bare string is not a list)."""
    for key, values in grid.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"grid parameter {key!r} is not a valid Python name")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid parameter {key!r} needs a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value)
    text = _UNSAFE.sub("-", str(value)).strip("-")
    return text or "_"


def job_name(stem: str, point: Mapping[str, Any]) -> str:
    """``<stem>__key=value__...`` in the grid's order; unsafe file-name characters become ``-``."""
    return "__".join([stem] + [f"{key}={_format_value(value)}" for key, value in point.items()])


@dataclass(frozen=True)
class Job:
    """One grid point: run ``notebook`` with ``parameters`` into ``out_dir/<name>.ipynb``."""

    notebook: str
    name: str
    point: dict
    parameters: dict
    out_dir: str
    root: str
    kernel_name: str = "python3"

    @property
    def output(self) -> Path:
        return Path(self.out_dir) / f"{self.name}.ipynb"

    @property
    def workdir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def stamp_file(self) -> Path:
        return Path(self.out_dir) / f"{self.name}.stamp"


def glued_values(notebook: str | os.PathLike) -> dict[str, Any]:
    """Scalars (numbers, strings, booleans) glued with ``myst_nb.glue`` in an executed notebook.

    Values come from their ``text/plain`` representation; figures, tables and other objects
    whose representation is not a Python literal are left out."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    values: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if not meta or output.get("output_type") not in ("display_data", "execute_result"):
                continue
            text = output.get("data", {}).get(meta.get("mime_prefix", "") + "text/plain")
            if text is None:
                continue
            try:
                value = ast.literal_eval(text if isinstance(text, str) else "".join(text))
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(value, (bool, int, float, str)):
                values[meta["name"]] = value
    return values


def run_job(job: Job, force: bool = False) -> dict[str, Any]:
    """Execute one job (unless its stamp is current) and return its summary row.

    Never raises for a failing notebook: the row's ``status`` says ``failed: <reason>``."""
    root = Path(job.root)
    source = Path(job.notebook)
    stamp = notebook_stamp(source, job.parameters, job.kernel_name, root)
    row: dict[str, Any] = {**job.point, "job": job.name, "status": "ok", "wall_time": 0.0}
    current = (job.output.is_file() and job.stamp_file.is_file()
               and job.stamp_file.read_text().strip() == stamp)
    if force or not current:
        job.stamp_file.unlink(missing_ok=True)
        job.workdir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MEDSOUP_DATA", str(root / "data"))
        start = time.perf_counter()
        try:
            with environment({RESULTS_ENV: str(job.workdir / "results")}):  # the job's results in its folder
                run_papermill(source, job.output, job.parameters, job.kernel_name, job.workdir, log_output=False)
        except NotebookExecutionError as err:
            row.update(status=f"failed: {err}", wall_time=time.perf_counter() - start)
            return row
        row["wall_time"] = time.perf_counter() - start
        job.stamp_file.write_text(stamp + "\n")
    else:
        row["status"] = "cached"
    row["results"] = ";".join(sorted(p.relative_to(job.workdir).as_posix()
                                     for p in job.workdir.rglob("*.json"))) if job.workdir.is_dir() else ""
    for name, value in glued_values(job.output).items():
        row.setdefault(name, value)  # a glued name never hides a parameter or the status
    return row


def make_jobs(notebook: str | os.PathLike, grid: Mapping[str, Sequence[Any]], out_dir: str | os.PathLike | None = None,
              base_parameters: Mapping[str, Any] | None = None, kernel_name: str = "python3") -> list[Job]:
    """The jobs of a batch; names must be unique (values that differ only in unsafe characters clash)."""
    root = repo_root()
    source = Path(notebook)
    if not source.is_absolute():
        source = (Path.cwd() / source) if (Path.cwd() / source).is_file() else root / source
    if not source.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found (looked in {Path.cwd()} and {root})")
    out = Path(out_dir) if out_dir is not None else root / "results" / "batch" / source.stem
    out = out if out.is_absolute() else Path.cwd() / out
    base = dict(base_parameters or {})
    overlap = sorted(set(base) & set(grid))
    if overlap:
        raise ValueError(f"parameter(s) {', '.join(overlap)} are both in the grid and in base_parameters")
    parameters_per_notebook([source], {**base, **grid})  # every name must be declared by the notebook
    jobs = [Job(str(source), job_name(source.stem, point), dict(point), {**base, **point}, str(out.resolve()),
                str(root), kernel_name) for point in expand_grid(grid)]
    names = [j.name for j in jobs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"grid points share an output name: {', '.join(clashes)}")
    return jobs


def run_batch(notebook: str | os.PathLike, grid: Mapping[str, Sequence[Any]], executor=None,
              out_dir: str | os.PathLike | None = None, base_parameters: Mapping[str, Any] | None = None,
              force: bool = False, kernel_name: str = "python3", progress: bool = True) -> list[dict[str, Any]]:
    """Run ``notebook`` at every point of ``grid``; write and return the summary rows (job order).

    ``executor``: None (in order, in this process), or any object with ``submit`` (a process pool,
    a ``dask.distributed.Client``; not a thread pool, see the module docstring). ``base_parameters`` (e.g. ``{"profile": "smoke"}``) go to every job.
    """
    jobs = make_jobs(notebook, grid, out_dir, base_parameters, kernel_name)
    out = Path(jobs[0].out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"[batch] {len(jobs)} job(s) of {Path(notebook).name} -> {out}", flush=True)
    if executor is None:
        rows = []
        for i, job in enumerate(jobs, 1):
            rows.append(run_job(job, force))
            if progress:
                print(f"[batch] [{i}/{len(jobs)}] {job.name}: {rows[-1]['status']} "
                      f"({rows[-1]['wall_time']:.1f} s)", flush=True)
    else:
        futures = [executor.submit(run_job, job, force) for job in jobs]
        rows = [f.result() for f in futures]
    csv_path, md_path = write_summary(rows, out)
    if progress:
        print(f"[batch] summary: {csv_path}, {md_path}", flush=True)
    return rows


def write_summary(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.md`` in ``out_dir``: the union of the rows' columns, in order."""
    from medsoup.core.checkpoint import atomic_write_text

    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = Path(out_dir)
    lines = []
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "summary.csv", table.getvalue())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ") if value is not None else ""

    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines.extend("| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows)
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return out / "summary.csv", out / "summary.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsoup.book.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", help="source notebook, e.g. notebooks/00_quickstart.ipynb")
    parser.add_argument("-p", "--parameter", nargs="+", action="append", default=[], metavar="KEY VALUE",
                        help="a grid parameter and its values (JSON where it parses): -p seed 0 1 2")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a parameter fixed for every job")
    parser.add_argument("--profile", default="smoke", help="smoke, cpu, paper or auto (default smoke)")
    parser.add_argument("--out", default=None, help="output folder (default results/batch/<stem>)")
    parser.add_argument("--force", action="store_true", help="run jobs even when up to date")
    parser.add_argument("--kernel", default="python3")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0, help="local worker processes (0: in order)")
    where.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                       help="send jobs to a dask.distributed scheduler, e.g. tcp://host:8786")
    args = parser.parse_args(argv)

    bad = [p[0] for p in args.parameter if len(p) < 2]
    if bad:
        parser.error(f"-p {bad[0]} needs at least one value")
    grid = {p[0]: [parse_value(v) for v in p[1:]] for p in args.parameter}
    base = {} if "profile" in grid else {"profile": args.profile}
    base.update({k: parse_value(v) for k, v in args.set})
    if base.get("profile") == "auto":
        from medsoup.runs.profiles import resolve_profile

        base["profile"] = resolve_profile("auto")

    executor = None
    if args.dask_scheduler:
        from dask.distributed import Client

        executor = Client(args.dask_scheduler)
    elif args.workers > 0:
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(args.workers)
    try:
        rows = run_batch(args.notebook, grid, executor, args.out, base, force=args.force, kernel_name=args.kernel)
    except (ValueError, FileNotFoundError) as err:
        print(f"[batch] error: {err}", file=sys.stderr)
        return 2
    finally:
        if executor is not None:
            executor.close() if hasattr(executor, "close") else executor.shutdown()
    failed = [r for r in rows if str(r["status"]).startswith("failed")]
    print(f"[batch] {len(rows) - len(failed)}/{len(rows)} ok")
    for row in failed:
        print(f"[batch] {row['job']}: {row['status']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
