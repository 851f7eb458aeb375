"""The one clock: timezone-aware UTC everywhere (rows, leases, links, events)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)
