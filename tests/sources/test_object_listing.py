"""The one listing rule of the object stores (S3, GCS, Azure Blob), and their bucket URIs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from localmodel import errors
from localmodel.sources.base import prefix_or_object
from localmodel.sources.uris import bucket_and_prefix


def _store(*names: str) -> tuple[Callable[[str], list[str]], Callable[[str], str | None]]:
    """A store whose entries are their names."""

    def list_under(prefix: str) -> list[str]:
        return [n for n in names if n.startswith(prefix)]

    def stat(name: str) -> str | None:
        return name if name in names else None
    return list_under, stat


def test_every_object_under_the_prefix_named_relative_to_it_without_folder_placeholders() -> None:
    list_under, stat = _store("m/a.bin", "m/sub/", "m/sub/b.bin", "m2/c.bin", "m")
    chosen = prefix_or_object("m", list_under, str, stat, "nothing")
    assert chosen == [("a.bin", "m/a.bin"), ("sub/b.bin", "m/sub/b.bin")]


def test_the_single_object_named_by_the_prefix_when_nothing_is_under_it() -> None:
    list_under, stat = _store("models/model.safetensors", "models/model.safetensors.bak")
    chosen = prefix_or_object("models/model.safetensors", list_under, str, stat, "nothing")
    assert chosen == [("model.safetensors", "models/model.safetensors")]


def test_a_whole_bucket_and_an_empty_prefix() -> None:
    list_under, stat = _store("a", "b/c")
    assert prefix_or_object("", list_under, str, stat, "nothing") == [("a", "a"), ("b/c", "b/c")]
    empty_list, empty_stat = _store()
    with pytest.raises(errors.SourceNotFoundError, match="no objects under s3://b/m"):
        prefix_or_object("m", empty_list, str, empty_stat, "no objects under s3://b/m")


@pytest.mark.parametrize(("uri", "scheme", "message"), [
    ("gs://b/m", "s3", "not an s3:// URI"),
    ("s3://b/m", "gs", "not a gs:// URI"),
    ("s3://u:p@b/m", "s3", "credentials do not belong in an s3:// URI"),
    ("gs://u@b/m", "gs", "credentials do not belong in a gs:// URI"),
    ("gs:///m", "gs", "gs:// URI without a bucket"),
    ("s3://b/m?versionId=1", "s3", "s3:// URI with a query or fragment"),
])
def test_bucket_uris_refused_with_the_scheme_named(uri: str, scheme: str, message: str) -> None:
    with pytest.raises(errors.InvalidURIError, match=message):
        bucket_and_prefix(uri, scheme)


def test_bucket_and_prefix() -> None:
    assert bucket_and_prefix("gs://bucket/a/b/", "gs") == ("bucket", "a/b")
    assert bucket_and_prefix("s3://bucket", "s3") == ("bucket", "")
