"""GCSSource against gcp-storage-emulator (and a local OAuth token endpoint for credentials)."""

from __future__ import annotations

import base64
import concurrent.futures
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from localmodel import errors
from localmodel.sources.gcs import GCSSource, crc32c_hex
from localmodel.sources.uris import bucket_and_prefix
from tests.servers.gcs import GCSEmulator, TokenServer
from tests.sources.modeldata import BIG, check_listing, check_reads, read_all, sample_model

MODEL = sample_model(seed=7)


@pytest.fixture(scope="module")
def gcs_bucket(gcs_emulator: GCSEmulator) -> tuple[GCSEmulator, Any]:
    client = gcs_emulator.client()
    bucket = client.create_bucket("gcs-models")
    for path, data in MODEL.items():
        bucket.blob(f"llm/{path}").upload_from_string(data)
    bucket.blob("llm/weights/").upload_from_string(b"")  # a "folder" placeholder
    bucket.blob("llm-evil/secret.bin").upload_from_string(b"not part of llm")
    return gcs_emulator, bucket


def open_source(server: GCSEmulator, uri: str, **overrides: str) -> GCSSource:
    return GCSSource(uri, server.settings(**overrides))


def test_lists_nested_model_with_crc32c_digests(gcs_bucket: tuple[GCSEmulator, Any]) -> None:
    server, _ = gcs_bucket
    listing = open_source(server, "gs://gcs-models/llm").list_files()
    check_listing(listing, MODEL, algorithms={"crc32c"})
    assert all(f.version and f.version.isdigit() for f in listing.files)


def test_reads_exact_ranges(gcs_bucket: tuple[GCSEmulator, Any]) -> None:
    server, _ = gcs_bucket
    source = open_source(server, "gs://gcs-models/llm/")
    source.list_files()
    check_reads(source, MODEL)


def test_concurrent_reads(gcs_bucket: tuple[GCSEmulator, Any]) -> None:
    server, _ = gcs_bucket
    source = open_source(server, "gs://gcs-models/llm")
    source.list_files()
    data = MODEL[BIG]
    parts = [(off, min(1 << 20, len(data) - off)) for off in range(0, len(data), 1 << 20)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda p: read_all(source, BIG, *p), parts))
    assert b"".join(got) == data


def test_single_object_uri(gcs_bucket: tuple[GCSEmulator, Any]) -> None:
    server, _ = gcs_bucket
    source = open_source(server, "gs://gcs-models/llm/config.json")
    [remote] = source.list_files().files
    assert (remote.path, remote.size) == ("config.json", len(MODEL["config.json"]))
    assert read_all(source, "config.json", 0, remote.size) == MODEL["config.json"]


def test_missing_bucket_and_prefix_are_not_found(gcs_bucket: tuple[GCSEmulator, Any]) -> None:
    server, _ = gcs_bucket
    with pytest.raises(errors.SourceNotFoundError):
        open_source(server, "gs://no-such-gcs-bucket/llm").list_files()
    with pytest.raises(errors.SourceNotFoundError):
        open_source(server, "gs://gcs-models/absent").list_files()
    with pytest.raises(errors.SourceNotFoundError):
        open_source(server, "gs://gcs-models/llm-e").list_files()  # not a string prefix


def test_missing_object_read_is_not_found(gcs_bucket: tuple[GCSEmulator, Any]) -> None:
    server, _ = gcs_bucket
    with pytest.raises(errors.SourceNotFoundError):
        read_all(open_source(server, "gs://gcs-models/llm"), "absent.bin", 0, 1)


def test_odd_names_round_trip(gcs_emulator: GCSEmulator) -> None:
    bucket = gcs_emulator.client().create_bucket("gcs-odd-names")
    names = ["sp ace.bin", "plus+sign.bin", "per%cent.bin", "ünïcode/файл.bin"]
    for i, name in enumerate(names):
        bucket.blob(f"m/{name}").upload_from_string(bytes([i]) * (i + 2))
    source = open_source(gcs_emulator, "gs://gcs-odd-names/m")
    assert sorted(f.path for f in source.list_files().files) == sorted(names)
    for i, name in enumerate(names):
        assert read_all(source, name, 1, i + 1) == bytes([i]) * (i + 1)


def test_service_account_credentials_are_used(gcs_bucket: tuple[GCSEmulator, Any],
                                              gcs_token_server: TokenServer,
                                              tmp_path: Path) -> None:
    server, _ = gcs_bucket
    key_file = gcs_token_server.write_service_account(tmp_path / "sa.json",
                                                      "reader@localmodel-tests.iam")
    before = gcs_token_server.issued
    source = open_source(server, "gs://gcs-models/llm",
                         GOOGLE_APPLICATION_CREDENTIALS=str(key_file))
    check_listing(source.list_files(), MODEL)
    assert read_all(source, BIG, 5, 10) == MODEL[BIG][5:15]
    assert gcs_token_server.issued == before + 1  # one token, reused while valid


def test_refused_service_account_is_auth_error(gcs_bucket: tuple[GCSEmulator, Any],
                                               gcs_token_server: TokenServer,
                                               tmp_path: Path) -> None:
    server, _ = gcs_bucket
    key_file = gcs_token_server.write_service_account(tmp_path / "sa.json",
                                                      "revoked@localmodel-tests.iam")
    source = open_source(server, "gs://gcs-models/llm",
                         GOOGLE_APPLICATION_CREDENTIALS=str(key_file))
    with pytest.raises(errors.SourceAuthError) as caught:
        source.list_files()
    assert "PRIVATE KEY" not in str(caught.value)


@pytest.mark.parametrize("content", ["not json", '{"type": "service_account"}'])
def test_unreadable_credentials_file_is_auth_error(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(content)
    with pytest.raises(errors.SourceAuthError):
        GCSSource("gs://b/m", {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)})


def test_missing_credentials_file_is_auth_error(tmp_path: Path) -> None:
    with pytest.raises(errors.SourceAuthError):
        GCSSource("gs://b/m", {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json")})


def test_emulator_host_without_scheme(gcs_bucket: tuple[GCSEmulator, Any]) -> None:
    server, _ = gcs_bucket
    source = GCSSource("gs://gcs-models/llm",
                       {"STORAGE_EMULATOR_HOST": server.endpoint.removeprefix("http://")})
    check_listing(source.list_files(), MODEL)


def test_crc32c_hex_is_big_endian() -> None:
    value = google_crc32c.value(b"hello world")
    as_api = base64.b64encode(value.to_bytes(4, "big")).decode()
    assert crc32c_hex(as_api) == f"{value:08x}"
    assert crc32c_hex("AAAAAQ==") == "00000001"


@pytest.mark.parametrize("uri", ["gs://", "s3://b/m", "gs://user@b/m", "gs://b/m#frag"])
def test_invalid_uris(uri: str) -> None:
    with pytest.raises(errors.InvalidURIError):
        bucket_and_prefix(uri, "gs")

