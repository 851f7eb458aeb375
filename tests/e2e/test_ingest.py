"""``ferry ingest`` against a real ``ferry serve``: kill -9 and rerun, server restart, refusals.

Every run is the real CLI in its own process; the server's listing is the judge: each
local file is present exactly once (by its relative path) with the local SHA-256.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.e2e.ingest_tree import PNG_HEADER, make_tree
from tests.support.services import FERRY, FerryProcess, running_ferry


def _ingest(server: FerryProcess, tree: Path, state: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(FERRY),
            "ingest",
            str(tree),
            "--server",
            server.url,
            "--state",
            str(state),
            "--progress",
            "plain",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**server.env},
    )


def _server_files(server: FerryProcess) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    offset: int | None = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while offset is not None:
            page = http.get("/api/files", params={"limit": 1000, "offset": offset}).json()
            items += page["items"]
            offset = page["next_offset"]
    return items


def _assert_exactly_once(server: FerryProcess, expected: dict[str, str]) -> None:
    items = _server_files(server)
    counts = Counter(str(item["metadata"]["relative_path"]) for item in items)  # type: ignore[index]
    duplicates = {path: n for path, n in counts.items() if n > 1}
    assert duplicates == {}
    assert set(counts) == set(expected)
    for item in items:
        relative = str(item["metadata"]["relative_path"])  # type: ignore[index]
        assert item["sha256"] == expected[relative], relative


def _wait_for_journal_lines(state: Path, lines: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if state.exists() and state.read_text(encoding="utf-8").count("\n") >= lines:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("ingest made no progress")


def _finish(process: subprocess.Popen[bytes], timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out.decode(), err.decode()


def test_ingest_killed_with_sigkill_then_rerun_stores_every_file_once(tmp_path: Path) -> None:
    """~500 files (0 B to 3 MiB, one of 40 MiB, nested, unicode); kill -9 midway; rerun."""
    tree = tmp_path / "tree"
    expected = make_tree(tree, 480, big_mib=40)
    state = tmp_path / "state.json"
    report = tmp_path / "report.json"
    with running_ferry(tmp_path) as server:
        first = _ingest(server, tree, state, "--parallel", "6", "--chunk-size", "4M")
        _wait_for_journal_lines(state, 250, first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        second = _ingest(server, tree, state, "--parallel", "6", "--json", str(report))
        code, out, err = _finish(second)
        assert code == 0, (out, err)
        summary = json.loads(report.read_text())
        assert summary["ok"] is True
        assert summary["totals"]["skipped"]["files"] > 0  # the first run's verified files
        assert summary["totals"]["failed"]["files"] == 0
        _assert_exactly_once(server, expected)
        # A third run has nothing left to do.
        code, out, err = _finish(_ingest(server, tree, state, "--json", str(report)))
        assert code == 0, (out, err)
        assert json.loads(report.read_text())["totals"]["skipped"]["files"] == len(expected)


def test_ingest_run_inside_its_tree_never_uploads_its_state_file_even_after_kill_9(
    tmp_path: Path,
) -> None:
    """``ferry ingest .`` keeps its default state file in the tree it walks."""
    tree = tmp_path / "tree"
    expected = make_tree(tree, 200, big_mib=8, seed=13)
    state = tree / ".ferry-ingest-state.json"
    with running_ferry(tmp_path) as server:

        def run_inside() -> subprocess.Popen[bytes]:
            options = ["--progress", "plain", "--parallel", "4", "--chunk-size", "1M"]
            return subprocess.Popen(
                [str(FERRY), "ingest", ".", "--server", server.url, *options],
                cwd=tree,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**server.env},
            )

        first = run_inside()
        _wait_for_journal_lines(state, 100, first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        # What a kill during the journal's compaction leaves behind.
        state.with_name(state.name + ".tmp").write_text(state.read_text(encoding="utf-8"))
        code, out, err = _finish(run_inside())
        assert code == 0, (out, err)
        _assert_exactly_once(server, expected)  # the state file is not among them
        code, out, err = _finish(run_inside())
        assert code == 0, (out, err)
        _assert_exactly_once(server, expected)


def test_ingest_survives_a_server_restart_in_the_middle(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = make_tree(tree, 60, big_mib=16, seed=11)
    state = tmp_path / "state.json"
    with running_ferry(tmp_path) as server:
        run = _ingest(server, tree, state, "--parallel", "4", "--chunk-size", "2M")
        _wait_for_journal_lines(state, 30, run)
        server.kill()
        time.sleep(1.0)
        server.start()
        code, out, err = _finish(run)
        assert code == 0, (out, err)
        _assert_exactly_once(server, expected)


def test_ingest_against_a_refusing_server_fails_naming_the_files(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = make_tree(tree, 20, seed=3)
    refused = {f"pictures/photo {i}.png" for i in range(3)}
    for relative in refused:
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PNG_HEADER + os.urandom(20_000 * (1 + len(relative) % 3)))
    (tree / "skip-me.tmp").write_bytes(b"excluded")
    state = tmp_path / "state.json"
    report = tmp_path / "report.json"
    with running_ferry(tmp_path, {"FERRY_DENIED_TYPES": "image/png"}) as server:
        run = _ingest(server, tree, state, "--json", str(report), "--exclude", "*.tmp")
        code, _out, err = _finish(run)
        assert code == 1
        for relative in refused:
            assert relative in err
        summary = json.loads(report.read_text())
        failed = {
            item["relative"]: item["error"]
            for item in summary["files"]
            if item["status"] == "failed"
        }
        assert set(failed) == refused
        assert all("415" in error for error in failed.values())
        _assert_exactly_once(server, expected)


def test_ingest_help_documents_every_option() -> None:
    result = subprocess.run(
        [str(FERRY), "ingest", "--help"], capture_output=True, text=True, check=True
    )
    for option in (
        "--server",
        "--parallel",
        "--chunk-size",
        "--state",
        "--exclude",
        "--follow-symlinks",
        "--json",
        "--api-key",
        "--retries",
    ):
        assert option in result.stdout


def test_ingest_with_api_key_from_environment_stores_files_for_that_owner(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = make_tree(tree, 12, seed=5)
    with running_ferry(tmp_path, {"FERRY_AUTH": "keys"}) as server:
        key = subprocess.run(
            [str(FERRY), "keys", "create", "--owner", "carol"],
            env=server.env,
            cwd=server.data_dir.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        denied = _ingest(server, tree, tmp_path / "s1.json", "--retries", "0")
        code, _out, err = _finish(denied)
        assert code == 1
        assert "401" in err or "failed" in err
        run = subprocess.Popen(
            [
                str(FERRY),
                "ingest",
                str(tree),
                "--server",
                server.url,
                "--state",
                str(tmp_path / "s2.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**server.env, "FERRY_API_KEY": key},
        )
        code, out, err = _finish(run)
        assert code == 0, (out, err)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http:
            page = http.get("/api/files", params={"limit": 100}).json()
        assert page["total"] == len(expected)
