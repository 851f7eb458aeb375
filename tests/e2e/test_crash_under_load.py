"""``kill -9`` while many small uploads commit in groups: every answered upload survives.

Upload writes commit in groups (app/db/group_commit.py): a group holds the rows of several
requests at once. Sixteen clients send small files (creation-with-upload, and POST then
PATCH) as fast as the server takes them; the server is killed mid-stream and restarted.
Every upload whose 201/204 arrived must be there with its exact bytes; none that was not
answered may have become a file with other bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.e2e.support import OCTETS, TUS
from tests.support.services import FerryProcess, running_ferry

CLIENTS = 16
SIZE = 48 * 1024


@dataclass
class Answered:
    """Uploads whose success answer reached the client: path -> SHA-256 of the body."""

    files: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, body: bytes) -> None:
        with self.lock:
            self.files[path] = hashlib.sha256(body).hexdigest()


def _send_small_files(port: int, answered: Answered, stop: threading.Event, index: int) -> None:
    """One client: small files in both tus ways, until the server dies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    count = 0
    try:
        while not stop.is_set():
            body = os.urandom(SIZE)
            length = {"Upload-Length": str(SIZE)}
            if count % 2 == 0:
                conn.request("POST", "/files/", body, {**TUS, **length, "Content-Type": OCTETS})
                created = conn.getresponse()
                created.read()
                if created.status != 201:
                    return
                answered.add(urlsplit(created.headers["Location"]).path, body)
            else:
                conn.request("POST", "/files/", b"", {**TUS, **length})
                created = conn.getresponse()
                created.read()
                if created.status != 201:
                    return
                path = urlsplit(created.headers["Location"]).path
                headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
                conn.request("PATCH", path, body, headers)
                patched = conn.getresponse()
                patched.read()
                if patched.status != 204:
                    return
                answered.add(path, body)
            count += 1
    except (OSError, http.client.HTTPException):
        return  # the server was killed
    finally:
        conn.close()


def _load_then_kill(server: FerryProcess, seconds: float) -> Answered:
    answered = Answered()
    stop = threading.Event()
    clients = [
        threading.Thread(target=_send_small_files, args=(server.port, answered, stop, index))
        for index in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    time.sleep(seconds)
    server.kill()
    stop.set()
    for client in clients:
        client.join(timeout=60)
    return answered


def test_kill_9_while_small_uploads_commit_in_groups_loses_no_answered_upload(
    tmp_path: Path,
) -> None:
    with running_ferry(tmp_path) as server:
        answered = _load_then_kill(server, 3.0)
        assert len(answered.files) > 50, "the load never got going"
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for path, sha256 in answered.files.items():
                head = client.head(path, headers=TUS)
                assert head.status_code == 200, (path, head.status_code)
                assert head.headers["Upload-Offset"] == str(SIZE), path
                download = client.get(path)
                assert download.status_code == 200, (path, download.status_code)
                assert hashlib.sha256(download.content).hexdigest() == sha256, path
            # Whatever else became a file (answered or not) holds whole, verified bytes.
            listed = client.get("/api/files", params={"limit": 1000}).json()
            for item in listed["items"]:
                assert item["size"] == SIZE
                body = client.get(f"/files/{item['uid']}").content
                assert hashlib.sha256(body).hexdigest() == item["sha256"]
