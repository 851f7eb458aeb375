"""Soak test of issue 3's "done when": a big upload into S3, interrupted and crashed.

A ``--size-gib`` (default 5) upload goes through ``ferry serve`` into SeaweedFS in 64 MiB
PATCHes. Three PATCHes are cut off half-way by the client (it closes the socket) and the
server is killed with SIGKILL twice in the middle of a PATCH; after each, the client asks
for the offset (HEAD) and resumes from there. At the end it checks, in S3: the object's
SHA-256 equals the source's, the object has at most 10,000 parts, no multipart upload is
left open, and the staging directory is empty.

Run: ``.venv/bin/python scripts/soak_s3.py [--size-gib 5]`` (not part of ``make test``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.seaweed import run_seaweedfs  # noqa: E402
from tests.support.services import (  # noqa: E402
    FerryProcess,
    ferry_env,
    postgres_available,
    postgres_database,
)

MiB = 1024 * 1024
PATCH_SIZE = 64 * MiB
TUS = {"Tus-Resumable": "1.0.0"}


class Source:
    """Deterministic bytes: a 64 MiB random block, each repetition salted by its index."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.block = bytearray(os.urandom(PATCH_SIZE))

    def chunk(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            index, inside = divmod(offset, PATCH_SIZE)
            take = min(length, PATCH_SIZE - inside)
            piece = bytearray(self.block[inside : inside + take])
            if inside < 8:  # the first 8 bytes of each repetition carry its index
                salt = (index * 1_000_003).to_bytes(8, "big")[inside:]
                piece[: len(salt)] = salt[: len(piece)]
            out += piece
            offset += take
            length -= take
        return bytes(out)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for offset in range(0, self.size, PATCH_SIZE):
            digest.update(self.chunk(offset, min(PATCH_SIZE, self.size - offset)))
        return digest.hexdigest()


def request(port: int, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def offset_of(port: int, path: str) -> int:
    for _ in range(100):
        try:
            response = request(port, "HEAD", path, TUS)
        except OSError:
            time.sleep(0.2)
            continue
        if response.status == 200:
            return int(response.headers["Upload-Offset"])
        time.sleep(0.2)
    raise RuntimeError("HEAD never answered")


def patch(port: int, path: str, offset: int, body: bytes, cut_after: int | None) -> int | None:
    """PATCH ``body``; with ``cut_after``, close the socket after that many bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=600)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        sock.sendall(head)
        view = memoryview(body)
        if cut_after is not None:
            sock.sendall(view[:cut_after])
            time.sleep(0.5)
            return None
        sock.sendall(view)
        status_line = sock.recv(65536).split(b"\r\n", 1)[0].split()
        # No status line: the connection closed before an answer arrived (seen once right
        # after a cut-off PATCH); the offset is asked for again, as after a 409/423.
        return int(status_line[1]) if len(status_line) > 1 else None
    except OSError:
        return None
    finally:
        sock.close()


@contextlib.contextmanager
def database_url() -> Iterator[str | None]:
    if postgres_available():
        with postgres_database() as url:
            yield url
    else:
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=5.0)
    args = parser.parse_args()
    size = int(args.size_gib * 1024) * MiB
    source = Source(size)
    print("hashing the source ...", flush=True)
    expected = source.sha256()
    patches = -(-size // PATCH_SIZE)
    cuts = {patches // 6, patches // 2, (5 * patches) // 6}
    kills = {patches // 3, (2 * patches) // 3}
    work = Path(tempfile.mkdtemp(prefix="ferry-soak-"))
    try:
        with run_seaweedfs(work / "s3") as endpoint, database_url() as db_url:
            data_dir = work / "ferry" / "data"
            data_dir.mkdir(parents=True)
            extra = {**endpoint.env("soak/"), "FERRY_LOG_LEVEL": "WARNING"}
            if db_url:
                extra["FERRY_DATABASE_URL"] = db_url
            server = FerryProcess(data_dir=data_dir, env=ferry_env(data_dir, extra))
            server.start()
            started = time.perf_counter()
            try:
                created = request(
                    server.port, "POST", "/files/", {**TUS, "Upload-Length": str(size)}
                )
                assert created.status == 201, created.status
                path = "/files/" + created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
                number = 0
                offset = 0
                while offset < size:
                    number += 1
                    body = source.chunk(offset, min(PATCH_SIZE, size - offset))
                    if number in cuts:
                        patch(server.port, path, offset, body, cut_after=len(body) // 2)
                        print(f"PATCH {number}: cut off by the client", flush=True)
                    elif number in kills:
                        killer = threading.Timer(0.3, server.kill)
                        killer.start()
                        patch(server.port, path, offset, body, cut_after=None)
                        killer.join()
                        server.start()
                        print(f"PATCH {number}: server killed with SIGKILL, restarted", flush=True)
                    else:
                        status = patch(server.port, path, offset, body, cut_after=None)
                        if status in (409, 423, None):
                            # the cut-off PATCH before was still being committed, or the
                            # answer was lost with the connection: ask for the offset again
                            time.sleep(0.2)
                        else:
                            assert status == 204, status
                    offset = offset_of(server.port, path)
                seconds = time.perf_counter() - started
            finally:
                server.stop()
            s3 = endpoint.client()
            key = next(
                o["Key"]
                for o in s3.list_objects_v2(Bucket=endpoint.bucket, Prefix="soak/")["Contents"]
                if o["Key"].endswith(path.rsplit("/", 1)[-1])
            )
            head = s3.head_object(Bucket=endpoint.bucket, Key=key)
            parts = int(head["ETag"].strip('"').rsplit("-", 1)[-1])
            digest = hashlib.sha256()
            body_stream = s3.get_object(Bucket=endpoint.bucket, Key=key)["Body"]
            for block in iter(lambda: body_stream.read(8 * MiB), b""):
                digest.update(block)
            open_uploads = s3.list_multipart_uploads(Bucket=endpoint.bucket, Prefix="soak/")
            staged = list((data_dir / "staging").iterdir())
            print(f"size {size} bytes in {seconds:.1f} s ({size / MiB / seconds:.1f} MiB/s)")
            print(f"object SHA-256 matches: {digest.hexdigest() == expected}")
            print(f"parts: {parts} (<= 10000: {parts <= 10_000})")
            print(f"open multipart uploads: {len(open_uploads.get('Uploads', []))}")
            print(f"staging files left: {len(staged)}")
            ok = (
                digest.hexdigest() == expected
                and parts <= 10_000
                and not open_uploads.get("Uploads")
                and not staged
            )
            print("SOAK PASSED" if ok else "SOAK FAILED")
            if not ok:
                raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
