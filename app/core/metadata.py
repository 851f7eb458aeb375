"""The tus metadata codec: ``Upload-Metadata`` values are kept as sent (base64)."""

from __future__ import annotations

import base64
import binascii


def decode_metadata_value(metadata: dict[str, str | None], *keys: str) -> str | None:
    """Decode the first present metadata value among ``keys`` as UTF-8 text."""
    for key in keys:
        encoded = metadata.get(key)
        if encoded:
            return base64.b64decode(encoded).decode("utf-8", errors="replace")
    return None


def decode_metadata(metadata: dict[str, str | None]) -> dict[str, str | None]:
    """tus metadata (base64 values) → text values; binary values stay base64 with a prefix."""
    decoded: dict[str, str | None] = {}
    for key, value in metadata.items():
        if value is None:
            decoded[key] = None
            continue
        try:
            decoded[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            decoded[key] = f"base64:{value}"
    return decoded


def encode_metadata_value(text: str) -> str:
    """Text → the base64 form tus metadata is kept in."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
