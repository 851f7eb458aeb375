"""Client-supplied names: safe to display, refused when they try to traverse, RFC 6266."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.filenames import (
    MAX_NAME_LENGTH,
    content_disposition,
    safe_display_name,
    validate_name,
)
from app.errors import BadRequest

#: Every Unicode bidi control: embeddings and overrides, isolates, marks.
BIDI_CONTROLS = [*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]
BIDI_CONTROLS += ["\u200e", "\u200f", "\u061c"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
        ('say "hi".txt', "say _hi_.txt"),
        ("evil\r\nSet-Cookie: x.txt", "evil__Set-Cookie: x.txt"),
        ("nul\x00byte", "nul_byte"),
        ("  .hidden. ", "hidden"),
        ("é-precomposed", "é-precomposed"),
    ],
)
def test_safe_display_name_neutralises_paths_controls_and_quotes(name: str, expected: str) -> None:
    assert safe_display_name(name, "fallback") == expected


@pytest.mark.parametrize("name", [None, "", "/", "..", "dir/", " . "])
def test_safe_display_name_falls_back_when_nothing_is_left(name: str | None) -> None:
    assert safe_display_name(name, "the-uid") == "the-uid"


def test_safe_display_name_is_capped() -> None:
    assert len(safe_display_name("a" * 1000, "x")) == MAX_NAME_LENGTH


def test_safe_display_name_normalises_to_nfc() -> None:
    assert safe_display_name("e\u0301.txt", "x") == "\u00e9.txt"


@given(st.text(max_size=300))
def test_safe_display_name_never_contains_separators_controls_or_quotes(name: str) -> None:
    shown = safe_display_name(name, "fallback")
    assert shown
    assert not any(c in shown for c in '/\\"\r\n\x00')
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in shown)
    assert not any(c in shown for c in BIDI_CONTROLS)
    assert len(shown) <= MAX_NAME_LENGTH
    assert safe_display_name(shown, "fallback") == shown


@pytest.mark.parametrize("control", BIDI_CONTROLS)
def test_safe_display_name_strips_bidi_controls(control: str) -> None:
    assert safe_display_name(f"invoice{control}fdp.exe", "x") == "invoicefdp.exe"


def test_validate_name_returns_the_name_without_bidi_controls() -> None:
    assert validate_name("invoice\u202efdp.exe") == "invoicefdp.exe"


def test_validate_name_refuses_a_name_of_bidi_controls_only() -> None:
    with pytest.raises(BadRequest):
        validate_name("\u202e\u2066")


def test_content_disposition_drops_bidi_controls_of_a_stored_name() -> None:
    header = content_disposition("attachment", "invoice\u202efdp.exe")
    assert header == "attachment; filename=\"invoicefdp.exe\"; filename*=UTF-8''invoicefdp.exe"


def test_validate_name_accepts_a_plain_name() -> None:
    assert validate_name("holiday photo (1).jpg") == "holiday photo (1).jpg"


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        "..\\..\\x",
        "line\nbreak",
        "cr\rx",
        "nul\x00",
        "del\x7f",
        "x" * 256,
    ],
)
def test_validate_name_refuses_traversal_and_control_characters(name: str) -> None:
    with pytest.raises(BadRequest):
        validate_name(name)


def test_content_disposition_has_ascii_fallback_and_exact_utf8_name() -> None:
    header = content_disposition("attachment", "naïve résumé.pdf")
    assert header.startswith('attachment; filename="naive resume.pdf"; ')
    assert header.endswith("filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.pdf")


def test_content_disposition_of_a_non_latin_name_falls_back_to_file() -> None:
    header = content_disposition("inline", "日本語")
    assert 'filename="file"' in header
    assert unquote(header.split("UTF-8''", 1)[1]) == "日本語"


@given(st.text(min_size=1, max_size=100))
def test_content_disposition_is_one_safe_header_line(name: str) -> None:
    header = content_disposition("attachment", name)
    assert header.isascii()
    assert "\r" not in header and "\n" not in header
    fallback = header.split('filename="', 1)[1].split('"; filename*=', 1)[0]
    assert '"' not in fallback and "\\" not in fallback and "/" not in fallback
    assert unquote(header.split("UTF-8''", 1)[1]) == safe_display_name(name, "file")
