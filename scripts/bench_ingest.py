"""Benchmark ``ferry ingest`` against a plain tuspy loop, same tree, same server, same run.

Starts ``ferry serve`` on a fresh PostgreSQL database (``FERRY_BENCH_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test`` as the admin URL), generates two trees —
many small files and a few big ones — and uploads each twice: with ``ferry ingest`` and
with tuspy's ``Uploader`` in a loop (one file after another, as a script would). Prints
files/s and MiB/s side by side and the speed-up. Sizes are options, so a quick run fits
a busy machine: ``--small-count 500 --big-count 2 --big-mib 256``. The server runs one
worker per core (``--workers``, ``FERRY_WORKERS``), as a deployment on this machine would;
both clients upload to that same server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FERRY = ROOT / ".venv" / "bin" / "ferry"
ADMIN_URL = os.environ.get("FERRY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _admin(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(ADMIN_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _make_small_tree(root: Path, count: int, size: int) -> None:
    for index in range(count):
        path = root / f"dir-{index % 20:02d}" / f"file-{index:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def _make_big_tree(root: Path, count: int, mib: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1024 * 1024)
    for index in range(count):
        with (root / f"big-{index}.bin").open("wb") as handle:
            for position in range(mib):
                # A distinct first bytes per MiB so no two files or blocks are identical.
                handle.write(position.to_bytes(8, "big") + index.to_bytes(8, "big") + block[16:])


def _tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _run_ferry_ingest(server: str, tree: Path, state: Path, parallel: int) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [
            str(FERRY),
            "ingest",
            str(tree),
            "--server",
            server,
            "--state",
            str(state),
            "--parallel",
            str(parallel),
            "--progress",
            "none",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"ferry ingest failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def _run_tuspy_loop(server: str, tree: Path, chunk_size: int) -> float:
    """The baseline: what a script with tuspy does, one file after another."""
    code = (
        "import sys, pathlib\n"
        "from tusclient import client\n"
        "c = client.TusClient(sys.argv[1] + '/files/')\n"
        "for p in sorted(pathlib.Path(sys.argv[2]).rglob('*')):\n"
        "    if p.is_file():\n"
        "        c.uploader(str(p), chunk_size=int(sys.argv[3]),"
        " metadata={'filename': p.name}).upload()\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code, server, str(tree), str(chunk_size)], check=True)
    return time.monotonic() - started


def _line(label: str, files: int, size: int, seconds: float) -> dict[str, float]:
    row = {
        "seconds": round(seconds, 2),
        "files_per_s": round(files / seconds, 1),
        "mib_per_s": round(size / 1024 / 1024 / seconds, 1),
    }
    print(
        f"  {label:<14} {row['seconds']:>8.2f} s {row['files_per_s']:>9.1f} files/s "
        f"{row['mib_per_s']:>9.1f} MiB/s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--big-count", type=int, default=4)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="FERRY_WORKERS of the server both clients upload to (default: one per core)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-ingest-"))
    database = f"ferry_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(
        FERRY_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        FERRY_DATA_DIR=str(work / "data"),
        FERRY_LOG_DIR=str(work / "logs"),
        FERRY_AUTH="none",
        FERRY_LOG_LEVEL="WARNING",
        FERRY_WORKERS=str(args.workers),
    )
    server = subprocess.Popen(
        [str(FERRY), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=(work / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit((work / "server.log").read_text()[-3000:])
            time.sleep(0.2)

        trees = [
            (
                "small",
                args.small_count,
                lambda root: _make_small_tree(root, args.small_count, args.small_kib * 1024),
            ),
            (
                "big",
                args.big_count,
                lambda root: _make_big_tree(root, args.big_count, args.big_mib),
            ),
        ]
        for name, count, build in trees:
            if count <= 0:
                continue
            tree = work / f"tree-{name}"
            build(tree)
            files, size = _tree_size(tree)
            print(
                f"{name}: {files} files, {size / 1024 / 1024:,.0f} MiB "
                f"(server: FERRY_WORKERS={args.workers})",
                flush=True,
            )
            ferry_s = _run_ferry_ingest(url, tree, work / f"state-{name}.json", args.parallel)
            row_ferry = _line("ferry ingest", files, size, ferry_s)
            tuspy_s = _run_tuspy_loop(url, tree, 64 * 1024 * 1024)
            row_tuspy = _line("tuspy loop", files, size, tuspy_s)
            speedup = round(tuspy_s / ferry_s, 2)
            print(f"  speed-up      {speedup:>8.2f}x", flush=True)
            results[name] = {
                "ferry_ingest": row_ferry,
                "tuspy_loop": row_tuspy,
                "speedup": {"x": speedup},
            }
            shutil.rmtree(tree)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
