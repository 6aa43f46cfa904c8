#!/usr/bin/env bash
# CI's wall time on this machine while other work shares the cores (issue 26: <= 8 min on two cores under load).
#
#   bash benchmarks/ci_under_load.sh [busy-loops] [commit]
#
# Clones the repository at `commit` (default HEAD) into a temporary folder beside a link to ../shared (as CI's
# clean clone sees it), starts `busy-loops` shell loops that each keep one core busy (default 1: on two cores our
# processes then get what a second job leaves), and runs `CI=true bash .ci/run` there, its pip install included.
# Prints each step's time from run.sh, the total, and the 1-minute load average seen every 30 s; the clone is
# removed afterwards. Run it on an otherwise idle machine: the loops are the load it measures under.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
loops=${1:-1}
commit=$(git rev-parse --short "${2:-HEAD}")
[ -d ../shared ] || { echo "ci_under_load: needs ../shared beside the checkout (CI's data)" >&2; exit 2; }
work=$(mktemp -d)
shared=$(cd ../shared && pwd)
pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ln -s "$shared" "$work/shared"
git clone -q . "$work/clone"
git -C "$work/clone" checkout -q "$commit"
for _ in $(seq "$loops"); do
  ( while :; do :; done ) &
  pids+=($!)
done
( while :; do echo "$(date -u +%H:%M:%S) $(cut -d' ' -f1 /proc/loadavg)"; sleep 30; done ) > "$work/load.log" &
pids+=($!)
echo "ci_under_load: commit $commit, $loops busy loop(s), $(nproc) cores, clone $work/clone"
start=$SECONDS
rc=0
(cd "$work/clone" && CI=true bash .ci/run) > "$work/ci.log" 2>&1 || rc=$?
total=$((SECONDS - start))
grep -E '^==> .*(done in|FAILED)|passed|failed' "$work/ci.log" | grep -v '^\[book\]' || true
echo "ci_under_load: .ci/run exited $rc after $total s ($(awk '{print $2}' "$work/load.log" | sort -n |
     sed -n '1p;$p' | paste -sd- -) 1-minute load average)"
exit "$rc"
