"""The run store from the command line: ``python -m medsoup.runs list|show|diff|rm``.

``list`` prints one line per run folder of the cache (``--cache``, else ``$MEDSOUP_RUNS``): key,
dataset, model, method (builder, else callbacks, else ``plain``), seed, state (``finished``,
``running`` while a process holds its lock, ``resumable`` with the epochs done), validation and
test value of the run's selection metric, wall time and size on disk. ``show`` prints a run's config,
history and trainings; ``diff`` compares two configs field by field; ``rm`` removes runs by key or
filter, listing them and asking first (``--yes`` for scripts). Filters are ``FIELD=VALUE`` on the
flattened config (``train.seed=0``, ``init.model=smallcnn``) or ``state=...``; keys may be shortened
to a unique prefix.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

import filelock

from medsoup.core import checkpoint as ckpt
from medsoup.runs.storage import cache_root, run_lock


def flat_fields(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 0}}`` -> ``{"train": "(config)", "train.seed": 0}``; lists and tuples as JSON text."""
    flat = {}
    for name, value in config.items():
        if isinstance(value, dict) and value and name != "builder_params":
            flat[f"{prefix}{name}"] = "(config)"
            flat.update(flat_fields(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else value
    return flat


def is_running(folder: Path) -> bool:
    """Whether a process holds the run's lock (trying it without waiting)."""
    lock = run_lock(folder)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def describe(folder: Path) -> dict[str, Any]:
    """What the store holds about the run in ``folder`` (finished or not)."""
    result = folder / "result.json"
    record = json.loads(result.read_text()) if result.exists() else {}
    config_file = folder / "config.json"
    config = record.get("config") or (json.loads(config_file.read_text()) if config_file.exists() else {})
    train = config.get("train", {})
    metric = train.get("select_metric", "auc")
    if record:
        state, wall = "finished", record.get("wall_time")
    elif is_running(folder):
        state, wall = "running", None
    else:
        meta = ckpt.load_metadata(folder / "resume") if ckpt.exists(folder / "resume") else {}
        state = f"resumable {meta.get('epochs_done', 0)}/{train.get('epochs', '?')}"
        wall = meta.get("wall_time")
    method = config.get("builder", "create")
    if method == "create":
        method = "+".join(name for name, _ in config.get("callbacks", [])) or "plain"
    return {"key": folder.name, "dataset": config.get("dataset"), "model": config.get("model"), "method": method,
            "seed": train.get("seed"), "state": state, "metric": metric,
            "val": record.get("val", {}).get(metric), "test": record.get("test", {}).get(metric),
            "wall_s": wall, "size": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
            "config": config}


def runs_in(cache: Path) -> list[dict[str, Any]]:
    return [describe(folder) for folder in sorted(cache.iterdir()) if folder.is_dir()] if cache.is_dir() else []


def matches(run: dict[str, Any], filters: Iterable[str]) -> bool:
    flat = {**flat_fields(run["config"]), "state": run["state"].split()[0]}
    for text in filters:
        name, _, wanted = text.partition("=")
        if name not in flat:
            raise ValueError(f"unknown filter field {name!r}; valid: state, {', '.join(sorted(flat_fields(run['config'])))}")
        if str(flat[name]) != wanted:
            return False
    return True


def find(cache: Path, key: str) -> Path:
    """The run folder whose key is ``key`` or starts with it (a unique prefix)."""
    found = [f for f in sorted(cache.iterdir()) if f.is_dir() and f.name.startswith(key)] if cache.is_dir() else []
    if len(found) != 1:
        raise ValueError(f"{'no' if not found else 'several'} runs in {cache} with key {key!r}"
                         + (f": {', '.join(f.name for f in found)}" if found else ""))
    return found[0]


def table(rows: list[dict[str, Any]]) -> str:
    def cell(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    columns = ["key", "dataset", "model", "method", "seed", "state", "metric", "val", "test", "wall_s", "size"]
    cells = [[cell(r[c], 1 if c == "wall_s" else 4) if c != "size" else f"{r['size'] / 2**20:.2f} MiB"
              for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
                     for line in [columns, *cells])


def show(folder: Path) -> str:
    run = describe(folder)
    lines = [f"run {run['key']} ({run['state']})", "config:", json.dumps(run["config"], indent=1)]
    result = folder / "result.json"
    if result.exists():
        record = json.loads(result.read_text())
        lines += ["history:", *(json.dumps(h) for h in record["history"]), f"best epoch: {record['best_epoch']}",
                  f"val: {json.dumps(record['val'])}", f"test: {json.dumps(record['test'])}"]
    log = folder / "trainings.jsonl"
    if log.exists():
        lines += ["trainings:", *log.read_text().splitlines()]
    return "\n".join(lines)


def diff(a: Path, b: Path) -> str:
    left, right = flat_fields(describe(a)["config"]), flat_fields(describe(b)["config"])
    names = sorted(set(left) | set(right))
    changed = [(n, left.get(n, "(absent)"), right.get(n, "(absent)")) for n in names if left.get(n) != right.get(n)]
    parents = {n for n, x, y in changed if "(config)" in (x, y)}  # a config on one side only: its fields once
    changed = [(n, x, y) for n, x, y in changed if not any(n.startswith(f"{p}.") for p in parents)]
    if not changed:
        return f"{a.name} and {b.name} have the same config"
    width = max(len(n) for n, _, _ in changed)
    return "\n".join([f"{'field'.ljust(width)}  {a.name}  {b.name}",
                      *(f"{n.ljust(width)}  {x!s:16}  {y}" for n, x, y in changed)])


def remove(cache: Path, keys: list[str], filters: list[str], yes: bool, answer=None) -> str:
    """Remove the runs named by ``keys`` (all runs without keys) that match ``filters``, except running
    ones, after listing them and asking unless ``yes``.

    ``answer(prompt)`` asks; by default :func:`input`, and only when stdin is a terminal: without one
    (a script, a pipe, CI) and without ``yes`` it raises ``ValueError`` and removes nothing. An end
    of input counts as no."""
    if not keys and not filters:
        raise ValueError("rm needs run keys or FIELD=VALUE filters; it does not remove a whole store")
    chosen = [r for r in ([describe(find(cache, k)) for k in keys] if keys else runs_in(cache)) if matches(r, filters)]
    running = [r["key"] for r in chosen if r["state"] == "running"]
    chosen = [r for r in chosen if r["state"] != "running"]
    notes = [f"skipping running runs: {', '.join(running)}"] if running else []
    if not chosen:
        return "\n".join([*notes, "nothing to remove"])
    print(table(chosen))
    if not yes and answer is None and not (sys.stdin is not None and sys.stdin.isatty()):
        raise ValueError(f"refusing to delete {len(chosen)} runs without --yes when stdin is not a terminal")
    try:
        reply = "yes" if yes else (answer or input)(f"remove these {len(chosen)} runs? [y/N] ")
    except EOFError:
        reply = ""
    if reply.strip().lower() not in ("y", "yes"):
        return "\n".join([*notes, "nothing removed"])
    for run in chosen:
        shutil.rmtree(cache / run["key"])
    return "\n".join([*notes, f"removed {len(chosen)} runs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsoup.runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=None, help="the run store (default $MEDSOUP_RUNS, else runs/)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="one line per run")
    listing.add_argument("filters", nargs="*", metavar="FIELD=VALUE")
    commands.add_parser("show", help="a run's config, history and trainings").add_argument("key")
    comparing = commands.add_parser("diff", help="two runs' configs, field by field")
    comparing.add_argument("keys", nargs=2)
    removing = commands.add_parser("rm", help="remove runs by key or FIELD=VALUE filter, asking first")
    removing.add_argument("selection", nargs="+", metavar="KEY|FIELD=VALUE")
    removing.add_argument("--yes", action="store_true", help="do not ask")
    args = parser.parse_args(argv)
    cache = cache_root(args.cache)
    try:
        if args.command == "list":
            print(table([r for r in runs_in(cache) if matches(r, args.filters)]))
        elif args.command == "show":
            print(show(find(cache, args.key)))
        elif args.command == "diff":
            print(diff(*(find(cache, k) for k in args.keys)))
        else:
            filters = [s for s in args.selection if "=" in s]
            keys = [s for s in args.selection if "=" not in s]
            print(remove(cache, keys, filters, args.yes))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
