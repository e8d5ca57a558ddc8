#!/usr/bin/env bash
# The README's second command: the Debian packages the suite needs (.ci/apt-packages, when root), a fresh
# virtualenv, the package with its test extras, the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=$(for p in $(grep -v '^\s*#' .ci/apt-packages); do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    echo "installing Debian packages: $missing" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing) \
      >/dev/null 2>&1 || echo "could not install: $missing (the tests that need them will skip)" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
