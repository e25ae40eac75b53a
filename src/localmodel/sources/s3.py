"""S3 source for `s3://bucket/prefix`, configured the way KServe's storage-initializer is.

Settings (environment-style keys, passed explicitly):

    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN   static credentials
    AWS_ENDPOINT_URL or S3_ENDPOINT       endpoint, "scheme://host:port" or "host:port"
    S3_USE_HTTPS="0"                      plain http for a host:port endpoint
    S3_VERIFY_SSL="0"                     do not check the server certificate
    AWS_CA_BUNDLE                         extra CA certificates (PEM file)
    AWS_REGION / AWS_DEFAULT_REGION       signing region (default us-east-1)
    S3_USER_VIRTUAL_BUCKET="true"         virtual-hosted addressing on a custom endpoint
    awsAnonymousCredential / AWS_ANONYMOUS_CREDENTIAL="true", or no access key: unsigned requests

Listing follows KServe's prefix rule with one fix: `s3://b/m` lists the keys under `m/` (never
`m-other/...`); when nothing is there and the URI names one object, that object is the model.
Keys are returned relative to the prefix exactly as stored: the engine rejects hostile ones.

Digests: the cheapest one S3 guarantees. An object's full-object additional checksum when
the listing names one (ChecksumAlgorithm; S3 gives every new object a CRC64NVME since 2025),
read with HEAD + x-amz-checksum-mode: CRC64NVME, CRC32C, CRC32 (verified per range as bytes
arrive, combined, ~0.1 CPU-s/GB) or SHA-256. A composite checksum of a multipart upload
("...-N", a checksum of part checksums) is not a digest of the file and is skipped. Else, and
as the `anchor` a peer cannot forge beside a CRC, the ETag: the MD5 for single-part uploads,
else the multipart ETag ("s3-etag", md5 of the parts' md5s) with the part size, which HEAD with
partNumber=1 gives (the size of part 1; every part but the last has that size when the parts
are uniform, as every common uploader makes them). Caveat: SSE-KMS/SSE-C objects have non-MD5
single-part ETags.

The data path is urllib3 with SigV4 headers from botocore's signer: a third less CPU per GB
than boto3's get_object on 8 MiB ranges (bench/s3_clients.py), and no boto3 session reading
the process environment behind our back.
"""

from __future__ import annotations

import base64
import concurrent.futures
import re
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from localmodel import errors
from localmodel.sources import _cloudhttp
from localmodel.sources.base import (COMBINABLE, Digest, Listing, ListingLimit, RemoteFile, Settings,
                                     prefix_or_object, size_from_listing)
from localmodel.sources.uris import bucket_and_prefix

_DEFAULT_REGION = "us-east-1"
_NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey"})
#: Error codes that mean "who you are" is the problem. rclone (gofakes3) answers an unsigned
#: request to a server that wants signatures with 400 UnsupportedAlgorithm.
_AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                         "InvalidToken", "ExpiredToken", "AllAccessDisabled",
                         "TokenRefreshRequired",
                         "MissingSecurityHeader", "UnsupportedAlgorithm"})
#: Parallel HEAD requests when fetching checksums of many objects.
_HEAD_WORKERS = 8
#: Full-object checksums the engine verifies, cheapest first (header x-amz-checksum-<name>).
_CHECKSUMS = ("crc64nvme", "crc32c", "crc32", "sha256")
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _falsy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("0", "false", "no", "off")


@dataclass(frozen=True)
class S3Settings:
    """What the S3 source needs to know, parsed from environment-style settings."""

    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    anonymous: bool
    virtual_host: bool
    tls: _cloudhttp.TLSOptions

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Settings:
        endpoint = settings.get("AWS_ENDPOINT_URL") or settings.get("S3_ENDPOINT") or None
        if endpoint and "://" not in endpoint:
            scheme = "http" if _falsy(settings.get("S3_USE_HTTPS")) else "https"
            endpoint = f"{scheme}://{endpoint}"
        if endpoint:
            endpoint = endpoint.rstrip("/")
        access_key = settings.get("AWS_ACCESS_KEY_ID") or None
        secret_key = settings.get("AWS_SECRET_ACCESS_KEY") or None
        anonymous = (_truthy(settings.get("awsAnonymousCredential"))
                     or _truthy(settings.get("AWS_ANONYMOUS_CREDENTIAL"))
                     or not access_key)
        if not anonymous and not secret_key:
            raise errors.SourceAuthError(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
        return cls(
            endpoint=endpoint,
            region=(settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION")
                    or _DEFAULT_REGION),
            access_key=access_key,
            secret_key=secret_key,
            session_token=settings.get("AWS_SESSION_TOKEN") or None,
            anonymous=anonymous,
            virtual_host=_truthy(settings.get("S3_USER_VIRTUAL_BUCKET")),
            tls=_cloudhttp.TLSOptions(
                verify=not _falsy(settings.get("S3_VERIFY_SSL")),
                ca_bundle=settings.get("AWS_CA_BUNDLE") or None,
            ),
        )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_error_xml(body: bytes) -> tuple[str, str]:
    root = ET.fromstring(body)
    fields = {_local(child.tag): (child.text or "") for child in root}
    return fields.get("Code", ""), fields.get("Message", "")


def _hex_from_b64(value: str) -> str:
    return base64.b64decode(value).hex()


def _multipart_count(etag: str) -> int | None:
    """N for a multipart ETag "<md5>-N", else None."""
    _, dash, count = etag.partition("-")
    return int(count) if dash and count.isdigit() and int(count) > 0 else None


def _full_object_checksum(headers: Mapping[str, str]) -> Digest | None:
    """The cheapest full-object checksum in a HEAD answer's headers, if any. A multipart upload
    may carry a COMPOSITE checksum (a checksum of part checksums, "...-N"): not a file digest."""
    if headers.get("x-amz-checksum-type", "FULL_OBJECT").upper() != "FULL_OBJECT":
        return None
    for name in _CHECKSUMS:
        value = headers.get(f"x-amz-checksum-{name}", "")
        if value and "-" not in value:
            return Digest(name, _hex_from_b64(value))
    return None


@dataclass(frozen=True)
class _Entry:
    key: str
    size: int
    etag: str
    checksum_algorithms: tuple[str, ...]


class S3Source:
    """An S3 (or S3-compatible) prefix or single object, read with signed ranged GETs."""

    #: Keys per ListObjectsV2 page (the S3 maximum; tests lower it to exercise paging).
    list_page_size = 1000

    def __init__(self, uri: str, settings: Settings) -> None:
        self.uri = uri
        self._bucket, self._prefix = bucket_and_prefix(uri, "s3")
        self._settings = S3Settings.from_settings(settings)
        self._limit = ListingLimit(settings, f"s3://{self._bucket}/{self._prefix}")
        self._region = self._settings.region
        self._credentials = None if self._settings.anonymous else Credentials(
            self._settings.access_key, self._settings.secret_key, self._settings.session_token)
        self._pool = _cloudhttp.make_pool(self._settings.tls)
        self._lock = threading.Lock()
        #: relative path -> (key, etag) from the last listing
        self._listed: dict[str, tuple[str, str]] = {}

    # -- addressing and signing -------------------------------------------------------------

    def _object_url(self, key: str, query: str = "") -> str:
        quoted = urllib.parse.quote(key, safe="/~")
        settings = self._settings
        if settings.endpoint:
            if settings.virtual_host:
                scheme, rest = settings.endpoint.split("://", 1)
                url = f"{scheme}://{self._bucket}.{rest}/{quoted}"
            else:
                url = f"{settings.endpoint}/{self._bucket}/{quoted}"
        elif _DNS_BUCKET.match(self._bucket):
            url = f"https://{self._bucket}.s3.{self._region}.amazonaws.com/{quoted}"
        else:
            # Dotted bucket names break the wildcard certificate of virtual-hosted URLs.
            url = f"https://s3.{self._region}.amazonaws.com/{self._bucket}/{quoted}"
        return f"{url}?{query}" if query else url

    def _signed_headers(self, method: str, url: str,
                        extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._credentials is None:
            return headers
        req = AWSRequest(method=method, url=url, headers=headers)
        S3SigV4Auth(self._credentials, "s3", self._region).add_auth(req)
        return dict(req.headers.items())

    def _send(self, method: str, key: str, what: str, *, query: str = "",
              extra: Mapping[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        url = self._object_url(key, query)
        resp = _cloudhttp.request(self._pool, method, url,
                                  headers=self._signed_headers(method, url, extra), what=what)
        if resp.status < 300:
            return resp
        failure = _cloudhttp.read_failure(resp, _parse_error_xml, preloaded=True)
        region = resp.headers.get("x-amz-bucket-region")
        if (region and region != self._region and not self._settings.endpoint
                and resp.status in (301, 307, 400)):
            # The bucket lives in another region: sign for that region and ask again, once.
            with self._lock:
                self._region = region
            return self._send(method, key, what, query=query, extra=extra)
        if resp.status == 301:
            raise errors.InvalidURIError(
                f"{what}: the bucket is in another region; set AWS_REGION ({failure.message})")
        _cloudhttp.raise_for_failure(failure, what, not_found_codes=_NOT_FOUND_CODES,
                                     auth_codes=_AUTH_CODES)
        raise AssertionError("unreachable")

    # -- listing ----------------------------------------------------------------------------

    def _list_keys(self, prefix: str) -> list[_Entry]:
        entries: list[_Entry] = []
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": prefix, "encoding-type": "url",
                      "max-keys": str(self.list_page_size)}
            if token:
                params["continuation-token"] = token
            query = urllib.parse.urlencode(sorted(params.items()), quote_via=urllib.parse.quote)
            resp = self._send("GET", "", f"list s3://{self._bucket}/{prefix}", query=query)
            root = ET.fromstring(resp.data)
            url_encoded = any(_local(c.tag) == "EncodingType" and (c.text or "") == "url"
                              for c in root)
            token = None
            truncated = False
            self._limit.check(len(entries))
            for child in root:
                tag = _local(child.tag)
                if tag == "Contents":
                    fields: dict[str, str] = {}
                    algorithms: list[str] = []
                    for item in child:
                        name = _local(item.tag)
                        if name == "ChecksumAlgorithm":
                            algorithms.append((item.text or "").upper())
                        else:
                            fields[name] = item.text or ""
                    key = fields.get("Key", "")
                    if url_encoded:
                        key = urllib.parse.unquote_plus(key)
                    entries.append(_Entry(key, size_from_listing(fields.get("Size", "0"), f"s3 key {key!r}"),
                                          fields.get("ETag", "").strip('"'), tuple(algorithms)))
                elif tag == "NextContinuationToken":
                    token = child.text
                elif tag == "IsTruncated":
                    truncated = (child.text or "").lower() == "true"
            if not (truncated and token):
                return entries

    def _head(self, key: str) -> _Entry | None:
        """The object's size, ETag and checksum headers; None when there is no such key."""
        try:
            resp = self._send("HEAD", key, f"stat s3://{self._bucket}/{key}",
                              extra={"x-amz-checksum-mode": "ENABLED"})
        except errors.SourceNotFoundError:
            return None
        headers = resp.headers
        algorithms = tuple(name.upper() for name in _CHECKSUMS
                           if headers.get(f"x-amz-checksum-{name}"))
        return _Entry(key, size_from_listing(headers.get("Content-Length", "0"), f"s3 key {key!r}"),
                      headers.get("ETag", "").strip('"'), algorithms)

    def _checksum_digest(self, key: str) -> Digest | None:
        """The cheapest full-object checksum (`_CHECKSUMS`), from HEAD with checksum mode on;
        None when HEAD finds no object (deleted since the listing, or a key a URL cannot
        address, such as "m/../x": the ETag stands in, the engine judges the path)."""
        try:
            resp = self._send("HEAD", key, f"stat s3://{self._bucket}/{key}",
                              extra={"x-amz-checksum-mode": "ENABLED"})
        except errors.SourceNotFoundError:
            return None
        return _full_object_checksum(resp.headers)

    def _part_size(self, entry: _Entry) -> int | None:
        """The part size of a multipart upload, from HEAD ?partNumber=1; None when the parts
        cannot all have that size (then the ETag cannot be recomputed and stays unchecked)."""
        parts = _multipart_count(entry.etag)
        if parts is None:
            return None
        resp = self._send("HEAD", entry.key, f"stat s3://{self._bucket}/{entry.key} part 1",
                          query="partNumber=1")
        length = resp.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) <= 0:
            return None
        part_size = int(length)
        # Uniform parts: all but the last are part_size, so the count follows from the size.
        if -(-entry.size // part_size) != parts:
            return None
        return part_size

    @staticmethod
    def _etag_digest(etag: str, part_size: int | None = None) -> Digest | None:
        if not etag:
            return None
        if "-" in etag:
            return Digest("s3-etag", etag, part_size=part_size)
        if re.fullmatch(r"[0-9a-fA-F]{32}", etag):
            return Digest("md5", etag.lower())
        return None

    def list_files(self) -> Listing:
        chosen = prefix_or_object(self._prefix, self._list_keys, lambda e: e.key, self._head,
                                  f"no objects under {self.uri}")

        supported = {name.upper() for name in _CHECKSUMS}
        wanted = [e.key for _, e in chosen if supported & set(e.checksum_algorithms)]
        checksums: dict[str, Digest | None] = {}
        part_sizes: dict[str, int | None] = {}
        if wanted:
            with concurrent.futures.ThreadPoolExecutor(min(_HEAD_WORKERS, len(wanted))) as pool:
                checksums = dict(zip(wanted, pool.map(self._checksum_digest, wanted), strict=True))
        # The part size makes a multipart ETag checkable: the digest of a file without a
        # checksum, and the anchor of one with a CRC (what peers' bytes are checked against).
        multipart = [e for _, e in chosen
                     if (checksums.get(e.key) is None or checksums[e.key].algorithm != "sha256")  # type: ignore[union-attr]
                     and _multipart_count(e.etag) is not None]
        if multipart:
            with concurrent.futures.ThreadPoolExecutor(min(_HEAD_WORKERS, len(multipart))) as pool:
                part_sizes = dict(zip((e.key for e in multipart),
                                      pool.map(self._part_size, multipart), strict=True))

        files = []
        listed: dict[str, tuple[str, str]] = {}
        for path, entry in chosen:
            etag = self._etag_digest(entry.etag, part_sizes.get(entry.key))
            checksum = checksums.get(entry.key)
            anchor = etag if checksum is not None and checksum.algorithm in COMBINABLE else None
            files.append(RemoteFile(path=path, size=entry.size, digest=checksum or etag,
                                    version=entry.etag or None, anchor=anchor))
            listed[path] = (entry.key, entry.etag)
        with self._lock:
            self._listed = listed
        return Listing(files=tuple(sorted(files, key=lambda f: f.path)))

    # -- data -------------------------------------------------------------------------------

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        key, etag = self._listed.get(path, (f"{self._prefix}/{path}" if self._prefix else path, ""))
        url = self._object_url(key)
        extra = {"If-Match": f'"{etag}"'} if etag else {}
        what = f"read s3://{self._bucket}/{key}"
        # Signing covers the Range header, so sign inside stream_range's header set.
        extra["Range"] = f"bytes={offset}-{offset + length - 1}"
        headers = self._signed_headers("GET", url, extra)
        return _cloudhttp.stream_range(self._pool, url, offset, length, headers=headers,
                                       what=what, parse_error=_parse_error_xml,
                                       not_found_codes=_NOT_FOUND_CODES, auth_codes=_AUTH_CODES)

    def close(self) -> None:
        self._pool.clear()
