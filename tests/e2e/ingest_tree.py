"""A generated directory tree for ``ferry ingest`` tests: nested, unicode, 0 B to tens of MiB."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
_NAMES = ["données", "фото", "日本語", "plain", "mixed case", "ünïcödé", "emoji-📦"]


def make_tree(root: Path, count: int, *, big_mib: int = 0, seed: int = 7) -> dict[str, str]:
    """Write ``count`` files under ``root`` (plus one of ``big_mib`` MiB); relative path → SHA-256.

    Sizes: a few empty files, mostly up to 64 KiB, some up to 3 MiB.
    """
    rng = random.Random(seed)
    expected: dict[str, str] = {}
    for index in range(count):
        depth = rng.randint(0, 3)
        parts = [f"{rng.choice(_NAMES)}-{rng.randint(0, 5)}" for _ in range(depth)]
        name = f"{rng.choice(_NAMES)} {index}.bin"
        relative = "/".join([*parts, name])
        roll = rng.random()
        if index % 97 == 0:
            size = 0
        elif roll < 0.9:
            size = rng.randint(1, 64 * 1024)
        else:
            size = rng.randint(64 * 1024, 3 * 1024 * 1024)
        _write(root / relative, size, rng)
        expected[relative] = hashlib.sha256((root / relative).read_bytes()).hexdigest()
    if big_mib:
        relative = "großes/big file.bin"
        _write(root / relative, big_mib * 1024 * 1024, rng)
        expected[relative] = _sha256_file(root / relative)
    return expected


def _write(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            block = min(remaining, 1024 * 1024)
            handle.write(rng.randbytes(block) if block < 4096 else os.urandom(block))
            remaining -= block


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()
