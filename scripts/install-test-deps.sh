#!/usr/bin/env bash
# Installs what the test suite needs beyond the Python virtualenv: npm packages for the
# tus-js-client interop tests (from the committed lockfile). Idempotent and quiet when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f tests/interop/js/package-lock.json ]; then
  if [ ! -d tests/interop/js/node_modules ] || [ tests/interop/js/package-lock.json -nt tests/interop/js/node_modules ]; then
    (cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
