"""Plain http(s) URLs: one file per URI, as in KServe's storage initializer.

The file is named after the last path segment. Archives (`.zip`, `.tar`, `.tar.gz`, `.tgz`...)
are unpacked by the engine after download, as KServe does.

Settings (all optional):
    <host>-headers                JSON object of extra request headers for that host, as KServe
                                  reads them (e.g. `models.example.com-headers`)
    LOCALMODEL_HTTP_CA_BUNDLE     PEM file of trusted CAs; REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and
                                  SSL_CERT_FILE are honoured too, in that order
    LOCALMODEL_HTTP_VERIFY        "false" disables TLS verification (for tests and lab setups)
    LOCALMODEL_HTTP_CONNECT_TIMEOUT, LOCALMODEL_HTTP_READ_TIMEOUT   seconds (10 and 60)
    HTTP_PROXY, HTTPS_PROXY, NO_PROXY (or lower case)   proxies, as curl and requests read them

The data path is urllib3 with one pool shared by the engine's threads; each body is read with
`readinto` into a reused buffer (measured here: httpx is ~3x slower, and `read()` costs an extra
copy). Ranged GETs carry `If-Match: <ETag>` when the ETag is strong, so a file replaced on the
server mid-download fails with IntegrityError instead of mixing two versions.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import http.client
import json
import posixpath
import re
import time
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ResponseError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as TimeoutErrorBase

from localmodel.errors import (
    IntegrityError,
    InvalidURIError,
    LocalModelError,
    PermanentError,
    SourceAuthError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from localmodel.sources.base import Digest, Listing, RemoteFile, Settings
from localmodel.sources.uris import redact_uri

_READ_SIZE = 512 * 1024
_CA_SETTINGS = ("LOCALMODEL_HTTP_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def request_headers(host: str, settings: Settings) -> dict[str, str]:
    """Extra headers for `host` from the KServe-style `<host>-headers` setting."""
    raw = settings.get(f"{host}-headers")
    if not raw:
        return {}
    try:
        headers = json.loads(raw)
    except ValueError:
        raise PermanentError(f"setting {host}-headers is not valid JSON") from None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise PermanentError(f"setting {host}-headers must be a JSON object of strings")
    return headers


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def provider_digest(headers: Mapping[str, str]) -> Digest | None:
    """A whole-file checksum from `Repr-Digest` / `Digest` (sha-256) or `Content-MD5`."""
    for name in ("Repr-Digest", "Digest"):
        value = headers.get(name)
        if not value:
            continue
        for item in value.split(","):
            algorithm, _, encoded = item.strip().partition("=")
            if algorithm.lower() in ("sha-256", "sha256"):
                try:
                    raw = base64.b64decode(encoded.strip().strip(":"), validate=True)
                except (binascii.Error, ValueError):
                    continue
                if len(raw) == 32:
                    return Digest("sha256", raw.hex())
    md5 = headers.get("Content-MD5")
    if md5:
        try:
            raw = base64.b64decode(md5.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) == 16:
            return Digest("md5", raw.hex())
    return None


def proxy_for(scheme: str, host: str, port: int | None, settings: Settings) -> str | None:
    """The proxy URL for a request, from HTTP(S)_PROXY / NO_PROXY settings (either case),
    the way curl and requests read them."""
    def setting(name: str) -> str:
        return settings.get(name) or settings.get(name.lower()) or ""

    proxy = setting(f"{scheme.upper()}_PROXY")
    if not proxy:
        return None
    target = f"{host}:{port}" if port else host
    no_proxy = setting("NO_PROXY")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if no_proxy and bypass(target, {"no": no_proxy}):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _is_strong_etag(etag: str | None) -> bool:
    return bool(etag) and not etag.startswith("W/") and etag.startswith('"')  # type: ignore[union-attr]


def _float_setting(settings: Settings, name: str, default: float) -> float:
    try:
        return float(settings.get(name) or default)
    except ValueError:
        raise PermanentError(f"setting {name} must be a number of seconds") from None


class HTTPSource:
    """One file served over HTTP or HTTPS."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.uri = redact_uri(uri)
        self._url = uri
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURIError(f"not an http(s) URL with a host: {self.uri!r}")
        if "@" in parts.netloc:
            raise InvalidURIError(f"URL {self.uri!r} carries credentials; use <host>-headers")
        self.filename = unquote(posixpath.basename(parts.path))
        if not self.filename:
            raise InvalidURIError(f"no file name in URL {self.uri!r}")
        self._headers = {"Accept-Encoding": "identity",
                         **request_headers(parts.hostname, settings)}
        pool_options: dict[str, Any] = dict(
            num_pools=4, maxsize=64, block=False,
            timeout=urllib3.Timeout(
                connect=_float_setting(settings, "LOCALMODEL_HTTP_CONNECT_TIMEOUT", 10.0),
                read=_float_setting(settings, "LOCALMODEL_HTTP_READ_TIMEOUT", 60.0),
            ),
            # Only redirects here: the engine owns retries and their backoff.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=10),
            **self._tls_options(settings),
        )
        proxy = proxy_for(parts.scheme, parts.hostname, parts.port, settings)
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **pool_options) if proxy
            else urllib3.PoolManager(**pool_options))
        self._file: RemoteFile | None = None

    @staticmethod
    def _tls_options(settings: Settings) -> dict[str, Any]:
        if settings.get("LOCALMODEL_HTTP_VERIFY", "").lower() in ("false", "0", "no"):
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            return {"cert_reqs": "CERT_NONE"}
        for name in _CA_SETTINGS:
            if settings.get(name):
                return {"cert_reqs": "CERT_REQUIRED", "ca_certs": settings[name]}
        return {"cert_reqs": "CERT_REQUIRED"}

    # -- requests --------------------------------------------------------------------------

    def _request(self, method: str, headers: Mapping[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            return self._pool.request(method, self._url, headers={**self._headers, **headers},
                                      preload_content=False, decode_content=False)
        except (Urllib3Error, OSError) as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> LocalModelError:
        reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason else exc
        if isinstance(reason, SSLError):
            return PermanentError(f"TLS failure talking to {self.uri}: {reason}"[:400])
        if isinstance(reason, ResponseError):  # e.g. too many redirects
            return PermanentError(f"{self.uri}: {reason}"[:400])
        if isinstance(reason, NewConnectionError):  # before timeouts: it subclasses one
            return SourceUnavailableError(f"{self.uri}: cannot connect"
                                          f" ({reason.__cause__ or reason})"[:400])
        if isinstance(reason, (TimeoutError, TimeoutErrorBase)):
            return SourceUnavailableError(f"{self.uri}: timed out")
        return SourceUnavailableError(f"{self.uri}: {type(reason).__name__}: {reason}"[:400])

    def _raise_for_status(self, response: urllib3.BaseHTTPResponse) -> None:
        status = response.status
        if status < 400:
            return
        response.drain_conn()
        response.release_conn()
        message = f"{self.uri} answered HTTP {status}"
        if status in (401, 403):
            raise SourceAuthError(message)
        if status in (404, 410):
            raise SourceNotFoundError(message)
        if status in (412, 416):
            raise IntegrityError(f"{message}: the file changed on the server")
        if status in (408, 425, 429) or status >= 500:
            raise SourceUnavailableError(
                message, retry_after=parse_retry_after(response.headers.get("Retry-After")))
        raise PermanentError(message)

    # -- Source protocol -------------------------------------------------------------------

    def list_files(self) -> Listing:
        response = self._request("HEAD", {})
        if response.status in (405, 501):
            response.release_conn()
            return self._list_with_get()
        self._raise_for_status(response)
        response.release_conn()
        headers = response.headers
        length = headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._list_with_get()
        self._file = RemoteFile(
            path=self.filename,
            size=int(length),
            digest=provider_digest(headers),
            version=headers.get("ETag"),
            seekable=headers.get("Accept-Ranges", "").lower() == "bytes",
        )
        return Listing(files=(self._file,))

    def _list_with_get(self) -> Listing:
        """For servers without a usable HEAD: ask for the first byte to learn the size."""
        response = self._request("GET", {"Range": "bytes=0-0"})
        self._raise_for_status(response)
        headers = response.headers
        match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
        response.drain_conn()
        response.release_conn()
        if response.status == 206 and match and match.group(3) != "*":
            size, seekable = int(match.group(3)), True
        elif response.status == 200 and (headers.get("Content-Length") or "").isdigit():
            size, seekable = int(headers["Content-Length"]), False
        else:
            raise PermanentError(f"{self.uri} does not say how large the file is")
        self._file = RemoteFile(path=self.filename, size=size, digest=provider_digest(headers),
                                version=headers.get("ETag"), seekable=seekable)
        return Listing(files=(self._file,))

    def read_range(self, path: str, offset: int, length: int) -> Iterator[memoryview]:
        listed = self._file
        if listed is None or path != listed.path:
            raise SourceNotFoundError(f"{path!r} was not listed by this source")
        whole = offset == 0 and length == listed.size
        headers: dict[str, str] = {}
        if not whole:
            headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        if _is_strong_etag(listed.version):
            headers["If-Match"] = listed.version  # type: ignore[assignment]
        response = self._request("GET", headers)
        self._raise_for_status(response)
        skip = 0
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset or int(match.group(2)) != offset + length - 1:
                response.close()
                raise IntegrityError(f"{self.uri} answered a different byte range than asked")
        elif response.status == 200:
            if listed.version and response.headers.get("ETag") not in (None, listed.version):
                response.close()
                raise IntegrityError(f"{self.uri} changed on the server (ETag differs)")
            # The server ignored Range: read from the start and drop what we already have.
            skip = offset
        else:
            response.close()
            raise PermanentError(f"{self.uri} answered HTTP {response.status} to a GET")
        # The connection can go back to the pool only if we read its body to the end.
        reusable = response.status == 206 or whole
        yield from self._body(response, skip, length, reusable)

    def _body(self, response: urllib3.BaseHTTPResponse, skip: int, length: int,
              reusable: bool) -> Iterator[memoryview]:
        raw = response._fp  # type: ignore[attr-defined]  # http.client response: readinto, no copy
        buffer = memoryview(bytearray(min(_READ_SIZE, max(length, skip, 1))))
        received = 0
        complete = False
        try:
            while skip:
                count = raw.readinto(buffer[: min(len(buffer), skip)])
                if not count:
                    raise SourceUnavailableError(f"{self.uri}: connection closed early")
                skip -= count
            while received < length:
                count = raw.readinto(buffer[: min(len(buffer), length - received)])
                if not count:
                    raise SourceUnavailableError(
                        f"{self.uri}: connection closed after {received} of {length} bytes")
                received += count
                yield buffer[:count]
            complete = True
        except LocalModelError:
            raise
        except (Urllib3Error, OSError) as exc:
            raise self._translate(exc) from exc
        except (http.client.HTTPException, ValueError) as exc:
            raise SourceUnavailableError(f"{self.uri}: {type(exc).__name__} while reading") from exc
        finally:
            if complete and reusable:
                response.release_conn()
            else:
                response.close()

    def close(self) -> None:
        self._pool.clear()
