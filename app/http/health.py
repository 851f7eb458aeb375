"""Liveness, readiness and metrics endpoints (public: no credentials needed).

``/metrics`` is open like the health checks, as Prometheus scrapers expect; it shows
counts and latencies, never owners, names or ids. Keep it off the public network (bind
the metrics port privately or filter ``/metrics`` at the proxy) if even counts are sensitive.
"""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.openapi import ResponseSpec

from app.db.engine import database_problem
from app.ops.metrics import render_metrics
from app.ops.shutdown import shutdown_requested

#: A readiness check that failed: the same checks, one of them false, and ``reason``.
HEALTH_FAILURE = {
    503: ResponseSpec(
        data_container=dict[str, bool | str],
        description="Not ready: `reason` says what failed",
        generate_examples=False,
    )
}


@get("/health/live", opt={"public": True}, cache_control=None, tags=["operations"])
async def health_live() -> Response[dict[str, str]]:
    """200 while the process runs: restart it only when this fails."""
    return Response({"status": "alive"}, headers={"Cache-Control": "no-store"})


@get("/health/ready", opt={"public": True}, responses=HEALTH_FAILURE, tags=["operations"])
async def health_ready(state: State) -> Response[dict[str, bool | str]]:
    """200 when the database and storage are usable and the server is not stopping;
    otherwise 503, and ``reason`` says what failed."""
    database = await database_problem(state.engine)
    checks: dict[str, bool | str] = {
        "database": database is None,
        "storage": await state.backend.is_usable(),
        "accepting": not shutdown_requested(),
    }
    reasons = [] if database is None else [database]
    if not checks["storage"]:
        reasons.append("storage is not usable")
    if not checks["accepting"]:
        reasons.append("the server is shutting down")
    if reasons:
        checks["reason"] = "; ".join(reasons)
    return Response(
        checks,
        status_code=503 if reasons else 200,
        headers={"Cache-Control": "no-store"},
    )


@get("/metrics", opt={"public": True}, media_type=MediaType.TEXT, tags=["operations"])
async def metrics_endpoint() -> Response[bytes]:
    """Prometheus text exposition (``text/plain; version=0.0.4``)."""
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)


OPERATIONS_ROUTES = [health_live, health_ready, metrics_endpoint]
