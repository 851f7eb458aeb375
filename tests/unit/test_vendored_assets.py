"""The browser assets Ferry serves itself are byte for byte those of the locked npm packages.

``scripts/vendor-assets/vendor.sh`` copies them from the packages pinned in its
``package-lock.json`` (``npm ci`` checks each tarball's integrity against the lockfile);
``scripts/install-test-deps.sh`` installs the same packages, so this test sees a copy that
was edited by hand, or a lockfile bumped without running the script.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.services import require_service

ROOT = Path(__file__).parents[2]
PACKAGES = ROOT / "scripts" / "vendor-assets"
SWAGGER_UI = ROOT / "static" / "vendor" / "swagger-ui"


def test_vendored_swagger_ui_is_the_locked_swagger_ui_dist() -> None:
    installed = PACKAGES / "node_modules" / "swagger-ui-dist"
    require_service(
        installed.is_dir(), "scripts/vendor-assets/node_modules (run scripts/install-test-deps.sh)"
    )
    lock = json.loads((PACKAGES / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/swagger-ui-dist"]["version"]
    assert json.loads((installed / "package.json").read_text())["version"] == locked
    copies = sorted(path.name for path in SWAGGER_UI.iterdir())
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"} <= set(copies)
    for name in copies:
        assert (SWAGGER_UI / name).read_bytes() == (installed / name).read_bytes(), name
