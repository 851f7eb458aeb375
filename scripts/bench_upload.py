"""Upload benchmark: Ferry (tus, local disk, fsync) against a naive streaming PUT endpoint.

Both servers run in the same session on loopback, each as its own process, and receive the
same workloads from a threaded blocking client that sends bodies with ``sendfile`` (an
asyncio client would spend more CPU than the servers; see shared/perf-notes.md):

* ``large8``, ``large64``: 1 GiB in 8 MiB requests and in 64 MiB requests (one connection);
* ``single``: 1 GiB in one request;
* ``parallel``: 16 x 256 MiB in parallel (16 connections, one request each);
* ``small``: 1000 x 64 KiB files over 16 connections (tus: POST + PATCH per file; naive:
  one PUT).

Every workload runs ``--rounds`` times on both servers, alternating: the order flips every
round, and each round's ratio compares the two runs of that round. Per workload it prints
the median and range (min-max) of each server's MiB/s (or files/s), of the ratio Ferry /
naive and the median server CPU seconds, then each round's rates; at the end the servers'
peak RSS (VmHWM). Every Ferry upload's SHA-256 is checked against the source. The naive
endpoint never fsyncs: its bytes may still be in the page cache when its run ends.

Run: ``make bench`` or ``.venv/bin/python scripts/bench_upload.py [--rounds 5]
[--only large8,single] [--size-mib 1024]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.services import FerryProcess, ferry_env, free_port  # noqa: E402

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


@dataclass
class Server:
    """A server under test and how to address it."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        """VmHWM of the server process."""
        return self._status_mib("VmHWM:")

    def rss_mib(self) -> float:
        """VmRSS of the server process (what it holds right now)."""
        return self._status_mib("VmRSS:")

    def _status_mib(self, field: str) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        return float("nan")


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str],
    source: Path | None = None,
    offset: int = 0,
    count: int = 0,
) -> http.client.HTTPResponse:
    """One request whose body (a slice of ``source``) goes out with ``sendfile``."""
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(count)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    if count:
        assert source is not None and conn.sock is not None
        with source.open("rb") as handle:
            sent = 0
            while sent < count:
                sent += conn.sock.sendfile(handle, offset + sent, count - sent)
    response = conn.getresponse()
    response.read()
    return response


def tus_upload(port: int, source: Path, offset: int, length: int, chunk: int) -> str:
    """Create a tus upload and PATCH ``[offset, offset+length)`` of ``source`` in chunks."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    created = send(conn, "POST", "/files/", {**TUS, "Upload-Length": str(length)})
    assert created.status == 201, created.status
    path = "/files/" + created.headers["Location"].rsplit("/", 1)[-1]
    done = 0
    while done < length:
        size = min(chunk, length - done)
        response = send(
            conn,
            "PATCH",
            path,
            {**TUS, "Upload-Offset": str(done), "Content-Type": "application/offset+octet-stream"},
            source,
            offset + done,
            size,
        )
        assert response.status == 204, (response.status, response.read())
        done += size
    conn.close()
    return path


def naive_upload(port: int, source: Path, offset: int, length: int, chunk: int, name: str) -> str:
    """PUT ``[offset, offset+length)`` of ``source`` to the baseline in chunks."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    done = 0
    while done < length:
        size = min(chunk, length - done)
        response = send(
            conn, "PUT", f"/upload/{name}?offset={done}", {}, source, offset + done, size
        )
        assert response.status == 204, response.status
        done += size
    conn.close()
    return name


def timed(run: Callable[[], Any]) -> float:
    """Seconds one workload takes."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def parallel(jobs: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run jobs on threads and return their results (re-raising failures)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [future.result() for future in [pool.submit(job) for job in jobs]]


def start_naive(data_dir: Path) -> Server:
    """The baseline server process."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "naive_put_server.py"),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
    )
    wait_for_port(port)
    return Server("naive", port, process)


def wait_for_port(port: int) -> None:
    """Block until something accepts connections on ``port``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def make_source(directory: Path, size: int) -> tuple[Path, str]:
    """A file of random bytes and its SHA-256."""
    path = directory / "source.bin"
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(64 * MiB, remaining))
            digest.update(block)
            handle.write(block)
            remaining -= len(block)
    return path, digest.hexdigest()


def ferry_sha256(port: int, path: str) -> str:
    """The SHA-256 Ferry recorded for a finished upload (its strong ETag)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    response = send(conn, "GET", path, {"Range": "bytes=0-0"})
    return str(response.headers["ETag"]).strip('"')


@dataclass(frozen=True)
class Workload:
    """One workload, run on both servers."""

    key: str
    label: str
    ferry: Callable[[], Any]
    naive: Callable[[], Any]
    amount: float
    unit: str


@dataclass
class Side:
    """What one server did over the rounds of one workload."""

    rates: list[float]
    cpu_seconds: list[float]

    def shown(self) -> str:
        """Median rate and its range over the rounds."""
        return f"{statistics.median(self.rates):8.1f} ({min(self.rates):.1f}-{max(self.rates):.1f})"


def main() -> None:
    """Run every workload on both servers, alternating, and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the large upload")
    parser.add_argument(
        "--parallel-mib", type=int, default=256, help="size of each parallel upload"
    )
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every workload")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated workloads to run (of {','.join(WORKLOAD_KEYS)}; default all)",
    )
    args = parser.parse_args()
    chosen = [key for key in args.only.split(",") if key] or list(WORKLOAD_KEYS)
    unknown = set(chosen) - set(WORKLOAD_KEYS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    size = args.size_mib * MiB
    source, source_sha = make_source(
        work, max(size, args.parallel_mib * MiB, args.small_files * 64 * 1024)
    )
    try:
        ferry_dir = work / "ferry" / "data"
        ferry_dir.mkdir(parents=True)
        ferry = FerryProcess(data_dir=ferry_dir, env=ferry_env(ferry_dir))
        ferry.start()
        assert ferry.process is not None
        ferry_server = Server("ferry", ferry.port, ferry.process)
        naive = start_naive(work / "naive")
        try:
            for workload in workloads(ferry_server, naive, source, source_sha, size, args):
                if workload.key not in chosen:
                    continue
                sides = [
                    (ferry_server, workload.ferry, ferry_dir / "files"),
                    (naive, workload.naive, work / "naive"),
                ]
                results = {server.name: Side([], []) for server, _, _ in sides}
                for number in range(args.rounds):
                    # The order flips every round: neither server always runs after the
                    # other's writeback or on a cache the other warmed.
                    for server, run, directory in sides if number % 2 == 0 else sides[::-1]:
                        cpu_before = server.cpu_seconds()
                        seconds = timed(run)
                        results[server.name].cpu_seconds.append(server.cpu_seconds() - cpu_before)
                        results[server.name].rates.append(workload.amount / seconds)
                        clear(directory)
                report(workload, results["ferry"], results["naive"])
            print(
                f"{'peak RSS (VmHWM)':34} ferry {ferry_server.peak_rss_mib():8.1f} MiB   "
                f"naive {naive.peak_rss_mib():8.1f} MiB"
            )
        finally:
            ferry.stop()
            naive.process.terminate()
            naive.process.wait(timeout=20)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(workload: Workload, ferry: Side, naive: Side) -> None:
    """One line per workload: medians (and ranges) of both servers and of their ratio."""
    ratios = [f / n for f, n in zip(ferry.rates, naive.rates, strict=True)]
    print(
        f"{workload.label:34} {workload.unit:8} ferry {ferry.shown()}  naive {naive.shown()}  "
        f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})  "
        f"server CPU s: ferry {statistics.median(ferry.cpu_seconds):.2f} "
        f"naive {statistics.median(naive.cpu_seconds):.2f}",
        flush=True,
    )
    print(
        f"{'':34} rounds: ferry {' '.join(f'{r:.0f}' for r in ferry.rates)}  "
        f"naive {' '.join(f'{r:.0f}' for r in naive.rates)}",
        flush=True,
    )


def clear(directory: Path) -> None:
    """Delete stored files between workloads so the disk does not fill up."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.unlink()


WORKLOAD_KEYS = ("large8", "large64", "single", "parallel", "small")


def workloads(
    ferry: Server, naive: Server, source: Path, source_sha: str, size: int, args: Any
) -> list[Workload]:
    """Every workload, in :data:`WORKLOAD_KEYS` order."""
    mib = size / MiB
    each = args.parallel_mib * MiB

    def large(chunk: int) -> Callable[[], Any]:
        def run() -> None:
            path = tus_upload(ferry.port, source, 0, size, chunk)
            assert ferry_sha256(ferry.port, path) == source_sha, "SHA-256 mismatch"

        return run

    def large_naive(chunk: int, name: str) -> Callable[[], Any]:
        return lambda: naive_upload(naive.port, source, 0, size, chunk, name)

    def many_parallel_ferry() -> None:
        parallel([lambda i=i: tus_upload(ferry.port, source, 0, each, each) for i in range(16)], 16)

    def many_parallel_naive() -> None:
        parallel(
            [
                lambda i=i: naive_upload(naive.port, source, 0, each, each, f"p{i}")
                for i in range(16)
            ],
            16,
        )

    small = 64 * 1024
    count = args.small_files

    def small_ferry() -> None:
        parallel(
            [
                lambda i=i: tus_upload(ferry.port, source, i * small, small, small)
                for i in range(count)
            ],
            16,
        )

    def small_naive() -> None:
        parallel(
            [
                lambda i=i: naive_upload(naive.port, source, i * small, small, small, f"s{i}")
                for i in range(count)
            ],
            16,
        )

    return [
        Workload(
            "large8",
            f"{mib:.0f} MiB in 8 MiB requests",
            large(8 * MiB),
            large_naive(8 * MiB, "big8"),
            mib,
            "MiB/s",
        ),
        Workload(
            "large64",
            f"{mib:.0f} MiB in 64 MiB requests",
            large(64 * MiB),
            large_naive(64 * MiB, "big64"),
            mib,
            "MiB/s",
        ),
        Workload(
            "single",
            f"{mib:.0f} MiB in one request",
            large(size),
            large_naive(size, "big1"),
            mib,
            "MiB/s",
        ),
        Workload(
            "parallel",
            f"16 x {args.parallel_mib} MiB in parallel",
            many_parallel_ferry,
            many_parallel_naive,
            16 * args.parallel_mib,
            "MiB/s",
        ),
        Workload(
            "small",
            f"{count} x 64 KiB, 16 connections",
            small_ferry,
            small_naive,
            count,
            "files/s",
        ),
    ]


if __name__ == "__main__":
    main()
