"""Pure parts of the http source: Retry-After, digests in headers, per-host extra headers."""

import base64
import hashlib

import pytest

from localmodel.errors import PermanentError
from localmodel.sources.base import Digest
from localmodel.sources.http import parse_retry_after, provider_digest, request_headers


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_digest_headers() -> None:
    raw = hashlib.sha256(b"x").digest()
    b64 = base64.b64encode(raw).decode()
    expected = Digest("sha256", raw.hex())
    assert provider_digest({"Repr-Digest": f"sha-512=:AAAA:, sha-256=:{b64}:"}) == expected
    assert provider_digest({"Digest": f"SHA-256={b64}"}) == expected
    md5 = hashlib.md5(b"x").digest()
    assert provider_digest({"Content-MD5": base64.b64encode(md5).decode()}) == \
        Digest("md5", md5.hex())
    assert provider_digest({"Repr-Digest": "sha-256=:not base64!:"}) is None
    assert provider_digest({}) is None


def test_host_headers_setting() -> None:
    settings = {"models.example.com-headers": '{"Authorization": "Bearer t"}'}
    assert request_headers("models.example.com", settings) == {"Authorization": "Bearer t"}
    assert request_headers("other.example.com", settings) == {}
    for bad in ("{nope", "[1, 2]", '{"a": 1}'):
        with pytest.raises(PermanentError) as caught:
            request_headers("h", {"h-headers": bad})
        assert "Bearer" not in str(caught.value)
