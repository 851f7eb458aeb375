"""Several ``ferry serve`` nodes on one PostgreSQL database and one bucket (invariant 7).

Real processes, real PostgreSQL, real SeaweedFS; every node has a data directory and a
``FERRY_NODE_ID`` of its own, and nothing else: what one node acknowledged, any other
continues. The clients here behave like a tus client behind a load balancer without
stickiness: every PATCH goes to the next node in turn, and a request that fails (a dead
node, a 409, a 423) is followed by a HEAD to another node and a PATCH from the offset the
server gives. A node is killed midway (``kill -9`` of its whole process group) and either
loses its disk or is restarted; no acknowledged byte may be lost either way.

With two nodes: the same PATCH sent to both at once (one wins, the other gets 409/423),
tus-js-client resuming through node b an upload it began through node a, the connection
of a PATCH a node refused before reading its body, and a node whose S3 call outlasts its
lease while the client goes on through the other node.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.support import MIB, make_file
from tests.integration.s3.conftest import S3View
from tests.interop.test_tus_js_client import JS_DIR, node_or_skip
from tests.support.faulty_proxy import faulty_proxy
from tests.support.seaweed import S3Endpoint
from tests.support.services import FerryProcess, ferry_env, postgres_database

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}
PART = 5 * MIB
"""FERRY_S3_MIN_PART_SIZE: S3's smallest part, so that a few MiB make several parts."""
PATCH_SIZE = 3 * MIB
"""Not a divisor of the part size: PATCHes end inside parts, so segments are used."""
SHORT_LEASE_SECONDS = 4
"""A dead node that never comes back: its leases lapse this soon."""
LONG_LEASE_SECONDS = 30
"""A node that comes back (the default lease): it frees its leases long before this."""
TWO_NODES_KEEP_ALIVE_SECONDS = 3
"""FERRY_KEEP_ALIVE_SECONDS of the shared two nodes: an idle connection's end comes soon."""
REQUEST_TIMEOUT = 45.0
"""Longer than any request may take here; a request that needs it counts as a hang."""
STALL_SECONDS = 60.0
"""An upload that makes no progress this long is stuck: the test fails."""
SIZES = [24 * MIB + 1, 29 * MIB + 777, 33 * MIB, 38 * MIB + 4321, 43 * MIB + 99, 48 * MIB - 5]


# ---------------------------------------------------------------------- the cluster


def node_env(
    root: Path,
    name: str,
    s3: S3Endpoint,
    prefix: str,
    database_url: str,
    workers: int,
    lease_seconds: int,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    return ferry_env(
        root / name / "data",
        {
            **(extra or {}),
            **s3.env(prefix),
            "FERRY_DATABASE_URL": database_url,
            "FERRY_NODE_ID": f"node-{name}",
            "FERRY_WORKERS": str(workers),
            "FERRY_S3_MIN_PART_SIZE": str(PART),
            "FERRY_S3_TIMEOUT_SECONDS": "10",
            "FERRY_LOCK_LEASE_SECONDS": str(lease_seconds),
        },
    )


@contextlib.contextmanager
def ferry_cluster(
    root: Path,
    s3: S3Endpoint,
    prefix: str,
    database_url: str,
    workers: list[int],
    lease_seconds: int = SHORT_LEASE_SECONDS,
    extra: Mapping[str, str] | None = None,
) -> Iterator[list[FerryProcess]]:
    """One node per entry of ``workers`` (its ``FERRY_WORKERS``), all started; always stopped.

    Node ``i`` is named ``"abc…"[i]``; its ``FERRY_NODE_ID`` is ``node-{name}``."""
    nodes = []
    for index, count in enumerate(workers):
        name = "abcdefgh"[index]
        data_dir = root / name / "data"
        data_dir.mkdir(parents=True)
        env = node_env(root, name, s3, prefix, database_url, count, lease_seconds, extra)
        nodes.append(FerryProcess(data_dir=data_dir, env=env, own_process_group=True))
    try:
        nodes[0].start()  # migrates the empty database before the others look at it
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda node: node.start(), nodes[1:]))
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop()


def server_log_tails(nodes: list[FerryProcess], lines: int = 15) -> str:
    """The last warnings and errors of every node, for assertion messages."""
    report = []
    for node in nodes:
        for log in sorted((node.data_dir.parent / "logs").glob("*.log")):
            wanted = [
                line
                for line in log.read_text(errors="replace").splitlines()
                if '"WARNING"' in line or '"ERROR"' in line or "Traceback" in line
            ]
            if wanted:
                report.append(f"--- {log}:\n" + "\n".join(wanted[-lines:]))
    return "\n".join(report) or "(no warnings or errors in the server logs)"


def uid_of(url_or_path: str) -> str:
    return url_or_path.rstrip("/").rsplit("/", 1)[-1]


def assert_stored_everywhere(
    nodes: list[FerryProcess], s3_view: S3View, path: str, data: bytes
) -> None:
    """The file reads back whole through each node and straight from the bucket, and its
    recorded SHA-256 (the running hash, carried from node to node) is the right one."""
    expected = hashlib.sha256(data).hexdigest()
    uid = uid_of(path)
    for node in nodes:
        status = httpx.head(f"{node.url}{path}", headers=TUS, timeout=30)
        assert status.status_code == 200, (node.url, status.status_code)
        assert status.headers["upload-offset"] == str(len(data))
        digest, size = hashlib.sha256(), 0
        with httpx.stream("GET", f"{node.url}{path}", timeout=60) as download:
            assert download.status_code == 200, (node.url, download.status_code)
            for block in download.iter_bytes():
                digest.update(block)
                size += len(block)
        assert (size, digest.hexdigest()) == (len(data), expected), f"GET through {node.url}"
    record = httpx.get(f"{nodes[0].url}/api/files/{uid}", timeout=30).json()
    assert record["sha256"] == expected, "the SHA-256 recorded with the file"
    keys = [key for key in s3_view.object_keys() if key.endswith(uid)]
    assert len(keys) == 1, keys
    assert s3_view.sha256_of(keys[0]) == expected, "the object in the bucket"


def assert_nothing_left_in_s3(s3_view: S3View, uids: list[str]) -> None:
    """No multipart upload open and no segment object left for these uploads."""
    open_uploads = [u["Key"] for u in s3_view.open_multipart_uploads()]
    assert [key for key in open_uploads if uid_of(key) in uids] == []
    segments = [
        key
        for key in s3_view.object_keys()
        if key.startswith(f"{s3_view.prefix}segments/") and key.split("/")[-2] in uids
    ]
    assert segments == []


# ---------------------------------------------------------------------- the clients


@dataclass
class ClientUpload:
    """One upload as its client sees it."""

    data: bytes
    path: str
    acknowledged: int = 0
    """The highest offset a 2xx acknowledged."""
    done: bool = False


@dataclass
class Traffic:
    """Round-robin tus clients and what they saw; anomalies are collected, not raised in
    the client threads, and asserted by the test."""

    nodes: list[FerryProcess]
    up: list[bool] = field(default_factory=list)
    generation: list[int] = field(default_factory=list)
    backwards: list[str] = field(default_factory=list)
    """HEADs that reported less than a client had seen acknowledged."""
    anomalies: list[str] = field(default_factory=list)
    """5xx answers, unexpected statuses, transport errors from a node that was up."""
    acknowledged_by: Counter[int] = field(default_factory=Counter)
    """2xx answers to PATCHes, per node."""
    statuses: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.up = [True] * len(self.nodes)
        self.generation = [0] * len(self.nodes)

    # -- what happens to nodes

    def node_down(self, index: int) -> None:
        with self.lock:
            self.up[index] = False
            self.generation[index] += 1

    def node_up(self, index: int) -> None:
        with self.lock:
            self.up[index] = True
            self.generation[index] += 1
            self.acknowledged_by[index] = 0  # count what it takes from now on

    def _note(self, kind: str, text: str) -> None:
        with self.lock:
            (self.backwards if kind == "backwards" else self.anomalies).append(text)

    def _steady(self, index: int, generation: int) -> bool:
        """Whether node ``index`` was up, and neither killed nor restarted, since then."""
        with self.lock:
            return self.up[index] and self.generation[index] == generation

    # -- one client

    def drive(self, upload: ClientUpload, first_node: int) -> None:
        """PATCH ``upload`` to the end, each request to the next node in turn."""
        turn, offset = first_node, 0
        last_progress = time.monotonic()
        with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
            while offset < len(upload.data):
                if time.monotonic() - last_progress > STALL_SECONDS:
                    self._note("anomaly", f"{upload.path}: no progress for {STALL_SECONDS}s")
                    return
                index = turn % len(self.nodes)
                turn += 1
                new_offset = self._patch(client, upload, index, offset)
                if new_offset is None:
                    resynced = self._resync(client, upload, turn)
                    if resynced is None:
                        time.sleep(0.5)
                        continue
                    new_offset = resynced
                if new_offset > offset:
                    last_progress = time.monotonic()
                offset = new_offset
        upload.done = True

    def _patch(
        self, client: httpx.Client, upload: ClientUpload, index: int, offset: int
    ) -> int | None:
        """One PATCH; the new offset when acknowledged, ``None`` when the client must ask."""
        with self.lock:
            generation = self.generation[index]
        body = upload.data[offset : offset + PATCH_SIZE]
        url = f"{self.nodes[index].url}{upload.path}"
        headers = {**TUS, **OCTETS, "Upload-Offset": str(offset)}
        try:
            response = client.patch(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            if self._steady(index, generation):
                self._note("anomaly", f"PATCH {url} @{offset}: {exc!r} from a live node")
            return None
        with self.lock:
            self.statuses[f"PATCH {response.status_code}"] += 1
        if response.status_code == 204:
            acknowledged = int(response.headers["upload-offset"])
            if acknowledged != offset + len(body):
                self._note("anomaly", f"PATCH {url} @{offset}: acknowledged {acknowledged}")
            with self.lock:
                upload.acknowledged = max(upload.acknowledged, acknowledged)
                self.acknowledged_by[index] += 1
            return acknowledged
        if response.status_code == 423:
            time.sleep(0.3)  # a writer (maybe a dead one) holds the lease; it lapses
        elif response.status_code != 409:
            self._note(
                "anomaly", f"PATCH {url} @{offset}: {response.status_code} {response.text[:300]}"
            )
        return None

    def _resync(self, client: httpx.Client, upload: ClientUpload, turn: int) -> int | None:
        """HEAD through the next node that answers: the offset to go on from."""
        for step in range(len(self.nodes)):
            index = (turn + step) % len(self.nodes)
            with self.lock:
                generation = self.generation[index]
            url = f"{self.nodes[index].url}{upload.path}"
            try:
                response = client.head(url, headers=TUS)
            except httpx.HTTPError as exc:
                if self._steady(index, generation):
                    self._note("anomaly", f"HEAD {url}: {exc!r} from a live node")
                continue
            if response.status_code != 200:
                self._note("anomaly", f"HEAD {url}: {response.status_code}")
                continue
            offset = int(response.headers["upload-offset"])
            with self.lock:
                seen = upload.acknowledged
            if offset < seen:
                self._note("backwards", f"HEAD {url}: offset {offset} < acknowledged {seen}")
            return offset
        return None


def new_upload(node: FerryProcess, data: bytes) -> ClientUpload:
    response = httpx.post(
        f"{node.url}/files/", headers={**TUS, "Upload-Length": str(len(data))}, timeout=30
    )
    assert response.status_code == 201, response.text
    return ClientUpload(data=data, path=httpx.URL(response.headers["location"]).path)


async def _leases_held_by(database_url: str, node_id: str) -> set[uuid.UUID]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", "", 1))
    try:
        rows = await connection.fetch("SELECT id FROM uploads WHERE lock_holder = $1", node_id)
    finally:
        await connection.close()
    return {row["id"] for row in rows}


def leases_held_by(database_url: str, node_id: str) -> set[uuid.UUID]:
    """Uploads whose lease ``node_id`` holds (PATCHes of its in flight)."""
    return asyncio.run(_leases_held_by(database_url, node_id))


@dataclass
class Kill:
    """A node to kill midway, and the leases it held when it died."""

    victim: int
    held_leases: set[uuid.UUID] = field(default_factory=set)


def kill_while_writing(
    traffic: Traffic, victim: int, database_url: str, uploads: list[ClientUpload], kill_at: float
) -> set[uuid.UUID]:
    """``kill -9`` the node's process group once ``kill_at`` of the bytes are acknowledged,
    at a moment it holds a lease (a PATCH of its is in flight); returns those leases.

    The node is frozen (SIGSTOP) while the database is asked, so that what it holds cannot
    change before it dies; if it holds nothing, it is thawed and asked again shortly.
    """
    node = traffic.nodes[victim]
    assert node.process is not None
    group = node.process.pid
    total = sum(len(upload.data) for upload in uploads)
    deadline = time.monotonic() + STALL_SECONDS
    while True:
        assert time.monotonic() < deadline, "no moment to kill the node came"
        assert not all(upload.done for upload in uploads), "all done before the kill"
        if sum(upload.acknowledged for upload in uploads) >= total * kill_at:
            os.killpg(group, signal.SIGSTOP)
            try:
                held = leases_held_by(database_url, node.env["FERRY_NODE_ID"])
            except BaseException:
                os.killpg(group, signal.SIGCONT)
                raise
            if held:
                traffic.node_down(victim)  # from now on, its failures are expected
                node.kill_group()
                return held
            os.killpg(group, signal.SIGCONT)
        time.sleep(0.02)


def run_with_a_node_killed_midway(
    nodes: list[FerryProcess],
    database_url: str,
    kill: Kill,
    after_the_kill: Callable[[Traffic], None],
    *,
    kill_at: float,
) -> tuple[Traffic, list[ClientUpload]]:
    """Six uploads sent concurrently, round robin; node ``kill.victim`` is killed midway
    (:func:`kill_while_writing`), then ``after_the_kill(traffic)`` runs (the node loses its
    disk, or restarts)."""
    traffic = Traffic(nodes)
    uploads = [new_upload(nodes[i % len(nodes)], os.urandom(size)) for i, size in enumerate(SIZES)]
    with ThreadPoolExecutor(len(uploads)) as pool:
        running = [pool.submit(traffic.drive, u, i) for i, u in enumerate(uploads)]
        try:
            kill.held_leases = kill_while_writing(
                traffic, kill.victim, database_url, uploads, kill_at
            )
            after_the_kill(traffic)
        finally:
            for future in running:
                future.result(timeout=STALL_SECONDS * 3)
    return traffic, uploads


def assert_no_byte_lost(
    nodes: list[FerryProcess],
    survivors: list[FerryProcess],
    s3_view: S3View,
    traffic: Traffic,
    uploads: list[ClientUpload],
) -> None:
    logs = server_log_tails(nodes)
    assert traffic.backwards == [], f"{traffic.backwards}\n{logs}"
    assert traffic.anomalies == [], f"{traffic.anomalies}\n{logs}"
    assert all(upload.done for upload in uploads), logs
    for upload in uploads:
        assert_stored_everywhere(survivors, s3_view, upload.path, upload.data)
    assert_nothing_left_in_s3(s3_view, [uid_of(upload.path) for upload in uploads])


@pytest.fixture
def cluster_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def three_nodes(
    tmp_path: Path, seaweed: S3Endpoint, s3_prefix: str, cluster_database: str
) -> Iterator[list[FerryProcess]]:
    """Nodes a (two workers), b and c, with short leases."""
    with ferry_cluster(tmp_path, seaweed, s3_prefix, cluster_database, [2, 1, 1]) as nodes:
        yield nodes


@pytest.fixture
def three_nodes_long_lease(
    tmp_path: Path, seaweed: S3Endpoint, s3_prefix: str, cluster_database: str
) -> Iterator[list[FerryProcess]]:
    """Nodes a (two workers), b and c, with the default lease."""
    with ferry_cluster(
        tmp_path, seaweed, s3_prefix, cluster_database, [2, 1, 1], LONG_LEASE_SECONDS
    ) as nodes:
        yield nodes


def reconciliation_reports(node: FerryProcess) -> list[dict[str, int]]:
    """What start-up reconciliation reported, one entry per start of ``node``."""
    reports = []
    for log in sorted((node.data_dir.parent / "logs").glob("ferry*.log")):
        for line in log.read_text(errors="replace").splitlines():
            found = re.search(r"start-up reconciliation: (\{[^}]*\})", line)
            if found:
                reports.append((json.loads(line)["ts"], ast.literal_eval(found.group(1))))
    return [report for _ts, report in sorted(reports, key=lambda item: item[0])]


@pytest.fixture
def s3_view(seaweed: S3Endpoint, s3_prefix: str) -> S3View:
    """The bucket under the three nodes' prefix."""
    return S3View(seaweed, s3_prefix)


# ---------------------------------------------------------------------- the tests


def test_losing_a_node_and_its_disk_midway_loses_no_acknowledged_byte(
    three_nodes: list[FerryProcess], s3_view: S3View, cluster_database: str
) -> None:
    victim = three_nodes[0]  # the one with two workers
    kill = Kill(victim=0)

    def lose_its_disk(_traffic: Traffic) -> None:
        shutil.rmtree(victim.data_dir)

    traffic, uploads = run_with_a_node_killed_midway(
        three_nodes, cluster_database, kill, lose_its_disk, kill_at=0.5
    )
    assert_no_byte_lost(three_nodes, three_nodes[1:], s3_view, traffic, uploads)
    assert kill.held_leases  # it died writing; its leases lapsed, the others went on


def test_a_node_killed_midway_and_restarted_takes_its_share_again(
    three_nodes_long_lease: list[FerryProcess], s3_view: S3View, cluster_database: str
) -> None:
    three_nodes = three_nodes_long_lease
    victim = three_nodes[0]  # the one with two workers: worker 0 reconciles on restart
    kill = Kill(victim=0)

    def restart(traffic: Traffic) -> None:
        victim.start()  # the others take its PATCHes meanwhile
        traffic.node_up(0)

    # Early enough that plenty is left once it is back (a start takes seconds here).
    traffic, uploads = run_with_a_node_killed_midway(
        three_nodes, cluster_database, kill, restart, kill_at=0.2
    )
    assert_no_byte_lost(three_nodes, three_nodes, s3_view, traffic, uploads)
    # It freed the leases of the PATCHes it was killed in at once, not 30 s later...
    assert kill.held_leases
    first_start, restart_report = reconciliation_reports(victim)
    assert first_start["released_locks"] == 0
    assert restart_report["released_locks"] == len(kill.held_leases)
    # ...and acknowledges PATCHes again (how many depends on how long its start took: on a
    # loaded machine most of the traffic is over by then, once leaving it only 2).
    assert traffic.acknowledged_by[0] >= 1, (traffic.acknowledged_by, traffic.statuses)


# -- two nodes: racing PATCHes, tus-js-client moving between nodes


@pytest.fixture(scope="module")
def module_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture(scope="module")
def two_nodes(
    tmp_path_factory: pytest.TempPathFactory, seaweed: S3Endpoint, module_prefix: str
) -> Iterator[list[FerryProcess]]:
    """Nodes a and b, one process each, shared by the tests that never stop them (idle
    connections closed after 3 s instead of 15, so waiting for that is quick)."""
    with (
        postgres_database() as database_url,
        ferry_cluster(
            tmp_path_factory.mktemp("two-nodes"),
            seaweed,
            module_prefix,
            database_url,
            [1, 1],
            extra={"FERRY_KEEP_ALIVE_SECONDS": str(TWO_NODES_KEEP_ALIVE_SECONDS)},
        ) as nodes,
    ):
        yield nodes


@pytest.fixture
def two_nodes_s3(seaweed: S3Endpoint, module_prefix: str) -> S3View:
    return S3View(seaweed, module_prefix)


def slow_body(data: bytes, start: threading.Barrier) -> Iterator[bytes]:
    """``data`` in 128 KiB pieces over about a second, after both senders are ready."""
    start.wait(10)
    piece = 128 * 1024
    for at in range(0, len(data), piece):
        yield data[at : at + piece]
        time.sleep(0.03)


def race(nodes: list[FerryProcess], path: str, offset: int, body: bytes) -> list[httpx.Response]:
    """The same PATCH to every node at once."""
    start = threading.Barrier(len(nodes))

    def send(node: FerryProcess) -> httpx.Response:
        return httpx.patch(
            f"{node.url}{path}",
            content=slow_body(body, start),
            headers={**TUS, **OCTETS, "Upload-Offset": str(offset)},
            timeout=REQUEST_TIMEOUT,
        )

    with ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(send, nodes))


def test_two_nodes_racing_patches_at_one_offset_one_wins(
    two_nodes: list[FerryProcess], two_nodes_s3: S3View
) -> None:
    node_a, node_b = two_nodes
    data = os.urandom(2 * PART + 3 * MIB + 17)
    upload = new_upload(node_a, data)
    first = httpx.patch(
        f"{node_a.url}{upload.path}",
        content=data[: 3 * MIB],
        headers={**TUS, **OCTETS, "Upload-Offset": "0"},
        timeout=REQUEST_TIMEOUT,
    )
    assert first.status_code == 204, first.text
    # Two rounds: one ends inside part 2 (from a segment of node a), one crosses into part 3.
    for start, end in [(3 * MIB, 7 * MIB), (7 * MIB, 11 * MIB)]:
        responses = race(two_nodes, upload.path, start, data[start:end])
        statuses = sorted(response.status_code for response in responses)
        assert statuses[0] == 204 and statuses[1] in {409, 423}, (
            statuses,
            server_log_tails(two_nodes),
        )
        (winner,) = [response for response in responses if response.status_code == 204]
        assert winner.headers["upload-offset"] == str(end)
        for node in two_nodes:
            status = httpx.head(f"{node.url}{upload.path}", headers=TUS, timeout=30)
            assert status.headers["upload-offset"] == str(end)
    last = httpx.patch(
        f"{node_b.url}{upload.path}",
        content=data[11 * MIB :],
        headers={**TUS, **OCTETS, "Upload-Offset": str(11 * MIB)},
        timeout=REQUEST_TIMEOUT,
    )
    assert last.status_code == 204, last.text
    assert_stored_everywhere(two_nodes, two_nodes_s3, upload.path, data)
    assert_nothing_left_in_s3(two_nodes_s3, [uid_of(upload.path)])


def test_tus_js_client_resumes_through_another_node(
    tmp_path: Path, two_nodes: list[FerryProcess], two_nodes_s3: S3View
) -> None:
    node = node_or_skip()
    node_a, node_b = two_nodes
    chunk = 4 * MIB
    source = make_file(tmp_path / "source.bin", 5 * chunk + 4321)
    result = subprocess.run(
        [
            node,
            str(JS_DIR / "cross_node.mjs"),
            f"{node_a.url}/files/",
            node_b.url,
            str(source),
            str(chunk),
            "2",  # chunks acknowledged by node a, then
            "150",  # ms later, while the next PATCH is on its way, the client aborts
        ],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{result.stderr}\n{server_log_tails(two_nodes)}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["first_url"].startswith(node_a.url)
    acknowledged = report["acknowledged"]
    assert 2 * chunk <= acknowledged < report["size"]
    assert report["resumed_url"] == node_b.url + httpx.URL(report["first_url"]).path
    requests = report["resumed_requests"]
    assert all(request["url"] == report["resumed_url"] for request in requests), requests
    head = requests[0]
    assert head["method"] == "HEAD" and head["status"] == 200, requests
    assert head["answered_offset"] >= acknowledged, "node b knows what node a acknowledged"
    patches = [r for r in requests if r["method"] == "PATCH"]
    assert patches and patches[0]["offset"] == head["answered_offset"], requests
    assert patches[-1]["status"] == 204 and patches[-1]["answered_offset"] == report["size"]
    data = source.read_bytes()
    path = httpx.URL(report["first_url"]).path
    assert_stored_everywhere(two_nodes, two_nodes_s3, path, data)
    assert_nothing_left_in_s3(two_nodes_s3, [uid_of(path)])


def open_patch(node: FerryProcess, path: str, offset: int, length: int) -> socket.socket:
    """A PATCH announcing ``length`` bytes, its headers sent and no byte of its body."""
    connection = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    connection.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
    )
    return connection


def seconds_until_closed(connection: socket.socket, patience: float) -> float | None:
    """How long the server keeps an idle connection open (``None``: past ``patience``)."""
    started = time.monotonic()
    connection.settimeout(patience)
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_patch_answered_before_its_body_does_not_keep_its_connection_open(
    two_nodes: list[FerryProcess],
) -> None:
    """Node b answers 423 (node a holds the lease) before it reads the body; the client
    sends the body anyway, as HTTP/1.1 clients do, and then has nothing more to ask. The
    idle connection must be closed like any other (FERRY_KEEP_ALIVE_SECONDS, 3 s here);
    a connection kept open for ever costs the server a socket, and keeps a Node.js client
    (tus-js-client) from exiting."""
    node_a, node_b = two_nodes
    upload = new_upload(node_a, bytes(8 * MIB))
    writer = open_patch(node_a, upload.path, 0, 8 * MIB)  # holds the lease
    try:
        writer.sendall(bytes(MIB))
        deadline = time.monotonic() + 10
        headers = {**TUS, **OCTETS, "Upload-Offset": "0"}
        while httpx.patch(f"{node_b.url}{upload.path}", headers=headers).status_code != 423:
            assert time.monotonic() < deadline, "node a never took the lease"
            time.sleep(0.05)
        refused = open_patch(node_b, upload.path, 0, 2 * MIB)
        with refused:
            status_line = refused.recv(65536).split(b"\r\n", 1)[0]
            assert status_line == b"HTTP/1.1 423 Locked"
            refused.sendall(bytes(2 * MIB))  # the rest of the request, read and dropped
            idle_for = seconds_until_closed(refused, patience=20)
        assert idle_for is not None, "node b kept the idle connection open for over 20 s"
    finally:
        writer.close()


def test_a_node_whose_s3_call_outlasts_its_lease_does_not_undo_what_another_acknowledged(
    tmp_path: Path, seaweed: S3Endpoint, s3_prefix: str, cluster_database: str, s3_view: S3View
) -> None:
    """Node a's PUT of a segment is slow (S3 browning out for it) and node a stalls (paused,
    as a machine under memory pressure or a long GC would), so its lease lapses: a live node
    renews its lease while it waits for S3, a stalled one cannot. The client, like any tus
    client, goes on through node b. When node a wakes and its PUT finally goes through, it
    must not touch what node b acknowledged meanwhile (its ledger writes are fenced by the
    lease)."""
    lease = 3
    with faulty_proxy(seaweed.url) as proxy:
        node_a = FerryProcess(
            data_dir=tmp_path / "a" / "data",
            env={
                **node_env(tmp_path, "a", seaweed, s3_prefix, cluster_database, 1, lease),
                "FERRY_S3_ENDPOINT_URL": proxy.url,
                "FERRY_S3_TIMEOUT_SECONDS": "60",
            },
        )
        node_b = FerryProcess(
            data_dir=tmp_path / "b" / "data",
            env=node_env(tmp_path, "b", seaweed, s3_prefix, cluster_database, 1, lease),
        )
        for node in (node_a, node_b):
            node.data_dir.mkdir(parents=True)
        node_a.start()
        node_b.start()
        try:
            data = os.urandom(2 * PART + 2 * MIB + 3)
            upload = new_upload(node_b, data)
            step = MIB  # below one part: every PATCH is kept as a segment

            def patch(node: FerryProcess, offset: int) -> httpx.Response:
                return httpx.patch(
                    f"{node.url}{upload.path}",
                    content=data[offset : offset + step],
                    headers={**TUS, **OCTETS, "Upload-Offset": str(offset)},
                    timeout=REQUEST_TIMEOUT,
                )

            assert patch(node_b, 0).status_code == 204
            gate = proxy.pause("PUT ", "/segments/")
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(patch, node_a, step)  # [1 MiB, 2 MiB) through node a
                deadline = time.monotonic() + 30
                while not proxy.count("PUT ", "/segments/"):
                    assert time.monotonic() < deadline, "node a never shipped its segment"
                    time.sleep(0.05)
                assert node_a.process is not None
                os.kill(node_a.process.pid, signal.SIGSTOP)  # no more lease renewals
                time.sleep(lease + 1)  # node a holds its lease no longer
                # The client gave up on node a and goes on through node b.
                assert tus_head_offset(node_b, upload.path) == step
                assert patch(node_b, step).status_code == 204
                assert patch(node_b, 2 * step).status_code == 204
                os.kill(node_a.process.pid, signal.SIGCONT)
                gate.set()  # node a's PUT reaches S3 at last
                late = slow.result(timeout=60)
            assert late.status_code in {409, 423}, late.status_code
            acknowledged = 3 * step
            for node in (node_a, node_b):
                assert tus_head_offset(node, upload.path) == acknowledged
            offset = acknowledged
            while offset < len(data):
                response = patch(node_b if offset // step % 2 else node_a, offset)
                assert response.status_code == 204, (
                    offset,
                    response.status_code,
                    response.text,
                    server_log_tails([node_a, node_b]),
                )
                offset = int(response.headers["upload-offset"])
            assert_stored_everywhere([node_a, node_b], s3_view, upload.path, data)
            assert_nothing_left_in_s3(s3_view, [uid_of(upload.path)])
        finally:
            node_a.stop()
            node_b.stop()


def tus_head_offset(node: FerryProcess, path: str) -> int:
    response = httpx.head(f"{node.url}{path}", headers=TUS, timeout=30)
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])
