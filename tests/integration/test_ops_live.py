"""Operations against a real ``ferry serve``: webhooks across restarts, log files."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from app.ops.webhooks import sign
from tests.support.http_receiver import Answer, HttpReceiver, Received
from tests.support.services import FerryProcess, free_port, running_ferry

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
SECRET = "webhook-secret-for-tests"


def _upload(server: FerryProcess, data: bytes) -> str:
    created = httpx.post(
        f"{server.url}/files/",
        content=data,
        headers={**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS},
    )
    assert created.status_code == 201, created.text
    return httpx.URL(created.headers["location"]).path


def _terminated(server: FerryProcess) -> str:
    created = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": "10"})
    path = httpx.URL(created.headers["location"]).path
    assert httpx.delete(f"{server.url}{path}", headers=TUS).status_code == 204
    return path


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _events(receiver: HttpReceiver) -> dict[str, Received]:
    return {request.headers["idempotency-key"]: request for request in receiver.received}


def test_webhooks_survive_restarts_of_ferry_and_of_the_receiver_signed_and_keyed(
    tmp_path: Path,
) -> None:
    receiver = HttpReceiver(port=free_port())
    env = {
        "FERRY_WEBHOOK_URL": f"{receiver.url}/hooks/ferry",
        "FERRY_WEBHOOK_SECRET": SECRET,
        "FERRY_WEBHOOK_RETRY_SECONDS": "0.2",
        "FERRY_WEBHOOK_RETRY_MAX_SECONDS": "0.5",
        "FERRY_WEBHOOK_POLL_SECONDS": "0.2",
        "FERRY_HOOK_TIMEOUT_SECONDS": "2",
    }
    data = b"finished bytes " * 100
    # The receiver is down while Ferry records both events, then Ferry restarts.
    with running_ferry(tmp_path, env) as server:
        finished = _upload(server, data)
        terminated = _terminated(server)
        time.sleep(1.0)  # a few failed attempts
    receiver.start()
    try:
        with running_ferry(tmp_path, env) as server:
            _wait_for(lambda: len(_events(receiver)) >= 2, 15)
            by_event = {r.headers["ferry-event"]: r for r in _events(receiver).values()}
            done = by_event["post-finish"]
            assert done.path == "/hooks/ferry"
            expected = sign(SECRET, done.headers["ferry-timestamp"], done.body)
            assert done.headers["ferry-signature"] == expected
            body = done.json()
            assert done.headers["idempotency-key"] == body["event_id"]
            assert body["event"] == "post-finish"
            assert body["upload"]["id"] == finished.rsplit("/", 1)[-1]
            assert body["upload"]["sha256"] == hashlib.sha256(data).hexdigest()
            assert body["upload"]["size"] == len(data)
            gone = by_event["post-terminate"].json()
            assert gone["upload"]["id"] == terminated.rsplit("/", 1)[-1]

            # Now the receiver restarts while a new event is due.
            receiver.stop()
            later = _upload(server, b"later")
            time.sleep(1.0)
            receiver.start()
            _wait_for(lambda: len(_events(receiver)) >= 3, 15)
            ids = [r.json()["upload"]["id"] for r in _events(receiver).values()]
            assert later.rsplit("/", 1)[-1] in ids
    finally:
        receiver.stop()


def test_a_failing_receiver_is_retried_until_it_answers_2xx(tmp_path: Path) -> None:
    answers = iter([Answer(500), Answer(503)])
    receiver = HttpReceiver(respond=lambda _: next(answers, Answer(204))).start()
    env = {
        "FERRY_WEBHOOK_URL": receiver.url,
        "FERRY_WEBHOOK_SECRET": SECRET,
        "FERRY_WEBHOOK_RETRY_SECONDS": "0.1",
        "FERRY_WEBHOOK_POLL_SECONDS": "0.1",
    }
    try:
        with running_ferry(tmp_path, env) as server:
            _upload(server, b"retry me")
            _wait_for(lambda: len(receiver.received) >= 3, 15)
            keys = {r.headers["idempotency-key"] for r in receiver.received}
            assert len(keys) == 1  # three attempts, one event
            time.sleep(0.5)
            assert len(receiver.received) == 3  # delivered: no more attempts
    finally:
        receiver.stop()


def test_committed_events_are_delivered_at_once_not_at_the_next_poll(tmp_path: Path) -> None:
    """Committing a finish or a termination wakes the worker; the poll is only a fallback."""
    receiver = HttpReceiver().start()
    env = {
        "FERRY_WEBHOOK_URL": receiver.url,
        "FERRY_WEBHOOK_SECRET": SECRET,
        "FERRY_WEBHOOK_POLL_SECONDS": "600",
    }
    try:
        with running_ferry(tmp_path, env) as server:
            time.sleep(0.5)  # the worker's first pass is over; it now waits for a wake-up
            finished = _upload(server, b"wake up")
            _wait_for(lambda: len(receiver.received) >= 1, 5)
            terminated = _terminated(server)
            _wait_for(lambda: len(receiver.received) >= 2, 5)
        kinds = {r.headers["ferry-event"]: r.json()["upload"]["id"] for r in receiver.received}
        assert kinds == {
            "post-finish": finished.rsplit("/", 1)[-1],
            "post-terminate": terminated.rsplit("/", 1)[-1],
        }
    finally:
        receiver.stop()


def test_logs_land_in_the_log_dir_as_json_with_request_ids_and_error_log_holds_errors_only(
    tmp_path: Path,
) -> None:
    dead_hook = f"http://127.0.0.1:{free_port()}/hook"
    with running_ferry(tmp_path, {"FERRY_PRE_CREATE_HOOK_URL": dead_hook}) as server:
        refused = httpx.post(
            f"{server.url}/files/",
            headers={**TUS, "Upload-Length": "5", "X-Request-Id": "req-refused-0001"},
        )
        assert refused.status_code == 503
        assert refused.headers["x-request-id"] == "req-refused-0001"
        assert httpx.get(f"{server.url}/health/live").status_code == 200
    logs = tmp_path / "logs"
    lines = [json.loads(line) for line in (logs / "ferry.log").read_text().splitlines()]
    errors = [json.loads(line) for line in (logs / "error.log").read_text().splitlines()]
    for_request = [line for line in lines if line.get("request_id") == "req-refused-0001"]
    assert any(
        line["logger"] == "ferry.access" and line["status"] == 503 for line in for_request
    ), lines
    assert any("pre-create hook" in line["message"] for line in for_request)
    assert all(line.get("request_id") for line in lines if line["logger"] == "ferry.access")
    assert errors, "the hook failure is an error"
    assert all(line["level"] in {"ERROR", "CRITICAL"} for line in errors)
    assert any("pre-create hook" in line["message"] for line in errors)
    assert any(line["level"] == "INFO" for line in lines)  # ferry.log has everything
