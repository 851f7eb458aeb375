"""A small fault-injecting HTTP proxy to put in front of S3 in tests.

It runs its own event loop in a thread on a free loopback port, so both in-process apps
and ``ferry serve`` processes can use it. Every request gets its own upstream connection
(``Connection: close`` is forced both ways), which makes one connection one request and
lets rules target single S3 calls by their request line:

* ``respond(match, status, body, times)`` — answer without asking S3 (503 SlowDown, or a
  200 whose body is an error);
* ``reset(match, times)`` — reset the connection after reading the request head;
* ``stall(match, seconds, times)`` — hold the request, then drop it;
* ``pause(match, times)`` — hold the request until the returned event is set, then forward
  it (a slow S3 call the test ends when it has looked around);
* ``hold_response(match, times)`` — forward to S3, then keep S3's answer and never reply
  (S3 did the work, the client does not know: the crash window between UploadPart or
  CompleteMultipartUpload and the ledger commit); :attr:`held` is set when it happens;
* ``lose_response(match, times)`` — forward, throw the answer away and reset the
  connection (the server did the work; the client sees a broken connection, as when the
  server dies between its commit and its answer);
* ``down()`` / ``up()`` — stop listening (connection refused) and listen again.

With ``strip_prefix`` it is also a reverse proxy mounting its upstream under a path:
``/prefix/x`` goes upstream as ``/x``, anything outside the prefix answers 404 here.

``match`` is a substring of the request line, e.g. ``"partNumber="`` (UploadPart),
``"POST /"`` with ``"uploadId="`` (CompleteMultipartUpload).

Every request passing through is recorded (:attr:`seen`): its line, its body size and
whether it was a server-side copy (``x-amz-copy-source``), so a test can tell which bytes
Ferry really sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.services import free_port

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
ERROR_IN_200 = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


@dataclass(frozen=True)
class SeenRequest:
    """One request that reached the proxy."""

    line: str
    body_size: int
    copy: bool
    """A server-side copy (UploadPartCopy or CopyObject): S3 reads the bytes itself."""


@dataclass
class Rule:
    """One fault: which requests it hits, what it does, how many more times."""

    match: tuple[str, ...]
    action: str
    times: int
    status: int = 503
    body: bytes = SLOW_DOWN
    seconds: float = 0.0
    release: threading.Event | None = None

    def hits(self, request_line: str) -> bool:
        return self.times > 0 and all(part in request_line for part in self.match)


class FaultyProxy:
    """An HTTP/1.1 proxy to ``upstream`` with scripted faults (see the module docstring)."""

    def __init__(
        self, upstream_host: str, upstream_port: int, strip_prefix: str | None = None
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.strip_prefix = strip_prefix
        self.port = free_port()
        self.rules: list[Rule] = []
        self.held = threading.Event()
        self.requests: list[str] = []
        self.seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._held_writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        """Endpoint URL to give Ferry instead of S3's."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._thread.start()
        self.up()

    def stop(self) -> None:
        self.down()
        self._call(self._drop_held())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def up(self) -> None:
        """Listen (again) on the same port."""
        self._call(self._listen())

    def down(self) -> None:
        """Stop listening: new connections are refused."""
        self._call(self._close_listener())

    def _add(self, rule: Rule) -> None:
        with self._lock:
            self.rules.append(rule)

    def respond(
        self, *match: str, status: int = 503, body: bytes = SLOW_DOWN, times: int = 1
    ) -> None:
        self._add(Rule(match, "respond", times, status=status, body=body))

    def reset(self, *match: str, times: int = 1) -> None:
        self._add(Rule(match, "reset", times))

    def stall(self, *match: str, seconds: float, times: int = 1) -> None:
        self._add(Rule(match, "stall", times, seconds=seconds))

    def pause(self, *match: str, times: int = 1) -> threading.Event:
        """Hold matching requests until the returned event is set; then forward them."""
        release = threading.Event()
        self._add(Rule(match, "pause", times, release=release))
        return release

    def hold_response(self, *match: str, times: int = 1) -> None:
        self._add(Rule(match, "hold", times))

    def lose_response(self, *match: str, times: int = 1) -> None:
        self._add(Rule(match, "lose", times))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def count(self, *match: str) -> int:
        """How many requests whose line contains every ``match`` passed through."""
        with self._lock:
            return sum(all(m in line for m in match) for line in self.requests)

    def seen_since(self, index: int, *match: str) -> list[SeenRequest]:
        """Requests after the first ``index`` whose line contains every ``match``."""
        with self._lock:
            return [r for r in self.seen[index:] if all(m in r.line for m in match)]

    def _call(self, coroutine: object) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        future.result(timeout=10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _drop_held(self) -> None:
        for writer in self._held_writers:
            writer.close()
        self._held_writers.clear()
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # ------------------------------------------------------------------ relaying

    def _take_rule(self, request_line: str) -> Rule | None:
        with self._lock:
            self.requests.append(request_line)
            for rule in self.rules:
                if rule.hits(request_line):
                    rule.times -= 1
                    return rule
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        rule = self._take_rule(request_line)
        if self.strip_prefix is not None:
            head, mounted = _without_prefix(head, self.strip_prefix)
            if not mounted:
                rule = Rule((), "respond", 1, status=404, body=b"not under the mount point")
        length = _content_length(head)
        with self._lock:
            copy = b"\r\nx-amz-copy-source:" in head.lower()
            self.seen.append(SeenRequest(request_line, length, copy))
        if b"100-continue" in head.lower():
            # Answer the expectation here; S3 sees a plain request with its body.
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = _without_header(head, b"expect:")
        try:
            if rule is None:
                await self._forward(head, length, reader, writer, hold=False)
            elif rule.action == "respond":
                await _drain(reader, length)
                writer.write(
                    f"HTTP/1.1 {rule.status} Fault\r\nContent-Type: application/xml\r\n"
                    f"Content-Length: {len(rule.body)}\r\nConnection: close\r\n\r\n".encode()
                    + rule.body
                )
                await writer.drain()
                writer.close()
            elif rule.action == "reset":
                _reset(writer)
            elif rule.action == "stall":
                await asyncio.sleep(rule.seconds)
                _reset(writer)
            elif rule.action == "pause":
                assert rule.release is not None
                while not rule.release.is_set():
                    await asyncio.sleep(0.02)
                await self._forward(head, length, reader, writer, hold=False)
            elif rule.action == "hold":
                await self._forward(head, length, reader, writer, hold=True)
            elif rule.action == "lose":
                await self._forward(head, length, reader, writer, hold=True)
                self._held_writers.remove(writer)
                _reset(writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            writer.close()

    async def _forward(
        self,
        head: bytes,
        length: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        hold: bool,
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        up_writer.write(_with_connection_close(head))
        remaining = length
        while remaining > 0:
            block = await reader.read(min(remaining, 1024 * 1024))
            if not block:
                break
            remaining -= len(block)
            up_writer.write(block)
            await up_writer.drain()
        first = True
        while block := await up_reader.read(1024 * 1024):
            if hold:
                continue  # S3's answer is read and thrown away
            if first:
                block, first = _with_connection_close(block), False
            writer.write(block)
            await writer.drain()
        up_writer.close()
        if hold:
            self._held_writers.append(writer)  # never answered; S3 did the work
            self.held.set()
            return
        writer.close()


def _without_prefix(head: bytes, prefix: str) -> tuple[bytes, bool]:
    """The head with ``prefix`` cut from its request target, and whether it was there."""
    line, rest = head.split(b"\r\n", 1)
    method, target, version = line.split(b" ", 2)
    mount = prefix.rstrip("/").encode()
    if target != mount and not target.startswith(mount + b"/"):
        return head, False
    target = target[len(mount) :] or b"/"
    return b" ".join([method, target, version]) + b"\r\n" + rest, True


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _without_header(head: bytes, name: bytes) -> bytes:
    lines = head[: head.find(b"\r\n\r\n")].split(b"\r\n")
    kept = [line for line in lines if not line.lower().startswith(name)]
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _with_connection_close(head: bytes) -> bytes:
    """Rewrite (or add) ``Connection: close`` in the first header block of ``head``."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return head
    lines = [
        line
        for line in head[:end].split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + head[end:]


async def _drain(reader: asyncio.StreamReader, length: int) -> None:
    remaining = length
    while remaining > 0:
        block = await reader.read(min(remaining, 1024 * 1024))
        if not block:
            return
        remaining -= len(block)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), the way a crashed peer or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def faulty_proxy(upstream_url: str, strip_prefix: str | None = None) -> Iterator[FaultyProxy]:
    """A running proxy in front of ``upstream_url`` (``http://host:port``)."""
    host, _, port = upstream_url.removeprefix("http://").partition(":")
    proxy = FaultyProxy(host, int(port), strip_prefix)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
