"""Several server processes on one port (``FERRY_WORKERS``), pre-forked from ``ferry serve``.

One event loop runs on one core. A server answering many small uploads spends its time
in Python (HTTP parsing, SQLAlchemy, sniffing; a few ms of CPU per small file), so on a
machine with more cores, more processes answer more requests. This module is the small
supervisor that makes that safe:

* the data directory is locked by the supervisor (:mod:`app.ops.data_dir_lock`) before
  anything starts, and the workers inherit the lock: no second server touches it;
* the listening socket is bound once, here, and every worker accepts on it;
* **start-up reconciliation runs once**, in the first worker, before any other worker
  exists: it truncates staging files past their committed offset and releases this node's
  stale locks, which would break the uploads another worker is writing;
* a worker that dies is replaced without reconciling (its locks lapse with their lease,
  and the next writer of its uploads cuts unacknowledged bytes off the staging file);
  five deaths within a minute stop the whole server, so a crash loop is not hidden;
* SIGTERM/SIGINT reach every worker, which drain their uploads as one server does
  (:mod:`app.ops.shutdown`); the supervisor exits when they have.

What workers share lives in the database (uploads, locks, parts, webhooks) or on the
node's disk (staging, files). What they do not: the running SHA-256 of an upload (a
PATCH that lands on another worker than the previous one makes completion hash the
staging file once more) and creation rate-limit buckets (the limit applies per worker).
Metrics are added up across workers (:mod:`app.ops.metrics`); each worker has its own log
files (:mod:`app.ops.logs`). S3 shipments are per process, so the settings refuse more
than one worker with the S3 backend, and SQLite, which has one writer, likewise.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

#: Worker deaths within :data:`CRASH_WINDOW_SECONDS` that stop the server.
MAX_CRASHES = 5
CRASH_WINDOW_SECONDS = 60.0

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

RunWorker = Callable[[int, bool, Callable[[], None]], None]
"""Serves on the inherited socket until told to stop: ``(index, reconcile, on_started)``."""


class WorkerSupervisor:
    """Forks ``count`` workers that serve one socket, replaces dead ones, forwards signals."""

    def __init__(
        self,
        count: int,
        run_worker: RunWorker,
        on_worker_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.count = count
        self._run_worker = run_worker
        self._on_worker_exit = on_worker_exit
        self._workers: dict[int, int] = {}
        """pid -> worker index."""
        self._stopping = False
        self._crashes: deque[float] = deque()

    def run(self) -> int:
        """Serve until a signal stops every worker; the exit status for ``ferry serve``."""
        if threading.active_count() > 1:
            raise RuntimeError("workers must be forked before any thread starts")
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, self._forward)
        if not self._start_first():
            self._stop_all()
            return 0 if self._stopping else 1
        for index in range(1, self.count):
            self._fork(index, reconcile=False)
        return self._supervise()

    def _start_first(self) -> bool:
        """Start worker 0 (which reconciles) and wait until it serves or dies."""
        ready_read, ready_write = os.pipe()
        pid = self._fork(0, reconcile=True, ready_fd=ready_write)
        os.close(ready_write)
        try:
            while not self._stopping:
                readable, _, _ = select.select([ready_read], [], [], 0.5)
                if readable:
                    return os.read(ready_read, 1) == b"1"
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self._workers.pop(pid, None)
                    logger.error("worker 0 failed to start (%s)", _describe(status))
                    return False
            return False
        finally:
            os.close(ready_read)

    def _fork(self, index: int, *, reconcile: bool, ready_fd: int | None = None) -> int:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for stop_signal in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(stop_signal, signal.SIG_DFL)
                _stop_when_parent_dies(supervisor)

                def started() -> None:
                    if ready_fd is not None:
                        os.write(ready_fd, b"1")
                        os.close(ready_fd)

                self._run_worker(index, reconcile, started)
                code = 0
            except BaseException:
                logger.exception("worker %d stopped with an error", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self._workers[pid] = index
        logger.info("worker %d started (pid %d)", index, pid)
        return pid

    def _supervise(self) -> int:
        status_code = 0
        while self._workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = self._workers.pop(pid, None)
            if index is None:
                continue
            if self._on_worker_exit is not None:
                self._on_worker_exit(pid)
            if self._stopping:
                continue
            logger.error(
                "worker %d (pid %d) died (%s); replacing it", index, pid, _describe(status)
            )
            if self._crashed_too_often():
                logger.error(
                    "%d worker deaths within %.0f s: stopping", MAX_CRASHES, CRASH_WINDOW_SECONDS
                )
                status_code = 1
                self._stop_all()
                continue
            self._fork(index, reconcile=False)
        return status_code

    def _crashed_too_often(self) -> bool:
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW_SECONDS:
            self._crashes.popleft()
        return len(self._crashes) >= MAX_CRASHES

    def _forward(self, _signum: int, _frame: FrameType | None) -> None:
        """Ask every worker to drain and stop.

        Always SIGTERM: a Ctrl-C reaches the workers itself (same process group), and a
        second SIGINT would make uvicorn skip the graceful shutdown.
        """
        self._stopping = True
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        self._forward(signal.SIGTERM, None)
        while self._workers:
            try:
                pid, _status = os.wait()
            except ChildProcessError:
                break
            self._workers.pop(pid, None)
            if self._on_worker_exit is not None:
                self._on_worker_exit(pid)


def _stop_when_parent_dies(supervisor: int) -> None:
    """Linux: SIGTERM this worker when the supervisor dies (``kill -9`` included), so no
    worker keeps serving on its own. A no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
