"""``ferry ingest``: the command-line face of :mod:`app.ingest.runner`."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import click

from app.ingest.journal import DEFAULT_STATE_FILE

if TYPE_CHECKING:
    from app.ingest.runner import IngestOptions

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE_NUMBER = re.compile(r"[0-9]{1,15}(\.[0-9]{1,6})?")  # ASCII digits: float() takes "١٢"


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """``64M``, ``512k``, ``1G`` or plain bytes."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS and text[-1:] else ""
        number = text[: len(text) - len(unit)]
        if not _SIZE_NUMBER.fullmatch(number):
            self.fail(f"{value!r} is not a size like 64M, 512k or 1048576", param, ctx)
        size = int(float(number) * _SIZE_UNITS[unit])
        if size <= 0:
            self.fail("must be positive", param, ctx)
        return size


class ByteRate(ByteSize):
    """``10M`` or ``10M/s``: bytes per second."""

    name = "rate"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        return super().convert(str(value).strip().removesuffix("/s"), param, ctx)


def parse_server_url(text: str) -> str:
    """``--server`` as a base URL (its path kept, no trailing slash); ``ValueError`` says
    what is wrong with it in one line."""
    if "://" not in text:
        raise ValueError(
            f"--server {text!r} has no scheme: use a URL such as http://{text.lstrip('/')}"
        )
    parts = urlsplit(text)
    if parts.scheme.lower() not in {"http", "https"}:
        raise ValueError(f"--server {text!r}: only http:// and https:// URLs are supported")
    if not parts.hostname:
        raise ValueError(f"--server {text!r} names no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"--server {text!r} has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"--server {text!r} must not carry a query or a fragment")
    return text.rstrip("/")


def _stop(message: str, status: int) -> NoReturn:
    """One line on stderr, then exit: what the user must fix, not a traceback."""
    click.echo(f"ferry ingest: {message}", err=True)
    sys.exit(status)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--server",
    envvar="FERRY_SERVER",
    required=True,
    help="Base URL of the Ferry server, e.g. http://127.0.0.1:8000 (or FERRY_SERVER).",
)
@click.option(
    "--api-key",
    envvar="FERRY_API_KEY",
    default=None,
    help="API key sent as 'Authorization: Bearer KEY' (or FERRY_API_KEY).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Skip files whose relative path or any path component matches this glob "
    "(repeatable), e.g. --exclude '*.tmp' --exclude .git.",
)
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Follow symbolic links to files and directories (default: skip them).",
)
@click.option(
    "--parallel",
    "-j",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Files uploaded at the same time.",
)
@click.option(
    "--chunk-size",
    type=ByteSize(),
    default="64M",
    show_default=True,
    help="Bytes per tus PATCH request (k, M, G suffixes); smaller chunks lose less on a "
    "broken link, larger ones make fewer requests.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_STATE_FILE,
    show_default=True,
    help="Journal of upload URLs and verified files; a rerun with the same file resumes "
    "unfinished uploads and skips verified ones. Never uploaded itself.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=8,
    show_default=True,
    help="Retries per file for transient failures (exponential backoff up to 15 s).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a machine-readable report (every file's outcome) to this path.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="List what would be uploaded and what skipped; upload nothing, create nothing on "
    "the server, leave the state file as it is.",
)
@click.option(
    "--bwlimit",
    type=ByteRate(),
    default=None,
    metavar="RATE",
    help="Most bytes per second for the whole run, all workers together (K, M, G "
    "suffixes, powers of 1024), e.g. --bwlimit 10M.",
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "rich", "plain", "none"]),
    default="auto",
    show_default=True,
    help="Progress display: one overall bar and the active files on a terminal (auto), "
    "a line every few seconds otherwise (plain), or none.",
)
def ingest(
    paths: tuple[str, ...],
    server: str,
    api_key: str | None,
    exclude: tuple[str, ...],
    follow_symlinks: bool,
    parallel: int,
    chunk_size: int,
    state_path: Path,
    retries: int,
    json_path: Path | None,
    dry_run: bool,
    bwlimit: int | None,
    progress: str,
) -> None:
    """Upload files and directory trees to a Ferry server over tus, resumably.

    PATHS are files, directories (walked recursively) or quoted globs ('photos/**/*.jpg').
    Every file is stored once: a file the server already holds (same name, size and
    SHA-256, for this key's owner) is skipped, whichever directory the command runs from,
    and rerunning after Ctrl-C, kill -9, a lost connection or a server restart resumes
    unfinished uploads from the server's offset. Each finished file's SHA-256 is checked
    against the server's record. Exits with status 1 and names the files that failed;
    130 after Ctrl-C (the --json report is still written).
    """
    from app.ingest.walk import missing_paths

    try:
        server = parse_server_url(server)
    except ValueError as exc:
        _stop(str(exc), 2)
    missing = missing_paths(paths)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        _stop(f"no such file or directory: {missing[0]}{more}", 2)
    from app.ingest.runner import IngestOptions  # after the checks: it imports aiohttp

    _run(
        IngestOptions(
            server=server,
            paths=paths,
            exclude=exclude,
            follow_symlinks=follow_symlinks,
            parallel=parallel,
            chunk_size=chunk_size,
            state_path=state_path,
            api_key=api_key,
            retries=retries,
            dry_run=dry_run,
            bwlimit=bwlimit,
        ),
        json_path,
        progress,
    )


def _run(options: IngestOptions, json_path: Path | None, progress: str) -> None:
    """Run, report, and exit with the status the outcome calls for."""
    from rich.console import Console

    from app.ingest.progress import choose_view
    from app.ingest.report import print_dry_run, print_summary, write_json_report
    from app.ingest.runner import run_ingest

    console = Console()
    try:
        report = asyncio.run(run_ingest(options, choose_view(progress, console)))
    except KeyboardInterrupt:  # a second Ctrl-C: out at once
        _stop(f"interrupted; rerun the same command to resume (state: {options.state_path})", 130)
    if json_path is not None:
        write_json_report(report, json_path)
    attempted = any(item.status != "interrupted" for item in report.files)
    if report.error is not None and not attempted:
        _stop(report.error, 1)
    if options.dry_run:
        print_dry_run(report, console)
    print_summary(report, console)
    if report.error is not None:
        _stop(report.error, 1)
    if report.interrupted:
        _stop(f"interrupted; rerun the same command to resume (state: {options.state_path})", 130)
    if not report.files and not report.excluded:
        _stop("no files matched", 1)
    if report.failed:
        names = ", ".join(item.relative for item in report.failed[:20])
        more = f" and {len(report.failed) - 20} more" if len(report.failed) > 20 else ""
        _stop(f"{len(report.failed)} file(s) failed: {names}{more}", 1)
