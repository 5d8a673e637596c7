#!/usr/bin/env bash
# Lint, type-check and test instasal: the docstrings' examples, then the suite (sets up .venv first
# when needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy src tests
.venv/bin/python -m pytest -q --doctest-modules src/instasal
.venv/bin/python -m pytest -n 2 -q
