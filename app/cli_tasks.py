"""Work the CLI runs outside the web server, on the same object graph as the server."""

from __future__ import annotations

from app.composition import open_ferry
from app.settings import Settings


async def run_cleanup(settings: Settings) -> int:
    """Expire every due upload (all batches) and return how many were removed."""
    async with open_ferry(settings) as ferry:
        total = 0
        while (expired := await ferry.uploads.expire_due()) > 0:
            total += expired
        return total
