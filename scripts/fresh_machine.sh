#!/usr/bin/env bash
# A new user's first minutes, following README.md literally on a fresh virtual environment:
#   1. README's install command (read from README.md itself, so the two cannot drift apart),
#   2. `napari-msd demo --screenshot` (README's headless demo),
#   3. napari started the ordinary way, the sample opened from the menu, Train and Predict pressed
#      (scripts/plain_napari_session.py, 100 training steps: from scratch, fewer steps of the paper MS-D predict
#      one class everywhere on the sample, which the dock refuses to make a model version),
#   4. `napari-msd sample -o DIR` and the training command it prints (README's "Your own data").
# Needs Xvfb (xvfb-run). With FRESH_TORCH=cpu (the default) PyTorch's CPU-only build is installed first, as
# README advises for a machine without a GPU (TORCH_SPEC, default "torch", names it, e.g. "torch==2.13.0");
# FRESH_TORCH=default installs exactly what README's command pulls (with CUDA: about 4 GB).
# Usage: scripts/fresh_machine.sh [WORKDIR]   (a temporary folder by default; removed afterwards)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"

install="$(grep -m1 -o 'pip install -e "\.\[all\]"' "$repo/README.md")" \
    || { echo "FAILED: README.md no longer shows the install command this script follows"; exit 1; }

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install -q --upgrade pip
if [ "${FRESH_TORCH:-cpu}" = cpu ]; then
    python -m pip install -q "${TORCH_SPEC:-torch}"
fi
(cd "$repo" && echo "+ $install" && eval "$install -q")

cd "$work"
echo "+ xvfb-run -a napari-msd demo --screenshot demo.png"
xvfb-run -a napari-msd demo --screenshot demo.png
[ -s demo.png ] || { echo "FAILED: the demo saved no screenshot"; exit 1; }

echo "+ xvfb-run -a python scripts/plain_napari_session.py"
xvfb-run -a python "$repo/scripts/plain_napari_session.py"

echo "+ napari-msd sample -o sample"
next="$(napari-msd sample -o sample | sed -n 's/^next: //p')"
[ -n "$next" ] || { echo "FAILED: napari-msd sample printed no next command"; exit 1; }
short="${next/--time 60/--steps 100}"  # the printed command, shorter
echo "+ $short"
eval "$short --quiet"
napari-msd info membranes.msd > /dev/null
echo "OK: README followed on a fresh environment: install, headless demo, napari by hand, sample and CLI training"
