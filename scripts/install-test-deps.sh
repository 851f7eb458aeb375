#!/usr/bin/env bash
# Installs what the test suite needs beyond the Python virtualenv: npm packages for the
# tus-js-client interop tests and the packages of the vendored browser assets (both from
# their committed lockfiles). Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f tests/interop/js/package-lock.json ]; then
  if [ ! -d tests/interop/js/node_modules ] || [ tests/interop/js/package-lock.json -nt tests/interop/js/node_modules ]; then
    (cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
# The packages static/vendor/ was copied from (tests/unit/test_vendored_assets.py compares);
# their install scripts never run.
vendor=scripts/vendor-assets
if [ ! -d "$vendor/node_modules" ] || [ "$vendor/package-lock.json" -nt "$vendor/node_modules" ]; then
  (cd "$vendor" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# The browser test (tests/browser) drives Debian's Chromium through Playwright (Playwright
# never downloads a browser here) and makes its MP4 with ffmpeg. Installed from apt only
# when a binary is missing; needs root, as on the CI machine.
missing_debs=()
[ -x /usr/bin/chromium ] || missing_debs+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || missing_debs+=(ffmpeg)
if [ "${#missing_debs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null
  else
    echo "install-test-deps: missing ${missing_debs[*]} (run as root to install them with apt-get)" >&2
  fi
fi
