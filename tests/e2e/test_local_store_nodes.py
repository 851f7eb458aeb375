"""Local storage on several machines: only with one shared data directory.

Two ``ferry serve`` nodes on one PostgreSQL database stand for two machines (their own
FERRY_NODE_ID). With data directories of their own, the second refuses to start with one
line; sharing the first one's directory, it starts and serves the first one's files.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import httpx

from tests.e2e.support import OCTETS, TUS
from tests.support.services import FERRY, FerryProcess, ferry_env, postgres_database


def _node(data_dir: Path, url: str, node_id: str) -> FerryProcess:
    env = ferry_env(data_dir, {"FERRY_DATABASE_URL": url, "FERRY_NODE_ID": node_id})
    return FerryProcess(data_dir=data_dir, env=env)


def test_a_second_machine_with_a_data_dir_of_its_own_refuses_to_start(tmp_path: Path) -> None:
    with postgres_database() as url:
        first = _node(tmp_path / "a" / "data", url, "machine-a")
        first.data_dir.mkdir(parents=True)
        first.start()
        try:
            second_dir = tmp_path / "b" / "data"
            second_dir.mkdir(parents=True)
            refused = subprocess.run(
                [str(FERRY), "serve", "--host", "127.0.0.1", "--port", "1"],
                env=_node(second_dir, url, "machine-b").env,
                cwd=second_dir.parent,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert refused.returncode == 2, refused.stderr
            said = [line for line in refused.stderr.splitlines() if line.startswith("ferry:")]
            assert len(said) == 1, refused.stderr  # (after the migration log)
            assert said[0].startswith("ferry: FERRY_DATA_DIR: "), refused.stderr
            assert "Traceback" not in refused.stderr
        finally:
            first.stop()


def test_machines_sharing_one_data_dir_serve_each_others_uploads(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    data = os.urandom(3 * 1024 * 1024 + 5)
    with postgres_database() as url:
        nodes = [_node(shared, url, f"machine-{name}") for name in "ab"]
        for node in nodes:
            node.start()
        try:
            created = httpx.post(
                f"{nodes[0].url}/files/",
                headers={**TUS, "Upload-Length": str(len(data))},
                timeout=30,
            )
            path = "/files/" + created.headers["location"].rsplit("/", 1)[-1]
            half = len(data) // 2
            for node, offset, piece in ((nodes[0], 0, data[:half]), (nodes[1], half, data[half:])):
                answer = httpx.patch(
                    f"{node.url}{path}",
                    headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
                    content=piece,
                    timeout=60,
                )
                assert answer.status_code == 204, answer.text
            for node in nodes:
                body = httpx.get(f"{node.url}{path}", timeout=60).content
                assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
        finally:
            for node in nodes:
                node.stop()


def test_a_second_server_on_the_same_sqlite_database_refuses_to_start(tmp_path: Path) -> None:
    """SQLite is the one-process embedded default: one server per database file."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first_dir = tmp_path / "a" / "data"
    first_dir.mkdir(parents=True)
    first = FerryProcess(
        data_dir=first_dir, env=ferry_env(first_dir, {"FERRY_DATABASE_URL": database})
    )
    first.start()
    try:
        second_dir = tmp_path / "b" / "data"
        second_dir.mkdir(parents=True)
        refused = subprocess.run(
            [str(FERRY), "serve", "--host", "127.0.0.1", "--port", "1"],
            env=ferry_env(second_dir, {"FERRY_DATABASE_URL": database}),
            cwd=second_dir.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith("ferry: FERRY_DATABASE_URL: "), refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert httpx.get(f"{first.url}/health", timeout=10).status_code == 200
    finally:
        first.stop()
