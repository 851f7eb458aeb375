"""``ferry ingest`` against a real ``ferry serve``: kill -9 and rerun, server restart, refusals.

Every run is the real CLI in its own process; the server's listing is the judge: each
local file is present exactly once (by its relative path) with the local SHA-256.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import termios
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.auth.keys import ApiKeyStore
from app.db.engine import create_engine, create_session_factory
from tests.e2e.ingest_tree import PNG_HEADER, make_tree
from tests.e2e.support import sha256_file
from tests.support.faulty_proxy import faulty_proxy
from tests.support.services import FERRY, FerryProcess, ferry_env, free_port, running_ferry


def _ingest(
    server: FerryProcess, tree: Path, state: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
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
        env={**server.env, **(env or {})},
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


def _wait_for_a_verified_file(state: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while '"verified_sha256": "' not in (state.read_text() if state.exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


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
    (tree / "huge.bin").write_bytes(bytes(4 * 1024 * 1024 + 1))  # over Tus-Max-Size
    state = tmp_path / "state.json"
    report = tmp_path / "report.json"
    limits = {"FERRY_DENIED_TYPES": "image/png", "FERRY_MAX_SIZE": str(4 * 1024 * 1024)}
    with running_ferry(tmp_path, limits) as server:
        run = _ingest(server, tree, state, "--json", str(report), "--exclude", "*.tmp")
        code, _out, err = _finish(run)
        assert code == 1
        for relative in refused:
            assert relative in err
        summary = json.loads(report.read_text())
        failed = {
            item["relative"]: (item["error"], item["attempts"])
            for item in summary["files"]
            if item["status"] == "failed"
        }
        assert set(failed) == refused | {"huge.bin"}
        error, attempts = failed.pop("huge.bin")
        assert "Tus-Max-Size" in error and attempts == 0  # refused without sending a byte
        assert all("415" in error for error, _ in failed.values())
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
    """Without a key, or with a wrong one, the run stops at once with one line naming
    --api-key and FERRY_API_KEY (not one failure per file)."""
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
        for extra, words in (((), "requires an API key"), (("--api-key", "nope"), "refused")):
            code, out, err, seconds = _run_cli(
                ["ingest", str(tree), "--server", server.url, *extra], tmp_path, server.env
            )
            assert code == 1
            assert out == ""
            assert len(err.splitlines()) == 1, err
            assert words in err and "--api-key" in err and "FERRY_API_KEY" in err, err
            assert seconds < 5
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
        # A key revoked in the middle of a run: the run stops, saying so once.
        more = _random_tree(tmp_path / "more", 30)
        state = tmp_path / "s3.json"
        report = tmp_path / "revoked.json"
        slow = ["--bwlimit", "64K", "-j", "2", "--json", str(report)]
        run = _ingest(server, tmp_path / "more", state, *slow, env={"FERRY_API_KEY": key})
        _wait_for_a_verified_file(state, run)
        asyncio.run(_revoke(server.data_dir / "ferry.db", key))  # faster than the CLI
        code, out, err = _finish(run, timeout=60)
        assert code == 1, (out, err)
        assert err.splitlines() == [
            "ferry ingest: the server refused the API key (HTTP 401): check --api-key or "
            "FERRY_API_KEY"
        ]
        summary = json.loads(report.read_text())
        assert summary["error"].startswith("the server refused the API key")
        assert summary["totals"]["uploaded"]["files"] >= 1
        assert summary["totals"]["failed"]["files"] == 0
        totals = summary["totals"]
        assert totals["interrupted"]["files"] == len(more) - totals["uploaded"]["files"] > 0


async def _revoke(database: Path, key: str) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        assert await ApiKeyStore(create_session_factory(engine)).revoke(key) == 1
    finally:
        await engine.dispose()


def _run_cli(
    arguments: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> tuple[int, str, str, float]:
    """``ferry ARGUMENTS`` to the end: exit status, stdout, stderr and wall seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [str(FERRY), *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def _file_count(server: FerryProcess) -> int:
    return int(httpx.get(f"{server.url}/api/files", params={"limit": 1}).json()["total"])


def _uploads_created(server: FerryProcess) -> float:
    """``ferry_uploads_created_total`` from ``/metrics``: tus creations so far."""
    text = httpx.get(f"{server.url}/metrics").text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ferry_uploads_created_total")
    ]
    return sum(values)


def _random_tree(root: Path, count: int) -> dict[str, str]:
    """``count`` files of random bytes, some nested, unicode names; relative path → SHA-256.

    At least 32 random bytes each, so no file matches another test's on the shared server
    (the server skips a file with the same name, size and SHA-256; with one random byte,
    ``f 0.bin`` of two tests matched one time in 256).
    """
    expected = {}
    for index in range(count):
        relative = f"dossier {index % 3}/fichier é {index}.bin" if index % 2 else f"f {index}.bin"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(32 + (index * 7919) % 65536))
        expected[relative] = sha256_file(path)
    return expected


def _add_files_to_leave_out(tree: Path) -> None:
    (tree / "scratch.tmp").write_bytes(b"excluded by pattern")
    (tree / "a link").symlink_to(next(path for path in tree.iterdir() if path.is_file()))


def test_rerun_from_another_directory_stores_nothing_twice_and_reports_the_skips(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    """The state file is per directory; the server's records are not: a rerun from elsewhere
    finds every file there (same name, size, SHA-256) and sends nothing."""
    tree = tmp_path / "tree"
    expected = _random_tree(tree, 40)
    _add_files_to_leave_out(tree)
    env = {**shared_ferry.env}
    args = ["ingest", str(tree), "--server", shared_ferry.url, "--exclude", "*.tmp"]
    for directory in ("first", "second"):
        (tmp_path / directory).mkdir()
    code, out, err, _ = _run_cli([*args, "--json", "first.json"], tmp_path / "first", env)
    assert code == 0, (out, err)
    stored = _file_count(shared_ferry)
    created = _uploads_created(shared_ferry)
    code, out, err, _ = _run_cli([*args, "--json", "second.json"], tmp_path / "second", env)
    assert code == 0, (out, err)
    assert _file_count(shared_ferry) == stored
    assert _uploads_created(shared_ferry) == created
    report = json.loads((tmp_path / "second" / "second.json").read_text())
    assert report["totals"]["uploaded"]["files"] == 0
    assert report["totals"]["skipped"]["files"] == len(expected)
    assert {item["reason"] for item in report["files"]} == {
        "already on the server (same name, size and SHA-256)"
    }
    first = json.loads((tmp_path / "first" / "first.json").read_text())
    assert {item["relative"]: item["uid"] for item in report["files"]} == {
        item["relative"]: item["uid"] for item in first["files"]
    }
    left_out = {item["relative"]: item["reason"] for item in report["excluded"]}
    assert left_out == {
        "scratch.tmp": "excluded by --exclude '*.tmp'",
        "a link": "symbolic link, not followed without --follow-symlinks",
    }
    assert report["totals"]["excluded"]["files"] == 2
    assert "skipped: on the server" in out and "excluded" in out
    # The state file written by that rerun skips without asking for hashes next time.
    code, out, err, _ = _run_cli([*args, "--json", "third.json"], tmp_path / "second", env)
    assert code == 0, (out, err)
    third = json.loads((tmp_path / "second" / "third.json").read_text())
    assert {item["reason"] for item in third["files"]} == {
        "uploaded and verified by an earlier run (state file)"
    }


@pytest.mark.parametrize(
    ("server", "words", "status"),
    [
        ("127.0.0.1:{port}", "has no scheme", 2),
        ("http://nonexistent.invalid:8000", "unknown host 'nonexistent.invalid'", 1),
        ("http://127.0.0.1:{port}", "connection refused", 1),
    ],
    ids=["no-scheme", "unknown-host", "refused-port"],
)
def test_a_bad_server_fails_in_under_5_seconds_with_one_line(
    tmp_path: Path, server: str, words: str, status: int
) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 5, seed=9)
    url = server.format(port=free_port())
    code, out, err, seconds = _run_cli(
        ["ingest", str(tree), "--server", url], tmp_path, ferry_env(tmp_path / "data")
    )
    assert code == status
    assert seconds < 5
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert words in err, err
    assert not (tmp_path / ".ferry-ingest-state.json").exists()


def test_a_path_that_does_not_exist_fails_before_anything_else(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"x")
    missing = tmp_path / "no such dir"
    code, out, err, seconds = _run_cli(
        ["ingest", str(tmp_path / "real.bin"), str(missing), "--server", "http://127.0.0.1:9"],
        tmp_path,
        ferry_env(tmp_path / "data"),
    )
    assert code == 2
    assert out == ""
    assert err.strip() == f"ferry ingest: no such file or directory: {missing}"
    assert seconds < 5


def test_server_url_keeps_its_path_through_a_prefix_stripping_proxy(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    """``--server http://proxy/prefix``: every request goes below /prefix (the server's own
    ``Location`` points at the root, which the proxy does not route)."""
    tree = tmp_path / "tree"
    expected = _random_tree(tree, 12)
    (tree / "bigger.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))  # streamed PATCHes
    env = {**shared_ferry.env}
    with faulty_proxy(shared_ferry.url, strip_prefix="/prefix") as proxy:
        args = ["ingest", str(tree), "--server", f"{proxy.url}/prefix", "--chunk-size", "2M"]
        code, out, err, _ = _run_cli([*args, "--json", "r.json"], tmp_path, env)
        assert code == 0, (out, err)
        targets = [line.split(" ")[1] for line in proxy.requests]
    assert targets and all(target.startswith("/prefix/") for target in targets), targets
    assert any(target.startswith("/prefix/files/") for target in targets)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["uploaded"]["files"] == len(expected) + 1
    uids = {item["uid"] for item in report["files"]}
    query = [("uid", uid) for uid in uids] + [("limit", "100")]
    page = httpx.get(f"{shared_ferry.url}/api/files", params=query).json()
    assert page["total"] == len(uids) == len(expected) + 1


def test_a_small_file_whose_creation_answer_was_lost_is_stored_once(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    """The server stored the file, the answer never came (it died after its commit): the
    retry finds the stored copy instead of sending the file again."""
    tree = tmp_path / "tree"
    expected = _random_tree(tree, 6)
    with faulty_proxy(shared_ferry.url) as proxy:
        proxy.lose_response("POST /files", times=2)
        args = ["ingest", str(tree), "--server", proxy.url, "--parallel", "1"]
        code, out, err, _ = _run_cli([*args, "--json", "r.json"], tmp_path, shared_ferry.env)
        assert code == 0, (out, err)
        assert proxy.count("POST /files") == len(expected)  # no creation was repeated
    report = json.loads((tmp_path / "r.json").read_text())
    uids = {item["uid"] for item in report["files"]}
    query = [("uid", uid) for uid in uids] + [("limit", "100")]
    page = httpx.get(f"{shared_ferry.url}/api/files", params=query).json()
    assert page["total"] == len(uids) == len(expected)


def test_a_server_url_without_tus_below_it_fails_with_one_line_and_stores_nothing(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    """``http://host/api`` used to upload to the host root; now the path is kept, and
    nothing answers tus there."""
    tree = tmp_path / "tree"
    _random_tree(tree, 3)
    stored = _file_count(shared_ferry)
    code, out, err, seconds = _run_cli(
        ["ingest", str(tree), "--server", f"{shared_ferry.url}/api"], tmp_path, shared_ferry.env
    )
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1, err
    assert f"no tus server at {shared_ferry.url}/api/files/" in err
    assert seconds < 5
    assert _file_count(shared_ferry) == stored


def test_ctrl_c_writes_the_json_report_keeps_the_journal_and_exits_130(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for index in range(24):
        (tree / f"part {index:02}.bin").write_bytes(os.urandom(128 * 1024))
    state = tmp_path / "state.json"
    report_path = tmp_path / "report.json"
    stored = _file_count(shared_ferry)
    args = ["--bwlimit", "1M", "--parallel", "2", "--json", str(report_path)]
    run = _ingest(shared_ferry, tree, state, *args)
    _wait_for_a_verified_file(state, run)
    os.kill(run.pid, signal.SIGINT)
    code, out, err = _finish(run, timeout=10)
    assert code == 130, (out, err)
    assert "interrupted" in err
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True and report["ok"] is False
    uploaded = report["totals"]["uploaded"]["files"]
    assert uploaded >= 1
    assert report["totals"]["interrupted"]["files"] == 24 - uploaded > 0
    assert _file_count(shared_ferry) - stored >= uploaded
    code, out, err = _finish(_ingest(shared_ferry, tree, state, "--json", str(report_path)))
    assert code == 0, (out, err)
    again = json.loads(report_path.read_text())
    assert again["totals"]["skipped"]["files"] >= uploaded
    assert again["totals"]["failed"]["files"] == 0
    assert _file_count(shared_ferry) - stored == 24


def test_dry_run_lists_uploads_and_skips_and_creates_nothing(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    tree = tmp_path / "tree"
    _random_tree(tree / "old", 6)
    _random_tree(tree / "new", 5)
    _add_files_to_leave_out(tree)
    code, out, err, _ = _run_cli(
        ["ingest", str(tree / "old"), "--server", shared_ferry.url], tmp_path, shared_ferry.env
    )
    assert code == 0, (out, err)
    stored, created = _file_count(shared_ferry), _uploads_created(shared_ferry)
    state = tmp_path / "fresh-state.json"
    code, out, err, _ = _run_cli(
        [
            "ingest",
            str(tree),
            "--server",
            shared_ferry.url,
            "--dry-run",
            "--exclude",
            "*.tmp",
            "--state",
            str(state),
            "--json",
            "dry.json",
        ],
        tmp_path,
        shared_ferry.env,
    )
    assert code == 0, (out, err)
    assert (_file_count(shared_ferry), _uploads_created(shared_ferry)) == (stored, created)
    assert not state.exists()
    actions = {line.split("  ")[-1]: line.split()[0] for line in out.splitlines() if "  " in line}
    report = json.loads((tmp_path / "dry.json").read_text())
    assert report["dry_run"] is True
    statuses = {item["relative"]: item["status"] for item in report["files"]}
    assert sorted(statuses.values()) == ["planned"] * 5 + ["skipped"] * 6
    for relative, status in statuses.items():
        assert actions[f"{relative}"] == ("upload" if status == "planned" else "skip"), out
    assert "leave out" in out and "scratch.tmp" in out


def test_bwlimit_bounds_the_rate_of_the_whole_run(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    """2 MiB at 1 MiB/s (two workers sharing the limit) take at least 1.5 s; unlimited,
    the same bytes take a fraction of that on loopback."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for index in range(2):
        (tree / f"half {index}.bin").write_bytes(os.urandom(1024 * 1024))
    code, out, err, seconds = _run_cli(
        ["ingest", str(tree), "--server", shared_ferry.url, "--bwlimit", "1M", "-j", "2"],
        tmp_path,
        shared_ferry.env,
    )
    assert code == 0, (out, err)
    assert seconds >= 1.5


def test_progress_on_a_terminal_is_one_bar_with_speed_and_stays_small(
    tmp_path: Path, shared_ferry: FerryProcess
) -> None:
    """A few seconds of 30 files on a pseudo-terminal: tens of kilobytes at most (the old
    display wrote 644 KB in 5 s), ending with the overall bar's speed."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for index in range(30):
        (tree / f"file {index:02}.bin").write_bytes(os.urandom(100_000))
    command = [str(FERRY), "ingest", str(tree), "--server", shared_ferry.url, "--bwlimit", "1M"]
    code, output = _run_on_a_terminal(command, tmp_path, shared_ferry.env)
    assert code == 0, output[-3000:]
    assert len(output) < 50_000
    text = output.decode(errors="replace")
    assert "30/30 files" in text
    assert re.search(r"\d MB/s", text), text[-2000:]
    assert text.count("file 29.bin") < 20  # active files are a few lines, not a bar each


def _run_on_a_terminal(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``command`` with a 120x30 pseudo-terminal as stdin/stdout/stderr; all it wrote."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    environment = {key: value for key, value in env.items() if key not in {"COLUMNS", "LINES"}}
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**environment, "TERM": "xterm-256color"},
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = bytearray()
    while True:
        try:
            block = os.read(leader, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not block:
            break
        output += block
    os.close(leader)
    return process.wait(timeout=30), bytes(output)
