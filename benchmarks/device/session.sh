#!/usr/bin/env bash
# One GPU session's measurements, in one command on the lent machine (issue 11 items 2 and 3; see
# benchmarks/device/README.md). From the repository root, with .device/ made by pack.sh and carried:
#
#   bash benchmarks/device/session.sh [--budget SECONDS] [--no-bench] [execute args ...]
#
# 1. installs the carried wheels into /tmp/medsoup-site (nothing can be fetched there);
# 2. bench_fit on CUDA: fit / bare loop for smallcnn@28, resnet18@28, resnet50@224 and the pretrained
#    EfficientNet-Lite0@224 (target >= 0.95 each) -> $OUT/bench_fit_cuda.txt;
# 3. executes the notebooks at the `gpu` profile (`python -m medsoup.book execute --profile gpu`,
#    extra arguments passed on) until the budget's end: each notebook that finishes records its
#    wall time in results/timings/gpu.json, its numbers in results/<notebook>/gpu.json. Executions
#    an earlier session finished (.device/executed/, put there by unpack.sh) are copied into
#    book/executed/ first, so notebooks whose stamp still matches are skipped: the book resumes;
# 4. packs results/ and book/executed/ into $OUT/results.tar.gz, which the device tool brings back
#    (benchmarks/device/unpack.sh files it here).
#
# --budget (default 540 s) bounds the whole script, so that a 600 s call returns with what finished.
# DEVICE (cuda), PROFILE (gpu), BENCH_ARGS and OUT are read from the environment:
# benchmarks/device/rehearse.sh runs this script on a CPU at the smoke profile.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
budget=540
bench=1
while [ $# -gt 0 ]; do
  case $1 in
    --budget) budget=$2; shift 2 ;;
    --no-bench) bench=0; shift ;;
    *) break ;;
  esac
done
deadline=$((SECONDS + budget))
OUT=${OUT:-/tmp/medsoup-device-out}
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-gpu}
PYTHON=${PYTHON:-python3}
SITE=/tmp/medsoup-site
mkdir -p "$OUT"

say() { echo "[session +${SECONDS}s] $*"; }
left() { echo $((deadline - SECONDS)); }

if ! ls .device/wheels/*.whl >/dev/null 2>&1; then
  echo "session.sh: .device/wheels is empty: run benchmarks/device/pack.sh here and carry .device" >&2
  exit 2
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  .device/wheels/*.whl || exit 2
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
export MEDSOUP_DATA=$PWD/.device/data HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
say "wheels installed"
{
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" - <<'EOF'
import sys, torch, timm, medmnist, papermill
print("python", sys.version.split()[0], "| torch", torch.__version__, "| timm", timm.__version__,
      "| medmnist", medmnist.__version__, "| papermill", papermill.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$OUT/env.txt"

if [ "$bench" -eq 1 ]; then
  say "bench_fit on $DEVICE"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  timeout -k 10 "$(( $(left) / 3 ))" "$PYTHON" benchmarks/bench_fit.py --device "$DEVICE" ${BENCH_ARGS:-} 2>&1 |
    tee "$OUT/bench_fit_$DEVICE.txt"
  say "bench_fit: exit ${PIPESTATUS[0]}"
fi

if ls .device/executed/*.stamp >/dev/null 2>&1; then
  mkdir -p book/executed && cp .device/executed/* book/executed/
  say "resuming: $(ls .device/executed/*.stamp | wc -l) executions of earlier sessions copied into book/executed"
fi
if [ "$(left)" -gt 60 ]; then
  say "notebooks at profile $PROFILE, $(( $(left) - 30 )) s left for them"
  timeout -k 10 "$(( $(left) - 30 ))" "$PYTHON" -m medsoup.book execute --profile "$PROFILE" "$@" 2>&1 |
    tee "$OUT/book.log"
  say "notebooks: exit ${PIPESTATUS[0]} (124: stopped at the budget's end; finished notebooks are recorded)"
else
  say "no time left for the notebooks"
fi

tar czf "$OUT/results.tar.gz" results book/executed 2>/dev/null
say "packed $(du -h "$OUT/results.tar.gz" | cut -f1) into results.tar.gz"
