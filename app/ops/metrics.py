"""Prometheus metrics, served at ``/metrics``.

Metrics live in the process-wide default registry. With several workers
(``FERRY_WORKERS``), ``ferry serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before this module
is imported: every worker then records into its own memory-mapped files and whichever
worker answers a scrape adds them all up, so ``/metrics`` describes the whole server.
HTTP-level series are recorded by :class:`RequestContextMiddleware` in
:mod:`app.http.request_context`; storage latency by :func:`instrumented`. Every label
value comes from a fixed set (methods through :func:`method_label`, statuses are the three
digits of a status code, backends and operations are names in the code), so the number of
series is bounded whatever clients send.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.storage.backend import Storage, StorageBackend

# ``*_created`` series (each counter's creation time) double the exposition and say
# nothing a scraper does not know; multiprocess mode never has them either.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Methods that are metric labels as themselves; any other is counted as ``other``, so no
#: request can add a series (an HTTP method is any token a client sends).
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label of a request: one of :data:`METHOD_LABELS` or ``other``."""
    return method if method in METHOD_LABELS else "other"


UPLOADS_CREATED = Counter(
    "ferry_uploads_created",
    "Uploads created: tus creations answered 201 and files stored by simple uploads "
    "(PUT/POST /api/files, one per file).",
)
UPLOADS_FINISHED = Counter("ferry_uploads_finished", "Uploads that became files.")
UPLOADS_FAILED = Counter(
    "ferry_upload_requests_failed",
    "Upload requests (tus creation and PATCH, simple PUT/POST) answered with an error.",
    ["method", "status"],
)
UPLOADS_TERMINATED = Counter("ferry_uploads_terminated", "Uploads terminated by their owner.")
BYTES_RECEIVED = Counter(
    "ferry_bytes_received",
    "Upload body bytes received (tus creation and PATCH, simple PUT/POST, form framing included).",
)
PATCH_SECONDS = Histogram(
    "ferry_patch_duration_seconds",
    "Time to answer a tus PATCH, body transfer included.",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STORAGE_SECONDS = Histogram(
    "ferry_storage_operation_seconds",
    "Latency of storage backend operations (S3 calls for the s3 backend).",
    ["backend", "operation"],
)
STORAGE_ERRORS = Counter(
    "ferry_storage_errors", "Storage backend operations that raised.", ["backend", "operation"]
)
UPLOAD_REQUESTS_IN_FLIGHT = Gauge(
    "ferry_upload_requests_in_flight",
    "Upload requests (tus creation and PATCH, simple PUT/POST) being served by this node; "
    "each holds an upload's lock while its body streams.",
    multiprocess_mode="livesum",
)
DOWNLOADS = Counter(
    "ferry_download_requests",
    "File downloads (GET and plain HEAD of /files/{uid}) by method and status.",
    ["method", "status"],
)
DOWNLOAD_BYTES = Counter(
    "ferry_download_bytes_sent",
    "Bytes of files sent by downloads (200 and 206 bodies, multipart framing included).",
)
RANGE_REQUESTS = Counter(
    "ferry_download_range_requests",
    "Downloads that carried a Range header, by status (206 served, 416 unsatisfiable, "
    "200 ignored or not applicable after If-Range).",
    ["status"],
)
RESPONSES = Counter(
    "ferry_http_responses", "HTTP responses by method and status.", ["method", "status"]
)
WEBHOOKS = Counter("ferry_webhook_deliveries", "Webhook delivery attempts.", ["outcome"])


class StagingDiskCollector(Collector):
    """``ferry_staging_disk_bytes``: the staging directory's disk use, measured when scraped
    (one directory per node, so it is read, not added up across workers)."""

    def __init__(self) -> None:
        self.staging_dir: Path | None = None

    def collect(self) -> list[GaugeMetricFamily]:
        """One sample, read now."""
        family = GaugeMetricFamily("ferry_staging_disk_bytes", "Disk space used by staging files.")
        if self.staging_dir is not None:
            family.add_metric([], float(_disk_use(self.staging_dir)))
        return [family]


def _disk_use(directory: Path) -> int:
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
    except FileNotFoundError:
        return 0
    return total


STAGING_DISK = StagingDiskCollector()
REGISTRY.register(STAGING_DISK)


def watch_staging_dir(staging_dir: Path) -> None:
    """Report ``staging_dir``'s disk use at every scrape."""
    STAGING_DISK.staging_dir = staging_dir


def render_metrics() -> tuple[bytes, str]:
    """The exposition text (of every worker, when there are several) and its content type."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(STAGING_DISK)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _TimedProxy:
    """Times the coroutine methods of one object and counts their failures.

    Everything else (attributes, async generators such as ``open_range``) passes through
    unchanged. Built once, by :func:`instrumented`, before anything holds the storage.
    """

    def __init__(self, target: object, label: str) -> None:
        self._target = target
        self._label = label

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name.startswith("_") or not iscoroutinefunction(attribute):
            return attribute
        return _timed(attribute, self._label, name)


_Capability = TypeVar("_Capability")


def instrumented(storage: Storage) -> Storage:
    """``storage`` with every operation of the backend and of each capability timed."""
    label = storage.backend.name

    def timed(capability: _Capability | None) -> _Capability | None:
        return None if capability is None else cast(_Capability, _TimedProxy(capability, label))

    return Storage(
        backend=cast(StorageBackend, _TimedProxy(storage.backend, label)),
        shipping=timed(storage.shipping),
        partials=timed(storage.partials),
        sweeping=timed(storage.sweeping),
        presigning=timed(storage.presigning),
    )


def _timed(
    method: Callable[..., Awaitable[Any]], backend: str, operation: str
) -> Callable[..., Awaitable[Any]]:
    @wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except Exception:
            STORAGE_ERRORS.labels(backend, operation).inc()
            raise
        finally:
            STORAGE_SECONDS.labels(backend, operation).observe(time.perf_counter() - started)

    return timed
