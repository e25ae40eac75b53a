"""Which source serves a URI, and how bad URIs are refused without echoing secrets."""

import pytest

from localmodel.errors import InvalidURIError
from localmodel.sources import registry, uris
from localmodel.sources.http import HTTPSource
from localmodel.sources.local import LocalSource


@pytest.mark.parametrize("uri, scheme", [
    ("s3://bucket/model", "s3"),
    ("S3://bucket/model", "s3"),
    ("gs://bucket/model", "gs"),
    ("hf://meta-llama/Llama-3:main", "hf"),
    ("https://acct.blob.core.windows.net/container/model", "azure"),
    ("http://example.com/model.tar.gz", "http"),
    ("https://example.com/model.tar.gz?sig=abc", "https"),
    ("https://blob.core.windows.net.evil.com/x", "https"),
    ("file:///models/x", "file"),
    ("pvc://claim/models/x", "pvc"),
    ("/mnt/models/x", "local"),
    ("relative/model", "local"),
])
def test_scheme_routing(uri: str, scheme: str) -> None:
    assert registry.scheme_of(uri) == scheme


def test_azure_emulator_endpoint_from_settings() -> None:
    uri = "http://127.0.0.1:10000/devstoreaccount1/models/m"
    assert registry.scheme_of(uri) == "http"
    assert registry.scheme_of(uri, {"AZURE_STORAGE_BLOB_ENDPOINT":
                                    "http://127.0.0.1:10000/devstoreaccount1"}) == "azure"
    connection = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k==;"
                  "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
    assert registry.scheme_of(uri, {"AZURE_STORAGE_CONNECTION_STRING": connection}) == "azure"
    # A different port is a different server.
    assert registry.scheme_of("http://127.0.0.1:10001/devstoreaccount1/m",
                              {"AZURE_STORAGE_BLOB_ENDPOINT":
                               "http://127.0.0.1:10000/devstoreaccount1"}) == "http"


def test_registry_and_azure_source_share_one_rule() -> None:
    """The registry asks AzureBlobSource.matches, so everything the source understands routes
    to it: also azurite's `UseDevelopmentStorage=true`, which names the endpoint implicitly."""
    from localmodel.sources.azure import AzureBlobSource

    settings = {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    uri = "http://127.0.0.1:10000/devstoreaccount1/models/m"
    assert AzureBlobSource.matches(uri, settings)
    assert registry.scheme_of(uri, settings) == "azure"
    for other in ("https://acct.blob.core.windows.net/c/m", "https://example.com/m.bin",
                  "http://acct.blob.core.windows.net/c/m"):
        assert (registry.scheme_of(other) == "azure") == AzureBlobSource.matches(other, {})


@pytest.mark.parametrize("uri, message", [
    ("", "empty"),
    ("  s3://b/m", "whitespace"),
    ("s3://b/m\n", "whitespace"),
    ("ftp://host/model", "unsupported storage URI scheme 'ftp'"),
    ("hdfs://nn/model", "unsupported"),
    ("azure://x/y", "unsupported"),
    ("s3:bucket/model", "malformed"),
    ("http://host:notaport/x", "malformed"),
])
def test_bad_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(InvalidURIError, match=message):
        registry.scheme_of(uri)


@pytest.mark.parametrize("uri", [
    "https://user:hunter2@example.com/model.bin",
    "s3://AKIAXXXX:hunter2@bucket/model",
    "http://hunter2@example.com/m.bin",
])
def test_credentials_in_uri_are_refused_and_not_echoed(uri: str) -> None:
    with pytest.raises(InvalidURIError) as caught:
        registry.open_source(uri, {})
    assert "hunter2" not in str(caught.value)
    assert "credentials" in str(caught.value)


def test_redaction_drops_userinfo_and_query_values() -> None:
    assert uris.redact_uri("https://u:p@h.com/a/b?X-Amz-Signature=s3cr3t&x=1") == \
        "https://h.com/a/b?X-Amz-Signature=REDACTED&x=REDACTED"
    assert uris.redact_uri("/plain/path") == "/plain/path"


def test_classes_are_imported_lazily_by_target() -> None:
    assert registry.source_class("http") is HTTPSource
    assert registry.source_class("pvc") is LocalSource
    assert isinstance(registry.open_source("file:///tmp", {}), LocalSource)


def test_missing_sdk_gives_an_install_hint() -> None:
    registry.register("broken-test", "localmodel_no_such_module:Nope", install_hint="pip install nope")
    try:
        with pytest.raises(ImportError, match="pip install nope"):
            registry.source_class("broken-test")
    finally:
        registry._registry.pop("broken-test")


def test_register_refuses_to_clobber() -> None:
    with pytest.raises(ValueError):
        registry.register("s3", "somewhere:Else")
    with pytest.raises(TypeError):
        registry.registry["x"] = registry.Entry("a:b")  # type: ignore[index]
