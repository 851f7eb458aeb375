"""Exception handlers: every failure becomes the same response, whoever raised it.

Under ``/api`` an error is JSON, :class:`~app.http.schemas.ApiError`
(``{"error": "invalid_parameter", "detail": "...", "parameter": "category"}``), with the
stable code from the error table in :mod:`app.errors`. Everywhere else — the tus routes,
downloads at the upload URL, the pages — it stays the plain-text line tus clients expect.
Litestar's own exceptions (no such route, a parameter that does not parse) get the same
treatment: a :class:`~litestar.exceptions.ValidationException` is ``invalid_parameter``
naming the parameter.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from app.db.engine import DATABASE_ERRORS, describe_database_failure
from app.errors import (
    ErrorCode,
    FerryError,
    InsufficientStorage,
    ServiceUnavailable,
    code_for_status,
    is_disk_full,
)
from app.http.schemas import ApiError

logger = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]
#: Paths whose errors are JSON (the JSON file API and simple uploads).
API_PREFIX = "/api"
#: Where msgspec names an unknown body field in its message.
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<name>[^`]+)`")
#: Litestar's key for a body that fails as a whole.
_BODY_KEY = "data"


def speaks_json(path: str) -> bool:
    """Whether errors on ``path`` are JSON (``/api``) rather than plain text (tus, pages)."""
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def error_response(
    request: AnyRequest,
    status: int,
    code: ErrorCode,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    parameter: str | None = None,
) -> Response[Any]:
    """The response of one failure, in the shape the request's path speaks."""
    if speaks_json(request.url.path):
        body = ApiError(error=code, detail=detail, parameter=parameter)
        return Response(
            msgspec.json.encode(body),
            status_code=status,
            media_type="application/json",
            headers=dict(headers or {}),
        )
    return Response(
        detail + "\n", status_code=status, media_type="text/plain", headers=dict(headers or {})
    )


def _ferry_error(request: AnyRequest, exc: FerryError) -> Response[Any]:
    return error_response(
        request,
        exc.status_code,
        exc.code,
        exc.message,
        headers=exc.headers,
        parameter=exc.parameter,
    )


def _http_error(request: AnyRequest, exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException):
        detail, parameter = describe_validation_failure(request, exc)
        return error_response(
            request,
            exc.status_code,
            ErrorCode.INVALID_PARAMETER,
            detail,
            headers=exc.headers,
            parameter=parameter,
        )
    return error_response(
        request,
        exc.status_code,
        code_for_status(exc.status_code),
        str(exc.detail),
        headers=exc.headers,
    )


def describe_validation_failure(
    request: AnyRequest, exc: ValidationException
) -> tuple[str, str | None]:
    """Words for what failed to parse, and the first parameter at fault.

    Litestar reports each failure as ``{"key", "message", "source"}``; a value outside a
    fixed set (``sort``, ``category``) is told the values it may take.
    """
    problems = [item for item in exc.extra or [] if isinstance(item, dict)]
    parts: list[str] = []
    parameter: str | None = None
    for problem in problems:
        key = str(problem.get("key") or "")
        message = str(problem.get("message") or "is not valid")
        if key == _BODY_KEY:
            unknown = _UNKNOWN_FIELD.search(message)
            key = unknown["name"] if unknown else ""
        allowed = _allowed_values(request, key) if key else None
        if allowed is not None:
            message = f"must be one of {', '.join(allowed)}"
        parts.append(f"{key}: {message}" if key else message)
        parameter = parameter or key or None
    return ("; ".join(parts) or str(exc.detail)), parameter


def _allowed_values(request: AnyRequest, key: str) -> list[str] | None:
    """The values a parameter of a fixed set (a ``Literal`` or an enum) may take."""
    handler = request.scope.get("route_handler")
    field = handler.parsed_fn_signature.parameters.get(key) if handler is not None else None
    if field is None:
        return None
    for candidate in (field, *field.inner_types):
        if candidate.is_literal:
            return [str(value) for value in candidate.args]
        if candidate.is_subclass_of(enum.Enum):
            return [str(member.value) for member in candidate.annotation]
    return None


def _database_error(request: AnyRequest, exc: Exception) -> Response[Any]:
    logger.error("%s; answered 503", describe_database_failure(exc))
    return error_response(
        request,
        503,
        ServiceUnavailable.code,
        "the database is unavailable; nothing was acknowledged; retry later",
        headers={"Retry-After": "5"},
    )


def _os_error(request: AnyRequest, exc: OSError) -> Response[Any]:
    """A full disk anywhere (staging, files, a copy) is a refusal, not a server error."""
    if is_disk_full(exc):
        logger.error("the disk is full (%s); answered 507", exc.strerror)
        return _ferry_error(request, InsufficientStorage())
    return _unexpected_error(request, exc)


def _unexpected_error(request: AnyRequest, exc: Exception) -> Response[Any]:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(request, 500, ErrorCode.INTERNAL, "internal error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    FerryError: _ferry_error,
    HTTPException: _http_error,
    **dict.fromkeys(DATABASE_ERRORS, _database_error),
    OSError: _os_error,
    Exception: _unexpected_error,
}
"""What ``create_app`` installs: the most specific class wins."""
