"""Which local files an ingest run uploads: paths, directories and globs, minus excludes."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class LocalFile:
    """One regular file to upload, identified by path, size and mtime (the resume key)."""

    path: Path
    """Absolute path."""
    relative: str
    """Path below the argument it was found under (POSIX separators), sent as metadata."""
    size: int
    mtime_ns: int


def _excluded(relative: str, patterns: tuple[str, ...]) -> bool:
    """``--exclude`` matches the relative path or any one of its components."""
    parts = relative.split("/")
    return any(
        fnmatch.fnmatchcase(relative, pattern)
        or any(fnmatch.fnmatchcase(p, pattern) for p in parts)
        for pattern in patterns
    )


def _file_at(path: Path, relative: str, follow_symlinks: bool) -> LocalFile | None:
    if path.is_symlink() and not follow_symlinks:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None  # vanished or a dangling link
    if not os.path.isfile(path):
        return None
    return LocalFile(path.absolute(), relative, stat.st_size, stat.st_mtime_ns)


def _walk_directory(root: Path, follow_symlinks: bool) -> Iterator[tuple[Path, str]]:
    seen: set[tuple[int, int]] = set()
    for directory, subdirs, names in os.walk(root, followlinks=follow_symlinks):
        if follow_symlinks:
            # A link cycle would walk forever: visit each real directory once.
            stat = os.stat(directory)
            if (stat.st_dev, stat.st_ino) in seen:
                subdirs[:] = []
                continue
            seen.add((stat.st_dev, stat.st_ino))
        subdirs.sort()
        for name in sorted(names):
            full = Path(directory) / name
            yield full, full.relative_to(root).as_posix()


def find_files(
    arguments: Iterable[str],
    *,
    exclude: tuple[str, ...] = (),
    follow_symlinks: bool = False,
    skip: Collection[Path] = (),
) -> Iterator[LocalFile]:
    """Expand the command-line paths into files, in a stable order, each path once.

    A directory contributes every file below it (relative names start at the directory);
    an argument with ``*``, ``?`` or ``[`` is a glob (``**`` recurses). Symbolic links
    are skipped unless ``follow_symlinks``. Files at the resolved paths ``skip`` (the
    ingest's own state files) are never yielded.
    """
    emitted: set[Path] = set()
    skip_names = {path.name for path in skip}
    for argument in arguments:
        if _GLOB_CHARS & set(argument):
            roots = [Path(match) for match in sorted(glob.glob(argument, recursive=True))]
        else:
            roots = [Path(argument)]
        for root in roots:
            if root.is_symlink() and not follow_symlinks:
                continue
            if root.is_dir():
                entries: Iterable[tuple[Path, str]] = _walk_directory(root, follow_symlinks)
            else:
                entries = [(root, root.name)]
            for path, relative in entries:
                if _excluded(relative, exclude):
                    continue
                found = _file_at(path, relative, follow_symlinks)
                if found is None or found.path in emitted:
                    continue
                if found.path.name in skip_names and found.path.resolve() in skip:
                    continue
                emitted.add(found.path)
                yield found
