"""The JSON file API under ``/api/files``: list, inspect, rename and delete stored files.

Reads and metadata edits go through an Advanced-Alchemy repository service over the
``files`` table; deletion goes through :meth:`UploadService.terminate`, which takes the
upload's lock and frees the row, the staging file and the stored object together.
Ownership follows the tus routes: a caller with an owner sees only its own files, and
another owner's file answers 404 exactly like a missing one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from advanced_alchemy.filters import LimitOffset, StatementFilter
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar import Request, Router, delete, get, patch
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.status_codes import HTTP_204_NO_CONTENT
from sqlalchemy import ColumnElement, and_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.filenames import safe_display_name, validate_name
from app.core.metadata import encode_metadata_value
from app.db.models import File
from app.errors import InvalidParameter, NotFound, PayloadTooLarge
from app.http.openapi import BEARER, api_errors, documented
from app.http.schemas import FileOut, FilePage, FileUpdate, SortField, file_out
from app.http.simple_uploads import (
    API_FILES_PATH,
    post_form,
    put_file,
    put_file_at_first_path,
)
from app.http.tus import request_owner
from app.http.tus_protocol import encode_upload_metadata
from app.settings import Settings
from app.storage.sniff import Category
from app.uploads.service import UploadService

AnyRequest = Request[Any, Any, Any]
MAX_PAGE = 1000

_SORT_COLUMNS = {
    "created": File.created_at,
    "updated": File.updated_at,
    "name": File.name,
    "size": File.size,
}


class FileRepository(SQLAlchemyAsyncRepository[File]):
    """Rows of the ``files`` table."""

    model_type = File


class FileService(SQLAlchemyAsyncRepositoryService[File, FileRepository]):
    """Queries and edits of file records (bytes are never touched here)."""

    repository_type = FileRepository

    async def visible(self, uid: uuid.UUID, owner: str | None) -> File:
        """One file visible to ``owner`` (``None``: any), else 404."""
        conditions: list[ColumnElement[bool]] = [File.id == uid]
        if owner is not None:
            conditions.append(File.owner == owner)
        found = await self.get_one_or_none(and_(*conditions))
        if found is None:
            raise NotFound("no such file")
        return found


async def provide_file_service(state: State) -> AsyncIterator[FileService]:
    """One session (and service) per request, closed when the response is sent."""
    sessions: async_sessionmaker[AsyncSession] = state.sessions
    async with sessions() as session:
        # Database errors go on as they are, to the 503 handler: advanced-alchemy would
        # turn a lost connection into its IntegrityError (a 500).
        yield FileService(session=session, wrap_exceptions=False)


Files = NamedDependency[FileService]
Uploads = NamedDependency[UploadService]
Config = NamedDependency[Settings]


def _text_filter(name: str, value: str | None) -> str | None:
    """A text filter as given; a NUL character is 400 (PostgreSQL text cannot hold one)."""
    if value is not None and "\x00" in value:
        raise InvalidParameter(name, f"{name} must not contain a NUL character")
    return value


def _listing_filters(
    owner: str | None,
    category: Category | None,
    name_prefix: str | None,
    content_type: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    uids: list[uuid.UUID] | None = None,
    sha256: str | None = None,
    names: list[str] | None = None,
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if uids:
        conditions.append(File.id.in_(uids))
    if names:
        # Matched as stored: a name is cleaned the same way when a file is filed.
        conditions.append(File.name.in_({safe_display_name(name, name) for name in names}))
    if sha256:
        conditions.append(File.sha256 == sha256.lower())
    if owner is not None:
        conditions.append(File.owner == owner)
    if category:
        conditions.append(File.category == category)
    if name_prefix:
        conditions.append(File.name.startswith(name_prefix, autoescape=True))
    if content_type:
        if content_type.endswith("/*"):
            conditions.append(File.content_type.startswith(content_type[:-1], autoescape=True))
        else:
            conditions.append(File.content_type == content_type)
    if created_after is not None:
        conditions.append(File.created_at >= created_after)
    if created_before is not None:
        conditions.append(File.created_at < created_before)
    return conditions


@get("/", summary="List files", **documented(api_errors(400, 401, 503)))
async def list_files(
    request: AnyRequest,
    files: Files,
    limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Parameter(ge=0)] = 0,
    category: FromQuery[Category | None] = None,
    name_prefix: FromQuery[str | None] = None,
    content_type: Annotated[
        str | None, Parameter(description="exact type, or a major type as `image/*`")
    ] = None,
    created_after: Annotated[
        datetime | None, Parameter(description="inclusive lower bound (ISO 8601)")
    ] = None,
    created_before: Annotated[
        datetime | None, Parameter(description="exclusive upper bound (ISO 8601)")
    ] = None,
    sort: FromQuery[SortField] = "-created",
    uid: Annotated[
        list[uuid.UUID] | None,
        Parameter(description="only these UIDs (repeatable; how `ferry ingest` verifies)"),
    ] = None,
    sha256: Annotated[str | None, Parameter(description="only files with this SHA-256")] = None,
    name: Annotated[
        list[str] | None,
        Parameter(
            description="only files with one of these exact names (repeatable; how "
            "`ferry ingest` finds files it already stored)"
        ),
    ] = None,
) -> FilePage:
    """List files, newest first by default; filters combine with AND."""
    if uid is not None and len(uid) > MAX_PAGE:
        raise InvalidParameter("uid", f"at most {MAX_PAGE} uid values per request")
    if name is not None and len(name) > MAX_PAGE:
        raise InvalidParameter("name", f"at most {MAX_PAGE} name values per request")
    if created_after and created_before and created_after >= created_before:
        raise InvalidParameter(
            "created_before", "created_after must be earlier than created_before"
        )
    descending = sort.startswith("-")
    column = _SORT_COLUMNS[sort.lstrip("-")]
    filters: list[StatementFilter | ColumnElement[bool]] = [
        *_listing_filters(
            request_owner(request),
            category,
            _text_filter("name_prefix", name_prefix),
            _text_filter("content_type", content_type),
            created_after,
            created_before,
            uid,
            _text_filter("sha256", sha256),
            [_text_filter("name", value) or "" for value in name or ()],
        ),
        LimitOffset(limit=limit, offset=offset),
    ]
    rows, total = await files.get_many_and_count(
        *filters, order_by=[(column, descending), (File.id, descending)]
    )
    base_url = str(request.base_url)
    next_offset = offset + len(rows) if offset + len(rows) < total else None
    return FilePage(
        items=[file_out(row, base_url) for row in rows],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=next_offset,
    )


@get("/{uid:uuid}", summary="One file's record", **documented(api_errors(401, 404, 503)))
async def get_file(request: AnyRequest, uid: FromPath[uuid.UUID], files: Files) -> FileOut:
    """One file's metadata, including its SHA-256 (what ``ferry ingest`` verifies)."""
    return file_out(await files.visible(uid, request_owner(request)), str(request.base_url))


def check_metadata_caps(
    metadata: dict[str, str | None], before: dict[str, str | None], settings: Settings
) -> None:
    """The caps of ``Upload-Metadata`` on a file's merged metadata: 400 for too many keys,
    413 for too many bytes (as the header would carry them). A record already over a cap
    (the caps were lowered) may still shrink."""
    keys, limit = len(metadata), settings.max_metadata_keys
    if keys > limit and keys > len(before):
        raise InvalidParameter(
            "metadata",
            f"the file's metadata would have {keys} keys; at most {limit} are allowed "
            "(FERRY_MAX_METADATA_KEYS)",
        )
    size, limit = len(encode_upload_metadata(metadata)), settings.max_metadata_bytes
    if size > limit and size > len(encode_upload_metadata(before)):
        raise PayloadTooLarge(
            parameter="metadata",
            message=f"the file's metadata would take {size} bytes as Upload-Metadata; at most "
            f"{limit} are allowed (FERRY_MAX_METADATA_BYTES)",
        )


@patch(
    "/{uid:uuid}",
    summary="Rename a file or edit its metadata",
    **documented(api_errors(400, 401, 404, 413, 503)),
)
async def update_file(
    request: AnyRequest,
    uid: FromPath[uuid.UUID],
    data: JSONBody[FileUpdate],
    files: Files,
    settings: Config,
) -> FileOut:
    """Rename a file and/or set metadata keys (``null`` removes a key).

    The merged metadata is held to ``Upload-Metadata``'s caps (``FERRY_MAX_METADATA_KEYS``,
    400; ``FERRY_MAX_METADATA_BYTES``, 413).
    """
    stored = await files.visible(uid, request_owner(request))
    if data.name is not None:
        stored.name = validate_name(data.name)
    if data.metadata is not None:
        before = dict(stored.file_metadata or {})
        metadata = dict(before)
        for key, value in data.metadata.items():
            if not key or " " in key or "," in key or "\x00" in key:
                raise InvalidParameter("metadata", f"metadata key {key[:40]!r} is not allowed")
            if value is None:
                metadata.pop(key, None)
            else:
                metadata[key] = encode_metadata_value(value)
        check_metadata_caps(metadata, before, settings)
        stored.file_metadata = metadata
    updated = await files.update(stored, auto_commit=True)
    return file_out(updated, str(request.base_url))


@delete(
    "/{uid:uuid}",
    status_code=HTTP_204_NO_CONTENT,
    summary="Delete a file",
    **documented(api_errors(401, 404, 423, 503)),
)
async def delete_file(request: AnyRequest, uid: FromPath[uuid.UUID], uploads: Uploads) -> None:
    """Delete the stored object, the file row and any staging; 204.

    Goes through the upload service (its own sessions): the lock it takes keeps a delete
    from racing a finishing upload, and on SQLite the one pooled connection stays free.
    """
    owner = request_owner(request)
    await uploads.get_file(uid, owner)
    await uploads.terminate(uid, owner)


def file_api_router() -> Router:
    """``/api/files``: the JSON file API and the simple (non-tus) uploads, one route table."""
    return Router(
        path=API_FILES_PATH,
        route_handlers=[
            list_files,
            get_file,
            update_file,
            delete_file,
            put_file,
            put_file_at_first_path,
            post_form,
        ],
        dependencies={"files": Provide(provide_file_service)},
        tags=["files"],
        security=BEARER,
    )
