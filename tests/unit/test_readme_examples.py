"""The README's examples, run: its link-signing code makes links Ferry accepts, and its
commands name targets and programs that exist."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from app.http.links import LinkSigner, verify_signed_request

PROJECT_ROOT = Path(__file__).resolve().parents[2]
README = (PROJECT_ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_readme_link_signing_code_makes_links_ferry_accepts() -> None:
    (code,) = _blocks(_section("Signed links"), "python")
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the README's own function, as a reader would paste it
    key = "k" * 40
    uid = str(uuid.uuid4()).upper()  # any spelling of the uid signs the canonical one
    link = namespace["ferry_link"]("http://127.0.0.1:8000", uid, key, seconds=600)
    parts = urlsplit(link)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    canonical = str(uuid.UUID(uid))
    assert parts.path == f"/files/{canonical}"
    assert verify_signed_request(query, canonical, key.encode())
    assert not verify_signed_request(query, canonical, b"another key" * 4)
    expires = int(query["expires"])
    assert link.endswith(LinkSigner(key.encode()).link_path(uuid.UUID(uid), expires))


def test_readme_shows_make_run_and_make_test_first_and_runs_ferry_from_the_venv() -> None:
    first_block = _blocks(README, "sh")[0]
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == [
        "make run",
        "make test",
    ]
    command_lines = [
        line.strip()
        for block in _blocks(README, "sh")
        for line in block.splitlines()
        if re.match(r"\s*(KEY=\$\()?ferry\b", line)
    ]
    assert command_lines == ["ferry --version"], "bare ferry only after activating the venv"
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    in_code = re.findall(r"`make ([a-z][a-z-]*)", README) + [
        match
        for block in _blocks(README, "sh")
        for match in re.findall(r"^make ([a-z][a-z-]*)", block, flags=re.MULTILINE)
    ]
    assert {"run", "test", "install-serve"} <= set(in_code)
    for target in set(in_code):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target
