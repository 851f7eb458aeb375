#!/usr/bin/env bash
# Copies the browser assets Ferry serves itself from the npm packages pinned in
# package-lock.json into static/vendor/, so no page of Ferry loads anything from a CDN.
# Run it after changing package.json (then commit package-lock.json and static/vendor/);
# tests/unit/test_vendored_assets.py checks the committed copies against the lockfile.
# --ignore-scripts: the packages are files to copy, nothing of theirs runs here.
set -euo pipefail
cd "$(dirname "$0")"

npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

swagger=../../static/vendor/swagger-ui
rm -rf "$swagger"
mkdir -p "$swagger"
for name in swagger-ui-bundle.js swagger-ui-standalone-preset.js swagger-ui.css \
    favicon-32x32.png LICENSE NOTICE; do
  cp node_modules/swagger-ui-dist/"$name" "$swagger/$name"
done
