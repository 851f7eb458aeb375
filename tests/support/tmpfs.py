"""A small tmpfs of a test's own: a real filesystem that fills up (ENOSPC) at a known size.

Mounting needs root (the suite runs as root in CI); elsewhere the tests that need it skip
with the reason. The filesystem is always unmounted afterwards, and :func:`fill` and
:func:`free_bytes` let a test take away and give back space.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.services import require_service

MIB = 1024 * 1024


@contextlib.contextmanager
def small_tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    """Mount a ``size_mib`` MiB tmpfs at ``path`` for the block's duration."""
    can_mount = os.geteuid() == 0 and shutil.which("mount") is not None
    require_service(can_mount, "mounting a tmpfs (a disk that fills up) needs root")
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    require_service(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged write could still take on ``path``'s filesystem."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave: int = 0) -> int:
    """Write a ballast file at ``path`` until only ``leave`` bytes are free (0: until the
    filesystem refuses); returns its size."""
    block = bytes(MIB)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while (room := free_bytes(path.parent) - leave) > 0:
            try:
                written += os.write(fd, block[: min(len(block), room)])
            except OSError:
                break  # full
    finally:
        os.close(fd)
    return written
