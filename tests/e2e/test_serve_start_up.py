"""What ``ferry serve`` refuses, or respects, before it serves: real processes, real ``.env``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.services import FERRY, free_port


def _clean_env(**variables: str) -> dict[str, str]:
    """The test's environment without any FERRY_* variable, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(PYTHONUNBUFFERED="1", **variables)
    return env


def test_serve_refuses_the_env_example_signing_key_and_an_unsigned_webhook(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    base = f"FERRY_DATA_DIR={tmp_path / 'data'}\nFERRY_LOG_DIR={tmp_path / 'logs'}\n"
    cases = {
        "FERRY_SIGNING_KEY=change-me-to-a-long-random-string\n": "FERRY_SIGNING_KEY",
        "FERRY_SIGNING_KEY=short-key\n": "FERRY_SIGNING_KEY",
        "FERRY_WEBHOOK_URL=http://127.0.0.1:9/hooks\n": "FERRY_WEBHOOK_SECRET",
    }
    for line, variable in cases.items():
        env_file.write_text(base + line)
        done = subprocess.run(
            [str(FERRY), "serve", "--port", str(free_port())],
            env=_clean_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (line, done.stderr)
        assert done.stderr.startswith(f"ferry: invalid configuration: {variable}: "), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "data").exists(), "nothing may be touched before refusing"
