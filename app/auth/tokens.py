"""JWT bearer tokens (HS256 or RS256) minted by an application for its own users.

PyJWT is imported only when a verifier is built: with it comes ``cryptography``, about
8.5 MiB of resident memory in every serving process, which a server without
``FERRY_AUTH=jwt`` has no use for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.identity import Principal
from app.settings import Settings, SettingsError

ADMIN_CLAIM = "ferry_admin"


def jwt_settings_problem(settings: Settings) -> str | None:
    """What is missing for JWT auth, naming the variable; ``None`` when JWTs are off or ready."""
    if "jwt" not in settings.auth:
        return None
    if settings.jwt_algorithm == "HS256" and len(settings.jwt_secret) < 32:
        return "FERRY_JWT_SECRET: at least 32 characters are needed with FERRY_AUTH=jwt"
    if settings.jwt_algorithm == "RS256" and not settings.jwt_public_key:
        return "FERRY_JWT_PUBLIC_KEY: required for RS256 with FERRY_AUTH=jwt"
    if not settings.jwt_audience:
        return "FERRY_JWT_AUDIENCE: required with FERRY_AUTH=jwt"
    return None


class JwtVerifier:
    """Checks signature, expiry, issuer and audience; the owner comes from a configured claim."""

    def __init__(self, settings: Settings) -> None:
        problem = jwt_settings_problem(settings)
        if problem:
            raise SettingsError(problem)
        import jwt  # here, not at the top: see the module's docstring

        self._jwt = jwt
        self._algorithm = settings.jwt_algorithm
        self._key: Any = settings.jwt_secret
        if self._algorithm == "RS256":
            text = settings.jwt_public_key
            if not text.lstrip().startswith("-----BEGIN"):
                text = Path(text).read_text()
            self._key = text
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience
        self._owner_claim = settings.jwt_owner_claim

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid token; ``None`` for an invalid, expired or foreign one."""
        try:
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", self._owner_claim]},
                leeway=5,
            )
        except self._jwt.PyJWTError:
            return None
        owner = claims.get(self._owner_claim)
        if not isinstance(owner, str) or not owner or len(owner) > 200:
            return None
        return Principal(owner, claims.get(ADMIN_CLAIM) is True)
