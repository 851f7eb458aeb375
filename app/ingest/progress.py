"""How an ingest run shows progress: rich bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ProgressView(Protocol):
    """What the runner tells the user while it works."""

    def begin(self, total_files: int, total_bytes: int) -> None:
        """The run starts: how much there is to do."""

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        """A file's upload starts (``position``: bytes already on the server)."""

    def file_position(self, key: str, position: int) -> None:
        """A file's server-side position moved (bytes sent, or a resync after a retry)."""

    def file_done(self, key: str) -> None:
        """A file is finished, skipped or failed; its remaining bytes count as done."""

    def close(self) -> None:
        """The run is over."""


def _mib(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MiB"


class _Totals:
    """Bookkeeping shared by both views: overall bytes are the sum of file positions."""

    def __init__(self) -> None:
        self.total_files = 0
        self.total_bytes = 0
        self.files_done = 0
        self.bytes_done = 0
        self.active: dict[str, tuple[int, int]] = {}
        """key → (size, position)."""

    def start(self, key: str, size: int, position: int) -> None:
        self.active[key] = (size, position)
        self.bytes_done += position

    def move(self, key: str, position: int) -> None:
        size, old = self.active.get(key, (0, 0))
        self.active[key] = (size, position)
        self.bytes_done += position - old

    def done(self, key: str, size_if_new: int = 0) -> int:
        size, old = self.active.pop(key, (size_if_new, 0))
        self.bytes_done += size - old
        self.files_done += 1
        return size


class RichProgress:
    """Bars for overall bytes and files, and one per active file, with rate and ETA."""

    def __init__(self, console: Console) -> None:
        self._totals = _Totals()
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=None),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._overall: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}

    def begin(self, total_files: int, total_bytes: int) -> None:
        self._totals.total_files, self._totals.total_bytes = total_files, total_bytes
        self._overall = self._progress.add_task(
            f"[bold]all: 0/{total_files} files", total=total_bytes
        )
        self._progress.start()

    def _refresh_overall(self) -> None:
        if self._overall is not None:
            totals = self._totals
            self._progress.update(
                self._overall,
                completed=totals.bytes_done,
                description=f"[bold]all: {totals.files_done}/{totals.total_files} files",
            )

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        self._totals.start(key, size, position)
        shown = label if len(label) <= 40 else "…" + label[-39:]
        self._tasks[key] = self._progress.add_task(shown, total=size, completed=position)
        self._refresh_overall()

    def file_position(self, key: str, position: int) -> None:
        self._totals.move(key, position)
        task = self._tasks.get(key)
        if task is not None:
            self._progress.update(task, completed=position)
        self._refresh_overall()

    def file_done(self, key: str) -> None:
        self._totals.done(key)
        task = self._tasks.pop(key, None)
        if task is not None:
            self._progress.remove_task(task)
        self._refresh_overall()

    def close(self) -> None:
        self._progress.stop()


class PlainProgress:
    """One status line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, interval: float = 5.0) -> None:
        self._totals = _Totals()
        self._interval = interval
        self._started = time.monotonic()
        self._last = 0.0

    def begin(self, total_files: int, total_bytes: int) -> None:
        self._totals.total_files, self._totals.total_bytes = total_files, total_bytes
        self._started = time.monotonic()
        print(f"ingest: {total_files} files, {_mib(total_bytes)}", flush=True)

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        totals = self._totals
        elapsed = max(now - self._started, 1e-6)
        rate = totals.bytes_done / elapsed
        remaining = totals.total_bytes - totals.bytes_done
        eta = f"{remaining / rate:,.0f} s" if rate > 0 else "?"
        print(
            f"ingest: {totals.files_done}/{totals.total_files} files, "
            f"{_mib(totals.bytes_done)}/{_mib(totals.total_bytes)}, "
            f"{_mib(rate)}/s, ETA {eta}, {len(totals.active)} active",
            flush=True,
        )

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        self._totals.start(key, size, position)
        self._maybe_print()

    def file_position(self, key: str, position: int) -> None:
        self._totals.move(key, position)
        self._maybe_print()

    def file_done(self, key: str) -> None:
        self._totals.done(key)
        self._maybe_print()

    def close(self) -> None:
        self._maybe_print(force=True)


class NoProgress:
    """Silence (``--quiet``)."""

    def begin(self, total_files: int, total_bytes: int) -> None:
        """Nothing to show."""

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        """Nothing to show."""

    def file_position(self, key: str, position: int) -> None:
        """Nothing to show."""

    def file_done(self, key: str) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to show."""


def choose_view(mode: str, console: Console) -> ProgressView:
    """``auto``: rich bars on a terminal, plain lines otherwise."""
    if mode == "none":
        return NoProgress()
    if mode == "rich" or (mode == "auto" and console.is_terminal and sys.stdout.isatty()):
        return RichProgress(console)
    return PlainProgress()
