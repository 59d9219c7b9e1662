#!/usr/bin/env bash
# Create .venv with the pinned dependency set (idempotent). Sourced by the other scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import msinn, compressai, ray, pyarrow, lepton_jpeg_python, imagecodecs, webdataset" 2>/dev/null; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-lock.txt
  .venv/bin/python -m pip install -q --no-deps -e .
fi
# shellcheck disable=SC1091
. .venv/bin/activate
