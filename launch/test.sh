#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export JAX_PLATFORMS=cpu
# Lint first (syntax errors and pyflakes, pyproject.toml [tool.ruff]): fail fast, before the slow suite.
.venv/bin/python -m ruff check rehyat_jax tools bench configs tests
# --durations=15: the slowest tests are listed at the end, so a test that starts to cost minutes is seen.
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
