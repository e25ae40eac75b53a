"""AzureBlobSource against azurite (Shared Key, connection strings, SAS, public containers)."""

from __future__ import annotations

import concurrent.futures
import datetime
from typing import Any

import pytest

from localmodel import errors
from localmodel.sources.azure import AzureBlobSource, parse_blob_uri, parse_connection_string
from tests.servers.azure import Azurite
from tests.sources.modeldata import BIG, check_listing, check_reads, read_all, sample_model

MODEL = sample_model(seed=11)


@pytest.fixture(scope="module")
def azure_container(azurite: Azurite) -> tuple[Azurite, Any]:
    container = azurite.client().create_container("models")
    for path, data in MODEL.items():
        container.upload_blob(f"llm/{path}", data)  # the SDK sets Content-MD5 for one-shot uploads
    container.upload_blob("llm/weights/", b"")  # a "folder" placeholder
    container.upload_blob("llm-evil/secret.bin", b"not part of llm")
    return azurite, container


def key_settings(server: Azurite, **overrides: str) -> dict[str, str]:
    return {"AZURE_STORAGE_BLOB_ENDPOINT": server.endpoint,
            "AZURE_STORAGE_ACCESS_KEY": server.key, **overrides}


def test_lists_nested_model_with_md5_digests(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    source = AzureBlobSource(server.uri("models", "llm"), key_settings(server))
    listing = source.list_files()
    check_listing(listing, MODEL, algorithms={"md5"})
    assert all(f.version for f in listing.files)


def test_reads_exact_ranges(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    source = AzureBlobSource(server.uri("models", "llm/"), key_settings(server))
    source.list_files()
    check_reads(source, MODEL)


def test_concurrent_reads(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    source = AzureBlobSource(server.uri("models", "llm"), key_settings(server))
    source.list_files()
    data = MODEL[BIG]
    parts = [(off, min(1 << 20, len(data) - off)) for off in range(0, len(data), 1 << 20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: read_all(source, BIG, *p), parts))
    assert b"".join(got) == data


def test_connection_string_alone(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    settings = {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string}
    assert AzureBlobSource.matches(server.uri("models", "llm"), settings)
    source = AzureBlobSource(server.uri("models", "llm"), settings)
    check_listing(source.list_files(), MODEL)
    assert read_all(source, "config.json", 0, 8) == MODEL["config.json"][:8]


def test_sas_in_connection_string(azure_container: tuple[Azurite, Any]) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    server, _ = azure_container
    sas = generate_container_sas(
        server.account, "models", account_key=server.key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    settings = {"AZURE_STORAGE_CONNECTION_STRING":
                f"BlobEndpoint={server.endpoint};SharedAccessSignature={sas}"}
    source = AzureBlobSource(server.uri("models", "llm"), settings)
    check_listing(source.list_files(), MODEL, algorithms={"md5"})
    assert read_all(source, BIG, 3, 5) == MODEL[BIG][3:8]


def test_single_blob_uri(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    source = AzureBlobSource(server.uri("models", "llm/tokenizer/tokenizer.json"),
                             key_settings(server))
    [remote] = source.list_files().files
    data = MODEL["tokenizer/tokenizer.json"]
    assert (remote.path, remote.size) == ("tokenizer.json", len(data))
    assert read_all(source, "tokenizer.json", 100, 200) == data[100:300]


def test_missing_container_prefix_and_blob(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    with pytest.raises(errors.SourceNotFoundError):
        AzureBlobSource(server.uri("no-such-container", "llm"), key_settings(server)).list_files()
    with pytest.raises(errors.SourceNotFoundError):
        AzureBlobSource(server.uri("models", "absent"), key_settings(server)).list_files()
    with pytest.raises(errors.SourceNotFoundError):
        AzureBlobSource(server.uri("models", "llm-e"), key_settings(server)).list_files()
    source = AzureBlobSource(server.uri("models", "llm"), key_settings(server))
    with pytest.raises(errors.SourceNotFoundError):
        read_all(source, "absent.bin", 0, 1)


def test_wrong_key_is_auth_error(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    wrong = "d3Jvbmcga2V5IGZvciB0ZXN0cw=="
    source = AzureBlobSource(server.uri("models", "llm"),
                             key_settings(server, AZURE_STORAGE_ACCESS_KEY=wrong))
    with pytest.raises(errors.SourceAuthError) as caught:
        source.list_files()
    assert wrong not in str(caught.value)
    with pytest.raises(errors.SourceAuthError):
        read_all(source, "config.json", 0, 1)


def test_anonymous_on_private_container_is_auth_error(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    source = AzureBlobSource(server.uri("models", "llm"),
                             {"AZURE_STORAGE_BLOB_ENDPOINT": server.endpoint})
    with pytest.raises(errors.SourceAuthError):
        source.list_files()


def test_anonymous_on_public_container(azurite: Azurite) -> None:
    container = azurite.client().create_container("public-models", public_access="container")
    for path, data in MODEL.items():
        container.upload_blob(f"llm/{path}", data)
    source = AzureBlobSource(azurite.uri("public-models", "llm"),
                             {"AZURE_STORAGE_BLOB_ENDPOINT": azurite.endpoint})
    check_listing(source.list_files(), MODEL, algorithms={"md5"})
    assert read_all(source, BIG, 0, 64) == MODEL[BIG][:64]


def test_blob_without_content_md5_has_no_digest(azurite: Azurite) -> None:
    from azure.storage.blob import BlobBlock

    container = azurite.client().create_container("staged-blocks")
    blob = container.get_blob_client("m/w.bin")
    blob.stage_block("YmxvY2sx", b"a" * 1000)
    blob.commit_block_list([BlobBlock("YmxvY2sx")])
    source = AzureBlobSource(azurite.uri("staged-blocks", "m"), key_settings(azurite))
    [remote] = source.list_files().files
    assert remote.digest is None  # a block list commit without x-ms-blob-content-md5
    assert remote.size == 1000
    assert read_all(source, "w.bin", 990, 10) == b"a" * 10


def test_odd_names_and_hostile_names_come_back_as_stored(azurite: Azurite) -> None:
    container = azurite.client().create_container("odd-names")
    names = ["sp ace.bin", "plus+sign.bin", "per%cent.bin", "ünïcode/файл.bin"]
    for i, name in enumerate(names):
        container.upload_blob(f"m/{name}", bytes([i]) * (i + 1))
    container.upload_blob("m//etc/passwd", b"absolute")
    source = AzureBlobSource(azurite.uri("odd-names", "m"), key_settings(azurite))
    assert sorted(f.path for f in source.list_files().files) == sorted(names + ["/etc/passwd"])
    for i, name in enumerate(names):
        assert read_all(source, name, 0, i + 1) == bytes([i]) * (i + 1)


def test_blob_replaced_after_listing_is_detected(azurite: Azurite) -> None:
    container = azurite.client().create_container("changing")
    container.upload_blob("m/w.bin", b"version one")
    source = AzureBlobSource(azurite.uri("changing", "m"), key_settings(azurite))
    source.list_files()
    container.upload_blob("m/w.bin", b"version two", overwrite=True)
    with pytest.raises(errors.IntegrityError):
        read_all(source, "w.bin", 0, 11)


def test_matches_routes_only_azure_uris() -> None:
    assert AzureBlobSource.matches("https://acct.blob.core.windows.net/c/m", {})
    assert not AzureBlobSource.matches("https://example.com/c/m", {})
    assert not AzureBlobSource.matches("http://acct.blob.core.windows.net/c/m", {})
    settings = {"AZURE_STORAGE_BLOB_ENDPOINT": "http://127.0.0.1:10000/devstoreaccount1"}
    assert AzureBlobSource.matches("http://127.0.0.1:10000/devstoreaccount1/c/m", settings)
    assert not AzureBlobSource.matches("http://127.0.0.1:10000/devstoreaccount10/c/m", settings)
    assert not AzureBlobSource.matches("http://127.0.0.1:10000/devstoreaccount1/c/m", {})
    conn = {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    assert AzureBlobSource.matches("http://127.0.0.1:10000/devstoreaccount1/c/m", conn)


def test_uri_parsing() -> None:
    loc = parse_blob_uri("https://acct.blob.core.windows.net/models/llm/v1/", {})
    assert (loc.account, loc.endpoint, loc.container, loc.prefix) == (
        "acct", "https://acct.blob.core.windows.net", "models", "llm/v1")
    loc = parse_blob_uri("http://127.0.0.1:10000/devstoreaccount1/c",
                         {"AZURE_STORAGE_BLOB_ENDPOINT": "http://127.0.0.1:10000/devstoreaccount1"})
    assert (loc.account, loc.container, loc.prefix) == ("devstoreaccount1", "c", "")
    for bad in ["https://acct.blob.core.windows.net/", "https://example.com/c/m",
                "https://acct.blob.core.windows.net/c/m?sv=x"]:
        with pytest.raises(errors.InvalidURIError):
            parse_blob_uri(bad, {})


def test_connection_string_parsing() -> None:
    parts = parse_connection_string("AccountName=a;AccountKey=k==;BlobEndpoint=http://h:1/a;")
    assert parts == {"AccountName": "a", "AccountKey": "k==", "BlobEndpoint": "http://h:1/a"}
    dev = parse_connection_string("UseDevelopmentStorage=true")
    assert dev["BlobEndpoint"] == "http://127.0.0.1:10000/devstoreaccount1"


def test_client_secret_settings_select_a_bearer_token() -> None:
    # No Azure AD endpoint can be reached from here; this checks only the selection.
    source = AzureBlobSource("https://acct.blob.core.windows.net/c/m", {
        "AZURE_CLIENT_ID": "id", "AZURE_TENANT_ID": "tenant", "AZURE_CLIENT_SECRET": "s",
        "AZURE_STORAGE_ACCESS_KEY": "a2V5"})
    assert source._bearer is not None and source._shared_key is None


def test_listing_pages_through_markers(azure_container: tuple[Azurite, Any]) -> None:
    server, _ = azure_container
    source = AzureBlobSource(server.uri("models", "llm"), key_settings(server))
    source.list_page_size = 2
    check_listing(source.list_files(), MODEL, algorithms={"md5"})
