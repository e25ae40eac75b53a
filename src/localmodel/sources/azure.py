"""Azure Blob source for `https://ACCOUNT.blob.core.windows.net/container/prefix`.

Settings, first match wins:

    AZURE_CLIENT_ID + AZURE_TENANT_ID + AZURE_CLIENT_SECRET   a service principal (azure-identity)
    AZURE_STORAGE_ACCESS_KEY                                  the account key (Shared Key)
    AZURE_STORAGE_CONNECTION_STRING                           AccountKey or SharedAccessSignature
    (none)                                                    anonymous, for public containers

The endpoint is the account's `https://ACCOUNT.blob.core.windows.net`, or an override for an
emulator or another cloud: AZURE_STORAGE_BLOB_ENDPOINT, or BlobEndpoint in the connection string
(`http://127.0.0.1:10000/devstoreaccount1` for azurite). `AzureBlobSource.matches` tells the
registry which https:// URIs are Azure Blob URIs.

Listing: the blobs under `prefix/`, or the blob `prefix` itself. Digest: Content-MD5 when the
uploader set it. Version: the ETag; reads send If-Match, so a blob replaced mid-download fails
with IntegrityError.

Requests are plain REST over urllib3 with Shared Key signatures computed here (an HMAC per
request), or a bearer token: the SDK's download path fetches in 4 MiB sub-requests through
requests and costs several times the CPU per GB (bench/azure_clients.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate

import urllib3

from localmodel import errors
from localmodel.sources import _cloudhttp
from localmodel.sources.base import (Digest, Listing, ListingLimit, RemoteFile, Settings, prefix_or_object,
                                     size_from_listing)
from localmodel.sources.uris import redact_uri

API_VERSION = "2021-12-02"
STORAGE_SCOPE = "https://storage.azure.com/.default"
_AZURE_HOST_SUFFIX = ".blob.core.windows.net"
_NOT_FOUND_CODES = frozenset({"ContainerNotFound", "BlobNotFound", "ResourceNotFound"})
_AUTH_CODES = frozenset({"AuthenticationFailed", "AuthorizationFailure",
                         "AuthorizationPermissionMismatch", "InvalidAuthenticationInfo",
                         "NoAuthenticationInformation", "PublicAccessNotPermitted"})
#: Refresh a bearer token this long before it expires.
_TOKEN_MARGIN_S = 300


def parse_connection_string(value: str) -> dict[str, str]:
    """`A=1;B=x==;` -> {"A": "1", "B": "x=="} (values may contain '=')."""
    parts: dict[str, str] = {}
    for item in value.split(";"):
        if "=" in item:
            key, _, val = item.partition("=")
            parts[key.strip()] = val.strip()
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        parts.setdefault("AccountName", "devstoreaccount1")
        parts.setdefault("BlobEndpoint", "http://127.0.0.1:10000/devstoreaccount1")
    return parts


def _endpoint_override(settings: Settings) -> str | None:
    explicit = settings.get("AZURE_STORAGE_BLOB_ENDPOINT")
    if explicit:
        return explicit.rstrip("/")
    conn = settings.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        endpoint = parse_connection_string(conn).get("BlobEndpoint")
        if endpoint:
            return endpoint.rstrip("/")
    return None


@dataclass(frozen=True)
class BlobLocation:
    """Where a model lives: the account, its blob endpoint, the container and the prefix."""

    account: str
    endpoint: str
    container: str
    prefix: str


def parse_blob_uri(uri: str, settings: Settings) -> BlobLocation:
    """Split an Azure Blob URI (public cloud, or under the configured endpoint override)."""
    if "?" in uri or "#" in uri:
        raise errors.InvalidURIError("an Azure Blob URI must not carry a query (use settings "
                                     "for SAS tokens)")
    override = _endpoint_override(settings)
    if override and uri.startswith(override + "/"):
        rest = uri[len(override) + 1:]
        endpoint = override
        account = (parse_connection_string(settings.get("AZURE_STORAGE_CONNECTION_STRING", ""))
                   .get("AccountName") or settings.get("AZURE_STORAGE_ACCOUNT_NAME") or "")
        if not account:
            parsed_override = urllib.parse.urlsplit(override)
            path_account = parsed_override.path.strip("/").split("/")[-1]
            account = path_account or (parsed_override.hostname or "").split(".")[0]
    else:
        parsed = urllib.parse.urlsplit(uri)
        host = parsed.hostname or ""
        if parsed.scheme != "https" or not host.endswith(_AZURE_HOST_SUFFIX):
            raise errors.InvalidURIError(f"not an Azure Blob URI: {uri!r}")
        if parsed.username or parsed.password:
            raise errors.InvalidURIError("credentials do not belong in an Azure Blob URI")
        account = host[: -len(_AZURE_HOST_SUFFIX)]
        endpoint = f"https://{parsed.netloc}"
        rest = parsed.path.lstrip("/")
    container, _, prefix = rest.partition("/")
    if not container or not account:
        raise errors.InvalidURIError(f"Azure Blob URI without account or container: {uri!r}")
    return BlobLocation(account=account, endpoint=endpoint, container=container,
                        prefix=urllib.parse.unquote(prefix).strip("/"))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_error_xml(body: bytes) -> tuple[str, str]:
    root = ET.fromstring(body)
    fields = {_local(child.tag): (child.text or "") for child in root}
    return fields.get("Code", ""), fields.get("Message", "").split("\n", 1)[0]


class _SharedKey:
    """Shared Key request signatures (the account key never leaves this object)."""

    def __init__(self, account: str, key_b64: str) -> None:
        self._account = account
        try:
            self._key = base64.b64decode(key_b64, validate=True)
        except ValueError as exc:
            raise errors.SourceAuthError("the Azure storage account key is not base64") from exc

    def sign(self, method: str, url: str, headers: Mapping[str, str]) -> str:
        lower = {k.lower(): v for k, v in headers.items()}
        standard = ["content-encoding", "content-language", "content-length", "content-md5",
                    "content-type", "date", "if-modified-since", "if-match", "if-none-match",
                    "if-unmodified-since", "range"]
        lines = [method] + [lower.get(name, "") for name in standard]
        if lines[3] == "0":
            lines[3] = ""  # Content-Length 0 is signed as empty since 2015-02-21
        canonical_headers = "".join(f"{k}:{lower[k].strip()}\n"
                                    for k in sorted(lower) if k.startswith("x-ms-"))
        parsed = urllib.parse.urlsplit(url)
        resource = f"/{self._account}{parsed.path or '/'}"
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        for name in sorted(query, key=str.lower):
            resource += f"\n{name.lower()}:{','.join(sorted(query[name]))}"
        to_sign = "\n".join(lines) + "\n" + canonical_headers + resource
        mac = hmac.new(self._key, to_sign.encode("utf-8"), hashlib.sha256).digest()
        return f"SharedKey {self._account}:{base64.b64encode(mac).decode()}"


class _BearerToken:
    """Tokens for a service principal from azure-identity, cached until shortly before expiry."""

    def __init__(self, tenant: str, client_id: str, secret: str) -> None:
        from azure.identity import ClientSecretCredential

        self._credential = ClientSecretCredential(tenant, client_id, secret)
        self._lock = threading.Lock()
        self._token = ""
        self._expires_on = 0.0

    def header(self) -> str:
        from azure.core.exceptions import ClientAuthenticationError

        with self._lock:
            if time.time() > self._expires_on - _TOKEN_MARGIN_S:
                try:
                    token = self._credential.get_token(STORAGE_SCOPE)
                except ClientAuthenticationError as exc:
                    raise errors.SourceAuthError(
                        f"Azure AD refused the service principal: {exc.message}") from exc
                self._token, self._expires_on = token.token, float(token.expires_on)
            return f"Bearer {self._token}"


class AzureBlobSource:
    """A container prefix or single blob, read with signed ranged GETs."""

    #: Blobs per List Blobs page (the service maximum; tests lower it to exercise paging).
    list_page_size = 5000

    @classmethod
    def matches(cls, uri: str, settings: Settings) -> bool:
        """True for URIs this source serves: KServe's `https://(.+?).blob.core.windows.net/(.+)`,
        or anything below the endpoint override (emulators, private endpoints). The registry
        asks this for every http(s) URI."""
        override = _endpoint_override(settings)
        if override and uri.startswith(override + "/"):
            return True
        try:
            parsed = urllib.parse.urlsplit(uri)
            host = parsed.hostname or ""
        except ValueError:
            return False
        return parsed.scheme == "https" and host.endswith(_AZURE_HOST_SUFFIX)

    def __init__(self, uri: str, settings: Settings) -> None:
        self.uri = uri
        self._location = parse_blob_uri(uri, settings)
        self._limit = ListingLimit(settings, redact_uri(uri))
        self._pool = _cloudhttp.make_pool(_cloudhttp.TLSOptions())
        self._shared_key: _SharedKey | None = None
        self._bearer: _BearerToken | None = None
        self._sas = ""
        conn = parse_connection_string(settings.get("AZURE_STORAGE_CONNECTION_STRING", ""))
        client = (settings.get("AZURE_CLIENT_ID"), settings.get("AZURE_TENANT_ID"),
                  settings.get("AZURE_CLIENT_SECRET"))
        if all(client):
            self._bearer = _BearerToken(client[1], client[0], client[2])  # type: ignore[arg-type]
        elif settings.get("AZURE_STORAGE_ACCESS_KEY"):
            self._shared_key = _SharedKey(self._location.account,
                                          settings["AZURE_STORAGE_ACCESS_KEY"])
        elif conn.get("AccountKey"):
            self._shared_key = _SharedKey(conn.get("AccountName") or self._location.account,
                                          conn["AccountKey"])
        elif conn.get("SharedAccessSignature"):
            self._sas = conn["SharedAccessSignature"].lstrip("?")
        self._lock = threading.Lock()
        #: relative path -> (blob name, etag) from the last listing
        self._listed: dict[str, tuple[str, str]] = {}

    # -- requests ---------------------------------------------------------------------------

    def _url(self, blob: str | None, query: Mapping[str, str] | None = None) -> str:
        loc = self._location
        path = f"{loc.endpoint}/{urllib.parse.quote(loc.container, safe='')}"
        if blob is not None:
            path += "/" + urllib.parse.quote(blob, safe="/~")
        params = urllib.parse.urlencode(sorted((query or {}).items()), quote_via=urllib.parse.quote)
        if self._sas:
            params = f"{params}&{self._sas}" if params else self._sas
        return f"{path}?{params}" if params else path

    def _headers(self, method: str, url: str,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"x-ms-version": API_VERSION, "x-ms-date": formatdate(usegmt=True)}
        headers.update(extra or {})
        if self._shared_key is not None:
            headers["Authorization"] = self._shared_key.sign(method, url, headers)
        elif self._bearer is not None:
            headers["Authorization"] = self._bearer.header()
        return headers

    def _send(self, method: str, url: str, what: str,
              extra: Mapping[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        resp = _cloudhttp.request(self._pool, method, url,
                                  headers=self._headers(method, url, extra), what=what)
        if resp.status >= 300:
            failure = _cloudhttp.read_failure(resp, _parse_error_xml, preloaded=True,
                                              code_header="x-ms-error-code")
            _cloudhttp.raise_for_failure(failure, what, not_found_codes=_NOT_FOUND_CODES,
                                         auth_codes=_AUTH_CODES)
        return resp

    # -- listing ----------------------------------------------------------------------------

    def _list_blobs(self, prefix: str) -> list[tuple[str, int, str, str]]:
        """(name, size, etag, content-md5 base64) of every blob under `prefix`."""
        blobs: list[tuple[str, int, str, str]] = []
        marker = ""
        container = self._location.container
        while True:
            query = {"restype": "container", "comp": "list", "prefix": prefix,
                     "maxresults": str(self.list_page_size)}
            if marker:
                query["marker"] = marker
            url = self._url(None, query)
            root = ET.fromstring(self._send("GET", url, f"list {container}/{prefix}").data)
            marker = ""
            for child in root:
                tag = _local(child.tag)
                if tag == "NextMarker":
                    marker = child.text or ""
                elif tag == "Blobs":
                    for blob in child:
                        if _local(blob.tag) == "Blob":
                            blobs.append(self._parse_blob(blob))
            self._limit.check(len(blobs))
            if not marker:
                return [b for b in blobs if b[0]]

    @staticmethod
    def _parse_blob(blob: ET.Element) -> tuple[str, int, str, str]:
        name, size, etag, md5 = "", 0, "", ""
        for field in blob:
            tag = _local(field.tag)
            if tag == "Name":
                name = field.text or ""
                if field.get("Encoded", "").lower() == "true":
                    name = urllib.parse.unquote(name)
            elif tag == "Properties":
                props = {_local(p.tag): (p.text or "") for p in field}
                if props.get("ResourceType") == "directory":  # HNS accounts list folders
                    return "", 0, "", ""
                size = size_from_listing(props.get("Content-Length") or 0, f"blob {name!r}")
                etag = props.get("Etag", "").strip('"')
                md5 = props.get("Content-MD5", "")
        return name, size, etag, md5

    def _head(self, blob: str) -> tuple[str, int, str, str] | None:
        try:
            resp = self._send("HEAD", self._url(blob), f"stat {self._location.container}/{blob}")
        except errors.SourceNotFoundError:
            return None
        h = resp.headers
        return (blob, size_from_listing(h.get("Content-Length", "0"), f"blob {blob!r}"), h.get("ETag", "").strip('"'),
                h.get("Content-MD5", ""))

    def list_files(self) -> Listing:
        chosen = prefix_or_object(self._location.prefix, self._list_blobs, lambda blob: blob[0], self._head,
                                  f"no blobs under {self.uri}")
        files = []
        for path, (_, size, etag, md5) in chosen:
            digest = Digest("md5", base64.b64decode(md5).hex()) if md5 else None
            files.append(RemoteFile(path=path, size=size, digest=digest, version=etag or None))
        with self._lock:
            self._listed = {path: (blob[0], blob[2]) for path, blob in chosen}
        return Listing(files=tuple(sorted(files, key=lambda f: f.path)))

    # -- data -------------------------------------------------------------------------------

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        prefix = self._location.prefix
        blob, etag = self._listed.get(path, (f"{prefix}/{path}" if prefix else path, ""))
        url = self._url(blob)
        # x-ms-range, not Range: the request is then the one Azure's SDK sends, and signed the same
        # (tests/sources/test_azure_signing.py compares the two signers on it).
        extra = {"x-ms-range": f"bytes={offset}-{offset + length - 1}"}
        if etag:
            extra["If-Match"] = f'"{etag}"'
        return _cloudhttp.stream_range(
            self._pool, url, offset, length, headers=self._headers("GET", url, extra),
            what=f"read {self._location.container}/{blob}", parse_error=_parse_error_xml,
            code_header="x-ms-error-code", not_found_codes=_NOT_FOUND_CODES,
            auth_codes=_AUTH_CODES, range_header="x-ms-range")

    def close(self) -> None:
        self._pool.clear()
