#!/usr/bin/env bash
# Writes requirements.lock: every package the container image installs, pinned with the
# hashes of its published files, resolved from pyproject.toml's runtime dependencies plus
# its build backend (setuptools: the image installs Ferry without build isolation, so
# nothing unpinned is fetched). Run it after changing pyproject.toml's dependencies;
# tests/test_containers.py fails while the lock no longer covers them.
#
# Resolution targets CPython 3.11 (the image's Python) on every platform (`--universal`),
# so the lock also serves arm64 builds. uv comes, pinned, from PyPI into a throwaway
# virtualenv; nothing is installed in .venv.
#
# Usage: bash scripts/container-lock.sh [--upgrade]   (without it, pins only move when they must)
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/uv"
"$work/uv/bin/pip" install --quiet "uv==$UV_VERSION"
build_backend=$(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
printf '%s\n' "$build_backend" | "$work/uv/bin/uv" pip compile --quiet \
  pyproject.toml - \
  --universal --python-version 3.11 --generate-hashes \
  --custom-compile-command 'bash scripts/container-lock.sh' \
  --output-file requirements.lock "$@"
