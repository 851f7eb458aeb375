"""Request bodies through Ferry's HTTP protocol (uvicorn's httptools protocol with Ferry's
limits): every byte reaches the application once and in order, whether it takes each piece
as it arrives or lets several gather while it is busy."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from typing import Any

import uvicorn

from app.ops.http_protocol import FerryHttpProtocol


class _BodyRecorder:
    """An ASGI app that reads the body (pausing after each message when ``slow``) and
    answers 200 with its SHA-256."""

    def __init__(self, slow: bool) -> None:
        self.slow = slow
        self.messages: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        while True:
            message = await receive()
            self.messages.append(message)
            digest.update(message.get("body", b""))
            if not message.get("more_body", False):
                break
            if self.slow:
                await asyncio.sleep(0.002)  # pieces arrive meanwhile and are gathered
        answer = digest.hexdigest().encode()
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def _send_in_pieces(port: int, body: bytes, piece: int) -> bytes:
    """POST ``body`` in ``piece``-byte writes; the response body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        for start in range(0, len(body), piece):
            sock.sendall(body[start : start + piece])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b"\r\n\r\n", 1)[1]


async def _serve_and_post(app: _BodyRecorder, body: bytes, piece: int) -> bytes:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # No log_config, no log_level: uvicorn would reconfigure the process's logging for
    # every later test (its "uvicorn" logger stops propagating, "uvicorn.error" drops INFO).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=FerryHttpProtocol, log_config=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        return await asyncio.to_thread(_send_in_pieces, port, body, piece)
    finally:
        server.should_exit = True
        await serving


async def test_body_pieces_reach_the_application_whole_and_in_order_taken_one_by_one() -> None:
    body = random.Random(11).randbytes(3 * 1024 * 1024 + 17)
    app = _BodyRecorder(slow=False)
    answer = await _serve_and_post(app, body, 256 * 1024)
    assert answer == hashlib.sha256(body).hexdigest().encode()
    assert b"".join(message["body"] for message in app.messages) == body
    assert all(type(message["body"]) is bytes for message in app.messages)


async def test_body_pieces_gathered_while_the_application_is_busy_arrive_whole_and_in_order() -> (
    None
):
    body = random.Random(12).randbytes(1024 * 1024 + 5)
    app = _BodyRecorder(slow=True)
    answer = await _serve_and_post(app, body, 1000)
    assert answer == hashlib.sha256(body).hexdigest().encode()
    assert b"".join(message["body"] for message in app.messages) == body
    assert all(type(message["body"]) is bytes for message in app.messages)
    assert len(app.messages) < len(body) // 1000, "small pieces were gathered into messages"
