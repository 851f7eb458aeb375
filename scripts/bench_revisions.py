"""Before/after benchmark of a refactor: this working tree against a git revision.

Both versions run as ``ferry serve`` processes on loopback, from the same virtualenv: the
revision is exported with ``git archive`` and put first on ``PYTHONPATH``, so only Ferry's
own code differs. Storage is the embedded default (SQLite + local disk, fsync included) or,
with ``--storage s3``, PostgreSQL (a fresh database each on 127.0.0.1:5432) and one
SeaweedFS (a prefix each). The workloads alternate between the two servers for several
rounds, in two halves with a fresh pair of servers each, started in the other order: in
A/A runs (the same code on both sides) one server process used 8-12 % more CPU per small
upload than the other for its whole life, so one pair alone can show a difference that
is not there. The script prints each version's median and spread, its server CPU per
unit (ms per file or request, s per GiB), and the median ratio (this tree / revision):

* 1 GiB in 8 MiB PATCHes (one connection);
* N x 64 KiB, POST + PATCH per file, 16 connections;
* N x 64 KiB creation-with-upload (one POST per file), 16 connections;
* N x HEAD of an unfinished upload (what a tus client sends to resume), 16 keep-alive
  connections;
* N x GET of a finished 64 KiB file, 16 keep-alive connections.

The large upload's SHA-256 is checked. Run:
``.venv/bin/python scripts/bench_revisions.py --rev HEAD~3 [--rounds 4] [--storage s3]
[--workloads large,post-patch,cwu,head,get]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_upload import (  # noqa: E402
    TUS,
    MiB,
    Server,
    ferry_sha256,
    make_source,
    parallel,
    send,
    timed,
    tus_upload,
)

from tests.support.seaweed import run_seaweedfs  # noqa: E402
from tests.support.services import FerryProcess, ferry_env, postgres_database  # noqa: E402

SMALL = 64 * 1024


def export_revision(rev: str, target: Path) -> Path:
    """The tree of ``rev`` (app, migrations, alembic.ini) unpacked under ``target``."""
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "app", "migrations", "alembic.ini"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def start(
    label: str, data_dir: Path, code_dir: Path | None, storage_env: dict[str, str]
) -> tuple[FerryProcess, Server]:
    """``ferry serve`` running ``code_dir``'s app package (``None``: this tree)."""
    data_dir.mkdir(parents=True)
    extra = {"PYTHONPATH": str(code_dir)} if code_dir is not None else {}
    ferry = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, {**extra, **storage_env}))
    ferry.start()
    assert ferry.process is not None
    return ferry, Server(label, ferry.port, ferry.process)


def with_upload(port: int, source: Path, offset: int, length: int) -> None:
    """One creation-with-upload POST carrying the whole file."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {
        **TUS,
        "Upload-Length": str(length),
        "Content-Type": "application/offset+octet-stream",
    }
    response = send(conn, "POST", "/files/", headers, source, offset, length)
    assert response.status == 201, response.status
    assert response.headers["Upload-Offset"] == str(length)
    conn.close()


def on_keep_alive_connections(
    port: int, method: str, paths: list[str], headers: dict[str, str], connections: int = 16
) -> None:
    """``method`` on every path, each of ``connections`` threads on one connection; every
    answer must be 200."""

    def share(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for path in paths[number::connections]:
            response = send(conn, method, path, headers)
            assert response.status == 200, (method, path, response.status)
        conn.close()

    threads = [threading.Thread(target=share, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def prepared_uploads(port: int, source: Path, count: int, *, finished: bool) -> list[str]:
    """``count`` uploads of 64 KiB: finished, or holding half of their bytes (to resume)."""
    sent = SMALL if finished else SMALL // 2

    def one(index: int) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        created = send(conn, "POST", "/files/", {**TUS, "Upload-Length": str(SMALL)})
        path = "/files/" + created.headers["Location"].rsplit("/", 1)[-1]
        octets = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        assert send(conn, "PATCH", path, octets, source, index * SMALL, sent).status == 204
        conn.close()
        return path

    return parallel([lambda i=i: one(i) for i in range(count)], 16)


def workloads(
    server: Server, source: Path, source_sha: str, size: int, count: int, chosen: set[str]
) -> list[tuple[str, str, Callable[[], None], float, str]]:
    """(name, label, run, amount, unit) for one server; the uploads that HEAD and GET read
    are made first (untimed) when those workloads are chosen."""
    unfinished = (
        prepared_uploads(server.port, source, count, finished=False) if "head" in chosen else []
    )
    finished = (
        prepared_uploads(server.port, source, count, finished=True) if "get" in chosen else []
    )

    def large() -> None:
        path = tus_upload(server.port, source, 0, size, 8 * MiB)
        assert ferry_sha256(server.port, path) == source_sha, "SHA-256 mismatch"

    def post_patch() -> None:
        jobs = [
            lambda i=i: tus_upload(server.port, source, i * SMALL, SMALL, SMALL)
            for i in range(count)
        ]
        parallel(jobs, 16)

    def creation_with_upload() -> None:
        jobs = [
            lambda i=i: with_upload(server.port, source, i * SMALL, SMALL) for i in range(count)
        ]
        parallel(jobs, 16)

    def heads() -> None:
        on_keep_alive_connections(server.port, "HEAD", unfinished, TUS)

    def gets() -> None:
        on_keep_alive_connections(server.port, "GET", finished, {})

    return [
        ("large", f"{size // MiB} MiB in 8 MiB PATCHes", large, size / MiB, "MiB/s"),
        ("post-patch", f"{count} x 64 KiB POST + PATCH", post_patch, count, "files/s"),
        ("cwu", f"{count} x 64 KiB creation-with-upload", creation_with_upload, count, "files/s"),
        ("head", f"{count} x HEAD of an unfinished upload", heads, count, "requests/s"),
        ("get", f"{count} x GET of a 64 KiB file", gets, count, "requests/s"),
    ]


@contextlib.contextmanager
def storage_envs(storage: str, work: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The environment of each version's server: nothing more for the embedded default;
    for S3 a PostgreSQL database each and one SeaweedFS with a prefix each."""
    if storage == "local":
        yield {}, {}
        return
    with (
        run_seaweedfs(work / "s3") as endpoint,
        postgres_database() as tree_db,
        postgres_database() as rev_db,
    ):
        yield (
            {**endpoint.env("tree/"), "FERRY_DATABASE_URL": tree_db, "FERRY_LOG_LEVEL": "WARNING"},
            {**endpoint.env("rev/"), "FERRY_DATABASE_URL": rev_db, "FERRY_LOG_LEVEL": "WARNING"},
        )


def main() -> None:
    """Alternate every workload between the two versions and print medians and ratios.

    The rounds are run in two halves, each with a fresh pair of servers started in the
    other order (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument(
        "--workloads",
        default="large,post-patch,cwu,head,get",
        help="comma-separated subset of large, post-patch, cwu, head, get (default: all)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-rev-"))
    size = args.size_mib * MiB
    results = Results(args.rev)
    try:
        source, source_sha = make_source(work, max(size, args.small_files * SMALL))
        old_code = export_revision(args.rev, work / "revision")
        with storage_envs(args.storage, work) as (tree_env, rev_env):
            for half, rounds in enumerate((args.rounds - args.rounds // 2, args.rounds // 2)):
                sides = [
                    ("tree", work / f"tree-{half}" / "data", None, tree_env),
                    (args.rev, work / f"rev-{half}" / "data", old_code, rev_env),
                ]
                started = [start(*side) for side in (sides if half == 0 else sides[::-1])]
                servers = {server.name: server for _, server in started}
                try:
                    compare(args, rounds, source, source_sha, size, servers, results)
                finally:
                    for process, server in started:
                        results.note_peak_rss(server)
                        process.stop()
        results.print(args.rev)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Results:
    """Each workload's rates and CPU per unit, per side, over both halves."""

    def __init__(self, rev: str) -> None:
        self.rev = rev
        self.lines: dict[str, tuple[str, str, dict[str, list[float]], dict[str, list[float]]]]
        self.lines = {}
        self.peak_rss = {"tree": 0.0, rev: 0.0}

    def record(self, name: str, label: str, unit: str, side: str, rate: float, cpu: float) -> None:
        _, _, rates, cpus = self.lines.setdefault(
            name, (label, unit, {"tree": [], self.rev: []}, {"tree": [], self.rev: []})
        )
        rates[side].append(rate)
        cpus[side].append(cpu)

    def note_peak_rss(self, server: Server) -> None:
        self.peak_rss[server.name] = max(self.peak_rss[server.name], server.peak_rss_mib())

    def print(self, rev: str) -> None:
        for label, unit, rates, cpus in self.lines.values():
            ratios = [n / o for n, o in zip(rates["tree"], rates[rev], strict=True)]
            # CPU per unit: ms per file or request, or s per GiB (amount is in MiB)
            scale, cpu_unit = (
                (1024, "CPU-s/GiB") if unit == "MiB/s" else (1000, f"ms/{unit.removesuffix('s/s')}")
            )
            shown = "  ".join(
                f"{side} {statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f}) "
                f"{statistics.median(cpus[side]) * scale:.2f} {cpu_unit}"
                for side, values in rates.items()
            )
            print(
                f"{label:36} {unit:8} {shown}  ratio {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f})",
                flush=True,
            )
        print(
            f"peak RSS (VmHWM): tree {self.peak_rss['tree']:.1f} MiB, "
            f"{rev} {self.peak_rss[rev]:.1f} MiB"
        )


def compare(
    args: argparse.Namespace,
    rounds: int,
    source: Path,
    source_sha: str,
    size: int,
    servers: dict[str, Server],
    results: Results,
) -> None:
    """Run ``rounds`` rounds on one pair of servers, alternating which version goes first."""
    chosen = set(args.workloads.split(","))
    new_runs = workloads(servers["tree"], source, source_sha, size, args.small_files, chosen)
    old_runs = workloads(servers[args.rev], source, source_sha, size, args.small_files, chosen)
    for (name, label, run_new, amount, unit), (*_, run_old, _, _) in zip(
        new_runs, old_runs, strict=True
    ):
        if name not in chosen:
            continue
        order = [("tree", run_new), (args.rev, run_old)]
        for round_number in range(rounds):
            for side, run in order if round_number % 2 == 0 else reversed(order):
                server = servers[side]
                cpu_before = server.cpu_seconds()
                rate = amount / timed(run)
                cpu = (server.cpu_seconds() - cpu_before) / amount
                results.record(name, label, unit, side, rate, cpu)


if __name__ == "__main__":
    main()
