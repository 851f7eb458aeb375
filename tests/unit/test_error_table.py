"""The error table: every stable code is reachable, and each status has a code of its own."""

from __future__ import annotations

from app.errors import CODE_BY_STATUS, ErrorCode, InvalidParameter, code_for_status, error_classes


def test_every_error_code_is_given_by_an_error_class_or_a_status() -> None:
    given = {cls.code for cls in error_classes()} | set(CODE_BY_STATUS.values())
    assert given | {ErrorCode.INTERNAL} == set(ErrorCode)


def test_a_status_outside_the_table_still_gets_a_code() -> None:
    assert code_for_status(404) is ErrorCode.NOT_FOUND
    assert code_for_status(418) is ErrorCode.BAD_REQUEST
    assert code_for_status(502) is ErrorCode.INTERNAL


def test_an_invalid_parameter_is_a_bad_request_that_names_its_parameter() -> None:
    error = InvalidParameter("category", "category must be one of images, media, text, other")
    assert (error.status_code, error.code, error.parameter) == (
        400,
        "invalid_parameter",
        "category",
    )
