"""S3Source against real S3 servers: moto for API behaviour, rclone for signature checks."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localmodel import errors
from localmodel.fetch import FetchOptions, download
from localmodel.sources.s3 import S3Settings, S3Source
from localmodel.sources.uris import bucket_and_prefix
from tests.servers.s3 import RcloneS3Server, S3Server, ca_bundle
from localmodel.sources.base import Digest
from tests.sources.modeldata import (
    BIG,
    check_listing,
    check_reads,
    digest_of,
    read_all,
    s3_multipart_etag,
    sample_model,
)

MODEL = sample_model(seed=3)


@pytest.fixture(scope="module")
def moto_bucket(moto_s3: S3Server) -> Iterator[tuple[S3Server, Any]]:
    """A bucket holding MODEL under `llm/`, plus neighbours that must not leak into it."""
    client = moto_s3.client()
    client.create_bucket(Bucket="models")
    for path, data in MODEL.items():
        client.put_object(Bucket="models", Key=f"llm/{path}", Body=data)
    client.put_object(Bucket="models", Key="llm/weights/", Body=b"")  # a "folder" marker
    client.put_object(Bucket="models", Key="llm-evil/secret.bin", Body=b"not part of llm")
    client.put_object(Bucket="models", Key="llm.bin", Body=b"a sibling single object")
    yield moto_s3, client


#: Digests of objects uploaded with boto3's defaults: the full-object CRC32 it sends since 1.36
#: (moto and S3 keep it), else the MD5 ETag (servers that keep no checksums, like rclone).
BOTO3_UPLOADS = {"crc32", "md5"}


def open_source(server: S3Server, uri: str, **overrides: str) -> S3Source:
    return S3Source(uri, server.settings(**overrides))


def test_lists_nested_model_with_crc_digests_and_md5_anchors(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = open_source(server, "s3://models/llm")
    listing = source.list_files()
    # Folder markers and the `llm-evil/` neighbour are not part of the model.
    check_listing(listing, MODEL, algorithms=BOTO3_UPLOADS, anchors={"md5"})
    assert all(f.version for f in listing.files)
    source.close()


def test_trailing_slash_lists_the_same_files(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    check_listing(open_source(server, "s3://models/llm/").list_files(), MODEL)


def test_reads_exact_ranges(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = open_source(server, "s3://models/llm")
    source.list_files()
    check_reads(source, MODEL)


def test_reads_without_listing_first(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = open_source(server, "s3://models/llm")
    assert read_all(source, "config.json", 0, len(MODEL["config.json"])) == MODEL["config.json"]


def test_concurrent_reads_from_many_threads(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = open_source(server, "s3://models/llm")
    source.list_files()
    data = MODEL[BIG]
    part = 1024 * 1024
    parts = [(off, min(part, len(data) - off)) for off in range(0, len(data), part)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: read_all(source, BIG, *p), parts))
    assert b"".join(got) == data


def test_single_object_uri_is_a_one_file_model(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = open_source(server, "s3://models/llm/tokenizer/tokenizer.json")
    listing = source.list_files()
    assert [(f.path, f.size) for f in listing.files] == [
        ("tokenizer.json", len(MODEL["tokenizer/tokenizer.json"]))]
    data = MODEL["tokenizer/tokenizer.json"]
    assert read_all(source, "tokenizer.json", 10, 100) == data[10:110]


def test_whole_bucket_uri_lists_every_key(moto_s3: S3Server) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="whole-bucket")
    client.put_object(Bucket="whole-bucket", Key="a.txt", Body=b"a")
    client.put_object(Bucket="whole-bucket", Key="d/b.txt", Body=b"bb")
    listing = open_source(moto_s3, "s3://whole-bucket").list_files()
    assert [(f.path, f.size) for f in listing.files] == [("a.txt", 1), ("d/b.txt", 2)]


def test_missing_bucket_is_not_found(moto_s3: S3Server) -> None:
    with pytest.raises(errors.SourceNotFoundError):
        open_source(moto_s3, "s3://no-such-bucket-here/llm").list_files()


def test_missing_prefix_is_not_found(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    with pytest.raises(errors.SourceNotFoundError):
        open_source(server, "s3://models/nothing-here").list_files()


def test_prefix_is_not_a_string_prefix(moto_bucket: tuple[S3Server, Any]) -> None:
    # `s3://models/llm-e` must not pick up `llm-evil/...` (KServe's plain prefix match would).
    server, _ = moto_bucket
    with pytest.raises(errors.SourceNotFoundError):
        open_source(server, "s3://models/llm-e").list_files()


def test_missing_object_read_is_not_found(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = open_source(server, "s3://models/llm")
    with pytest.raises(errors.SourceNotFoundError):
        read_all(source, "not-there.bin", 0, 10)


def test_hostile_keys_come_back_as_stored(moto_s3: S3Server) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="hostile")
    client.put_object(Bucket="hostile", Key="m/../x", Body=b"escape")
    client.put_object(Bucket="hostile", Key="m//etc/passwd", Body=b"absolute")
    client.put_object(Bucket="hostile", Key="m/ok.txt", Body=b"fine")
    paths = {f.path for f in open_source(moto_s3, "s3://hostile/m").list_files().files}
    # Not normalized away: the engine sees them and refuses the model.
    assert paths == {"../x", "/etc/passwd", "ok.txt"}


def test_odd_key_characters_round_trip(moto_s3: S3Server) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="odd-names")
    names = ["sp ace.bin", "plus+sign.bin", "per%cent.bin", "ünïcode/файл.bin", "q?uery#frag.bin"]
    for i, name in enumerate(names):
        client.put_object(Bucket="odd-names", Key=f"m/{name}", Body=bytes([i]) * (i + 1))
    source = open_source(moto_s3, "s3://odd-names/m")
    listing = source.list_files()
    assert sorted(f.path for f in listing.files) == sorted(names)
    for i, name in enumerate(names):
        assert read_all(source, name, 0, i + 1) == bytes([i]) * (i + 1)


@pytest.mark.parametrize("algorithm", ["CRC64NVME", "CRC32C", "CRC32", "SHA256"])
def test_full_object_checksum_is_preferred_over_etag(moto_s3: S3Server, algorithm: str) -> None:
    """S3's additional checksum (CRC64NVME is what S3 gives new objects) is the digest the
    engine verifies; beside a CRC, the ETag's MD5 stays as the anchor for peers' bytes."""
    import boto3
    from botocore.config import Config

    client = moto_s3.client()
    bucket = f"checksums-{algorithm.lower()}"
    client.create_bucket(Bucket=bucket)
    data = b"weights" * 1000
    client.put_object(Bucket=bucket, Key="m/w.bin", Body=data, ChecksumAlgorithm=algorithm)
    # An object without any checksum (an older upload, or an SDK that sent none).
    plain = boto3.session.Session().client(
        "s3", endpoint_url=moto_s3.endpoint, aws_access_key_id=moto_s3.access_key,
        aws_secret_access_key=moto_s3.secret_key, region_name=moto_s3.region,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"))
    plain.put_object(Bucket=bucket, Key="m/plain.bin", Body=data)
    files = {f.path: f for f in open_source(moto_s3, f"s3://{bucket}/m").list_files().files}
    checked = files["w.bin"]
    assert checked.digest is not None
    assert checked.digest.algorithm == algorithm.lower()
    assert checked.digest.value == digest_of(algorithm.lower(), data)
    if algorithm == "SHA256":
        assert checked.anchor is None  # already cryptographic
    else:
        assert checked.anchor == Digest("md5", hashlib.md5(data).hexdigest())
    assert files["plain.bin"].digest == Digest("md5", hashlib.md5(data).hexdigest())
    assert files["plain.bin"].anchor is None


def upload_in_parts(client: Any, bucket: str, key: str, parts: list[bytes]) -> None:
    """A real multipart upload (what aws cli, boto3 and s5cmd do for big files)."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for number, body in enumerate(parts, 1):
        resp = client.upload_part(Bucket=bucket, Key=key, PartNumber=number,
                                  UploadId=upload["UploadId"], Body=body)
        done.append({"PartNumber": number, "ETag": resp["ETag"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": done})


def test_multipart_upload_has_s3_etag_digest_with_part_size(moto_s3: S3Server) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="multipart")
    part_size = 5 * 1024 * 1024
    data = MODEL[BIG]
    upload_in_parts(client, "multipart", "m/big.bin",
                    [data[start:start + part_size] for start in range(0, len(data), part_size)])
    source = open_source(moto_s3, "s3://multipart/m")
    [remote] = source.list_files().files
    assert remote.digest is not None
    assert remote.digest.algorithm == "s3-etag"
    assert remote.digest.value == s3_multipart_etag(data, part_size)
    assert remote.digest.part_size == part_size  # from HEAD ?partNumber=1
    assert read_all(source, "big.bin", part_size - 10, 20) == data[part_size - 10:part_size + 10]


def test_multipart_etag_is_checked_by_the_engine(moto_s3: S3Server, tmp_path: Path) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="multipart-engine")
    part_size = 5 * 1024 * 1024
    data = MODEL[BIG]
    upload_in_parts(client, "multipart-engine", "m/big.bin",
                    [data[start:start + part_size] for start in range(0, len(data), part_size)])
    client.put_object(Bucket="multipart-engine", Key="m/config.json", Body=b"{}")
    manifest = download("s3://multipart-engine/m", tmp_path / "model",
                        settings=moto_s3.settings(), options=FetchOptions(chunk_size=1024 * 1024))
    files = {f.path: f for f in manifest.files}
    assert files["big.bin"].digest is not None and files["big.bin"].digest.algorithm == "s3-etag"
    assert files["big.bin"].digest_checked
    assert (tmp_path / "model" / "big.bin").read_bytes() == data


def test_multipart_with_uneven_parts_is_left_unchecked(moto_s3: S3Server) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="uneven")
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: parts of 6, 5 and 1 MiB
    mib = 1024 * 1024
    upload_in_parts(client, "uneven", "m/w.bin", [data[:6 * mib], data[6 * mib:11 * mib],
                                                  data[11 * mib:]])
    [remote] = open_source(moto_s3, "s3://uneven/m").list_files().files
    # Part 1 is 6 MiB, but 12 MiB in 6 MiB parts would be 2 parts, not 3: the ETag cannot
    # be recomputed from a part size, so it is not claimed to be checkable.
    assert remote.digest is not None and remote.digest.algorithm == "s3-etag"
    assert remote.digest.part_size is None


def test_object_replaced_after_listing_is_detected(moto_s3: S3Server) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="changing")
    client.put_object(Bucket="changing", Key="m/w.bin", Body=b"version one")
    source = open_source(moto_s3, "s3://changing/m")
    source.list_files()
    client.put_object(Bucket="changing", Key="m/w.bin", Body=b"version two")
    with pytest.raises(errors.IntegrityError):
        read_all(source, "w.bin", 0, 11)


def test_anonymous_access_sends_unsigned_requests(moto_s3: S3Server) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="public-models", ACL="public-read")
    for path, data in MODEL.items():
        client.put_object(Bucket="public-models", Key=f"llm/{path}", Body=data, ACL="public-read")
    settings = {"AWS_ENDPOINT_URL": moto_s3.endpoint}  # no keys at all: unsigned, like KServe
    source = S3Source("s3://public-models/llm", settings)
    check_listing(source.list_files(), MODEL, algorithms=BOTO3_UPLOADS, anchors={"md5"})
    assert read_all(source, BIG, 100, 50) == MODEL[BIG][100:150]
    flagged = S3Source("s3://public-models/llm", moto_s3.settings(AWS_ANONYMOUS_CREDENTIAL="true"))
    assert read_all(flagged, "config.json", 0, 5) == MODEL["config.json"][:5]


def test_anonymous_read_of_private_object_is_auth_error(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = S3Source("s3://models/llm", {"AWS_ENDPOINT_URL": server.endpoint})
    with pytest.raises(errors.SourceAuthError):
        read_all(source, "config.json", 0, 5)


def test_host_port_endpoint_with_use_https_off(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    settings = server.settings(S3_ENDPOINT=server.endpoint.removeprefix("http://"),
                               S3_USE_HTTPS="0")
    del settings["AWS_ENDPOINT_URL"]
    check_listing(S3Source("s3://models/llm", settings).list_files(), MODEL)


# -- rclone: a server that checks signatures ------------------------------------------------


@pytest.fixture(scope="module")
def rclone_model(rclone_s3: RcloneS3Server) -> RcloneS3Server:
    root = rclone_s3.bucket("rclone-models") / "llm"
    for path, data in MODEL.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return rclone_s3


def test_rclone_lists_and_reads_signed(rclone_model: RcloneS3Server) -> None:
    source = open_source(rclone_model, "s3://rclone-models/llm")
    check_listing(source.list_files(), MODEL, algorithms=BOTO3_UPLOADS, anchors={"md5"})
    check_reads(source, MODEL)


@pytest.mark.parametrize("overrides", [
    {"AWS_SECRET_ACCESS_KEY": "wrong-secret"},
    {"AWS_ACCESS_KEY_ID": "unknown-key"},
    {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},  # anonymous, server wants keys
])
def test_rclone_bad_credentials_are_auth_errors(rclone_model: RcloneS3Server,
                                                overrides: dict[str, str]) -> None:
    source = open_source(rclone_model, "s3://rclone-models/llm", **overrides)
    with pytest.raises(errors.SourceAuthError) as caught:
        source.list_files()
    assert "wrong-secret" not in str(caught.value)


def test_rclone_bad_credentials_on_read(rclone_model: RcloneS3Server) -> None:
    source = open_source(rclone_model, "s3://rclone-models/llm",
                         AWS_SECRET_ACCESS_KEY="wrong-secret")
    with pytest.raises(errors.SourceAuthError):
        read_all(source, "config.json", 0, 4)


def test_rclone_missing_bucket(rclone_model: RcloneS3Server) -> None:
    with pytest.raises(errors.SourceNotFoundError):
        open_source(rclone_model, "s3://absent-bucket/llm").list_files()


@pytest.fixture(scope="module")
def rclone_tls_model(rclone_s3_tls: RcloneS3Server) -> RcloneS3Server:
    target = rclone_s3_tls.bucket("tls-models") / "llm" / "config.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(MODEL["config.json"])
    return rclone_s3_tls


def test_https_endpoint_with_ca_bundle(rclone_tls_model: RcloneS3Server) -> None:
    settings = rclone_tls_model.settings(AWS_CA_BUNDLE=str(ca_bundle(rclone_tls_model)))
    source = S3Source("s3://tls-models/llm", settings)
    check_listing(source.list_files(), {"config.json": MODEL["config.json"]}, algorithms=BOTO3_UPLOADS, anchors={"md5"})
    assert read_all(source, "config.json", 0, 5) == MODEL["config.json"][:5]


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_host_port_endpoint_without_verification(rclone_tls_model: RcloneS3Server) -> None:
    settings = rclone_tls_model.settings(
        S3_ENDPOINT=rclone_tls_model.endpoint.removeprefix("https://"), S3_VERIFY_SSL="0")
    del settings["AWS_ENDPOINT_URL"]  # host:port + S3_USE_HTTPS unset -> https
    source = S3Source("s3://tls-models/llm", settings)
    assert [f.path for f in source.list_files().files] == ["config.json"]


def test_untrusted_certificate_fails(rclone_tls_model: RcloneS3Server) -> None:
    source = S3Source("s3://tls-models/llm", rclone_tls_model.settings())
    with pytest.raises(errors.SourceUnavailableError) as caught:
        source.list_files()
    assert "SSL" in str(caught.value) or "certificate" in str(caught.value)


def test_abandoned_read_does_not_poison_the_connection(rclone_model: RcloneS3Server) -> None:
    source = open_source(rclone_model, "s3://rclone-models/llm")
    source.list_files()
    for _ in source.read_range(BIG, 0, 5_000_000):
        break
    assert read_all(source, "config.json", 0, 10) == MODEL["config.json"][:10]
    assert read_all(source, BIG, 3, 2_000_000) == MODEL[BIG][3:2_000_003]


def test_unreachable_endpoint_is_transient() -> None:
    from tests.servers.ports import free_port

    source = S3Source("s3://b/m", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(errors.SourceUnavailableError):
        source.list_files()


# -- pure parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "gs://b/m", "s3://user:pw@b/m",
                                 "s3://b/m?x=1"])
def test_invalid_uris(uri: str) -> None:
    with pytest.raises(errors.InvalidURIError):
        bucket_and_prefix(uri, "s3")


def test_uri_parts() -> None:
    assert bucket_and_prefix("s3://b", "s3") == ("b", "")
    assert bucket_and_prefix("s3://b/a/b/", "s3") == ("b", "a/b")


def test_settings_follow_kserve_names() -> None:
    parsed = S3Settings.from_settings({
        "S3_ENDPOINT": "minio.local:9000", "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0",
        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-west-1",
    })
    assert parsed.endpoint == "http://minio.local:9000"
    assert parsed.region == "eu-west-1"
    assert not parsed.tls.verify
    assert not parsed.anonymous
    https = S3Settings.from_settings({"S3_ENDPOINT": "minio.local:9000",
                                      "AWS_CA_BUNDLE": "/etc/ca.pem"})
    assert https.endpoint == "https://minio.local:9000"
    assert https.tls.verify and https.tls.ca_bundle == "/etc/ca.pem"
    assert https.anonymous  # no keys: unsigned, like KServe
    both = S3Settings.from_settings({"AWS_ENDPOINT_URL": "http://a:1", "S3_ENDPOINT": "b:2"})
    assert both.endpoint == "http://a:1"
    anon = S3Settings.from_settings({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                     "awsAnonymousCredential": "true"})
    assert anon.anonymous


def test_key_without_secret_is_an_auth_error() -> None:
    with pytest.raises(errors.SourceAuthError):
        S3Settings.from_settings({"AWS_ACCESS_KEY_ID": "k"})


def test_aws_urls_use_virtual_hosts_unless_the_bucket_has_dots() -> None:
    source = S3Source("s3://my-bucket/m", {"AWS_REGION": "eu-central-1"})
    assert source._object_url("m/a b.bin") == (
        "https://my-bucket.s3.eu-central-1.amazonaws.com/m/a%20b.bin")
    dotted = S3Source("s3://my.bucket/m", {})
    assert dotted._object_url("m/x") == "https://s3.us-east-1.amazonaws.com/my.bucket/m/x"
    virtual = S3Source("s3://bkt/m", {"AWS_ENDPOINT_URL": "https://s3.example:9000",
                                      "S3_USER_VIRTUAL_BUCKET": "true"})
    assert virtual._object_url("m/x") == "https://bkt.s3.example:9000/m/x"


def test_sha256_from_base64() -> None:
    value = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    assert base64.b64decode(value).hex() == hashlib.sha256(b"x").hexdigest()


def test_listing_pages_through_continuation_tokens(moto_bucket: tuple[S3Server, Any]) -> None:
    server, _ = moto_bucket
    source = open_source(server, "s3://models/llm")
    source.list_page_size = 2
    check_listing(source.list_files(), MODEL, algorithms=BOTO3_UPLOADS, anchors={"md5"})


def test_crc32c_checksum_is_used_when_no_sha256(moto_s3: S3Server) -> None:
    import google_crc32c

    client = moto_s3.client()
    client.create_bucket(Bucket="crc-checksums")
    data = b"crc" * 5000
    crc = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    # Given explicitly: botocore computes CRC32C only with the optional awscrt package.
    client.put_object(Bucket="crc-checksums", Key="m/w.bin", Body=data, ChecksumCRC32C=crc,
                      ChecksumAlgorithm="CRC32C")
    [remote] = open_source(moto_s3, "s3://crc-checksums/m").list_files().files
    assert remote.digest is not None
    assert (remote.digest.algorithm, remote.digest.value) == (
        "crc32c", f"{google_crc32c.value(data):08x}")
