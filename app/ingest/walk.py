"""Which local files an ingest run uploads: paths, directories and globs, minus excludes.

Everything the walk passes over is reported with its reason (an ``--exclude`` pattern, a
symbolic link not followed, a special file, an unreadable entry), so a run's summary
accounts for every path it met, the way ``rsync -v`` does.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_GLOB_CHARS = frozenset("*?[")

PassedOverKind = Literal["excluded", "symlink", "special", "unreadable"]


@dataclass(frozen=True, slots=True)
class LocalFile:
    """One regular file to upload, identified by path, size and mtime (the resume key)."""

    path: Path
    """Absolute path."""
    relative: str
    """Path below the argument it was found under (POSIX separators), sent as metadata."""
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class PassedOver:
    """A path the walk did not take, and why."""

    path: str
    relative: str
    kind: PassedOverKind
    reason: str


def _matching_pattern(relative: str, patterns: tuple[str, ...]) -> str | None:
    """The ``--exclude`` pattern matching the relative path or one of its components."""
    parts = relative.split("/")
    for pattern in patterns:
        if fnmatch.fnmatchcase(relative, pattern) or any(
            fnmatch.fnmatchcase(part, pattern) for part in parts
        ):
            return pattern
    return None


def _excluded(path: Path, relative: str, pattern: str) -> PassedOver:
    return PassedOver(str(path), relative, "excluded", f"excluded by --exclude {pattern!r}")


class _Walker:
    """Turns one command-line argument into files, noting what it passes over."""

    def __init__(
        self,
        exclude: tuple[str, ...],
        follow_symlinks: bool,
        passed_over: Callable[[PassedOver], None],
    ) -> None:
        self.exclude = exclude
        self.follow_symlinks = follow_symlinks
        self.passed_over = passed_over

    def file_at(self, path: Path, relative: str) -> LocalFile | None:
        if path.is_symlink() and not self.follow_symlinks:
            reason = "symbolic link, not followed without --follow-symlinks"
            self.passed_over(PassedOver(str(path), relative, "symlink", reason))
            return None
        try:
            stat = path.stat()
        except OSError as exc:  # vanished, or a dangling link
            self.passed_over(_unreadable(path, relative, exc))
            return None
        if not os.path.isfile(path):
            self.passed_over(PassedOver(str(path), relative, "special", "not a regular file"))
            return None
        if not os.access(path, os.R_OK):
            self.passed_over(
                PassedOver(str(path), relative, "unreadable", "unreadable: permission denied")
            )
            return None
        return LocalFile(path.absolute(), relative, stat.st_size, stat.st_mtime_ns)

    def walk_directory(self, root: Path) -> Iterator[tuple[Path, str]]:
        """Files below ``root`` in a stable order; excluded directories are not entered."""
        seen: set[tuple[int, int]] = set()

        def unreadable_directory(error: OSError) -> None:
            where = Path(error.filename or root)
            self.passed_over(_unreadable(where, _relative_to(where, root), error))

        for directory, subdirs, names in os.walk(
            root, followlinks=self.follow_symlinks, onerror=unreadable_directory
        ):
            if self.follow_symlinks:
                # A link cycle would walk forever: visit each real directory once.
                stat = os.stat(directory)
                if (stat.st_dev, stat.st_ino) in seen:
                    subdirs[:] = []
                    continue
                seen.add((stat.st_dev, stat.st_ino))
            subdirs[:] = self._entered(Path(directory), sorted(subdirs), root)
            for name in sorted(names):
                full = Path(directory) / name
                yield full, full.relative_to(root).as_posix()

    def _entered(self, directory: Path, subdirs: list[str], root: Path) -> list[str]:
        kept = []
        for name in subdirs:
            relative = (directory / name).relative_to(root).as_posix()
            pattern = _matching_pattern(relative, self.exclude)
            if pattern is None:
                kept.append(name)
            else:
                self.passed_over(_excluded(directory / name, relative + "/", pattern))
        return kept


def _relative_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _unreadable(path: Path, relative: str, error: OSError) -> PassedOver:
    detail = error.strerror or str(error)
    return PassedOver(str(path), relative, "unreadable", f"unreadable: {detail}")


def _roots(argument: str) -> list[Path]:
    if _GLOB_CHARS & set(argument):
        return [Path(match) for match in sorted(glob.glob(argument, recursive=True))]
    return [Path(argument)]


def missing_paths(arguments: Iterable[str]) -> list[str]:
    """Arguments naming nothing: a path that does not exist, or a glob matching nothing."""
    return [
        argument
        for argument in arguments
        if not any(os.path.lexists(root) for root in _roots(argument))
    ]


def find_files(
    arguments: Iterable[str],
    *,
    exclude: tuple[str, ...] = (),
    follow_symlinks: bool = False,
    skip: Collection[Path] = (),
    passed_over: Callable[[PassedOver], None] | None = None,
) -> Iterator[LocalFile]:
    """Expand the command-line paths into files, in a stable order, each path once.

    A directory contributes every file below it (relative names start at the directory);
    an argument with ``*``, ``?`` or ``[`` is a glob (``**`` recurses). Symbolic links
    are skipped unless ``follow_symlinks``. Files at the resolved paths ``skip`` (the
    ingest's own state files) are never yielded. Everything else left out is told to
    ``passed_over`` with its reason.
    """
    walker = _Walker(exclude, follow_symlinks, passed_over or (lambda _: None))
    emitted: set[Path] = set()
    skip_names = {path.name for path in skip}
    for argument in arguments:
        for root in _roots(argument):
            if root.is_dir() and not (root.is_symlink() and not follow_symlinks):
                entries: Iterable[tuple[Path, str]] = walker.walk_directory(root)
            else:
                entries = [(root, root.name)]
            for path, relative in entries:
                if path.name in skip_names and path.resolve() in skip:
                    continue
                pattern = _matching_pattern(relative, exclude)
                if pattern is not None:
                    walker.passed_over(_excluded(path, relative, pattern))
                    continue
                found = walker.file_at(path, relative)
                if found is None or found.path in emitted:
                    continue
                emitted.add(found.path)
                yield found
