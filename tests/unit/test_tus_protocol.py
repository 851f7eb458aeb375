"""tus header rules: strict integers, metadata, checksums, concatenation and ids."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.datastructures import Headers

from app.core.checksums import CHECKSUM_ALGORITHMS
from app.core.metadata import decode_metadata_value
from app.errors import BadRequest, HeaderTooLarge, NotFound, PreconditionFailed
from app.http.tus_protocol import (
    EXTENSIONS,
    encode_upload_metadata,
    format_http_date,
    parse_defer_length,
    parse_integer,
    parse_method_override,
    parse_optional_integer,
    parse_upload_checksum,
    parse_upload_concat,
    parse_upload_id,
    parse_upload_metadata,
    require_tus_version,
    server_description_headers,
    tus_header,
)

MAX_INT63 = 2**63 - 1


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def metadata(value: str | None, max_bytes: int = 1024, max_keys: int = 8) -> dict[str, str | None]:
    return parse_upload_metadata(value, max_bytes=max_bytes, max_keys=max_keys)


# ---------------------------------------------------------------- integers


@pytest.mark.parametrize("text", ["0", "1", "42", "0000000000000000001", str(MAX_INT63)])
def test_parse_integer_accepts_plain_digits_within_63_bits(text: str) -> None:
    assert parse_integer("Upload-Offset", text) == int(text)


def test_parse_integer_ignores_surrounding_header_whitespace() -> None:
    assert parse_integer("Upload-Offset", " 7 ") == 7


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "+5",
        "-1",
        "5.0",
        "1e3",
        " 1e3",
        "0x10",
        "\uff11\uff12",
        "5 5",
        "\u0663",
        "9" * 20,
        "abc",
    ],
)
def test_parse_integer_refuses_anything_but_digits(text: str) -> None:
    with pytest.raises(BadRequest, match="Upload-Offset"):
        parse_integer("Upload-Offset", text)


def test_parse_integer_refuses_19_digits_above_63_bits() -> None:
    with pytest.raises(BadRequest, match="63 bits"):
        parse_integer("Upload-Length", str(MAX_INT63 + 1))
    with pytest.raises(BadRequest):
        parse_integer("Upload-Length", "9" * 19)


@given(st.integers(min_value=0, max_value=MAX_INT63))
def test_parse_integer_round_trips_every_63_bit_value(number: int) -> None:
    assert parse_integer("Upload-Length", str(number)) == number


@given(st.one_of(st.text(max_size=25), st.from_regex(r"\A[0-9]{1,21}\Z")))
def test_parse_integer_accepts_exactly_1_to_19_ascii_digits_within_63_bits(text: str) -> None:
    stripped = text.strip()
    valid = re.fullmatch(r"[0-9]{1,19}", stripped) is not None and int(stripped) <= MAX_INT63
    if valid:
        assert parse_integer("X", text) == int(stripped)
    else:
        with pytest.raises(BadRequest):
            parse_integer("X", text)


def test_parse_optional_integer_passes_absent_header_through() -> None:
    assert parse_optional_integer("Upload-Length", None) is None
    assert parse_optional_integer("Upload-Length", "3") == 3


# ---------------------------------------------------------------- version and options


def test_require_tus_version_accepts_1_0_0() -> None:
    require_tus_version("1.0.0")
    require_tus_version(" 1.0.0 ")


@pytest.mark.parametrize("value", [None, "", "0.2.2", "1.0", "2.0.0"])
def test_require_tus_version_refuses_missing_or_unsupported_with_412(value: str | None) -> None:
    with pytest.raises(PreconditionFailed):
        require_tus_version(value)


def test_server_description_lists_version_extensions_max_size_and_algorithms() -> None:
    headers = {k.decode(): v.decode() for k, v in server_description_headers(1234)}
    assert headers["tus-resumable"] == "1.0.0"
    assert headers["tus-version"] == "1.0.0"
    assert headers["tus-max-size"] == "1234"
    assert set(headers["tus-extension"].split(",")) == set(EXTENSIONS)
    assert set(headers["tus-checksum-algorithm"].split(",")) == {"sha1", "sha256", "md5", "crc32c"}


# ---------------------------------------------------------------- metadata


def test_absent_or_empty_metadata_header_means_no_metadata() -> None:
    assert metadata(None) == {}
    assert metadata("") == {}
    assert metadata("   ") == {}


def test_metadata_keeps_values_base64_and_allows_keys_without_value() -> None:
    parsed = metadata(f"filename {b64('a.txt')},is_confidential, type {b64('text/plain')}")
    assert parsed == {"filename": b64("a.txt"), "is_confidential": None, "type": b64("text/plain")}
    assert decode_metadata_value(parsed, "name", "filename") == "a.txt"
    assert decode_metadata_value(parsed, "missing") is None


def test_metadata_with_empty_value_after_space_is_a_key_without_value() -> None:
    assert metadata("flag ") == {"flag": None}


def test_metadata_round_trips_through_encode() -> None:
    header = f"filename {b64('ü.bin')},empty,binary {b64(bytes(range(256)))}"
    assert encode_upload_metadata(metadata(header)) == header


@pytest.mark.parametrize(
    "header",
    [
        "name bm90IGJhc2U2NA=!",  # bad base64
        "name *notbase64*",
        "name YQ",  # missing padding
        "a b c",  # three parts
        "name YQ==,name Yg==",  # duplicate key
        ",name YQ==",  # empty pair
        "na\u00efve YQ==",  # non-ASCII key
        "tab\tkey YQ==",
    ],
)
def test_malformed_metadata_is_400(header: str) -> None:
    with pytest.raises(BadRequest):
        metadata(header)


def test_metadata_over_key_cap_is_400() -> None:
    header = ",".join(f"k{i} {b64(str(i))}" for i in range(9))
    with pytest.raises(BadRequest, match="more than 8 keys"):
        metadata(header, max_keys=8)
    assert len(metadata(header, max_keys=9)) == 9


def test_metadata_over_byte_cap_is_431() -> None:
    header = f"filename {b64('x' * 200)}"
    with pytest.raises(HeaderTooLarge):
        metadata(header, max_bytes=100)
    assert metadata(header, max_bytes=len(header)) == {"filename": b64("x" * 200)}


@given(
    st.dictionaries(
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
            min_size=1,
            max_size=12,
        ),
        st.one_of(st.none(), st.binary(min_size=1, max_size=40)),
        max_size=8,
    )
)
def test_any_wellformed_metadata_round_trips(pairs: dict[str, bytes | None]) -> None:
    encoded = {k: None if v is None else base64.b64encode(v).decode() for k, v in pairs.items()}
    header = encode_upload_metadata(encoded)
    assert metadata(header, max_bytes=10_000, max_keys=8) == encoded


# ---------------------------------------------------------------- defer length


def test_defer_length_accepts_only_1() -> None:
    assert parse_defer_length(None) is False
    assert parse_defer_length("1") is True
    for bad in ("0", "true", "2", ""):
        with pytest.raises(BadRequest):
            parse_defer_length(bad)


# ---------------------------------------------------------------- checksum


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_checksum_header_parses_algorithm_and_digest(algorithm: str) -> None:
    chunk = b"some chunk of bytes"
    digest = hashlib.new(algorithm, chunk).digest()
    spec = parse_upload_checksum(f"{algorithm} {base64.b64encode(digest).decode()}")
    assert spec is not None
    assert spec.algorithm == algorithm
    assert spec.expected == digest
    running = spec.new_digest()
    running.update(chunk[:5])
    running.update(chunk[5:])
    assert running.digest() == digest


def test_crc32c_digest_is_the_castagnoli_checksum_big_endian() -> None:
    # RFC 3720 B.4 test vector: CRC32C("123456789") = 0xE3069283.
    running = CHECKSUM_ALGORITHMS["crc32c"]()
    running.update(b"1234")
    running.update(b"56789")
    assert running.digest() == bytes.fromhex("e3069283")


def test_absent_checksum_header_means_no_check() -> None:
    assert parse_upload_checksum(None) is None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("sha512 AAAA", "not supported"),
        ("SHA1 AAAA", "not supported"),
        ("sha1", "algorithm"),
        ("sha1 AAAA extra", "algorithm"),
        ("sha1 not!base64", "base64"),
    ],
)
def test_bad_checksum_header_is_400(header: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_upload_checksum(header)


# ---------------------------------------------------------------- concatenation


def test_concat_absent_and_partial() -> None:
    assert parse_upload_concat(None, "/files") == (False, [])
    assert parse_upload_concat("partial", "/files") == (True, [])


def test_concat_final_accepts_relative_and_absolute_urls_in_order() -> None:
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    header = (
        f"final;/files/{first} http://ferry.example/files/{second} https://x.y:8443/files/{third}/"
    )
    assert parse_upload_concat(header, "/files") == (False, [first, second, third])


@pytest.mark.parametrize(
    "header",
    [
        "final;",
        "final; ",
        "finally",
        "partial;x",
        "final;/other/{id}",
        "final;/files/not-a-uuid",
        "final;/files/{id}/extra",
        "final;/files/../files/{id}",
        "final;/files/{upper}",
    ],
)
def test_concat_refuses_malformed_or_foreign_urls_with_400(header: str) -> None:
    upload_id = uuid.uuid4()
    text = header.format(id=upload_id, upper=str(upload_id).upper())
    with pytest.raises(BadRequest):
        parse_upload_concat(text, "/files")


# ---------------------------------------------------------------- ids


def test_upload_id_accepts_canonical_uuid() -> None:
    upload_id = uuid.uuid4()
    assert parse_upload_id(str(upload_id)) == upload_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "not-a-uuid",
        "{12345678-1234-5678-1234-567812345678}",
        "12345678123456781234567812345678",
        "12345678-1234-5678-1234-56781234567G",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "12345678-1234-5678-1234-567812345678 ",
        "ABCDEF12-1234-5678-1234-567812345678",
    ],
)
def test_upload_id_that_is_not_canonical_is_404(text: str) -> None:
    with pytest.raises(NotFound):
        parse_upload_id(text)


# ---------------------------------------------------------------- dates


def test_http_date_is_rfc9110_imf_fixdate_in_gmt() -> None:
    from datetime import datetime, timedelta, timezone

    moment = datetime(2026, 1, 2, 4, 5, 6, tzinfo=timezone(timedelta(hours=1)))
    assert format_http_date(moment) == "Fri, 02 Jan 2026 03:05:06 GMT"


# ---------------------------------------------------------------- repeated headers


def test_tus_header_with_two_different_values_is_400() -> None:
    headers = Headers([(b"upload-length", b"10"), (b"upload-length", b"20")])
    with pytest.raises(BadRequest, match="Upload-Length is sent 2 times"):
        tus_header(headers, "Upload-Length")


def test_tus_header_repeated_with_the_same_value_is_that_value() -> None:
    headers = Headers([(b"upload-offset", b"5"), (b"upload-offset", b" 5 ")])
    assert tus_header(headers, "Upload-Offset") == "5"
    assert tus_header(headers, "Upload-Length") is None


@pytest.mark.parametrize(("values", "method"), [([b"PATCH"], "PATCH"), ([b" delete "], "DELETE")])
def test_method_override_tunnels_only_patch_and_delete(values: list[bytes], method: str) -> None:
    assert parse_method_override(values) == method


@pytest.mark.parametrize(
    "values", [[b"GET"], [b"POST"], [b"PUT"], [b"X" * 100], [b""], [b"PATCH", b"DELETE"]]
)
def test_method_override_with_any_other_value_is_400(values: list[bytes]) -> None:
    with pytest.raises(BadRequest):
        parse_method_override(values)
