"""AWS's part rules, checked against moto's server (which enforces them like AWS)."""

from __future__ import annotations

import hashlib

import pytest
from botocore.exceptions import ClientError
from litestar.testing import AsyncTestClient

from app.main import FerryApp
from tests.integration.s3.conftest import MIB
from tests.integration.tus_helpers import create, patch, upload_id_of
from tests.support.seaweed import S3Endpoint


def test_moto_refuses_a_non_last_part_below_5_mib(moto_s3: S3Endpoint) -> None:
    """The control: moto really enforces the rule the next test relies on."""
    client = moto_s3.client()
    key = "control/small-parts"
    started = client.create_multipart_upload(Bucket=moto_s3.bucket, Key=key)
    etags = [
        client.upload_part(
            Bucket=moto_s3.bucket,
            Key=key,
            UploadId=started["UploadId"],
            PartNumber=n,
            Body=b"x" * MIB,
        )["ETag"]
        for n in (1, 2)
    ]
    with pytest.raises(ClientError, match="EntityTooSmall"):
        client.complete_multipart_upload(
            Bucket=moto_s3.bucket,
            Key=key,
            UploadId=started["UploadId"],
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)]
            },
        )
    client.abort_multipart_upload(Bucket=moto_s3.bucket, Key=key, UploadId=started["UploadId"])


async def test_small_patches_still_make_parts_of_at_least_5_mib_on_aws_rules(
    moto_client: AsyncTestClient[FerryApp], moto_s3: S3Endpoint, s3_prefix: str
) -> None:
    data = bytes(range(256)) * (11 * MIB // 256) + b"tail"
    path = await create(moto_client, len(data))
    for offset in range(0, len(data), 512 * 1024):
        response = await patch(moto_client, path, offset, data[offset : offset + 512 * 1024])
        assert response.status_code == 204, response.text
    s3 = moto_s3.client()
    listing = s3.list_objects_v2(Bucket=moto_s3.bucket, Prefix=s3_prefix)
    key = next(o["Key"] for o in listing["Contents"] if o["Key"].endswith(upload_id_of(path)))
    body = s3.get_object(Bucket=moto_s3.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert s3.head_object(Bucket=moto_s3.bucket, Key=key)["ETag"].strip('"').endswith("-3")
    assert (
        s3.list_multipart_uploads(Bucket=moto_s3.bucket, Prefix=s3_prefix).get("Uploads", []) == []
    )
