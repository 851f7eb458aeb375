"""How an ingest run shows progress.

On a terminal: one overall bar (files, bytes, speed, ETA) and the few files being sent
right now, redrawn a few times a second, so the output stays small however many files
there are. Elsewhere (a log, a pipe): one plain line every few seconds.

Only bytes this run sends count: a resumed upload's bytes already on the server and a
failed file's unsent bytes leave the total instead of inflating the speed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class ProgressView(Protocol):
    """What the runner tells the user while it works."""

    def begin(self, total_files: int, total_bytes: int) -> None:
        """Sending starts: how many files and bytes there are to send."""

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        """An attempt at a file starts at ``position`` (bytes the server already has).

        The first call for a file sets what was there before this run; later calls
        (retries) move its position back to what the server kept.
        """

    def file_position(self, key: str, position: int) -> None:
        """A file's position moved (bytes sent, or a resync after a retry)."""

    def file_done(self, key: str, size: int, *, ok: bool) -> None:
        """A file is finished (``ok``) or failed (its unsent bytes leave the total)."""

    def close(self) -> None:
        """The run is over."""


def _mib(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MiB"


@dataclass(slots=True)
class _Active:
    label: str
    size: int
    position: int


class _Totals:
    """Bookkeeping shared by the views: files and bytes to send, sent, in flight."""

    def __init__(self) -> None:
        self.total_files = 0
        self.total_bytes = 0
        self.files_done = 0
        self.sent = 0
        self.active: dict[str, _Active] = {}

    def start(self, key: str, label: str, size: int, position: int) -> None:
        if key in self.active:
            self.move(key, position)
            return
        self.active[key] = _Active(label, size, position)
        self.total_bytes -= position  # already on the server: not this run's to send

    def move(self, key: str, position: int) -> None:
        active = self.active.get(key)
        if active is not None:
            self.sent += position - active.position
            active.position = position

    def done(self, key: str, size: int, ok: bool) -> None:
        active = self.active.pop(key, None)
        left = size - active.position if active is not None else size
        if ok:
            self.sent += left
        else:
            self.total_bytes -= left
        self.files_done += 1


class _ActiveFiles:
    """The files being sent right now, a few lines at most."""

    def __init__(self, totals: _Totals, shown: int) -> None:
        self.totals = totals
        self.shown = shown

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        everything = list(self.totals.active.values())
        # Files still sending first; the rest have sent everything and await verification.
        active = [item for item in everything if item.position < item.size]
        active += [item for item in everything if item.position >= item.size]
        longest = max((len(item.label) for item in active[: self.shown]), default=0)
        width = min(longest, max(20, options.max_width - 28))
        for item in active[: self.shown]:
            label = item.label if len(item.label) <= width else "…" + item.label[-width + 1 :]
            percent = 100 * item.position / item.size if item.size else 100.0
            yield Text(f"  {label:<{width}} {percent:5.1f}% of {_mib(item.size)}", no_wrap=True)
        if len(active) > self.shown:
            yield Text(f"  … and {len(active) - self.shown} more", style="dim")


class _OverallProgress(Progress):
    """A rich ``Progress`` with one task (the whole run) and the active files below it."""

    def __init__(self, below: RenderableType, *columns: object, **kwargs: object) -> None:
        self._below = below  # before Progress.__init__, which renders once
        super().__init__(*columns, **kwargs)  # type: ignore[arg-type]

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self._below


class RichProgress:
    """The terminal view: an overall bar with speed and ETA, and a few active files."""

    def __init__(self, console: Console, shown: int = 3, refresh_per_second: float = 4) -> None:
        self._totals = _Totals()
        self._progress = _OverallProgress(
            _ActiveFiles(self._totals, shown),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=refresh_per_second,
        )
        self._overall: TaskID | None = None

    def begin(self, total_files: int, total_bytes: int) -> None:
        self._totals.total_files, self._totals.total_bytes = total_files, total_bytes
        self._overall = self._progress.add_task(self._description(), total=total_bytes)
        self._progress.start()

    def _description(self) -> str:
        return f"{self._totals.files_done}/{self._totals.total_files} files"

    def _refresh(self) -> None:
        if self._overall is not None:
            self._progress.update(
                self._overall,
                completed=self._totals.sent,
                total=self._totals.total_bytes,
                description=self._description(),
            )

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        self._totals.start(key, label, size, position)
        self._refresh()

    def file_position(self, key: str, position: int) -> None:
        self._totals.move(key, position)
        self._refresh()

    def file_done(self, key: str, size: int, *, ok: bool) -> None:
        self._totals.done(key, size, ok)
        self._refresh()

    def close(self) -> None:
        self._refresh()
        self._progress.stop()


class PlainProgress:
    """One status line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, interval: float = 5.0) -> None:
        self._totals = _Totals()
        self._interval = interval
        self._started = time.monotonic()
        self._last = time.monotonic()

    def begin(self, total_files: int, total_bytes: int) -> None:
        self._totals.total_files, self._totals.total_bytes = total_files, total_bytes
        self._started = self._last = time.monotonic()
        print(f"ingest: {total_files} files to send, {_mib(total_bytes)}", flush=True)

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        totals = self._totals
        rate = totals.sent / max(now - self._started, 1e-6)
        remaining = totals.total_bytes - totals.sent
        eta = f"{remaining / rate:,.0f} s" if rate > 0 else "?"
        print(
            f"ingest: {totals.files_done}/{totals.total_files} files, "
            f"{_mib(totals.sent)}/{_mib(totals.total_bytes)}, "
            f"{_mib(rate)}/s, ETA {eta}, {len(totals.active)} active",
            flush=True,
        )

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        self._totals.start(key, label, size, position)
        self._maybe_print()

    def file_position(self, key: str, position: int) -> None:
        self._totals.move(key, position)
        self._maybe_print()

    def file_done(self, key: str, size: int, *, ok: bool) -> None:
        self._totals.done(key, size, ok)
        self._maybe_print()

    def close(self) -> None:
        self._maybe_print(force=True)


class NoProgress:
    """Silence (``--progress none``)."""

    def begin(self, total_files: int, total_bytes: int) -> None:
        """Nothing to show."""

    def file_started(self, key: str, label: str, size: int, position: int) -> None:
        """Nothing to show."""

    def file_position(self, key: str, position: int) -> None:
        """Nothing to show."""

    def file_done(self, key: str, size: int, *, ok: bool) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to show."""


def choose_view(mode: str, console: Console) -> ProgressView:
    """``auto``: the rich view on a terminal, plain lines otherwise."""
    if mode == "none":
        return NoProgress()
    if mode == "rich" or (mode == "auto" and console.is_terminal and sys.stdout.isatty()):
        return RichProgress(console)
    return PlainProgress()
