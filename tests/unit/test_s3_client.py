"""The S3 session parses botocore's models into plain dicts, with the same content."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from botocore.session import get_session as get_botocore_session

from app.storage.s3_client import s3_session


def has_ordered_dicts(value: Any) -> bool:
    if isinstance(value, OrderedDict):
        return True
    if isinstance(value, dict):
        return any(has_ordered_dicts(v) for v in value.values())
    if isinstance(value, list):
        return any(has_ordered_dicts(v) for v in value)
    return False


def test_s3_models_load_as_plain_dicts_with_botocores_content() -> None:
    plain = s3_session().get_component("data_loader")
    stock = get_botocore_session().get_component("data_loader")
    for type_name in ("service-2", "endpoint-rule-set-1"):
        ours = plain.load_service_model("s3", type_name)
        theirs = stock.load_service_model("s3", type_name)
        assert not has_ordered_dicts(ours)
        assert has_ordered_dicts(theirs), "botocore still uses OrderedDict (else drop ours)"
        assert ours == theirs
        assert list(ours) == list(theirs), "same key order"
