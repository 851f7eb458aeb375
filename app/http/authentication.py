"""The authentication middleware: every route needs a bearer credential unless it is public.

Public are the health checks, ``/metrics``, static assets, routes marked
``opt={"public": True}`` (the upload and player pages) and signed-link downloads. tus
``OPTIONS`` and CORS preflights never reach routes (``FerryApp`` and the CORS middleware
answer them first), so they need no credential either.

A normal principal's name goes to ``scope["ferry_owner"]``: the upload service shows that
owner only its own uploads and files, and answers 404 for anyone else's. An admin gets no
``ferry_owner`` and so sees everything; ``scope["ferry_principal"]`` always holds the caller.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.auth.keys import KEY_PREFIX, ApiKeyStore
from app.auth.tokens import JwtVerifier
from app.core.identity import OWNER_SCOPE_KEY, PRINCIPAL_SCOPE_KEY, Principal
from app.errors import Forbidden, Unauthorized
from app.settings import Settings

logger = logging.getLogger(__name__)

#: Set in the scope when a signed download link was verified (the downloads code checks it
#: again itself and refuses a bad one with 403).
SIGNED_LINK_SCOPE_KEY = "ferry_signed"
PUBLIC_OPT_KEY = "public"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ferry"'}


class Authenticator:
    """Turns an ``Authorization: Bearer`` value into a principal, by key or JWT."""

    def __init__(self, settings: Settings, keys: ApiKeyStore) -> None:
        self.enabled = "none" not in settings.auth
        self._keys = keys if "keys" in settings.auth else None
        self._jwt = JwtVerifier(settings) if "jwt" in settings.auth else None

    async def principal_for(self, authorization: str | None) -> Principal:
        """The caller, or :class:`Unauthorized` (with a Bearer challenge)."""
        if not authorization:
            raise Unauthorized(
                "send Authorization: Bearer <API key or token>", headers=dict(CHALLENGE)
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("use the Bearer scheme", headers=dict(CHALLENGE))
        principal: Principal | None = None
        if self._keys is not None and credential.startswith(KEY_PREFIX):
            principal = await self._keys.authenticate(credential)
        elif self._jwt is not None:
            principal = self._jwt.verify(credential)
        if principal is None:
            raise Unauthorized(
                "the credential is invalid, expired or revoked",
                headers={"WWW-Authenticate": 'Bearer realm="ferry", error="invalid_token"'},
            )
        return principal


_PUBLIC_PATHS = re.compile(r"^(/|/health(/.*)?|/metrics|/static/.*|/player/[^/]+|/schema(/.*)?)$")
_SIGNED_LINK_PATH = re.compile(r"^/files/(?P<uid>[^/]+)(?:/info)?/?$")


def _signed_link_verdict(scope: Scope) -> bool | None:
    """``None`` when the request is no signed-link download, else whether its link is valid.

    The signature is checked here, not just its presence: an unchecked ``?sig=`` would open
    the tus HEAD at the same URL to anyone.
    """
    if scope.get("method") not in {"GET", "HEAD"}:
        return None
    match = _SIGNED_LINK_PATH.match(scope["path"])
    if match is None or b"sig=" not in scope.get("query_string", b""):
        return None
    signer = getattr(scope["litestar_app"].state, "link_signer", None)
    if signer is None:
        return None
    query = {key: value for key, value in parse_qsl(scope["query_string"].decode("latin-1"))}
    if not signer.verify(query, match["uid"]):
        return False
    scope[SIGNED_LINK_SCOPE_KEY] = True  # type: ignore[literal-required]
    return True


class AuthenticationMiddleware(ASGIMiddleware):
    """Requires a valid bearer credential on every non-public route."""

    scopes = (ScopeType.HTTP,)
    # Request paths (not handler paths: those lack the controller prefix) that never need
    # credentials: health, metrics, static assets, the upload and player pages (they ask for
    # a key in the browser), the API schema.
    should_bypass_for_scope = staticmethod(lambda scope: bool(_PUBLIC_PATHS.match(scope["path"])))
    exclude_opt_key = PUBLIC_OPT_KEY

    def __init__(self, settings: Settings) -> None:
        self._required = "none" not in settings.auth

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Authenticate, record the principal in the scope, and call the route."""
        authenticator: Authenticator | None = getattr(
            scope["litestar_app"].state, "authenticator", None
        )
        if not self._required:
            await next_app(scope, receive, send)
            return
        if authenticator is None:
            # Auth is required but start-up did not build the authenticator: fail closed.
            raise Unauthorized("authentication is not available", headers=dict(CHALLENGE))
        headers = dict(scope["headers"])
        raw = headers.get(b"authorization")
        verdict = _signed_link_verdict(scope)
        if verdict:
            await next_app(scope, receive, send)
            return
        if verdict is False and raw is None:
            # An expired, changed or truncated link is refused as such, not as a missing login.
            raise Forbidden("the signed link is invalid or has expired")
        principal = await authenticator.principal_for(raw.decode("latin-1") if raw else None)
        scope[PRINCIPAL_SCOPE_KEY] = principal  # type: ignore[literal-required]
        if not principal.is_admin:
            scope[OWNER_SCOPE_KEY] = principal.name  # type: ignore[literal-required]
        await next_app(scope, receive, send)
