"""The end of an ingest run: a summary table on the console and an optional JSON report."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from app.ingest.runner import IngestReport


def _mib(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MiB"


def print_summary(report: IngestReport, console: Console) -> None:
    """A table of outcomes, then every failed file with its reason."""
    table = Table(title=f"ferry ingest → {report.server}", show_edge=True)
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    for status in ("uploaded", "resumed", "skipped", "failed"):
        table.add_row(status, str(report.count(status)), _mib(report.bytes_with(status)))
    moved = report.bytes_with("uploaded", "resumed")
    seconds = max(report.seconds, 1e-6)
    table.add_row(
        "[bold]total",
        str(len(report.files)),
        _mib(sum(item.size for item in report.files)),
        end_section=True,
    )
    console.print(table)
    sent = report.count("uploaded") + report.count("resumed")
    console.print(
        f"{report.seconds:,.1f} s, {sent / seconds:,.1f} files/s, {_mib(moved / seconds)}/s"
    )
    if report.failed:
        console.print(f"[bold red]{len(report.failed)} file(s) failed:")
        for item in report.failed:
            console.print(f"  {item.path}: {item.error}", markup=False, highlight=False)


def write_json_report(report: IngestReport, path: Path) -> None:
    """Machine-readable report: totals plus one record per file."""
    document = {
        "server": report.server,
        "started": report.started,
        "seconds": round(report.seconds, 3),
        "totals": {
            status: {"files": report.count(status), "bytes": report.bytes_with(status)}
            for status in ("uploaded", "resumed", "skipped", "failed")
        },
        "ok": not report.failed,
        "failed": [item.path for item in report.failed],
        "files": [asdict(item) for item in report.files],
    }
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2))
