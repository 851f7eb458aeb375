"""Signed, expiring download links: a ``<video>`` tag cannot send an Authorization header.

A link is ``/files/{uid}?expires=<unix seconds>&sig=<signature>`` where the signature is
HMAC-SHA256 over ``"{uid}:{expires}"`` with ``FERRY_SIGNING_KEY``, encoded as URL-safe
base64 without padding. Whoever holds the link may ``GET``/``HEAD`` that one file (with
ranges) until it expires; nothing else is granted.

When ``FERRY_SIGNING_KEY`` is empty a random key is made for this process and a warning
logged: links then work out of the box with ``make run`` but die with the process and are
not accepted by other instances. Production deployments set the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from app.errors import Forbidden, InvalidParameter, NotFound
from app.http.openapi import BEARER, LINK_PARAMETERS, documented, text_errors
from app.http.tus_protocol import parse_integer, parse_upload_id
from app.settings import Settings
from app.uploads.service import UploadService

logger = logging.getLogger(__name__)

#: Query parameters that make a request a signed-link request.
SIGNATURE_PARAMS = ("expires", "sig")
DEFAULT_LINK_SECONDS = 24 * 3600
MIN_LINK_SECONDS = 10
MAX_LINK_SECONDS = 30 * 24 * 3600
#: Marker the download path (and the auth middleware) leave in the ASGI scope.
SIGNED_SCOPE_KEY = "ferry_signed"


def _signature(key: bytes, uid: str, expires: int) -> str:
    digest = hmac.new(key, f"{uid}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(key: bytes, uid: uuid.UUID | str, expires: int) -> str:
    """The signature of a link to ``uid`` valid until the unix time ``expires``."""
    return _signature(key, str(uid).lower(), expires)


def is_signed_request(query: Mapping[str, Any]) -> bool:
    """The request claims a signed link (and so must carry a valid one)."""
    return any(name in query for name in SIGNATURE_PARAMS)


def verify_signed_request(
    query: Mapping[str, Any], uid: str, key: bytes, *, now: float | None = None
) -> bool:
    """True when ``query`` holds an unexpired, untampered signature for ``uid``.

    ``query`` is any mapping of query parameters (Litestar's ``request.query_params`` or a
    ``dict`` from :func:`urllib.parse.parse_qs` flattened); the comparison is constant-time.
    An ``expires`` that is not a number in ASCII digits is a malformed request (400).
    """
    expires_text = query.get("expires")
    signature = query.get("sig")
    if isinstance(expires_text, list | tuple):
        expires_text = expires_text[0] if len(expires_text) == 1 else None
    if isinstance(signature, list | tuple):
        signature = signature[0] if len(signature) == 1 else None
    if not isinstance(expires_text, str) or not isinstance(signature, str):
        return False
    expires = parse_integer("expires", expires_text)
    if expires >= 10**12:
        return False
    if expires < (time.time() if now is None else now):
        return False
    try:
        canonical_uid = str(uuid.UUID(uid))
    except ValueError:
        return False
    expected = _signature(key, canonical_uid, expires)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace"))


class LinkSigner:
    """Holds this process's signing key and builds link URLs."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkSigner:
        """The configured key, or a random per-process one with a warning."""
        if settings.signing_key:
            return cls(settings.signing_key.encode("utf-8"))
        logger.warning(
            "FERRY_SIGNING_KEY is empty: signed links use a random key and stop working "
            "when this process restarts; set FERRY_SIGNING_KEY in production"
        )
        return cls(secrets.token_bytes(32))

    def link_path(self, uid: uuid.UUID, expires: int) -> str:
        """Path and query of a signed link."""
        return f"/files/{uid}?expires={expires}&sig={sign(self.key, uid, expires)}"

    def verify(self, query: Mapping[str, Any], uid: str) -> bool:
        """:func:`verify_signed_request` with this process's key."""
        return verify_signed_request(query, uid, self.key)


class SignedLink(msgspec.Struct, frozen=True):
    """Answer of ``POST /files/{uid}/link``."""

    url: str
    """Absolute URL that downloads the file without other credentials until it expires."""
    expires: int
    """Expiry as unix seconds (the ``expires`` query parameter)."""
    expires_at: str
    """Expiry as an ISO 8601 UTC timestamp."""


def _link_seconds(text: str | None) -> int:
    if text is None:
        return DEFAULT_LINK_SECONDS
    seconds = parse_integer("expires_in", text)
    if not MIN_LINK_SECONDS <= seconds <= MAX_LINK_SECONDS:
        raise InvalidParameter(
            "expires_in",
            f"expires_in must be between {MIN_LINK_SECONDS} and {MAX_LINK_SECONDS} seconds",
        )
    return seconds


@post(
    "/files/{uid:str}/link",
    status_code=200,
    summary="Sign a download link",
    tags=["downloads"],
    security=BEARER,
    **documented(
        text_errors(400, 401, 404, 503), parameters=LINK_PARAMETERS, uuid_parameters=["uid"]
    ),
)
async def create_signed_link(
    request: Request[Any, Any, Any], uid: FromPath[str], uploads: NamedDependency[UploadService]
) -> SignedLink:
    """Sign a link to a file the caller may read; ``?expires_in=SECONDS`` (default 1 day)."""
    from app.http.tus import request_owner

    seconds = _link_seconds(request.query_params.get("expires_in"))
    try:
        stored = await uploads.get_file(parse_upload_id(uid), request_owner(request))
    except NotFound:
        raise NotFound("no such file (or its upload is not complete)") from None
    signer: LinkSigner = request.app.state.link_signer
    expires = int(time.time()) + seconds
    return SignedLink(
        url=f"{str(request.base_url).rstrip('/')}{signer.link_path(stored.id, expires)}",
        expires=expires,
        expires_at=datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
    )


def check_signed_request(request: Request[Any, Any, Any], uid: str) -> bool:
    """For a download: ``True`` when it carries a valid signed link, ``False`` when none.

    A request that carries ``expires``/``sig`` but fails verification is refused with 403
    (expired, changed or truncated); it never falls back to other credentials.
    """
    if not is_signed_request(request.query_params):
        return False
    signer: LinkSigner = request.app.state.link_signer
    if not signer.verify(request.query_params, uid):
        raise Forbidden("the signed link is invalid or has expired")
    request.scope[SIGNED_SCOPE_KEY] = True  # type: ignore[literal-required]
    return True
