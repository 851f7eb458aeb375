"""Small uploads: Ferry against @tus/server (Node, file store) and a naive PUT sink.

Every server runs on loopback in the same session and receives the same load in
alternating rounds (the order flips every round): N files of S KiB (default 1000 x 64 KiB)
over C keep-alive connections (default 16), in the two ways a tus client sends a small file:

* **creation-with-upload**: one POST carrying the whole body;
* **POST + PATCH**: a POST that creates the upload, then one PATCH with the body.

The naive Litestar sink (``scripts/naive_put_server.py``: one PUT per file, no database,
no fsync) is the floor every tus server pays above; it also shows the client is not the
limit. Ferry runs in one or two configurations (``--config``): its embedded default
(SQLite + local disk, fsync as it is) and PostgreSQL with ``FERRY_WORKERS=2`` (a fresh
database on 127.0.0.1:5432, dropped at the end). @tus/server comes from npm with the
lockfile in ``scripts/peers/tus-node-server`` (``make bench`` runs ``npm ci`` there).

Printed per server and mode: files/s (median and range over the rounds), server CPU ms per
upload (utime + stime from /proc of the server and every process it forked), the client's
CPU ms per upload, and for Ferry the worst event-loop stall of each round, read from
``ferry_event_loop_lag_seconds`` on ``/metrics`` before and after the round. Then Ferry's
ratio to @tus/server per mode. After each Ferry round every upload is read back (GET) and
its SHA-256 compared with the bytes sent.

On a shared machine a loop also "stalls" while other processes hold the CPUs: the
per-round *CPU wait* (the largest share of the round any main thread of the server spent
runnable but waiting for a CPU, from ``/proc/PID/schedstat``) tells that apart; a stall
is Ferry's own only where the CPU wait is small.

The client is a pool of processes, each running a few threads with one blocking
``http.client`` connection apiece and sending bodies with ``sendfile``: an asyncio client
would compete with the servers for the two cores (see shared/perf-notes.md).

Run: ``make bench`` or ``.venv/bin/python scripts/bench_small_uploads.py [--config both]
[--files 1000] [--size-kib 64] [--connections 16] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import multiprocessing
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_upload import send, wait_for_port  # noqa: E402

from tests.support.services import (  # noqa: E402
    FerryProcess,
    ferry_env,
    free_port,
    postgres_database,
)

TUS_PEER_DIR = ROOT / "scripts" / "peers" / "tus-node-server"
CREATE_WITH_UPLOAD = "creation-with-upload"
POST_PATCH = "POST + PATCH"
PUT = "PUT"
TUS_NODE = "@tus/server"
TUS_MODES = (CREATE_WITH_UPLOAD, POST_PATCH)
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
LAG_METRIC = "ferry_event_loop_lag_seconds"
WORST_LAG_METRIC = "ferry_event_loop_lag_max_seconds"


# --- the client (runs in the pool's processes) ---------------------------------------------


@dataclass(frozen=True)
class Share:
    """One client process's part of a round: which files it sends, how, on how many threads."""

    port: int
    mode: str
    source: str
    size: int
    indices: tuple[int, ...]
    threads: int
    name_prefix: str = ""


@dataclass
class ShareResult:
    """What one client process did: where each file went and the CPU it used."""

    paths: dict[int, str] = field(default_factory=dict)
    cpu_seconds: float = 0.0


def expect(response: http.client.HTTPResponse, status: int, what: str) -> None:
    """Fail the benchmark loudly on any answer but the expected one."""
    if response.status != status:
        raise RuntimeError(f"{what}: {response.status} {response.reason}, expected {status}")


def upload_one(conn: http.client.HTTPConnection, share: Share, index: int) -> str:
    """Send file ``index`` (its slice of the source) the share's way; return its path."""
    body = (Path(share.source), index * share.size, share.size)
    length = {"Upload-Length": str(share.size)}
    if share.mode == PUT:
        path = f"/upload/{share.name_prefix}{index}"
        expect(send(conn, "PUT", path, {}, *body), 204, "PUT")
        return path
    if share.mode == CREATE_WITH_UPLOAD:
        created = send(conn, "POST", "/files/", {**OCTETS, **length}, *body)
        expect(created, 201, "POST with body")
        if created.headers.get("Upload-Offset") != str(share.size):
            raise RuntimeError(f"creation-with-upload took {created.headers['Upload-Offset']}")
        return urlsplit(created.headers["Location"]).path
    created = send(conn, "POST", "/files/", {**TUS, **length})
    expect(created, 201, "POST")
    path = urlsplit(created.headers["Location"]).path
    expect(send(conn, "PATCH", path, {**OCTETS, "Upload-Offset": "0"}, *body), 204, "PATCH")
    return path


Item = TypeVar("Item")


def on_connections(
    port: int,
    items: Iterable[Item],
    connections: int,
    work: Callable[[http.client.HTTPConnection, Item], None],
) -> None:
    """``work`` on every item, from ``connections`` threads that each hold one keep-alive
    connection and take the next item until none is left; the first failure is raised."""
    todo: queue.SimpleQueue[Item] = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    failures: list[BaseException] = []

    def connection_loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while not failures:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                work(conn, item)
        except BaseException as error:  # raised again below, in the pool's worker
            failures.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=connection_loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def run_share(share: Share) -> ShareResult:
    """Upload the share's files over ``share.threads`` keep-alive connections."""
    started_cpu = time.process_time()
    paths: dict[int, str] = {}

    def upload(conn: http.client.HTTPConnection, index: int) -> None:
        paths[index] = upload_one(conn, share, index)

    on_connections(share.port, share.indices, share.threads, upload)
    return ShareResult(paths, time.process_time() - started_cpu)


@dataclass(frozen=True)
class Fetch:
    """One client process's part of a read-back: the paths it GETs, on how many threads."""

    port: int
    paths: tuple[str, ...]
    threads: int


def sha256_of_downloads(fetch: Fetch) -> dict[str, str]:
    """GET every path of ``fetch``; path -> SHA-256 of the body (or the status if not 200)."""
    digests: dict[str, str] = {}

    def download(conn: http.client.HTTPConnection, path: str) -> None:
        conn.request("GET", path, headers=TUS)
        response = conn.getresponse()
        body = response.read()
        ok = response.status == 200
        digests[path] = hashlib.sha256(body).hexdigest() if ok else str(response.status)

    on_connections(fetch.port, fetch.paths, fetch.threads, download)
    return digests


# --- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    """A server under test: its label, port, process, the modes it speaks, what it is."""

    name: str
    port: int
    pid: int
    modes: tuple[str, ...]
    about: str
    is_ferry: bool = False

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process and of every process it forked."""
        return sum(process_cpu_seconds(pid) for pid in process_tree(self.pid))

    def main_thread_waits(self) -> dict[int, float]:
        """Per process of the server: seconds its main thread (the event loop, for Ferry's
        workers and for node) has spent ready to run but waiting for a CPU."""
        return {pid: run_queue_wait_seconds(pid) for pid in process_tree(self.pid)}


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads); 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait_seconds(pid: int) -> float:
    """Run-queue wait of a process's main thread (``/proc/PID/schedstat``, field 2, ns)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (Ferry's workers are children of ``ferry serve``)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(parents.get(pid, []))
    return tree


@contextlib.contextmanager
def plain_process(argv: list[str], log: Path, server: Server) -> Iterator[Server]:
    """``server``, started from ``argv`` (which must listen on its port), stopped by PID."""
    with log.open("ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(server.port)
        server.pid = process.pid
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tus_node_server(work: Path) -> contextlib.AbstractContextManager[Server]:
    """@tus/server with its file store, from the committed lockfile's ``node_modules``."""
    if not (TUS_PEER_DIR / "node_modules" / "@tus" / "server").is_dir():
        raise SystemExit(f"@tus/server is not installed: run `npm ci` in {TUS_PEER_DIR}")
    port = free_port()
    argv = ["node", str(TUS_PEER_DIR / "server.js"), str(port), str(work / "tus-node")]
    version = json.loads((TUS_PEER_DIR / "node_modules/@tus/server/package.json").read_text())
    about = f"@tus/server {version['version']} with @tus/file-store, node {node_version()}"
    server = Server(TUS_NODE, port, 0, TUS_MODES, about)
    return plain_process(argv, work / "tus-node.log", server)


def node_version() -> str:
    """``node --version``."""
    found = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return found.stdout.strip()


def naive_sink(work: Path) -> contextlib.AbstractContextManager[Server]:
    """The naive Litestar PUT sink."""
    port = free_port()
    script = ROOT / "scripts" / "naive_put_server.py"
    argv = [sys.executable, str(script), "--port", str(port), "--data-dir", str(work / "naive")]
    about = "scripts/naive_put_server.py: one PUT per file, no database, no fsync"
    return plain_process(argv, work / "naive.log", Server("naive PUT sink", port, 0, (PUT,), about))


@contextlib.contextmanager
def ferry_server(
    work: Path, name: str, about: str, extra_env: dict[str, str], workers: int = 1
) -> Iterator[Server]:
    """``ferry serve`` with auth off on loopback, its own data directory and ``extra_env``."""
    data_dir = work / name / "data"
    data_dir.mkdir(parents=True)
    env = ferry_env(data_dir, {**extra_env, "FERRY_WORKERS": str(workers)})
    ferry = FerryProcess(data_dir=data_dir, env=env)
    ferry.start(timeout=60)
    assert ferry.process is not None
    try:
        yield Server(name, ferry.port, ferry.process.pid, TUS_MODES, about, is_ferry=True)
    finally:
        ferry.stop()


@contextlib.contextmanager
def servers_under_test(work: Path, config: str) -> Iterator[list[Server]]:
    """Every server of this run, started, and stopped (databases dropped) at the end."""
    with contextlib.ExitStack() as stack:
        servers = []
        if config in {"sqlite", "both"}:
            about = "Ferry, embedded default: SQLite + local disk, fsync, one process"
            servers.append(stack.enter_context(ferry_server(work, "ferry-sqlite", about, {})))
        if config in {"postgres", "both"}:
            database_url = stack.enter_context(postgres_database())
            env = {"FERRY_DATABASE_URL": database_url}
            about = "Ferry on PostgreSQL (a fresh database) + local disk, FERRY_WORKERS=2"
            server = ferry_server(work, "ferry-pg-2w", about, env, workers=2)
            servers.append(stack.enter_context(server))
        servers.append(stack.enter_context(tus_node_server(work)))
        servers.append(stack.enter_context(naive_sink(work)))
        yield servers


# --- the event-loop stall of a round (Ferry's /metrics) ---------------------------------------


@dataclass(frozen=True)
class LagSnapshot:
    """``ferry_event_loop_lag_seconds`` at one moment, summed over the server's workers."""

    buckets: tuple[tuple[float, float], ...]
    """(upper bound ``le`` in seconds, cumulative count), ascending, ``+Inf`` last."""
    worst: float
    """The worst lag since the server started (the largest of any worker's)."""


@dataclass(frozen=True)
class Stall:
    """The worst loop stall between two snapshots: in ``(above, at_most]`` seconds; exact
    when the server's worst-since-start rose in between (then it happened in between)."""

    above: float
    at_most: float
    exact: float | None = None

    def describe(self) -> str:
        """``12.3 ms`` when exact, else the bucket it fell in (``5-10 ms``)."""
        if self.exact is not None:
            return f"{self.exact * 1000:.1f} ms"
        if math.isinf(self.at_most):
            return f"> {self.above * 1000:g} ms"
        return f"{self.above * 1000:g}-{self.at_most * 1000:g} ms"


def parse_lag(exposition: str) -> LagSnapshot | None:
    """The lag series from a Prometheus text exposition; ``None`` if the server has none."""
    buckets: list[tuple[float, float]] = []
    worst = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == f"{LAG_METRIC}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == WORST_LAG_METRIC:
                worst = max(worst, sample.value)
    if not buckets:
        return None
    return LagSnapshot(tuple(sorted(buckets)), worst)


def worst_stall(before: LagSnapshot, after: LagSnapshot) -> Stall | None:
    """The worst stall sampled between two snapshots; ``None`` if nothing was sampled."""
    deltas = [
        (bound, count - earlier)
        for (bound, count), (_, earlier) in zip(after.buckets, before.buckets, strict=True)
    ]
    total = deltas[-1][1]
    if total <= 0:
        return None
    above = 0.0
    for bound, count in deltas:
        if count >= total:
            exact = after.worst if after.worst > before.worst else None
            return Stall(above, bound, exact)
        above = bound
    raise AssertionError("the +Inf bucket counts every sample")


def read_lag(port: int) -> LagSnapshot | None:
    """Ferry's loop-lag series now (from any worker: the workers' metrics are added up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    expect(response, 200, "GET /metrics")
    return parse_lag(text)


# --- rounds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One server, one mode, one round."""

    files_per_second: float
    server_cpu_ms: float
    client_cpu_ms: float
    stall: Stall | None
    cpu_wait: float
    """The largest share of the round a main thread of the server spent waiting for a CPU
    (other processes had it): a loop stall this long is the machine's, not the server's."""
    load: float


@dataclass
class Run:
    """The benchmark's inputs, fixed for the whole run."""

    args: argparse.Namespace
    pool: Pool
    source: Path
    digests: list[str]

    def shares(self, server: Server, mode: str, indices: range, prefix: str) -> list[Share]:
        """``indices`` dealt round-robin to the client processes."""
        processes, threads = client_layout(self.args.connections, self.args.client_processes)
        size = self.args.size_kib * 1024
        return [
            Share(server.port, mode, str(self.source), size, tuple(part), threads, prefix)
            for part in (indices[number::processes] for number in range(processes))
        ]


def client_layout(connections: int, processes: int) -> tuple[int, int]:
    """(client processes, threads each) for ``connections`` connections in all."""
    processes = max(1, min(processes, connections))
    if connections % processes:
        raise SystemExit(f"--connections {connections} must be a multiple of {processes}")
    return processes, connections // processes


def upload_all(run: Run, server: Server, mode: str, indices: range, prefix: str) -> ShareResult:
    """Send ``indices`` to ``server``; the paths and the client CPU of all processes."""
    total = ShareResult()
    for result in run.pool.map(run_share, run.shares(server, mode, indices, prefix), 1):
        total.paths.update(result.paths)
        total.cpu_seconds += result.cpu_seconds
    return total


def measure(run: Run, server: Server, mode: str, round_number: int) -> Measurement:
    """One timed round of ``mode`` on ``server`` (Ferry's uploads are read back after)."""
    files = run.args.files
    lag_before = read_lag(server.port) if server.is_ferry else None
    cpu_before, waits_before = server.cpu_seconds(), server.main_thread_waits()
    started = time.perf_counter()
    sent = upload_all(run, server, mode, range(files), f"r{round_number}-")
    elapsed = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - cpu_before
    waits = server.main_thread_waits()
    cpu_wait = max(waits[pid] - waits_before.get(pid, 0.0) for pid in waits) / elapsed
    lag_after = read_lag(server.port) if server.is_ferry else None
    stall = worst_stall(lag_before, lag_after) if lag_before and lag_after else None
    if server.is_ferry:
        verify(run, server, sent.paths)
    return Measurement(
        files_per_second=files / elapsed,
        server_cpu_ms=server_cpu * 1000 / files,
        client_cpu_ms=sent.cpu_seconds * 1000 / files,
        stall=stall,
        cpu_wait=cpu_wait,
        load=os.getloadavg()[0],
    )


def verify(run: Run, server: Server, paths: dict[int, str]) -> None:
    """GET the uploads back (all, or ``--verify-sample`` of them) and compare SHA-256."""
    chosen = sorted(paths)
    if run.args.verify_sample:
        chosen = chosen[:: max(1, len(chosen) // run.args.verify_sample)]
    processes, threads = client_layout(run.args.connections, run.args.client_processes)
    wanted = [paths[index] for index in chosen]
    fetches = [
        Fetch(server.port, tuple(wanted[number::processes]), threads) for number in range(processes)
    ]
    got: dict[str, str] = {}
    for digests in run.pool.map(sha256_of_downloads, fetches, 1):
        got.update(digests)
    wrong = [paths[index] for index in chosen if got.get(paths[index]) != run.digests[index]]
    if wrong:
        raise RuntimeError(f"{server.name}: {len(wrong)} uploads read back wrong: {wrong[:3]}")


def warm_up(run: Run, servers: list[Server]) -> None:
    """A few untimed uploads per server and mode (imports, JIT, connection pools)."""
    count = min(run.args.files, 4 * run.args.connections)
    for server in servers:
        for mode in server.modes:
            upload_all(run, server, mode, range(count), "warm-")


def run_rounds(run: Run, servers: list[Server]) -> dict[tuple[str, str], list[Measurement]]:
    """Every round: each mode on each server that speaks it, the order flipped each round."""
    results: dict[tuple[str, str], list[Measurement]] = {}
    for number in range(run.args.rounds):
        order = servers if number % 2 == 0 else servers[::-1]
        for mode in (*TUS_MODES, PUT):
            for server in (server for server in order if mode in server.modes):
                measured = measure(run, server, mode, number)
                results.setdefault((server.name, mode), []).append(measured)
                stall = f"  worst loop stall {measured.stall.describe()}" if measured.stall else ""
                print(
                    f"round {number + 1}  {mode:20} {server.name:16} "
                    f"{measured.files_per_second:7.1f} files/s  "
                    f"server CPU {measured.server_cpu_ms:5.2f} ms/upload  "
                    f"client CPU {measured.client_cpu_ms:4.2f} ms/upload  "
                    f"waited for a CPU {measured.cpu_wait:4.0%}  "
                    f"load {measured.load:.2f}{stall}",
                    flush=True,
                )
    return results


# --- report ---------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 1) -> str:
    """``median (min-max)``."""
    low, high = min(values), max(values)
    return f"{statistics.median(values):.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Round-by-round ratios (each pair measured in the same round)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def print_report(servers: list[Server], results: dict[tuple[str, str], list[Measurement]]) -> None:
    """The table per server and mode, then Ferry / @tus/server per mode."""
    header = ("mode", "server", "files/s median (range)", "server CPU ms/upload", "client CPU")
    print("\n{:20} {:16} {:26} {:22} {:11} CPU wait  worst loop stall per round".format(*header))
    for (name, mode), rounds in results.items():
        stalls = ", ".join(m.stall.describe() if m.stall else "-" for m in rounds)
        print(
            f"{mode:20} {name:16} {spread([m.files_per_second for m in rounds]):26} "
            f"{spread([m.server_cpu_ms for m in rounds], 2):22} "
            f"{statistics.median(m.client_cpu_ms for m in rounds):5.2f} ms    "
            f"{statistics.median(m.cpu_wait for m in rounds):6.0%}    "
            f"{stalls if any(m.stall for m in rounds) else ''}"
        )
    for ferry in (server for server in servers if server.is_ferry):
        for mode in TUS_MODES:
            rates = [m.files_per_second for m in results[(ferry.name, mode)]]
            peer = [m.files_per_second for m in results[(TUS_NODE, mode)]]
            print(
                f"{ferry.name} / {TUS_NODE}, {mode}: files/s ratio {spread(ratios(rates, peer), 2)}"
            )


def make_source(directory: Path, files: int, size: int) -> tuple[Path, list[str]]:
    """A file of ``files`` random slices of ``size`` bytes, and each slice's SHA-256."""
    path = directory / "source.bin"
    digests = []
    with path.open("wb") as handle:
        for _ in range(files):
            block = os.urandom(size)
            digests.append(hashlib.sha256(block).hexdigest())
            handle.write(block)
    return path, digests


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size-kib", type=int, default=64)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--client-processes", type=int, default=4, help="client processes sharing connections"
    )
    parser.add_argument(
        "--verify-sample", type=int, default=0, help="read back this many uploads (0: all)"
    )
    return parser.parse_args()


def main() -> None:
    """Start the servers, run the rounds, print the table."""
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-small-"))
    try:
        source, digests = make_source(work, args.files, args.size_kib * 1024)
        # The client processes are forked first, before this process has any thread.
        with (
            multiprocessing.get_context("fork").Pool(args.client_processes) as pool,
            servers_under_test(work, args.config) as servers,
        ):
            run = Run(args, pool, source, digests)
            print(
                f"{args.files} x {args.size_kib} KiB, {args.connections} connections, "
                f"{args.rounds} rounds; load average at start {os.getloadavg()}",
                flush=True,
            )
            warm_up(run, servers)
            results = run_rounds(run, servers)
        print_report(servers, results)
        print(f"load average at end {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
