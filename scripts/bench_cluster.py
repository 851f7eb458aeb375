"""Cluster benchmark (PostgreSQL + SeaweedFS): where acknowledged means in S3.

Two comparisons, each alternating its two sides for several rounds in the same run, with
the median, the spread and the median ratio printed:

* ``FERRY_WORKERS=2`` against one process, on N x 64 KiB creation-with-upload (one POST per
  file carrying the whole body) over 16 connections: small files are bound by one event
  loop, so a second worker should nearly double them;
* one Ferry process against a raw aiobotocore multipart upload (8 MiB parts, 4 in flight)
  to the same SeaweedFS: 1 GiB in 8 MiB PATCHes, and 16 x 256 MiB in parallel (the raw
  side: 16 multipart uploads at once). Every Ferry PATCH is answered only once its bytes
  are in S3, so this is the price of node-loss safety.

Peak RSS (VmHWM) is printed per Ferry process (workers: the largest worker). Needs
PostgreSQL on 127.0.0.1:5432. Run: ``.venv/bin/python scripts/bench_cluster.py
[--rounds 3] [--size-mib 1024] [--small-files 1000]``. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_revisions import with_upload  # noqa: E402
from bench_s3 import raw_multipart  # noqa: E402
from bench_upload import MiB, ferry_sha256, make_source, parallel, tus_upload  # noqa: E402

from tests.support.seaweed import S3Endpoint, run_seaweedfs  # noqa: E402
from tests.support.services import FerryProcess, ferry_env, postgres_database  # noqa: E402

SMALL = 64 * 1024


def start_ferry(
    work: Path, name: str, endpoint: S3Endpoint, db_url: str, workers: int
) -> FerryProcess:
    """A ``ferry serve`` on S3 and PostgreSQL with its own data dir and prefix."""
    data_dir = work / name / "data"
    data_dir.mkdir(parents=True)
    extra = {
        **endpoint.env(f"{name}/"),
        "FERRY_DATABASE_URL": db_url,
        "FERRY_LOG_LEVEL": "WARNING",
        "FERRY_NODE_ID": name,
        "FERRY_WORKERS": str(workers),
    }
    ferry = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, extra))
    ferry.start(timeout=60)
    return ferry


def peak_rss_mib(ferry: FerryProcess) -> float:
    """The largest VmHWM among the server process and its children (workers)."""
    assert ferry.process is not None
    pids = [ferry.process.pid]
    children = subprocess.run(
        ["pgrep", "-P", str(ferry.process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    pids += [int(pid) for pid in children]
    peaks = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def alternate(
    label: str, unit: str, amount: float, sides: list[tuple[str, Callable[[], None]]], rounds: int
) -> None:
    """Run both sides ``rounds`` times, alternating who goes first; print medians, ratio."""
    rates: dict[str, list[float]] = {name: [] for name, _ in sides}
    for number in range(rounds):
        for name, run in sides if number % 2 == 0 else list(reversed(sides)):
            started = time.perf_counter()
            run()
            rates[name].append(amount / (time.perf_counter() - started))
    (first, _), (second, _) = sides
    ratios = [a / b for a, b in zip(rates[first], rates[second], strict=True)]
    shown = "  ".join(
        f"{name} {statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"
        for name, values in rates.items()
    )
    print(
        f"{label:38} {unit:8} {shown}  ratio {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f})",
        flush=True,
    )


def main() -> None:
    """Start SeaweedFS, PostgreSQL databases and the Ferry servers; run both comparisons."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--parallel-mib", type=int, default=256)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument(
        "--workloads",
        default="small,large,parallel",
        help="comma-separated subset of small, large, parallel (default: all three)",
    )
    args = parser.parse_args()
    chosen = set(args.workloads.split(","))
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-cluster-"))
    size = args.size_mib * MiB
    each = args.parallel_mib * MiB
    try:
        source, source_sha = make_source(work, max(size, each, args.small_files * SMALL))
        with (
            run_seaweedfs(work / "s3") as endpoint,
            postgres_database() as db_one,
            postgres_database() as db_two,
        ):
            one = start_ferry(work, "one", endpoint, db_one, 1)
            two = start_ferry(work, "two", endpoint, db_two, 2)
            try:

                def small(ferry: FerryProcess) -> Callable[[], None]:
                    def run() -> None:
                        jobs = [
                            lambda i=i: with_upload(ferry.port, source, i * SMALL, SMALL)
                            for i in range(args.small_files)
                        ]
                        parallel(jobs, 16)

                    return run

                def large() -> None:
                    path = tus_upload(one.port, source, 0, size, 8 * MiB)
                    assert ferry_sha256(one.port, path) == source_sha, "SHA-256 mismatch"

                def ferry_parallel() -> None:
                    parallel([lambda: tus_upload(one.port, source, 0, each, 64 * MiB)] * 16, 16)

                def raw_large() -> None:
                    asyncio.run(raw_multipart(endpoint, source, size))

                async def raw_many() -> None:
                    await asyncio.gather(
                        *(raw_multipart(endpoint, source, each) for _ in range(16))
                    )

                if "small" in chosen:
                    alternate(
                        f"{args.small_files} x 64 KiB creation-with-upload",
                        "files/s",
                        args.small_files,
                        [("workers=2", small(two)), ("workers=1", small(one))],
                        args.rounds,
                    )
                if "large" in chosen:
                    alternate(
                        f"{args.size_mib} MiB in 8 MiB PATCHes",
                        "MiB/s",
                        args.size_mib,
                        [("ferry", large), ("raw", raw_large)],
                        args.rounds,
                    )
                if "parallel" in chosen:
                    alternate(
                        f"16 x {args.parallel_mib} MiB in parallel",
                        "MiB/s",
                        16 * args.parallel_mib,
                        [("ferry", ferry_parallel), ("raw", lambda: asyncio.run(raw_many()))],
                        args.rounds,
                    )
                print(
                    f"peak RSS (VmHWM): one process {peak_rss_mib(one):.1f} MiB, "
                    f"largest of two workers {peak_rss_mib(two):.1f} MiB",
                    flush=True,
                )
            finally:
                one.stop()
                two.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
