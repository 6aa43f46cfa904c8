"""The book's command line: execute the notebooks (:mod:`medsoup.book.execute`), show or publish
the reference executions (:mod:`medsoup.book.reference`), and build the Jupyter Book.

    python -m medsoup.book execute --profile smoke --only 00_quickstart
    python -m medsoup.book build
    python -m medsoup.book all --profile auto        # execute every notebook, then build

Execution: see :mod:`medsoup.book.execute` (:data:`KERNEL_NOTE`: the environment it reads).

Build: ``jupyter-book build <root> -W -n --keep-going --all``: every page is rebuilt so that no
warning is hidden by Sphinx's incremental cache, and any warning fails the build.

Only the standard library is imported at module level, so ``build`` starts fast; papermill and
:mod:`medsoup.runs.profiles` (torch) are imported when executing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medsoup.book.execute import EXECUTED_DIR, NotebookExecutionError, execute_notebooks, repo_root

#: What ``execute`` and ``all`` read from the environment (shown by their ``--help``).
KERNEL_NOTE = ("environment: MEDSOUP_THREADS torch threads per notebook kernel (default 1; raise it on an idle "
               "machine), MEDSOUP_DATA the MedMNIST folder (default: the project's data/). A failed notebook "
               "leaves its last good page; the failed execution goes to book/executed/failed/. Only executions "
               "without -p record their time in results/timings/<profile>.json.")


def _toc_files(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file") and isinstance(value, str):
                yield value
            else:
                yield from _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _toc_files(item)


def missing_toc_files(root: Path | None = None) -> list[str]:
    """Entries of ``_toc.yml`` with no ``.md``/``.ipynb`` file (e.g. notebooks not executed yet)."""
    import yaml  # a dependency of jupyter-book

    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    suffixes = ("", ".md", ".ipynb")
    return [f for f in _toc_files(toc) if not any((root / (f + s)).is_file() for s in suffixes)]


def build_book(warnings_as_errors: bool = True, full: bool = True) -> int:
    """``jupyter-book build`` from the repository root; returns its exit status (0 = success)."""
    root = repo_root()
    missing = missing_toc_files(root)
    if missing:
        print(f"[book] _toc.yml lists pages that do not exist: {', '.join(missing)}\n"
              f"[book] executed notebooks come from `python -m medsoup.book execute`",
              file=sys.stderr, flush=True)
        return 1
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.is_file() else (shutil.which("jupyter-book") or "jupyter-book"),
           "build", str(root)]
    if warnings_as_errors:
        cmd += ["-W", "-n", "--keep-going"]
    if full:
        cmd.append("--all")
    print("[book] " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    status = subprocess.call(cmd, cwd=root)
    verdict = "ok" if status == 0 else f"FAILED (exit {status})"
    print(f"[book] build {verdict} in {time.perf_counter() - start:.1f} s; "
          f"open {root / '_build/html/index.html'}", flush=True)
    return status


def parse_value(text: str) -> Any:
    """``-p`` values: JSON where it parses (3, 1e-3, true, [1, 2]), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsoup.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--profile", default="auto",
                     help="smoke, cpu, gpu, paper, or auto (gpu with a CUDA GPU, else cpu)")
    run.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                     help="notebook names (stems), e.g. 00_quickstart")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                     metavar=("KEY", "VALUE"), help="extra papermill parameter (repeatable)")
    run.add_argument("--force", action="store_true", help="execute even when up to date")
    run.add_argument("--kernel", default="python3")
    run.add_argument("--log-output", action="store_true", help="stream cell output to the log")
    run.add_argument("--jobs", type=int, default=2,
                     help="notebooks executed side by side (one chapter's in order; the results-reading pages "
                          "last; default 2, as the cpu reference run)")

    build = argparse.ArgumentParser(add_help=False)
    build.add_argument("--allow-warnings", action="store_true", help="do not fail on warnings")
    build.add_argument("--incremental", action="store_true",
                       help="rebuild only changed pages (warnings of unchanged pages are not shown)")

    sub.add_parser("execute", parents=[run], help="execute notebooks into book/executed/", epilog=KERNEL_NOTE)
    sub.add_parser("build", parents=[build], help="build the book into _build/html")
    sub.add_parser("all", parents=[run, build], help="execute, then build", epilog=KERNEL_NOTE)
    reference = argparse.ArgumentParser(add_help=False)
    reference.add_argument("--profile", default="cpu", help="the reference run's profile (default cpu)")
    sub.add_parser("show", parents=[reference, build],
                   help="the committed reference executions (book/reference/<profile>/), then build")
    sub.add_parser("publish", parents=[reference],
                   help="commit-ready copies of the up-to-date executions into book/reference/<profile>/")
    args = parser.parse_args(argv)

    if args.command in ("show", "publish"):
        from medsoup.book import reference as ref

        try:
            if args.command == "publish":
                print(f"[book] published {len(ref.publish(args.profile))} executions into "
                      f"{ref.reference_dir(args.profile)}", flush=True)
                return 0
            fresh = ref.show(args.profile)
        except (ValueError, FileNotFoundError) as err:
            print(f"[book] error: {err}", file=sys.stderr, flush=True)
            return 1
        stale = [name for name, ok in fresh.items() if not ok]
        print(f"[book] {len(fresh)} reference executions at profile {args.profile} copied into {EXECUTED_DIR}; "
              + (f"older than their sources (noted on their pages): {', '.join(stale)}" if stale else "all up to date"),
              flush=True)
        return build_book(warnings_as_errors=not args.allow_warnings, full=not args.incremental)

    if args.command in ("execute", "all"):
        # imports torch, as executing does
        from medsoup.book.preflight import PreflightError

        try:
            execute_notebooks(args.profile, only=args.only,
                              parameters={k: parse_value(v) for k, v in args.parameter},
                              kernel_name=args.kernel, force=args.force, log_output=args.log_output,
                              jobs=args.jobs)
        except (NotebookExecutionError, PreflightError, ValueError, FileNotFoundError) as err:
            print(f"[book] error: {err}", file=sys.stderr, flush=True)
            return 1
    if args.command in ("build", "all"):
        return build_book(warnings_as_errors=not args.allow_warnings, full=not args.incremental)
    return 0


if __name__ == "__main__":
    sys.exit(main())
