"""What an ingest run did, file by file: the records the summary and ``--json`` show."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.ingest.walk import PassedOver

Status = Literal["uploaded", "resumed", "skipped", "failed", "interrupted", "planned"]
"""``planned``: what ``--dry-run`` would upload; ``interrupted``: Ctrl-C came first."""

STATUSES: tuple[Status, ...] = (
    "uploaded",
    "resumed",
    "skipped",
    "failed",
    "interrupted",
    "planned",
)

SKIPPED_BY_JOURNAL = "uploaded and verified by an earlier run (state file)"
SKIPPED_ON_SERVER = "already on the server (same name, size and SHA-256)"


@dataclass(slots=True)
class FileResult:
    """How one file ended."""

    path: str
    relative: str
    size: int
    status: Status
    uid: str | None = None
    sha256: str | None = None
    error: str | None = None
    reason: str | None = None
    """Why a file was skipped, or what ``--dry-run`` would do with it."""
    seconds: float = 0.0
    attempts: int = 0


@dataclass(slots=True)
class IngestReport:
    """The outcome of a run (also written as JSON by ``--json``)."""

    server: str
    started: float
    seconds: float = 0.0
    dry_run: bool = False
    files: list[FileResult] = field(default_factory=list)
    excluded: list[PassedOver] = field(default_factory=list)
    """Paths the walk passed over on purpose: ``--exclude``, links, special files."""
    interrupted: bool = False
    """Ctrl-C (SIGINT) stopped the run; the journal lets a rerun resume."""
    error: str | None = None
    """Why the run stopped early (the server refused the key, could not be reached)."""

    def count(self, status: Status) -> int:
        """Files that ended with ``status``."""
        return sum(1 for item in self.files if item.status == status)

    def bytes_with(self, *statuses: Status) -> int:
        """Bytes of the files that ended with one of ``statuses``."""
        return sum(item.size for item in self.files if item.status in statuses)

    @property
    def failed(self) -> list[FileResult]:
        """The files that did not make it."""
        return [item for item in self.files if item.status == "failed"]
