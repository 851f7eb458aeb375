"""The authenticated caller, as the rest of Ferry sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ASGI scope keys the authentication middleware sets.
PRINCIPAL_SCOPE_KEY = "ferry_principal"
OWNER_SCOPE_KEY = "ferry_owner"


@dataclass(frozen=True, slots=True)
class Principal:
    """An owner name, and whether it may see every owner's uploads and files."""

    name: str
    is_admin: bool = False


def principal_of(scope: Any) -> Principal | None:
    """The principal of a request scope, or ``None`` when auth is off or the route is public."""
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None
