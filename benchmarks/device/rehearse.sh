#!/usr/bin/env bash
# Rehearse a GPU session on this machine, without a GPU: pack the kit for this machine's Python, make a
# Python that holds only what the GPU image is assumed to hold (pack.sh's IMAGE_HOLDS and their
# dependencies, linked from .venv), and run session.sh there on the CPU at the smoke profile, from a
# clone of the committed tree, so that a module the kit lacks fails here and not in a lent session.
#
#   bash benchmarks/device/rehearse.sh [--budget SECONDS]     # default 400; writes under /tmp/medsoup-rehearsal
#
# The data come from $MEDSOUP_DATA, else ../shared/data/medmnist beside the repository.
set -euo pipefail
budget=400
if [ "${1:-}" = --budget ]; then
  budget=$2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
WORK=/tmp/medsoup-rehearsal
VENV_PYTHON=$ROOT/.venv/bin/python
[ -x "$VENV_PYTHON" ] || { echo "rehearse.sh: needs .venv (bash run.sh test creates it)" >&2; exit 1; }
rm -rf "$WORK" /tmp/medsoup-site
mkdir -p "$WORK"
git clone -q "$ROOT" "$WORK/repo"
MEDSOUP_DATA=${MEDSOUP_DATA:-$(cd "$ROOT/../shared/data/medmnist" && pwd)} \
PYTHON_VERSION=$("$VENV_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') \
  bash "$WORK/repo/benchmarks/device/pack.sh" 2> >(grep -v '^WARNING: Location' >&2)

# The image's stand-in: a bare venv whose site-packages links IMAGE_HOLDS and their dependencies from .venv.
holds=$(eval "$(sed -n '/^IMAGE_HOLDS=(/,/)/p' benchmarks/device/pack.sh)"; echo "${IMAGE_HOLDS[@]}")
"$VENV_PYTHON" -m venv "$WORK/venv"
"$VENV_PYTHON" - "$WORK/site" $holds <<'EOF'
import importlib.metadata as md, pathlib, re, sys
canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()
site, wanted = pathlib.Path(sys.argv[1]), [canonical(n) for n in sys.argv[2:]]
dists = {canonical(d.metadata["Name"]): d for d in md.distributions()}
todo, seen = list(wanted), set()
while todo:  # the dependencies (without extras) of what the image holds, as installed in .venv
    name = todo.pop()
    if name in seen or name not in dists:
        continue
    seen.add(name)
    for requirement in dists[name].requires or []:
        if "extra ==" not in requirement:
            todo.append(canonical(re.match(r"[A-Za-z0-9_.-]+", requirement).group()))
site.mkdir(parents=True)
for name in sorted(seen):
    for top in {f.parts[0] for f in dists[name].files or [] if f.parts[0] != ".." and not f.name.endswith(".pth")}:
        source = pathlib.Path(dists[name].locate_file(top))
        if source.exists() and not (site / top).exists():
            (site / top).symlink_to(source)
print(f"rehearse.sh: a Python holding {len(seen)} distributions: {', '.join(sorted(seen))}")
EOF
echo "$WORK/site" > "$(echo "$WORK"/venv/lib/python3*/site-packages)/image.pth"
cd "$WORK/repo"
env -i PATH="$WORK/venv/bin:/usr/bin:/bin" HOME="$HOME" DEVICE=cpu PROFILE=smoke OUT="$WORK/out" \
  BENCH_ARGS="--models smallcnn@28 --rounds 1 --epochs 1 --subset 256" \
  bash benchmarks/device/session.sh --budget "$budget"
