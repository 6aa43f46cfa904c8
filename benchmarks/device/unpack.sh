#!/usr/bin/env bash
# File what benchmarks/device/session.sh brought back from a GPU session into this repository:
#
#   bash benchmarks/device/unpack.sh FILES_AT [PROFILE]     # FILES_AT: the device tool's files_at folder
#
# - results/timings/<profile>.json and results/*/<profile>.json (to commit: the reproducibility page and
#   40_comparison read them);
# - the finished executions (notebook + stamp) into .device/executed/, which the next session carries so
#   that its book run resumes where this one stopped (session.sh copies them into book/executed/); the
#   three slowest cells of each are printed (e.g. 20_fissionfusion's training and evaluation cells);
# - bench_fit_cuda.txt appended to benchmarks/results/bench_fit_cuda.txt under a dated header.
# Nothing is committed; `git status` shows what changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
files=${1:?usage: bash benchmarks/device/unpack.sh FILES_AT [PROFILE]}
profile=${2:-gpu}
[ -f "$files/results.tar.gz" ] || { echo "unpack.sh: no results.tar.gz in $files" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tar xzf "$files/results.tar.gz" -C "$scratch"

for path in "$scratch"/results/*/"$profile".json; do
  [ -f "$path" ] || continue
  relative=${path#"$scratch"/}
  mkdir -p "$(dirname "$relative")"
  cp "$path" "$relative"
  echo "unpack.sh: $relative"
done
mkdir -p .device/executed
for stamp in "$scratch"/book/executed/*.stamp; do
  [ -f "$stamp" ] || continue
  name=$(basename "$stamp" .stamp)
  cp "$stamp" "$scratch/book/executed/$name.ipynb" .device/executed/
  echo "unpack.sh: .device/executed/$name.ipynb (finished; the next session skips it while its stamp matches)"
  python3 - "$scratch/book/executed/$name.ipynb" <<'PY'
import json, sys  # the notebook's slowest cells (papermill's durations), e.g. training vs evaluation
cells = json.load(open(sys.argv[1]))["cells"]
timed = [(c["metadata"].get("papermill", {}).get("duration") or 0, i, "".join(c["source"]).splitlines()[:1])
         for i, c in enumerate(cells) if c["cell_type"] == "code"]
for seconds, index, first in sorted(timed, reverse=True)[:3]:
    print(f"    cell {index}: {seconds:.1f} s  {(first or [''])[0][:70]}")
PY
done
if [ -f "$files/bench_fit_cuda.txt" ]; then
  {
    echo
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) benchmarks/device/session.sh: python benchmarks/bench_fit.py --device cuda"
    cat "$files/env.txt" 2>/dev/null || true
    cat "$files/bench_fit_cuda.txt"
  } >> benchmarks/results/bench_fit_cuda.txt
  echo "unpack.sh: benchmarks/results/bench_fit_cuda.txt (appended)"
fi
