#!/usr/bin/env bash
# medsoup entry point on a fresh Linux machine with Python 3.11+.
#
#   bash run.sh book          build the Jupyter Book into _build/html from the committed reference
#                             executions (book/reference/cpu/: the recorded numbers and figures, minutes;
#                             where none are committed, it executes as with --profile auto)
#   bash run.sh book [args]   execute the notebooks, then build; args go to `python -m medsoup.book all`,
#                             e.g. --profile cpu (2-core machine, hours), --profile gpu, --force
#   bash run.sh test [args]   the import layers (lint-imports), fast tests (pytest -m "not slow"
#                             -n auto [args]) beside every notebook on the smoke profile (two
#                             side by side; their log is printed when the tests end), the book
#                             build with warnings as errors, and a check of the built pages in
#                             headless Chromium (links only where it is missing)
#
# Both create .venv if it is missing and install the pinned environment
# (pip install -c constraints.txt -e ".[all]") whenever pyproject.toml or constraints.txt changed.
# Python's bytecode is written as modules are first imported, where Python looks for it (the
# install does not compile the ~16,000 files of the environment, most of which nothing here imports).
# Both read the MedMNIST files from $MEDSOUP_DATA, else ../shared/data/medmnist beside the checkout
# where it exists, else the project's data/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=.venv
STAMP="$VENV/.medsoup-install-stamp"

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

step() {  # step "title" cmd...: run a command, print its wall time
  local title=$1 start=$SECONDS rc=0
  shift
  echo "==> $title"
  "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "==> $title: FAILED (exit $rc) after $((SECONDS - start)) s" >&2
    return "$rc"
  fi
  echo "==> $title: done in $((SECONDS - start)) s"
}

find_python() {
  local candidate
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "run.sh: needs python3.11 (or a python3 that is 3.11+) on PATH" >&2
  exit 1
}

ensure_env() {
  # Bytecode is compiled on first import, not at install (pip compiles every file of every package: ~45 s
  # of one core, three quarters of it for modules nothing imports), and written to the usual __pycache__
  # folders (the environment's, git-ignored ones in the checkout), so .venv/bin/python used directly finds it too.
  unset PYTHONDONTWRITEBYTECODE
  if [ ! -x "$VENV/bin/python" ]; then
    step "create $VENV" "$(find_python)" -m venv "$VENV"
  fi
  local want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    step "install pinned dependencies" \
      "$VENV/bin/python" -m pip install --no-compile -c constraints.txt -e ".[all]"
    echo "$want" > "$STAMP"
  fi
}

use_data() {  # one rule for both commands: $MEDSOUP_DATA, else ../shared/data/medmnist, else data/
  if [ -z "${MEDSOUP_DATA:-}" ]; then
    if [ -d ../shared/data/medmnist ]; then
      MEDSOUP_DATA=$(cd ../shared/data/medmnist && pwd)
    else
      MEDSOUP_DATA=$PWD/data
    fi
  fi
  export MEDSOUP_DATA
  echo "MEDSOUP_DATA=$MEDSOUP_DATA"
}

run_tests() {
  local rc=0
  # -n auto: one pytest-xdist worker per core (each test has its own run store and temporary folder)
  "$VENV/bin/python" -m pytest -m "not slow" -q -n auto "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "run.sh: pytest ran no tests (exit 5): tests/ is empty or every test was deselected" >&2
  fi
  return "$rc"
}

tests_beside_notebooks() {  # run_tests "$@" while the smoke notebooks execute; fails if either fails
  local log=_build/execute-smoke.log rc=0 notebooks_rc=0 start=$SECONDS notebooks
  mkdir -p _build
  # In a process group of its own (setsid), which an interrupt (Ctrl-C) or a stop ends with the tests: a
  # background job of a script ignores Ctrl-C itself.
  setsid "$VENV/bin/python" -m medsoup.book execute --profile smoke --jobs 2 > "$log" 2>&1 &
  notebooks=$!
  trap 'kill -TERM -- "-$notebooks" 2>/dev/null; echo "run.sh: interrupted; stopped the smoke notebooks" >&2; exit 130' INT TERM
  run_tests "$@" || rc=$?
  echo "==> pytest: exit $rc after $((SECONDS - start)) s; the smoke notebooks' log ($log):"
  wait "$notebooks" || notebooks_rc=$?
  trap - INT TERM
  cat "$log"
  echo "==> execute notebooks (profile smoke): exit $notebooks_rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] && return "$notebooks_rc"
  return "$rc"
}

check_pages() {  # links always; pages, figures and console in Chromium where it is installed
  local rc=0
  "$VENV/bin/python" tests/browser/check_book.py _build/html || rc=$?
  if [ "$rc" -eq 3 ]; then
    echo "run.sh: NOTE: the browser check was skipped (no chromium/chromedriver/selenium); links were checked." \
         "Install with: apt-get install -y chromium chromium-driver" >&2
    return 0
  fi
  return "$rc"
}

[ $# -ge 1 ] || usage
cmd=$1
shift

case "$cmd" in
  book)
    ensure_env
    use_data
    if [ $# -eq 0 ] && [ -d book/reference/cpu ]; then
      step "build the book from the committed reference executions" "$VENV/bin/python" -m medsoup.book show
    else
      step "execute notebooks and build the book" "$VENV/bin/python" -m medsoup.book all "$@"
    fi
    ;;
  test)
    ensure_env
    use_data
    export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
    export MPLBACKEND=Agg
    echo "HF_HUB_OFFLINE=$HF_HUB_OFFLINE"
    step "import layers (lint-imports, contract in pyproject.toml)" "$VENV/bin/lint-imports"
    # Every notebook in _toc.yml must be executed for the -W build to pass. The smoke executions run beside
    # the tests (each test has its own run store and folders): neither keeps both cores busy throughout.
    step "pytest (not slow) beside the smoke notebooks" tests_beside_notebooks "$@"
    step "build the book (warnings are errors)" "$VENV/bin/python" -m medsoup.book build
    step "check the built pages (headless Chromium)" check_pages
    ;;
  -h|--help|help) usage ;;
  *) echo "run.sh: unknown command '$cmd'" >&2; usage ;;
esac
