"""Cluster benchmark (PostgreSQL + SeaweedFS): where acknowledged means in S3.

Two comparisons, each alternating its two sides for several rounds in the same run, with
the median, the spread and the median ratio printed:

* ``FERRY_WORKERS=2`` against one process, on N x 64 KiB creation-with-upload (one POST per
  file carrying the whole body) over 16 connections: small files are bound by one event
  loop, so a second worker should nearly double them;
* one Ferry process against a raw aiobotocore multipart upload (8 MiB parts, 4 in flight)
  to the same SeaweedFS: 1 GiB in 8 MiB PATCHes, 1 GiB in one PATCH (the default of
  tus-js-client and Uppy), and 16 x 256 MiB in parallel (the raw side: 16 multipart
  uploads at once). Every Ferry PATCH is answered only once its bytes
  are in S3, so this is the price of node-loss safety.

Beside each side's rate it prints how many of the machine's cores were busy (all
processes: Ferry, SeaweedFS, PostgreSQL, the client; from ``/proc/stat``) and how many
Ferry's own processes used: on a machine whose cores are all busy with one Ferry process,
a second worker can only take CPU from the others. The 8 MiB PATCHes are also compared with
a raw multipart upload that keeps one part in flight: a tus client sends one PATCH at a
time and each is answered only once its part is in S3, so that is the same shape of work.

Peak RSS (VmHWM) is printed per Ferry process (workers: the largest worker). Needs
PostgreSQL on 127.0.0.1:5432. Run: ``.venv/bin/python scripts/bench_cluster.py
[--rounds 3] [--size-mib 1024] [--small-files 1000]``. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def _server_pids(ferry: FerryProcess) -> list[int]:
    """The server process and its children (workers)."""
    assert ferry.process is not None
    children = subprocess.run(
        ["pgrep", "-P", str(ferry.process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [ferry.process.pid, *(int(pid) for pid in children)]


def peak_rss_mib(ferry: FerryProcess) -> float:
    """The largest VmHWM among the server process and its children (workers)."""
    peaks = []
    for pid in _server_pids(ferry):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def ferry_cpu_seconds(ferry: FerryProcess) -> float:
    """utime + stime of the server process and its children (workers), in seconds."""
    total = 0
    for pid in _server_pids(ferry):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (not idle or iowait)."""
    values = [int(field) for field in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    """One side of a comparison: its runs' rates and the cores busy while they ran."""

    name: str
    run: Callable[[], None]
    ferry: FerryProcess | None = None
    rates: list[float] = field(default_factory=list)
    machine_cores: list[float] = field(default_factory=list)
    ferry_cores: list[float] = field(default_factory=list)

    def measure(self, amount: float) -> None:
        busy = machine_busy_seconds()
        own = ferry_cpu_seconds(self.ferry) if self.ferry else 0.0
        started = time.perf_counter()
        self.run()
        seconds = time.perf_counter() - started
        self.rates.append(amount / seconds)
        self.machine_cores.append((machine_busy_seconds() - busy) / seconds)
        if self.ferry:
            self.ferry_cores.append((ferry_cpu_seconds(self.ferry) - own) / seconds)

    def shown(self) -> str:
        values = self.rates
        cores = f"cores busy {statistics.median(self.machine_cores):.2f}"
        if self.ferry_cores:
            cores += f", Ferry's {statistics.median(self.ferry_cores):.2f}"
        return (
            f"{self.name} {statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f};"
            f" {cores})"
        )


def alternate(label: str, unit: str, amount: float, sides: list[Side], rounds: int) -> None:
    """Run every side ``rounds`` times, alternating the order; print medians and the ratio
    of the first side to each other one (per round, then the median and range)."""
    for number in range(rounds):
        for side in sides if number % 2 == 0 else list(reversed(sides)):
            side.measure(amount)
    first, *others = sides
    ratios = []
    for other in others:
        each = [a / b for a, b in zip(first.rates, other.rates, strict=True)]
        ratios.append(
            f"ratio to {other.name} {statistics.median(each):.2f} ({min(each):.2f}-{max(each):.2f})"
        )
    shown = "  ".join(side.shown() for side in sides)
    print(f"{label:38} {unit:8} {shown}  {'  '.join(ratios)}", flush=True)


def main() -> None:
    """Start SeaweedFS, PostgreSQL databases and the Ferry servers; run both comparisons."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--parallel-mib", type=int, default=256)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument(
        "--workloads",
        default="small,large,single,parallel",
        help="comma-separated subset of small, large, single, parallel (default: all)",
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

                def single() -> None:
                    path = tus_upload(one.port, source, 0, size, size)
                    assert ferry_sha256(one.port, path) == source_sha, "SHA-256 mismatch"

                def ferry_parallel() -> None:
                    parallel([lambda: tus_upload(one.port, source, 0, each, 64 * MiB)] * 16, 16)

                def raw_large() -> None:
                    asyncio.run(raw_multipart(endpoint, source, size))

                def raw_large_one_in_flight() -> None:
                    asyncio.run(raw_multipart(endpoint, source, size, concurrency=1))

                async def raw_many() -> None:
                    await asyncio.gather(
                        *(raw_multipart(endpoint, source, each) for _ in range(16))
                    )

                if "small" in chosen:
                    alternate(
                        f"{args.small_files} x 64 KiB creation-with-upload",
                        "files/s",
                        args.small_files,
                        [Side("workers=2", small(two), two), Side("workers=1", small(one), one)],
                        args.rounds,
                    )
                if "large" in chosen:
                    alternate(
                        f"{args.size_mib} MiB in 8 MiB PATCHes",
                        "MiB/s",
                        args.size_mib,
                        [
                            Side("ferry", large, one),
                            Side("raw", raw_large),
                            Side("raw-1", raw_large_one_in_flight),
                        ],
                        args.rounds,
                    )
                if "single" in chosen:
                    alternate(
                        f"{args.size_mib} MiB in one PATCH",
                        "MiB/s",
                        args.size_mib,
                        [Side("ferry", single, one), Side("raw", raw_large)],
                        args.rounds,
                    )
                if "parallel" in chosen:
                    alternate(
                        f"16 x {args.parallel_mib} MiB in parallel",
                        "MiB/s",
                        16 * args.parallel_mib,
                        [
                            Side("ferry", ferry_parallel, one),
                            Side("raw", lambda: asyncio.run(raw_many())),
                        ],
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
