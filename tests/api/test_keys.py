"""Storage keys, status keys and URI matching: KServe's own cases plus edge cases."""

import hashlib

import pytest

from localmodel.api.keys import is_storage_key, match_storage_uri, status_key, storage_key


def test_storage_key_is_16_hex_digits_of_sha256_of_exact_uri() -> None:
    uri = "hf://meta-llama/Meta-Llama-3-8B"
    assert storage_key(uri) == hashlib.sha256(uri.encode()).hexdigest()[:16]
    assert len(storage_key(uri)) == 16
    assert is_storage_key(storage_key(uri))


def test_storage_key_is_stable_and_known() -> None:
    # sha256 of the bytes "s3://bucket/model", computed with coreutils' sha256sum.
    assert storage_key("s3://bucket/model") == "d270957640e91cf0"


def test_storage_key_distinguishes_trailing_slash() -> None:
    assert storage_key("s3://a") != storage_key("s3://a/")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0123456789abcdef", True),
        ("0123456789ABCDEF", False),
        ("0123456789abcde", False),
        ("0123456789abcdef0", False),
        ("my-model", False),
        ("../0123456789abcd", False),
    ],
)
def test_is_storage_key(name: str, expected: bool) -> None:
    assert is_storage_key(name) is expected


def test_status_key() -> None:
    assert status_key("iris") == "iris"
    assert status_key("iris", "") == "iris"
    assert status_key("iris", "team-a") == "team-a/iris"


@pytest.mark.parametrize(
    ("cached", "requested", "expected"),
    [
        ("gs://b/model", "gs://b/model", True),  # exact
        ("gs://b/model/", "gs://b/model", True),  # trailing slash on cached
        ("gs://b/model", "gs://b/model/", True),  # trailing slash on requested
        ("gs://b/model", "gs://b/model/sub/x.pt", True),  # subdirectory
        ("gs://b/model", "gs://b/other", False),  # different path
        ("gs://b/model", "gs://b/model-evil", False),  # prefix attack
        ("gs://b/model", "gs://b/modelx/y", False),
        ("gs://b/model/sub", "gs://b/model", False),  # requested is a parent
        ("", "gs://b", False),
    ],
)
def test_match_storage_uri(cached: str, requested: str, expected: bool) -> None:
    assert match_storage_uri(cached, requested) is expected
