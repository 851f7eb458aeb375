"""Before/after benchmark of a refactor: this working tree against a git revision.

Both versions run as ``ferry serve`` processes on loopback, from the same virtualenv: the
revision is exported with ``git archive`` and put first on ``PYTHONPATH``, so only Ferry's
own code differs. Storage is the embedded default (SQLite + local disk, fsync included) or,
with ``--storage s3``, PostgreSQL (a fresh database each on 127.0.0.1:5432) and one
SeaweedFS (a prefix each). The workloads alternate between the two servers for several
rounds; the script prints each version's median and spread, its server CPU per unit (ms per
file, s per GiB), and the median ratio (this tree / revision):

* 1 GiB in 8 MiB PATCHes (one connection);
* N x 64 KiB, POST + PATCH per file, 16 connections;
* N x 64 KiB creation-with-upload (one POST per file), 16 connections.

Every upload's SHA-256 is checked. Run:
``.venv/bin/python scripts/bench_revisions.py --rev HEAD~3 [--rounds 3] [--storage s3]
[--workloads large,post-patch,cwu]``.
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


def workloads(
    server: Server, source: Path, source_sha: str, size: int, count: int
) -> list[tuple[str, Callable[[], None], float, str]]:
    """(label, run, amount, unit) for one server."""

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

    return [
        ("large", f"{size // MiB} MiB in 8 MiB PATCHes", large, size / MiB, "MiB/s"),
        ("post-patch", f"{count} x 64 KiB POST + PATCH", post_patch, count, "files/s"),
        ("cwu", f"{count} x 64 KiB creation-with-upload", creation_with_upload, count, "files/s"),
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
    """Alternate every workload between the two versions and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument(
        "--workloads",
        default="large,post-patch,cwu",
        help="comma-separated subset of large, post-patch, cwu (default: all three)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-rev-"))
    size = args.size_mib * MiB
    try:
        source, source_sha = make_source(work, max(size, args.small_files * SMALL))
        old_code = export_revision(args.rev, work / "revision")
        with storage_envs(args.storage, work) as (tree_env, rev_env):
            new, new_server = start("tree", work / "tree" / "data", None, tree_env)
            old, old_server = start(args.rev, work / "rev" / "data", old_code, rev_env)
            try:
                compare(args, source, source_sha, size, new_server, old_server)
                print(
                    f"peak RSS (VmHWM): tree {new_server.peak_rss_mib():.1f} MiB, "
                    f"{args.rev} {old_server.peak_rss_mib():.1f} MiB"
                )
            finally:
                new.stop()
                old.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(
    args: argparse.Namespace,
    source: Path,
    source_sha: str,
    size: int,
    new_server: Server,
    old_server: Server,
) -> None:
    """Run the rounds, alternating which version goes first, and print one line each."""
    chosen = set(args.workloads.split(","))
    new_runs = workloads(new_server, source, source_sha, size, args.small_files)
    old_runs = workloads(old_server, source, source_sha, size, args.small_files)
    for (name, label, run_new, amount, unit), (*_, run_old, _, _) in zip(
        new_runs, old_runs, strict=True
    ):
        if name not in chosen:
            continue
        rates = {"tree": [], args.rev: []}  # type: dict[str, list[float]]
        cpu = {"tree": [], args.rev: []}  # type: dict[str, list[float]]
        order = [("tree", run_new, new_server), (args.rev, run_old, old_server)]
        for round_number in range(args.rounds):
            for side, run, server in order if round_number % 2 == 0 else reversed(order):
                cpu_before = server.cpu_seconds()
                rates[side].append(amount / timed(run))
                cpu[side].append((server.cpu_seconds() - cpu_before) / amount)
        ratios = [n / o for n, o in zip(rates["tree"], rates[args.rev], strict=True)]
        # CPU per unit: ms per file, or s per GiB (amount is in MiB)
        scale, cpu_unit = (1000, "ms/file") if unit == "files/s" else (1024, "CPU-s/GiB")
        shown = "  ".join(
            f"{side} {statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f}) "
            f"{statistics.median(cpu[side]) * scale:.2f} {cpu_unit}"
            for side, values in rates.items()
        )
        print(
            f"{label:36} {unit:8} {shown}  ratio {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
