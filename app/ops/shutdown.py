"""Graceful shutdown: SIGTERM makes running uploads stop at the next body piece and persist.

uvicorn, on SIGTERM, stops accepting connections and waits up to
``FERRY_SHUTDOWN_TIMEOUT`` for running requests before cancelling them. A large PATCH would
use the whole wait and then be cancelled with its last bytes unacknowledged, so
:class:`FerryServer` raises a process-wide *draining* flag the moment the signal arrives;
the body reader (:mod:`app.http.request_body`) sees it, ends the body as a disconnect, and the
upload service fdatasyncs and commits what arrived. Clients resume from ``Upload-Offset``.
"""

from __future__ import annotations

import ipaddress
import threading
from types import FrameType

import uvicorn

from app.settings import Settings

_DRAINING = threading.Event()


def shutdown_requested() -> bool:
    """Whether this process was asked to stop."""
    return _DRAINING.is_set()


class FerryServer(uvicorn.Server):
    """uvicorn's server, raising the draining flag on SIGTERM/SIGINT."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining, then let uvicorn stop as usual."""
        _DRAINING.set()
        super().handle_exit(sig, frame)


_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def auth_refusal_for_serving(settings: Settings, host: str, *, forced: bool) -> str | None:
    """Why serving ``host`` with these auth settings is refused, or ``None`` when allowed."""
    from app.auth.tokens import jwt_settings_problem

    problem = jwt_settings_problem(settings)
    if problem:
        return problem
    if "none" not in settings.auth or forced or settings.allow_no_auth:
        return None
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_NAMES
    if loopback:
        return None
    return (
        f"FERRY_AUTH=none on {host} would let anyone on the network read and write files; "
        "bind 127.0.0.1, enable FERRY_AUTH=keys, or force it with --insecure-no-auth "
        "(FERRY_ALLOW_NO_AUTH=true)"
    )
