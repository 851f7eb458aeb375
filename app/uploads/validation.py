"""Validation shared by every upload path: simple uploads, multipart forms and tus.

Each rule is refused with its own status and a message that names the rule:

* the size limit (``FERRY_MAX_SIZE``, and a per-category limit such as
  ``FERRY_MAX_SIZE_IMAGES``) → 413 Payload Too Large;
* the content-type allow-list / deny-list (``FERRY_ALLOWED_TYPES``,
  ``FERRY_DENIED_TYPES``) → 415 Unsupported Media Type;
* a body that does not match the digest its client declared (simple uploads) → 422.

The content type is the one sniffed from the file's first bytes
(:mod:`app.storage.sniff`), never the client's ``Content-Type`` or metadata: a client can
only lie about what it sends, not about what it sent. Since those bytes arrive after the
upload was created, the content rules run when the first ``SNIFF_SIZE`` bytes are staged
(or at completion for smaller files), and a refusal retires the upload so nothing stays
behind (see :class:`ContentGate`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from app.db.models import UploadState
from app.db.uploads import Claim
from app.errors import FerryError, PayloadTooLarge, UnsupportedMediaType
from app.settings import Settings
from app.storage.sniff import Category
from app.uploads.filing import Content
from app.uploads.retiring import UploadRetirer


def _matches(content_type: str, patterns: tuple[str, ...]) -> bool:
    """``image/*``-style patterns, compared case-insensitively without parameters."""
    bare = content_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(bare, pattern.strip().lower()) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    """The validation rules in force, built once from settings."""

    max_size: int
    allowed_types: tuple[str, ...] = ()
    """Empty: every type not denied is allowed."""
    denied_types: tuple[str, ...] = ()
    category_max_sizes: dict[str, int] = field(default_factory=dict)
    """Per-category size limits; a category missing here has only ``max_size``."""

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPolicy:
        """Rules from ``FERRY_MAX_SIZE``, ``FERRY_*_TYPES`` and ``FERRY_MAX_SIZE_<CATEGORY>``."""
        limits = {
            Category.IMAGES.value: settings.max_size_images,
            Category.MEDIA.value: settings.max_size_media,
            Category.TEXT.value: settings.max_size_text,
            Category.OTHER.value: settings.max_size_other,
        }
        return cls(
            max_size=settings.max_size,
            allowed_types=tuple(settings.allowed_types),
            denied_types=tuple(settings.denied_types),
            category_max_sizes={name: limit for name, limit in limits.items() if limit > 0},
        )

    @property
    def checks_content(self) -> bool:
        """Whether any rule needs the sniffed content type (else completion skips sniffing)."""
        return bool(self.allowed_types or self.denied_types or self.category_max_sizes)

    def check_size(self, size: int) -> None:
        """Size rule known before any byte arrives (tus ``Upload-Length``, ``Content-Length``)."""
        if size > self.max_size:
            raise PayloadTooLarge(
                f"size {size} exceeds the maximum size {self.max_size} (FERRY_MAX_SIZE)"
            )

    def check_content(self, content_type: str, category: str, size: int | None) -> None:
        """Content rules: type lists, then the category's size limit (``size``: known length)."""
        if self.denied_types and _matches(content_type, self.denied_types):
            raise UnsupportedMediaType(
                f"content type {content_type} is refused by the deny-list (FERRY_DENIED_TYPES)"
            )
        if self.allowed_types and not _matches(content_type, self.allowed_types):
            raise UnsupportedMediaType(
                f"content type {content_type} is not in the allow-list (FERRY_ALLOWED_TYPES)"
            )
        limit = self.category_max_sizes.get(category)
        if limit is not None and size is not None and size > limit:
            raise PayloadTooLarge(
                f"size {size} exceeds the {category} limit {limit} "
                f"(FERRY_MAX_SIZE_{category.upper()})"
            )


class ContentGate:
    """The content rules applied to a claimed upload: a refused upload is retired at once,
    so a refused 50 GB upload leaves nothing behind."""

    def __init__(self, policy: UploadPolicy, retirer: UploadRetirer) -> None:
        self._policy = policy
        self._retirer = retirer

    async def admit(self, claim: Claim, content: Content, size: int | None) -> None:
        """Raise 413/415 (after retiring the upload) when ``content`` breaks a rule."""
        if not self._policy.checks_content:
            return
        try:
            self._policy.check_content(content.content_type, content.category, size)
        except FerryError:
            await self._retirer.retire(claim, UploadState.TERMINATED)
            raise
