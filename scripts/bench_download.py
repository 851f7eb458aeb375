"""Download benchmark: Ferry against Starlette's ``FileResponse`` serving the same file.

Both servers run in the same session on loopback (uvicorn, same loop and HTTP parser),
each as its own process. The file (1 GiB by default, random bytes) is uploaded to Ferry
through tus once; Starlette serves the very file Ferry stored, so the page cache treats
both alike. A threaded blocking-socket client (``recv_into`` a reused buffer; an asyncio
client would cost more CPU than the servers) then measures, per server:

* full GET of the whole file on one connection (median of ``--repeat`` runs), MiB/s;
* ``--ranges`` random 1 MiB ``Range`` reads on one keep-alive connection: per-request
  latency p50/p99 and MiB/s;
* the same with the file in S3 (a SeaweedFS started for the run): Ferry proxying ranged
  GetObjects against SeaweedFS itself through a presigned URL (``--no-s3`` skips it).

It prints the numbers, the client's CPU seconds, Ferry's ratio to Starlette, and whether
the targets hold (full GET >= 2x Starlette; p99 of a 1 MiB range <= 20 ms).

Run: ``make bench`` or ``.venv/bin/python scripts/bench_download.py [--size-mib 1024]``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.services import FerryProcess, ferry_env, free_port  # noqa: E402

MiB = 1024 * 1024
RECV_BUFFER = 4 * MiB


# --------------------------------------------------------------------------- the baseline
def serve_starlette(path: str, port: int) -> None:
    """The baseline server: Starlette's FileResponse (it handles Range itself) on uvicorn."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse
    from starlette.routing import Route

    async def download(request: Request) -> FileResponse:
        return FileResponse(path, media_type="application/octet-stream")

    app = Starlette(routes=[Route("/file", download, methods=["GET", "HEAD"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------- the client
class RawClient:
    """Blocking HTTP/1.1 keep-alive client that reads bodies into one reused buffer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buffer)
        self.pending = b""

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, int]:
        """Send a GET, read the whole body; returns (status, body bytes)."""
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self.pending
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            head += chunk
        raw_head, _, rest = head.partition(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        received = min(len(rest), length)
        self.pending = rest[length:]
        while received < length:
            count = self.sock.recv_into(self.view, min(RECV_BUFFER, length - received))
            if count == 0:
                raise ConnectionError("body cut short")
            received += count
        return status, received

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


@dataclass
class Result:
    """One server's numbers."""

    full_mib_s: float
    range_p50_ms: float
    range_p99_ms: float
    range_mib_s: float
    client_cpu_s: float
    server_cpu_full_s: float
    server_cpu_per_range_ms: float


def cpu_seconds() -> float:
    """CPU time of this process (the client) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system, all threads) a server process has used so far."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    port: int, pid: int | None, path: str, size: int, repeat: int, ranges: int, seed: int
) -> Result:
    """Full downloads, then random 1 MiB ranges, against one server."""
    cpu_before = cpu_seconds()
    server_before = process_cpu_seconds(pid)
    rates = []
    for _ in range(repeat):
        client = RawClient(port)
        started = time.perf_counter()
        status, received = client.get(path)
        elapsed = time.perf_counter() - started
        client.close()
        assert status == 200 and received == size, (status, received)
        rates.append(size / MiB / elapsed)
    server_full = (process_cpu_seconds(pid) - server_before) / repeat
    server_before = process_cpu_seconds(pid)
    rng = random.Random(seed)
    client = RawClient(port)
    latencies = []
    started = time.perf_counter()
    for _ in range(ranges):
        start = rng.randrange(0, size - MiB)
        begin = time.perf_counter()
        status, received = client.get(path, {"Range": f"bytes={start}-{start + MiB - 1}"})
        latencies.append((time.perf_counter() - begin) * 1000)
        assert status == 206 and received == MiB, (status, received)
    total = time.perf_counter() - started
    server_ranges = process_cpu_seconds(pid) - server_before
    client.close()
    latencies.sort()
    return Result(
        full_mib_s=statistics.median(rates),
        range_p50_ms=latencies[len(latencies) // 2],
        range_p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        range_mib_s=ranges / total,
        client_cpu_s=cpu_seconds() - cpu_before,
        server_cpu_full_s=server_full,
        server_cpu_per_range_ms=server_ranges / ranges * 1000,
    )


# --------------------------------------------------------------------------- set-up
def make_source(path: Path, size: int) -> None:
    """A file of random bytes (incompressible, nothing sparse)."""
    block = os.urandom(8 * MiB)
    with path.open("wb") as out:
        remaining = size
        while remaining:
            piece = block[: min(len(block), remaining)]
            out.write(piece)
            remaining -= len(piece)


def upload_to_ferry(port: int, source: Path, size: int) -> str:
    """One tus creation + one PATCH of the whole file; returns the file path on the server."""
    connection = http.client.HTTPConnection("127.0.0.1", port, blocksize=4 * MiB, timeout=600)
    connection.request(
        "POST", "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)}
    )
    response = connection.getresponse()
    response.read()
    assert response.status == 201, response.status
    path = "/files/" + response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    with source.open("rb") as body:
        connection.request(
            "PATCH",
            path,
            body=body,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(size),
            },
        )
        response = connection.getresponse()
        response.read()
    assert response.status == 204, response.status
    connection.close()
    return path


def wait_for_port(port: int, timeout: float = 30) -> None:
    """Wait until something accepts connections on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def stored_file(data_dir: Path, uid: str) -> Path:
    """Where the local backend put the upload."""
    return next((data_dir / "files").glob(f"*/{uid}"))


def bench_disk(args: argparse.Namespace, workdir: Path) -> dict[str, Result]:
    """Ferry on local disk against Starlette's FileResponse of the very same file."""
    size = args.size_mib * MiB
    starlette: subprocess.Popen[bytes] | None = None
    data_dir = workdir / "disk" / "data"
    data_dir.mkdir(parents=True)
    ferry = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir))
    ferry.start()
    try:
        source = workdir / "source.bin"
        print("disk: uploading to Ferry ...", flush=True)
        file_path = upload_to_ferry(ferry.port, source, size)
        on_disk = stored_file(data_dir, file_path.rsplit("/", 1)[-1])
        starlette_port = free_port()
        starlette = subprocess.Popen(
            [sys.executable, __file__, "--serve-starlette", str(on_disk), str(starlette_port)],
        )
        wait_for_port(starlette_port)
        assert ferry.process is not None
        ferry_pid = ferry.process.pid
        # Warm the page cache once, so neither server pays for the first disk read.
        warm = RawClient(ferry.port)
        warm.get(file_path)
        warm.close()
        print("disk: measuring ...", flush=True)
        return {
            "disk: starlette FileResponse": measure(
                starlette_port, starlette.pid, "/file", size, args.repeat, args.ranges, args.seed
            ),
            "disk: ferry": measure(
                ferry.port, ferry_pid, file_path, size, args.repeat, args.ranges, args.seed
            ),
        }
    finally:
        if starlette is not None and starlette.poll() is None:
            starlette.terminate()
            starlette.wait(timeout=20)
        ferry.stop()


def bench_s3(args: argparse.Namespace, workdir: Path) -> dict[str, Result]:
    """Ferry on S3 (SeaweedFS) against SeaweedFS itself through a presigned URL."""
    import botocore.session
    from botocore.config import Config

    from tests.support.seaweed import run_seaweedfs

    size = args.size_mib * MiB
    data_dir = workdir / "s3" / "data"
    data_dir.mkdir(parents=True)
    with run_seaweedfs(workdir / "s3", bucket="ferry-bench") as endpoint:
        ferry = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, endpoint.env("bench/")))
        ferry.start()
        try:
            print("s3: uploading to Ferry ...", flush=True)
            file_path = upload_to_ferry(ferry.port, workdir / "source.bin", size)
            uid = file_path.rsplit("/", 1)[-1]
            with sqlite3.connect(data_dir / "ferry.db") as db:
                (key,) = db.execute("SELECT storage_key FROM files WHERE storage = 's3'").fetchone()
            s3 = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=endpoint.url,
                region_name=endpoint.region,
                aws_access_key_id=endpoint.access_key,
                aws_secret_access_key=endpoint.secret_key,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
            presigned = s3.generate_presigned_url(
                "get_object", Params={"Bucket": endpoint.bucket, "Key": key}, ExpiresIn=3600
            )
            direct_path = presigned.split(endpoint.url, 1)[1]
            s3_port = int(endpoint.url.rsplit(":", 1)[1])
            assert ferry.process is not None
            print(f"s3: measuring ({uid}) ...", flush=True)
            return {
                "s3: seaweedfs direct": measure(
                    s3_port, None, direct_path, size, args.repeat, args.ranges, args.seed
                ),
                "s3: ferry (proxy)": measure(
                    ferry.port, ferry.process.pid, file_path, size, args.repeat, args.ranges,
                    args.seed,
                ),
            }  # fmt: skip
        finally:
            ferry.stop()


def print_results(args: argparse.Namespace, results: dict[str, Result]) -> None:
    """The table, the ratio and the verdicts."""
    print()
    print(f"download of {args.size_mib} MiB, {args.ranges} random 1 MiB ranges")
    columns = ("full MiB/s", "p50 ms", "p99 ms", "ranges MiB/s", "srv CPU/full s",
               "srv CPU/range ms", "client CPU s")  # fmt: skip
    print(f"{'server':<30}" + "".join(f"{c:>17}" for c in columns))
    for name, result in results.items():
        values = (
            f"{result.full_mib_s:.0f}",
            f"{result.range_p50_ms:.2f}",
            f"{result.range_p99_ms:.2f}",
            f"{result.range_mib_s:.0f}",
            f"{result.server_cpu_full_s:.2f}",
            f"{result.server_cpu_per_range_ms:.2f}",
            f"{result.client_cpu_s:.1f}",
        )
        print(f"{name:<30}" + "".join(f"{v:>17}" for v in values))
    ferry_result = results["disk: ferry"]
    ratio = ferry_result.full_mib_s / results["disk: starlette FileResponse"].full_mib_s
    verdict = "OK" if ratio >= 2 else "MISSED"
    print(f"disk: ferry / starlette full GET: {ratio:.2f}x (target >= 2x): {verdict}")
    p99 = ferry_result.range_p99_ms
    verdict = "OK" if p99 <= 20 else "MISSED"
    print(f"disk: ferry 1 MiB range p99: {p99:.2f} ms (target <= 20 ms): {verdict}")
    if "s3: ferry (proxy)" in results:
        ratio = results["s3: ferry (proxy)"].full_mib_s / results["s3: seaweedfs direct"].full_mib_s
        print(f"s3: ferry proxy / seaweedfs direct full GET: {ratio:.2f}x")
    print(f"load average after the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--ranges", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--no-s3", action="store_true", help="only the local-disk comparison")
    parser.add_argument(
        "--serve-starlette", nargs=2, metavar=("PATH", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_starlette:
        serve_starlette(args.serve_starlette[0], int(args.serve_starlette[1]))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-dl-"))
    try:
        print(f"writing {args.size_mib} MiB of random bytes ...", flush=True)
        make_source(workdir / "source.bin", args.size_mib * MiB)
        results = bench_disk(args, workdir)
        if not args.no_s3:
            results.update(bench_s3(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_results(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
