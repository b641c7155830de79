#!/usr/bin/env bash
# Fresh machine -> installed quantkit with test extras in .venv -> the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "torch==2.13.0" -e ".[test]"
.venv/bin/python -m pytest -q "$@"
