"""Google Cloud Storage source for `gs://bucket/prefix`, over the JSON API.

Settings:

    GOOGLE_APPLICATION_CREDENTIALS   a service-account (or authorized-user) JSON file;
                                     tokens are asked for the read-only scope
    STORAGE_EMULATOR_HOST            "http://host:port" or "host:port" of an emulator
    (neither)                        anonymous requests, for public buckets

Listing: `gs://b/m` lists the objects under `m/`; when there are none and `m` is an object,
that object is the model. Names are returned relative to the prefix exactly as stored.

Digest: the object's CRC32C (base64 big-endian in the API, 8 hex digits here). GCS gives it
for every object, and checking it costs ~0.1 CPU-s/GB against MD5's ~1.4; the MD5 (missing on
composite objects) is used only when an object has no CRC32C. Beside the CRC32C the MD5 is the
`anchor`: what bytes from peers are checked against, since a CRC can be forged. Version: the object generation;
reads send ifGenerationMatch, so an object replaced mid-download fails with IntegrityError.

The data path is urllib3 with a bearer token from google-auth, refreshed under a lock.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from localmodel import errors
from localmodel.sources import _cloudhttp
from localmodel.sources.base import (Digest, Listing, ListingLimit, RemoteFile, Settings, prefix_or_object,
                                     size_from_listing)
from localmodel.sources.uris import bucket_and_prefix

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_LIST_FIELDS = "items(name,size,crc32c,md5Hash,generation),nextPageToken"


def crc32c_hex(value_b64: str) -> str:
    """GCS's base64 big-endian CRC32C as 8 lower-case hex digits."""
    raw = base64.b64decode(value_b64)
    if len(raw) != 4:
        raise ValueError("a CRC32C is 4 bytes")
    return raw.hex()


def _parse_error_json(body: bytes) -> tuple[str, str]:
    error = json.loads(body).get("error", {})
    reasons = [e.get("reason", "") for e in error.get("errors", []) if isinstance(e, dict)]
    return (reasons[0] if reasons else str(error.get("status", ""))), str(error.get("message", ""))


class _TokenSource:
    """Bearer tokens from a google-auth credentials file, refreshed before they expire."""

    def __init__(self, path: str, tls: _cloudhttp.TLSOptions) -> None:
        import google.auth.exceptions
        import google.oauth2.credentials
        import google.oauth2.service_account

        # Only the two file types a KServe secret holds; google-auth's generic loader would
        # also run executables or fetch URLs named by an "external_account" file.
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
            kind = info.get("type") if isinstance(info, dict) else None
            loaders: dict[str, Any] = {
                "service_account":
                    google.oauth2.service_account.Credentials.from_service_account_info,
                "authorized_user":
                    google.oauth2.credentials.Credentials.from_authorized_user_info,
            }
            if kind in loaders:
                self._credentials: Any = loaders[kind](info, scopes=[READ_ONLY_SCOPE])
            else:
                raise errors.SourceAuthError(
                    f"GOOGLE_APPLICATION_CREDENTIALS: unsupported credentials type {kind!r}")
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
            # The exception text may quote the file; name only its kind.
            raise errors.SourceAuthError(
                f"cannot use GOOGLE_APPLICATION_CREDENTIALS ({type(exc).__name__})") from exc
        self._tls = tls
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        import google.auth.exceptions
        import google.auth.transport.urllib3

        with self._lock:
            if not self._credentials.valid:
                make_request: Any = google.auth.transport.urllib3.Request
                request = make_request(_cloudhttp.make_pool(self._tls))
                try:
                    self._credentials.refresh(request)
                except google.auth.exceptions.TransportError as exc:
                    raise errors.SourceUnavailableError(f"token refresh: {exc}") from exc
                except google.auth.exceptions.RefreshError as exc:
                    # The message is the token server's answer; it does not echo the key.
                    raise errors.SourceAuthError(f"token refresh refused: {exc}") from exc
            return {"Authorization": f"Bearer {self._credentials.token}"}


class GCSSource:
    """A GCS prefix or single object, read with ranged media GETs."""

    #: Objects per list page (the API maximum; tests lower it to exercise paging).
    list_page_size = 1000

    def __init__(self, uri: str, settings: Settings) -> None:
        self.uri = uri
        self._bucket, self._prefix = bucket_and_prefix(uri, "gs")
        self._limit = ListingLimit(settings, f"gs://{self._bucket}/{self._prefix}")
        emulator = settings.get("STORAGE_EMULATOR_HOST") or ""
        if emulator and "://" not in emulator:
            emulator = f"http://{emulator}"
        self._endpoint = (emulator or DEFAULT_ENDPOINT).rstrip("/")
        tls = _cloudhttp.TLSOptions()
        self._pool = _cloudhttp.make_pool(tls)
        credentials_file = settings.get("GOOGLE_APPLICATION_CREDENTIALS")
        self._tokens = _TokenSource(credentials_file, tls) if credentials_file else None
        self._lock = threading.Lock()
        #: relative path -> (object name, generation) from the last listing
        self._listed: dict[str, tuple[str, str]] = {}

    def _headers(self) -> dict[str, str]:
        return self._tokens.header() if self._tokens is not None else {}

    def _object_path(self, name: str) -> str:
        return (f"b/{urllib.parse.quote(self._bucket, safe='')}/o/"
                f"{urllib.parse.quote(name, safe='')}")

    def _get_json(self, url: str, what: str) -> Any:
        resp = _cloudhttp.request(self._pool, "GET", url, headers=self._headers(), what=what)
        if resp.status != 200:
            _cloudhttp.raise_for_failure(
                _cloudhttp.read_failure(resp, _parse_error_json, preloaded=True), what)
        try:
            return json.loads(resp.data)
        except ValueError as exc:
            raise errors.SourceUnavailableError(f"{what}: the answer is not JSON") from exc

    def _list_objects(self, prefix: str) -> list[Mapping[str, Any]]:
        items: list[Mapping[str, Any]] = []
        token = ""
        while True:
            params = {"prefix": prefix, "fields": _LIST_FIELDS,
                      "maxResults": str(self.list_page_size)}
            if token:
                params["pageToken"] = token
            url = (f"{self._endpoint}/storage/v1/b/{urllib.parse.quote(self._bucket, safe='')}"
                   f"/o?{urllib.parse.urlencode(params)}")
            page = self._get_json(url, f"list gs://{self._bucket}/{prefix}")
            items.extend(page.get("items", []))
            self._limit.check(len(items))
            token = page.get("nextPageToken", "")
            if not token:
                return items

    def _stat(self, name: str) -> Mapping[str, Any] | None:
        url = f"{self._endpoint}/storage/v1/{self._object_path(name)}"
        try:
            return self._get_json(url, f"stat gs://{self._bucket}/{name}")  # type: ignore[no-any-return]
        except errors.SourceNotFoundError:
            return None

    @staticmethod
    def _remote_file(path: str, item: Mapping[str, Any]) -> RemoteFile:
        md5 = Digest("md5", base64.b64decode(str(item["md5Hash"])).hex()) if item.get("md5Hash") else None
        crc32c = Digest("crc32c", crc32c_hex(str(item["crc32c"]))) if item.get("crc32c") else None
        generation = item.get("generation")
        return RemoteFile(path=path, size=size_from_listing(item.get("size", 0), f"gs object {path!r}"),
                          digest=crc32c or md5, anchor=md5 if crc32c else None,
                          version=str(generation) if generation else None)

    def list_files(self) -> Listing:
        chosen = prefix_or_object(self._prefix, self._list_objects, lambda item: str(item["name"]), self._stat,
                                  f"no objects under {self.uri}")
        files = [self._remote_file(path, item) for path, item in chosen]
        with self._lock:
            self._listed = {path: (str(item["name"]), str(item.get("generation") or ""))
                            for path, item in chosen}
        return Listing(files=tuple(sorted(files, key=lambda f: f.path)))

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        name, generation = self._listed.get(
            path, (f"{self._prefix}/{path}" if self._prefix else path, ""))
        query = {"alt": "media"}
        if generation:
            query["ifGenerationMatch"] = generation
        url = (f"{self._endpoint}/download/storage/v1/{self._object_path(name)}"
               f"?{urllib.parse.urlencode(query)}")
        return _cloudhttp.stream_range(self._pool, url, offset, length, headers=self._headers(),
                                       what=f"read gs://{self._bucket}/{name}",
                                       parse_error=_parse_error_json)

    def close(self) -> None:
        self._pool.clear()
