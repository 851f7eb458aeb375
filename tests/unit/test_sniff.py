"""Content type and category come from magic bytes, never from the client's word."""

from __future__ import annotations

from random import Random

import puremagic
import puremagic.main as puremagic_tables
import pytest

from app.storage.sniff import (
    _SIGNATURES,
    SNIFF_SIZE,
    Category,
    category_for,
    sniff_content_type,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 64
GIF = b"GIF89a" + b"\x00" * 64
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"0" * 64
ZIP = b"PK\x03\x04\x14\x00\x00\x00" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
OGG = b"OggS\x00\x02" + b"\x00" * 64


@pytest.mark.parametrize(
    ("head", "category"),
    [
        (PNG, Category.IMAGES),
        (JPEG, Category.IMAGES),
        (GIF, Category.IMAGES),
        (MP4, Category.MEDIA),
        (PDF, Category.OTHER),
        (ZIP, Category.OTHER),
    ],
)
def test_known_formats_are_filed_by_their_magic_bytes(head: bytes, category: Category) -> None:
    assert category_for(sniff_content_type(head)) is category


def test_png_is_image_png() -> None:
    assert sniff_content_type(PNG) == "image/png"


def test_empty_content_is_octet_stream() -> None:
    assert sniff_content_type(b"") == "application/octet-stream"


def test_plain_utf8_text_is_text() -> None:
    content_type = sniff_content_type("héllo, wörld\nline two\n".encode())
    assert category_for(content_type) is Category.TEXT


def test_utf8_text_cut_inside_a_multibyte_character_is_still_text() -> None:
    sample = ("ä" * 10).encode()[:-1]
    assert sniff_content_type(sample) == "text/plain"


def test_binary_with_nul_bytes_and_no_magic_is_octet_stream() -> None:
    assert sniff_content_type(b"\x00\x01\x02\x03\xfe\xff" * 20) == "application/octet-stream"


def test_a_misleading_extension_in_the_name_does_not_matter() -> None:
    # The sniffer only ever sees bytes: a PNG body is an image whatever it is called.
    assert sniff_content_type(PNG).startswith("image/")


@pytest.mark.parametrize(
    ("content_type", "category"),
    [
        ("image/webp", Category.IMAGES),
        ("video/mp4", Category.MEDIA),
        ("audio/ogg", Category.MEDIA),
        ("text/csv", Category.TEXT),
        ("application/json", Category.TEXT),
        ("application/pdf", Category.OTHER),
        ("application/octet-stream", Category.OTHER),
    ],
)
def test_category_for_content_type(content_type: str, category: Category) -> None:
    assert category_for(content_type) is category


def _puremagic_answer(head: bytes) -> str:
    try:
        return str(puremagic.from_string(head, mime=True))
    except (puremagic.PureError, ValueError):
        return ""


def _signature_samples() -> list[bytes]:
    """One 8 KiB head per header signature puremagic knows, plus random and text heads."""
    random = Random(1234)
    samples = []
    for row in puremagic_tables.magic_header_array:
        head = bytearray(random.randbytes(SNIFF_SIZE))
        head[row.offset : row.offset + len(row.byte_match)] = row.byte_match
        samples.append(bytes(head))
    for row in puremagic_tables.magic_footer_array:
        head = bytearray(b"x" * 600)
        end = len(head) + row.offset + len(row.byte_match)
        head[len(head) + row.offset : end or None] = row.byte_match
        samples.append(bytes(head))
    samples += [random.randbytes(size) for size in (1, 7, 100, 4096, SNIFF_SIZE)]
    samples += [b'{"a": "b"}', b"<?xml version='1.0'?><a/>", b"#!/bin/sh\necho\n", b"\xff\xd8\xff"]
    return samples


def test_the_indexed_sniffer_names_what_puremagic_names_for_every_signature() -> None:
    # The index is only a faster way to the same answer: every header and footer signature
    # in puremagic's table, each planted in random bytes, is named the same by both.
    for head in _signature_samples():
        expected = _puremagic_answer(head)
        assert _SIGNATURES.mime_type(head) == expected, head[:32]
