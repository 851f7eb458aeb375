"""A tus client for outage tests: it keeps going through every answer and records them all.

:class:`ResumingUpload` sends one upload PATCH by PATCH, each body paced so that requests
are in flight when the test breaks something. After any answer but a 2xx it re-reads the
offset with HEAD (tus core: the client resumes from the offset the server reports) and
waits as ``Retry-After`` says, capped so the test measures the server, not the client.
Every answer is recorded with its time, and every offset the server reports is checked
against the highest one it acknowledged: a lower one is an acknowledged byte lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from tests.e2e.support import OCTETS, TUS

#: Longest wait between attempts, whatever ``Retry-After`` says.
RETRY_WAIT_CAP_SECONDS = 0.2
#: Body pieces a paced PATCH is sent in.
PIECE = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """One response (or a failed exchange: ``status`` ``None``)."""

    at: float
    method: str
    status: int | None
    retry_after: str | None = None
    body: str = ""


@dataclass(eq=False)
class ResumingUpload(threading.Thread):
    """One upload of ``content`` to ``base_url``, resumed through any failure until
    ``deadline`` (``time.monotonic()``)."""

    base_url: str
    content: bytes
    deadline: float
    patch_size: int = 512 * 1024
    pace_seconds: float = 0.3
    """How long each PATCH body takes to send."""
    with_creation_data: int = 0
    """Bytes sent with the creation request (creation-with-upload)."""
    answers: list[Answer] = field(default_factory=list)
    acknowledged: int = 0
    """The highest offset a 2xx acknowledged."""
    reported_below_acknowledged: list[tuple[int, int]] = field(default_factory=list)
    url: str | None = None
    finished: bool = False
    failure: BaseException | None = None

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def run(self) -> None:
        try:
            with httpx.Client(timeout=30) as client:
                self._upload(client)
        except BaseException as failure:  # reported by the test
            self.failure = failure

    def statuses(self, since: float = 0.0) -> list[int | None]:
        """Statuses answered at or after ``since``."""
        return [answer.status for answer in self.answers if answer.at >= since]

    def first_success_after(self, moment: float) -> float | None:
        """When the first 2xx PATCH (or creation) after ``moment`` was answered."""
        for answer in self.answers:
            if (
                answer.at >= moment
                and answer.method in {"PATCH", "POST"}
                and answer.status is not None
                and 200 <= answer.status < 300
            ):
                return answer.at
        return None

    def _upload(self, client: httpx.Client) -> None:
        offset = self._create(client)
        while offset < len(self.content):
            self._check_time()
            end = min(offset + self.patch_size, len(self.content))
            response = self._send(
                client,
                "PATCH",
                self.url or "",
                {"Upload-Offset": str(offset), "Content-Type": OCTETS},
                self.content[offset:end],
            )
            if response is not None and response.status_code == 204:
                offset = self._acknowledge(response)
                continue
            self._wait(response)
            offset = self._current_offset(client)
        self.finished = True

    def _create(self, client: httpx.Client) -> int:
        headers = {"Upload-Length": str(len(self.content))}
        first = self.content[: self.with_creation_data]
        if first:
            headers["Content-Type"] = OCTETS
        while True:
            self._check_time()
            response = self._send(client, "POST", f"{self.base_url}/files/", headers, first)
            if response is not None and "location" in response.headers:
                self.url = str(httpx.URL(self.base_url).join(response.headers["location"]))
            if response is not None and response.status_code == 201:
                return self._acknowledge(response)
            self._wait(response)
            if self.url is not None:
                # A refused body whose upload exists (the answer carried its Location).
                return self._current_offset(client)

    def _acknowledge(self, response: httpx.Response) -> int:
        offset = int(response.headers.get("upload-offset", "0"))
        self.acknowledged = max(self.acknowledged, offset)
        return offset

    def _current_offset(self, client: httpx.Client) -> int:
        """tus core: HEAD for the offset to resume from (through failures too)."""
        while True:
            self._check_time()
            response = self._send(client, "HEAD", self.url or "", {}, None)
            if response is not None and response.status_code == 200:
                offset = int(response.headers["upload-offset"])
                if offset < self.acknowledged:
                    self.reported_below_acknowledged.append((offset, self.acknowledged))
                return offset
            self._wait(response)

    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> httpx.Response | None:
        content = self._paced(body) if body else None
        try:
            response = client.request(method, url, headers={**TUS, **headers}, content=content)
        except httpx.TransportError:
            self.answers.append(Answer(time.monotonic(), method, None))
            return None
        self.answers.append(
            Answer(
                time.monotonic(),
                method,
                response.status_code,
                response.headers.get("retry-after"),
                response.text[:200] if response.status_code >= 500 else "",
            )
        )
        return response

    def _paced(self, body: bytes) -> Iterator[bytes]:
        pieces = max(1, len(body) // PIECE)
        for start in range(0, len(body), PIECE):
            yield body[start : start + PIECE]
            time.sleep(self.pace_seconds / pieces)

    @staticmethod
    def _wait(response: httpx.Response | None) -> None:
        wait = RETRY_WAIT_CAP_SECONDS
        if response is not None and response.headers.get("retry-after", "").isdigit():
            wait = min(wait, int(response.headers["retry-after"]))
        time.sleep(wait)

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"upload {self.url} did not finish in time")
