#!/usr/bin/env bash
# Fresh machine -> installed quantkit in .venv -> the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "torch==2.13.0" -e ".[eval]"
.venv/bin/quantkit demo -o report "$@"
