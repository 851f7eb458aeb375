"""The pre-create HTTP hook: an outside service may reject an upload or change its metadata.

Ferry POSTs JSON ``{"event": "pre-create", "owner", "length", "is_partial", "is_final",
"metadata": {key: text or null}}`` to ``FERRY_PRE_CREATE_HOOK_URL`` and waits at most
``FERRY_HOOK_TIMEOUT_SECONDS``. The answer decides:

* 2xx with an empty body or ``{}``: create as asked;
* 2xx with ``{"metadata": {...}}``: create with that metadata instead (values are text or
  null; Ferry base64-encodes them as tus stores them);
* 2xx with ``{"reject": true, "message": "..."}`` or any 4xx: refuse with 403 and the message;
* anything else (5xx, timeout, an answer over ``FERRY_HOOK_MAX_RESPONSE_BYTES``, bad JSON):
  refuse with 503, because an upload the hook could not judge must not slip through.
"""

from __future__ import annotations

import base64
import logging

import anyio
import httpx
import msgspec

from app.core.metadata import decode_metadata_value
from app.errors import Forbidden, ServiceUnavailable
from app.settings import Settings

logger = logging.getLogger(__name__)


class PreCreateRequest(msgspec.Struct, kw_only=True):
    """What the hook is told about the upload about to be created."""

    owner: str | None
    length: int | None
    is_partial: bool
    is_final: bool
    metadata: dict[str, str | None]
    event: str = "pre-create"


class PreCreateAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the hook may answer."""

    reject: bool = False
    message: str = ""
    metadata: dict[str, str | None] | None = None


class PreCreateHook:
    """Calls the configured hook; a no-op when no URL is set."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._url = settings.pre_create_hook_url
        self._timeout = settings.hook_timeout_seconds
        self._max_bytes = settings.hook_max_response_bytes
        self._client = client

    @property
    def enabled(self) -> bool:
        """Whether a hook URL is configured."""
        return bool(self._url)

    async def review(
        self,
        *,
        owner: str | None,
        length: int | None,
        is_partial: bool,
        is_final: bool,
        metadata: dict[str, str | None],
    ) -> dict[str, str | None]:
        """Ask the hook; return the (possibly changed) metadata in tus (base64) form."""
        question = PreCreateRequest(
            owner=owner,
            length=length,
            is_partial=is_partial,
            is_final=is_final,
            metadata={key: decode_metadata_value(metadata, key) for key in metadata},
        )
        status, body = await self._post(msgspec.json.encode(question))
        if 400 <= status < 500:
            raise Forbidden(
                _message_of(body) or f"the pre-create hook refused the upload ({status})"
            )
        if not 200 <= status < 300:
            logger.error("pre-create hook answered %d", status)
            raise ServiceUnavailable(
                "the pre-create hook failed; retry later", headers={"Retry-After": "5"}
            )
        if not body.strip():
            return metadata
        try:
            answer = msgspec.json.decode(body, type=PreCreateAnswer)
        except msgspec.DecodeError:
            logger.error("pre-create hook answered with invalid JSON")
            raise ServiceUnavailable("the pre-create hook failed; retry later") from None
        if answer.reject:
            raise Forbidden(answer.message or "the pre-create hook refused the upload")
        if answer.metadata is None:
            return metadata
        return {
            key: None if value is None else base64.b64encode(value.encode()).decode("ascii")
            for key, value in answer.metadata.items()
        }

    async def _post(self, payload: bytes) -> tuple[int, bytes]:
        try:
            # httpx's timeout is per read; fail_after bounds the whole exchange.
            with anyio.fail_after(self._timeout):
                return await self._exchange(payload)
        except TimeoutError:
            logger.error("pre-create hook did not answer within %g s", self._timeout)
            raise ServiceUnavailable(
                "the pre-create hook did not answer; retry later", headers={"Retry-After": "5"}
            ) from None
        except httpx.HTTPError as exc:
            logger.error("pre-create hook unreachable: %s", exc.__class__.__name__)
            raise ServiceUnavailable(
                "the pre-create hook did not answer; retry later", headers={"Retry-After": "5"}
            ) from None

    async def _exchange(self, payload: bytes) -> tuple[int, bytes]:
        async with self._client.stream(
            "POST",
            self._url,
            content=payload,
            headers={"Content-Type": "application/json", "Accept-Encoding": "identity"},
            timeout=self._timeout,
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    logger.error("pre-create hook answer exceeds %d bytes", self._max_bytes)
                    raise ServiceUnavailable("the pre-create hook answer is too large")
            return response.status_code, bytes(body)


def _message_of(body: bytes) -> str:
    try:
        return msgspec.json.decode(body, type=PreCreateAnswer).message[:500]
    except msgspec.DecodeError:
        return body[:500].decode("utf-8", errors="replace").strip()
