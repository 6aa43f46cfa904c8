"""Execute the source notebooks with papermill into the book's pages, skipping those up to date.

Each source notebook ``notebooks/<name>.ipynb`` (committed without outputs) runs
through papermill with those of ``{"profile": profile, **parameters}`` it declares into the build product
``book/executed/<name>.ipynb``, which ``_toc.yml`` lists. Papermill writes a hidden partial copy
beside it, moved over ``<name>.ipynb`` only when the execution finished: a failed (or interrupted)
execution leaves the last good one in place and goes to ``book/executed/failed/<name>.ipynb``
(git-ignored, with its traceback; a later success removes it). The kernel's working directory is
the repository root (the package finds ``data/``, ``runs/`` and ``results/`` from the project root
wherever a kernel starts, JupyterLab's ``notebooks/`` included); ``MEDSOUP_DATA`` is set to
``<root>/data`` for the kernel when unset, and ``MEDSOUP_REFERENCE_RUN=1``: these executions are
the reference runs whose results files (``results/<stem>/<profile>.json``) are committed
(:mod:`medsoup.runs.results`). The kernel runs torch with ``$MEDSOUP_THREADS`` threads (default 1;
it gets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``): one thread per kernel holds up when other jobs
share the cores, and an idle many-core machine can raise it (training itself runs with its
config's ``threads``, :class:`medsoup.core.train.TrainConfig`, while ``fit`` runs).
A notebook is skipped when its executed copy exists and its stamp file ``<name>.stamp`` beside it
matches the sha256 of (source notebook, parameters, kernel, the code of the ``medsoup/`` sources
(docstrings and comments left out, as in the run keys), ``constraints.txt``; for a notebook whose
metadata has ``{"medsoup": {"reads_results": true}}``, also the other notebooks'
``results/*/<profile>.json``), so a rebuild with nothing changed takes seconds.

Timings: the wall time of a reference execution, one whose notebook gets no parameter but the
profile (``execute --profile P``, whole or ``--only`` some notebooks, without ``-p``), goes to
``results/timings/<profile>.json``, with its machine (the reproducibility page shows them). An
execution given any ``-p`` parameter records nothing there, whatever its results file.

Parameters: a notebook declares its parameters in its ``parameters`` cell; a ``-p`` name that no
selected notebook declares is refused with the valid names (a misspelled ``-p datset ...`` would
otherwise be ignored), and each notebook receives only the parameters it declares.

Profiles: ``smoke`` (CI, minutes), ``cpu`` (a 2-core machine), ``paper`` (a GPU, the papers'
settings), ``gpu`` (one CUDA GPU, offline); ``auto`` is ``gpu`` when CUDA is available and ``cpu`` otherwise. Before a ``paper``
execution, :mod:`medsoup.book.preflight` checks that every dataset file and ImageNet weight the
selected notebooks need is present or downloadable, and stops with the list of what is not.

Only the standard library is imported at module level; papermill and
:mod:`medsoup.runs.profiles` (torch) are imported when executing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medsoup.core.paths import project_root

EXECUTED_DIR = "book/executed"
STAMP_SUFFIX = ".stamp"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
#: papermill's tag on the cell it injects with the execution's parameters, and the Jupyter Book
#: tag that folds that cell in the page (collapsed, one click shows the values used).
INJECTED_TAG = "injected-parameters"
FOLD_TAG = "hide-cell"


#: Profiles whose files are checked before anything executes (:mod:`medsoup.book.preflight`): the
#: ones that need files or weights the offline machine may not have.
PREFLIGHT_PROFILES = ("paper",)
#: The folder, inside the output folder, of the executions that failed (kept for debugging).
FAILED_DIR = "failed"
#: The environment variable naming the torch threads of each notebook kernel, and its default.
THREADS_ENV, DEFAULT_THREADS = "MEDSOUP_THREADS", 1


class NotebookExecutionError(RuntimeError):
    """A notebook failed; the message names it and where its failed execution is kept."""


def repo_root() -> Path:
    """The book's root: the medsoup checkout in use (:func:`medsoup.core.paths.project_root`)."""
    candidate = project_root()
    if candidate is not None and (candidate / "_config.yml").is_file() and (candidate / "notebooks").is_dir():
        return candidate
    raise FileNotFoundError(
        "cannot find the book root (a folder with _config.yml and notebooks/): install medsoup "
        "editable (`pip install -e .`) or run from the repository root"
    )


def notebook_paths(only: Iterable[str] | None = None) -> list[Path]:
    """Source notebooks ``notebooks/*.ipynb``, sorted; ``only`` selects by name (stem or path)."""
    paths = sorted((repo_root() / "notebooks").glob("*.ipynb"))
    if only is None:
        return paths
    by_stem = {p.stem: p for p in paths}
    wanted = [Path(name).name.removesuffix(".ipynb") for name in only]
    unknown = [name for name in wanted if name not in by_stem]
    if unknown:
        raise ValueError(f"no notebook named {', '.join(unknown)} in notebooks/; "
                         f"available: {', '.join(by_stem) or '(none)'}")
    return [by_stem[name] for name in dict.fromkeys(wanted)]


def declared_parameters(source: Path) -> tuple[str, ...]:
    """The names a notebook's ``parameters`` cell declares (read by papermill, nothing executed)."""
    import papermill

    return tuple(papermill.inspect_notebook(str(source)))


def parameters_per_notebook(sources: Iterable[Path], parameters: Mapping[str, Any]) -> dict[Path, dict[str, Any]]:
    """Each notebook's share of ``parameters``: the ones its ``parameters`` cell declares.

    A name that none of ``sources`` declares raises ``ValueError`` listing the declared ones, so a
    misspelled parameter is never silently ignored and no undeclared name reaches the notebook's code.
    """
    declared = {source: declared_parameters(source) for source in sources}
    valid = sorted({name for names in declared.values() for name in names})
    unknown = sorted(set(parameters) - set(valid))
    if unknown:
        which = ", ".join(source.stem for source in declared)
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for {which}; "
                         f"the parameters cells declare: {', '.join(valid) or '(none)'}")
    return {source: {k: v for k, v in parameters.items() if k in names} for source, names in declared.items()}


def notebook_stamp(source: Path, parameters: Mapping[str, Any], kernel_name: str, root: Path) -> str:
    """sha256 over everything that changes an executed notebook's content (the ``medsoup/`` sources
    as the run keys see them: :func:`~medsoup.runs.provenance.code_digest`, docstrings and comments
    left out)."""
    from medsoup.runs.provenance import code_digest
    from medsoup.runs.results import timings_path

    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    add("notebook", source.read_bytes())
    add("parameters", json.dumps(parameters, sort_keys=True, default=str).encode())
    add("kernel", kernel_name.encode())
    add("medsoup", code_digest(root / "medsoup").encode())
    constraints = root / "constraints.txt"
    if constraints.is_file():
        add("constraints.txt", constraints.read_bytes())
    if json.loads(source.read_text()).get("metadata", {}).get("medsoup", {}).get("reads_results"):
        # A page built from other notebooks' results (comparison, reproducibility) is stale
        # when they change.
        profile = parameters.get("profile", "")
        for path in sorted((root / "results").glob(f"*/{profile}.json")):
            if path.parent.name not in (source.stem, timings_path(profile).parent.name):
                add(path.relative_to(root).as_posix(), path.read_bytes())
    return h.hexdigest()


def kernel_threads() -> int:
    """The torch threads of each notebook kernel: ``$MEDSOUP_THREADS`` (a whole number >= 1), default 1."""
    text = os.environ.get(THREADS_ENV, str(DEFAULT_THREADS))
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"${THREADS_ENV}={text!r} is not a number of threads; give a whole number >= 1 "
                         f"(default {DEFAULT_THREADS})")
    return int(text)


#: The start of :class:`medsoup.core.train.ChanceLevelWarning`'s message: a page shows every arm against the
#: majority-class score (``medsoup.chapters.collapse``), so the warning of a run at chance (the smoke profile's
#: runs usually are) is not printed into the book's pages as well.
CHANCE_WARNING = "the trained model is at chance level"


def kernel_environment() -> dict[str, str]:
    """What the kernels' environment gets besides this process's: the inline matplotlib backend
    (with ``MPLBACKEND=Agg``, as in ``run.sh test``, glued figures would be stored as "<Figure
    size ...>" text instead of PNGs), :func:`kernel_threads` threads for torch (OpenMP, MKL) and a
    ``PYTHONWARNINGS`` filter that keeps :data:`CHANCE_WARNING` out of the pages."""
    threads = str(kernel_threads())
    warnings = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), f"ignore:{CHANCE_WARNING}")))
    return {"MPLBACKEND": INLINE_BACKEND, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "PYTHONWARNINGS": warnings}


def record_timing(root: Path, profile: str, notebook: str, seconds: float, jobs: int = 1,
                  execution: str | None = None) -> Path:
    """Add a notebook's execution time to ``results/timings/<profile>.json`` (the reproducibility
    page's wall times); its start, the number of notebooks executed side by side (``jobs``), the execute
    call it belongs to (``execution``: that call's start, so a later notebook executed alone is not read as
    part of an earlier run), machine and code version are recorded with it."""
    from medsoup.core.checkpoint import atomic_write_text
    from medsoup.runs.provenance import code_version, machine
    from medsoup.runs.results import clock, timings_path

    path = timings_path(profile, root / "results")
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:  # executions running side by side each add their entry: lock the read-modify-write
        fcntl.flock(folder, fcntl.LOCK_EX)
        record = json.loads(path.read_text()) if path.is_file() else {}
        now = time.time()
        record[notebook] = {"seconds": round(seconds, 1), "started": clock(now - seconds), "finished": clock(now),
                            "jobs": jobs,
                            "execution": execution,
                            # the kernel's torch threads (kernel_environment; fit: TrainConfig.threads)
                            "code_version": code_version(), "machine": {**machine(), "torch_threads": kernel_threads()}}
        atomic_write_text(path, json.dumps(dict(sorted(record.items())), indent=1))
    finally:
        os.close(folder)  # closing releases the lock
    return path


def execution_order(sources: Iterable[Path]) -> tuple[list[list[Path]], list[Path]]:
    """``(chains, readers)``: chains of notebooks that may execute side by side, each in order (one chapter's
    notebooks, the same first digit of the name: ``21_*`` reuses the runs ``20_*`` trained), then the
    notebooks that read other notebooks' results (metadata ``{"medsoup": {"reads_results": true}}``), which
    execute one after another once every chain has finished."""
    chains: dict[str, list[Path]] = {}
    readers = []
    for source in sources:
        if json.loads(source.read_text()).get("metadata", {}).get("medsoup", {}).get("reads_results"):
            readers.append(source)
        else:
            chains.setdefault(source.stem[:1], []).append(source)
    return list(chains.values()), readers


def execute_notebooks(profile: str, only: Iterable[str] | None = None,
                      parameters: Mapping[str, Any] | None = None, out_dir: str | Path = EXECUTED_DIR,
                      kernel_name: str = "python3", force: bool = False,
                      log_output: bool = False, jobs: int = 1) -> list[Path]:
    """Execute the source notebooks into ``out_dir``; returns the executed copies' paths.

    Raises ``NotebookExecutionError`` on the first failing notebook; its last good execution stays
    in ``out_dir`` (without a stamp, so the next call runs it again), the failed one goes to
    ``<out_dir>/failed/<name>.ipynb``. Only reference executions (no parameter but the profile) record
    their time (:func:`record_timing`, with ``jobs``). ``jobs`` > 1 executes the chains of
    :func:`execution_order` side by side in that many processes (the notebooks reading results after
    them): faster where cores would idle between a notebook's runs (a kernel's serial evaluation, a
    stage's last run); each notebook's time then includes the time it shared the cores. At a profile of
    :data:`PREFLIGHT_PROFILES`, :func:`medsoup.book.preflight.check` runs first and raises
    ``PreflightError`` listing what the selected notebooks need that is missing and not downloadable.
    """
    from medsoup.runs.profiles import resolve_profile  # imports torch
    from medsoup.runs.results import clock

    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    root = repo_root()
    sources = notebook_paths(only)
    kernel_threads()  # a bad $MEDSOUP_THREADS fails before anything runs
    profile = resolve_profile(profile)
    if profile in PREFLIGHT_PROFILES:  # fail in seconds, listing every missing file, not hours in
        from medsoup.book.preflight import chapters_of, check, report

        print(f"[book] {report(profile, check(profile, chapters_of(s.stem for s in sources)))}", flush=True)
    params = {"profile": profile, **(parameters or {})}
    shares = parameters_per_notebook(sources, params)
    out = Path(out_dir) if Path(out_dir).is_absolute() else root / out_dir
    out.mkdir(parents=True, exist_ok=True)
    # Relative data paths must not depend on where the kernel starts.
    os.environ.setdefault("MEDSOUP_DATA", str(root / "data"))
    # No progress bars in executed notebooks: they would be kept as outputs in the book's pages.
    os.environ["MEDSOUP_PROGRESS"] = "0"

    chains, readers = execution_order(sources)
    side_by_side = min(jobs, len(chains)) or 1  # what each notebook's time is recorded with: the readers run alone
    print(f"[book] {len(sources)} notebook(s), parameters {params}, output {out}"
          + (f", {side_by_side} side by side" if side_by_side > 1 else ""), flush=True)
    tags = {source: f"[book] [{i}/{len(sources)}] {source.stem}" for i, source in enumerate(sources, 1)}
    task = dict(out=out, kernel_name=kernel_name, root=root, profile=profile, force=force, log_output=log_output,
                jobs=1, execution=clock())
    if side_by_side == 1:
        return [_execute_one(source, shares[source], tags[source], **task) for source in sources]
    import concurrent.futures
    import multiprocessing

    executed = {}
    with concurrent.futures.ProcessPoolExecutor(side_by_side, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_execute_chain, [(s, shares[s], tags[s]) for s in chain], dict(task, jobs=side_by_side))
                   for chain in chains]
        for future in concurrent.futures.as_completed(futures):
            executed.update(future.result())  # the first failure raises (the other chains finish first)
    for source in readers:
        executed[source] = _execute_one(source, shares[source], tags[source], **task)
    return [executed[source] for source in sources]


def _execute_chain(chain: list[tuple[Path, dict[str, Any], str]], task: dict[str, Any]) -> dict[Path, Path]:
    """One chain of :func:`execution_order` in a worker process, in order."""
    return {source: _execute_one(source, share, tag, **task) for source, share, tag in chain}


def _execute_one(source: Path, share: Mapping[str, Any], tag: str, out: Path, kernel_name: str, root: Path,
                 profile: str, force: bool, log_output: bool, jobs: int, execution: str) -> Path:
    """Execute one notebook unless its stamp says it is up to date; record its time (with ``jobs``, the
    notebooks executed side by side, and ``execution``, the execute call's start) when it got no parameter
    but the profile."""
    from medsoup.runs.results import REFERENCE_ENV

    target = out / source.name
    stamp_file = out / (source.stem + STAMP_SUFFIX)
    stamp = notebook_stamp(source, share, kernel_name, root)
    if (not force and target.is_file() and stamp_file.is_file()
            and stamp_file.read_text().strip() == stamp):
        print(f"{tag}: up to date, skipped", flush=True)
        return target
    stamp_file.unlink(missing_ok=True)
    print(f"{tag}: executing ...", flush=True)
    start = time.perf_counter()
    # The book runner's executions are reference runs: their results files are
    # results/<stem>/<profile>.json unless a parameter changes a setting (medsoup.runs.results).
    with environment({REFERENCE_ENV: "1"}):
        execute_into(source, target, share, kernel_name, root, log_output)
    stamp_file.write_text(stamp + "\n")
    seconds = time.perf_counter() - start
    reference = share == {"profile": profile}
    if reference:
        record_timing(root, profile, source.stem, seconds, jobs, execution)
    note = "" if reference else " (given parameters besides the profile: time not recorded)"
    print(f"{tag}: done in {seconds:.1f} s -> "
          f"{target.relative_to(root) if target.is_relative_to(root) else target}{note}", flush=True)
    return target


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` (what a kernel started inside inherits), restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute_into(source: Path, target: Path, params: Mapping[str, Any], kernel_name: str, cwd: Path,
                 log_output: bool) -> None:
    """Execute ``source`` into ``target``, replacing it only once the execution finished.

    Papermill writes ``.<name>.<writer>.partial.ipynb`` beside ``target`` (hidden, so the book never
    reads it); on success it is folded (:func:`fold_injected_parameters`) and moved over ``target``,
    and an earlier failed copy is removed. On failure or interruption it is moved to
    ``<target's folder>/failed/<name>.ipynb`` and ``target``, the last good execution, is left as it was.
    """
    from medsoup.core.checkpoint import writer_tag

    partial = target.with_name(f".{target.stem}.{writer_tag()}.partial.ipynb")
    failed = target.parent / FAILED_DIR / target.name
    try:
        run_papermill(source, partial, params, kernel_name, cwd, log_output)
        fold_injected_parameters(partial)
    except BaseException as err:
        if partial.exists():
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, failed)
        if not isinstance(err, NotebookExecutionError):
            raise
        kept = f"; {target} keeps the last good execution" if target.is_file() else ""
        raise NotebookExecutionError(f"{err}; the failed execution, with its traceback, is {failed}{kept}") from err
    os.replace(partial, target)
    failed.unlink(missing_ok=True)


def run_papermill(source: Path, target: Path, params: Mapping[str, Any], kernel_name: str,
                  cwd: Path, log_output: bool) -> None:
    """Execute ``source`` into ``target`` with papermill in a kernel started in ``cwd`` with
    :func:`kernel_environment`; a failure raises :class:`NotebookExecutionError` naming the cell."""
    import papermill

    if log_output:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with environment(kernel_environment()):  # jupyter_client starts the kernel with os.environ
            papermill.execute_notebook(
                str(source), str(target), parameters=dict(params), kernel_name=kernel_name,
                cwd=str(cwd), progress_bar=sys.stderr.isatty(), log_output=log_output,
            )
    except papermill.PapermillExecutionError as err:
        raise NotebookExecutionError(
            f"notebook {source.name} failed in cell [{err.exec_count}]: {err.ename}: {err.evalue}") from err
    except Exception as err:  # kernel death, missing kernel, bad parameters, ...
        raise NotebookExecutionError(
            f"notebook {source.name} could not be executed: {type(err).__name__}: {err}") from err


def fold_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell of an executed notebook with :data:`FOLD_TAG`, so
    the page shows it folded instead of at full height in the reading flow (the source notebooks
    tag their own tooling cells; this one cell exists only after execution)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if INJECTED_TAG in tags and FOLD_TAG not in tags:
            tags.append(FOLD_TAG)
    nbformat.write(nb, path)
