#!/usr/bin/env bash
# Install (first run only), lint, and run the test suite.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
ruff check msinn pipeline jobs tests bench scripts
python -m pytest -q --durations=15 "$@"
