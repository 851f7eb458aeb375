"""Parts sent while their body arrives (``aws-chunked``, CRC32C trailer) under AWS's rules.

The PUT of a part starts as the staging writer reaches it and reads right behind it, with
the CRC32C in an ``aws-chunked`` trailer; the part is recorded (and the PATCH answered)
only once the whole body is received and verified. (That the PUT really overlaps the
body is proved against a real server in ``tests/e2e/test_s3_parts_while_arriving.py``:
this test client hands the app a body it has read whole.)
"""

from __future__ import annotations

import hashlib

from tests.integration.s3.conftest import MIB, PART
from tests.integration.s3.test_s3_uploads import payload
from tests.integration.tus_helpers import OCTETS, TUS, Client, create, upload_id_of


def patch_headers(offset: int, size: int, **extra: str) -> dict[str, str]:
    return {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": OCTETS,
        "Content-Length": str(size),
        **extra,
    }


async def test_parts_sent_while_arriving_meet_aws_rules(moto_client: Client) -> None:
    data = payload(2 * PART + 3 * MIB, seed=3)
    path = await create(moto_client, len(data))
    response = await moto_client.patch(path, content=data, headers=patch_headers(0, len(data)))
    assert response.status_code == 204, response.text
    stored = await moto_client.get(f"/files/{upload_id_of(path)}")
    assert hashlib.sha256(stored.content).digest() == hashlib.sha256(data).digest()
