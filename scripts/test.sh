#!/usr/bin/env bash
# Install (first run only), lint, and run the test suite.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
ruff check msinn pipeline jobs tests bench scripts
# a venv made before pytest-xdist joined the lock file: add it
python -c "import xdist" 2>/dev/null || python -m pip install -q "$(grep '^pytest-xdist==' requirements-lock.txt)"
# Two workers: the tests on one shared Ray cluster in one, the tests with clusters of their own and then the
# codec tests in the other (tests/conftest.py says why; measured in docs/architecture.md "Tests").
python -m pytest -q --durations=15 -n 2 --dist loadgroup "$@"
