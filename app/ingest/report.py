"""The end of an ingest run: a summary on the console and an optional JSON report."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from app.ingest.results import SKIPPED_BY_JOURNAL, STATUSES, IngestReport


def _mib(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MiB"


_ROW_ORDER = (
    "uploaded",
    "resumed",
    "skipped: done before",
    "skipped: on the server",
    "would upload",
    "would resume the unfinished upload",
    "failed",
    "interrupted",
)


def _outcome_rows(report: IngestReport) -> list[tuple[str, list[int]]]:
    """(label, sizes) per outcome that happened, skips split by reason, in a fixed order."""
    rows: dict[str, list[int]] = {}
    for item in report.files:
        label: str = item.status
        if item.status == "skipped":
            journal = item.reason == SKIPPED_BY_JOURNAL
            label = "skipped: done before" if journal else "skipped: on the server"
        elif item.status == "planned":
            label = f"would {item.reason}"
        rows.setdefault(label, []).append(item.size)
    return sorted(rows.items(), key=lambda row: _ROW_ORDER.index(row[0]))


def print_summary(report: IngestReport, console: Console) -> None:
    """A table of outcomes, what was excluded, then every failed file with its reason."""
    title = "ferry ingest --dry-run" if report.dry_run else "ferry ingest"
    console.print(f"{title} → {report.server}", markup=False, highlight=False, soft_wrap=True)
    table = Table(show_edge=True)
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    for label, sizes in _outcome_rows(report):
        table.add_row(label, str(len(sizes)), _mib(sum(sizes)))
    if report.excluded:
        table.add_row("excluded", str(len(report.excluded)), "")
    table.add_row(
        "[bold]total",
        str(len(report.files)),
        _mib(sum(item.size for item in report.files)),
        end_section=True,
    )
    console.print(table)
    if report.excluded:
        reasons = Counter(item.reason for item in report.excluded)
        parts = [f"{count} {reason}" for reason, count in reasons.most_common(5)]
        console.print("left out: " + "; ".join(parts), markup=False, highlight=False)
    if not report.dry_run:
        moved = report.bytes_with("uploaded", "resumed")
        sent = report.count("uploaded") + report.count("resumed")
        seconds = max(report.seconds, 1e-6)
        rates = f", {sent / seconds:,.1f} files/s, {_mib(moved / seconds)}/s" if sent else ""
        console.print(f"{report.seconds:,.1f} s{rates}")
    if report.failed:
        console.print(f"[bold red]{len(report.failed)} file(s) failed:")
        for item in report.failed[:50]:
            console.print(f"  {item.path}: {item.error}", markup=False, highlight=False)
        if len(report.failed) > 50:
            console.print(f"  … and {len(report.failed) - 50} more (see --json)")


def print_dry_run(report: IngestReport, console: Console) -> None:
    """One line per file: what a real run would do with it, then what it would leave out."""
    for item in report.files:
        if item.status == "planned":
            action = "resume" if item.reason and "resume" in item.reason else "upload"
        elif item.status == "skipped":
            action = (
                "skip (done before)" if item.reason == SKIPPED_BY_JOURNAL else "skip (on server)"
            )
        else:
            action = f"fail ({item.error})"
        line = f"{action:<18} {_mib(item.size):>12}  {item.relative}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for excluded in report.excluded:
        line = f"{'leave out':<18} {'':>12}  {excluded.relative}: {excluded.reason}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def write_json_report(report: IngestReport, path: Path) -> None:
    """Machine-readable report: totals, every file's outcome, and what was excluded."""
    totals: dict[str, dict[str, int]] = {
        status: {"files": report.count(status), "bytes": report.bytes_with(status)}
        for status in STATUSES
    }
    totals["excluded"] = {"files": len(report.excluded), "bytes": 0}
    document = {
        "server": report.server,
        "started": report.started,
        "seconds": round(report.seconds, 3),
        "dry_run": report.dry_run,
        "interrupted": report.interrupted,
        "error": report.error,
        "totals": totals,
        "ok": not report.failed and not report.interrupted and report.error is None,
        "failed": [item.path for item in report.failed],
        "files": [asdict(item) for item in report.files],
        "excluded": [asdict(item) for item in report.excluded],
    }
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2))
