#!/usr/bin/env bash
# The README's second command: a fresh virtualenv, the package with its test extras, the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
