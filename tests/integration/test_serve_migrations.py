"""``ferry serve`` migrates in a child process: the server never holds Alembic."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.support.services import FERRY, free_port, python_snippet_output

MIGRATE_APART = """
import sqlite3, sys
from app.db.engine import migrate_apart
from app.settings import load_settings
settings = load_settings(env_file=None)
migrate_apart(settings)
tables = {row[0] for row in sqlite3.connect(sys.argv[1]).execute(
    "SELECT name FROM sqlite_master WHERE type = 'table'")}
print("alembic" in sys.modules, "uploads" in tables and "alembic_version" in tables)
"""


def test_migrations_run_apart_leave_the_database_current_and_alembic_unloaded(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ferry.db"
    printed = python_snippet_output(
        MIGRATE_APART,
        str(database),
        env={"FERRY_DATABASE_URL": f"sqlite+aiosqlite:///{database}"},
    )
    assert printed.split() == ["False", "True"]


def test_serve_stops_with_a_clear_message_when_migrations_fail(tmp_path: Path) -> None:
    # The database answers, but names a revision this Ferry does not know (a newer one's).
    database = tmp_path / "data" / "ferry.db"
    database.parent.mkdir()
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES ('f00dfeed')")
    done = subprocess.run(
        [str(FERRY), "serve", "--port", str(free_port())],
        env={
            "FERRY_DATA_DIR": str(tmp_path / "data"),
            "FERRY_LOG_DIR": str(tmp_path / "logs"),
            "FERRY_AUTH": "none",
            "PATH": "/usr/bin",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.endswith("ferry: database migrations failed (exit status 1); see above\n")
    assert "f00dfeed" in done.stderr, "the child's reason is shown above the message"
