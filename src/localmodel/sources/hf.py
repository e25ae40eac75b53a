"""Hugging Face Hub source for `hf://owner/model[:revision]`.

Settings: HF_TOKEN (sent as a bearer token to the Hub, never to the CDN it redirects to) and
HF_ENDPOINT (default https://huggingface.co).

The revision (default "main") is resolved to a commit sha once, when the model is listed, and
every read names that sha: a branch that moves mid-download cannot mix two commits.

    GET {endpoint}/api/models/{repo}/revision/{rev}            -> sha
    GET {endpoint}/api/models/{repo}/tree/{sha}?recursive=true -> files (paginated by Link)
    GET {endpoint}/{repo}/resolve/{sha}/{path} + Range         -> bytes (302 to the CDN)

LFS files carry their sha256 as digest; regular (git) files carry their git blob id as version
only. The listing says {"archive": "none"}: a repo of one .zip is downloaded, not unpacked. The data path is urllib3 (httpx measured 3x slower here); huggingface_hub is not used, so
it cannot read HF_* variables from the process environment behind our back.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from localmodel import errors
from localmodel.sources import _cloudhttp
from localmodel.sources.base import Digest, Listing, ListingLimit, RemoteFile, Settings, size_from_listing

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
_NOT_FOUND_CODES = frozenset({"RepoNotFound", "RevisionNotFound", "EntryNotFound"})
_AUTH_CODES = frozenset({"GatedRepo", "DisabledRepo"})


def parse_hf_uri(uri: str) -> tuple[str, str]:
    """`hf://owner/model:rev` -> ("owner/model", "rev"); the revision defaults to "main"."""
    if not uri.startswith("hf://"):
        raise errors.InvalidURIError(f"not an hf:// URI: {uri!r}")
    rest = uri[len("hf://"):].strip("/")
    repo, sep, revision = rest.partition(":")
    if sep and not revision:
        raise errors.InvalidURIError(f"empty revision in {uri!r}")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise errors.InvalidURIError(f"hf:// URI must name owner/model: {uri!r}")
    if "@" in repo or "?" in rest or "#" in rest:
        raise errors.InvalidURIError(f"unexpected characters in {uri!r}")
    return repo, revision or DEFAULT_REVISION


def _next_link(header: str | None) -> str | None:
    """The rel="next" URL of an RFC 8288 Link header."""
    for part in (header or "").split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return url.strip().strip("<>")
    return None


_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _tree_file(entry: object, what: str) -> RemoteFile | None:
    """One entry of a tree listing as a RemoteFile (None for folders). The Hub's JSON is input
    from outside: anything but the documented shape is an InvalidListingError, not a crash."""
    shown = repr(entry)[:120]
    if not isinstance(entry, dict):
        raise errors.InvalidListingError(f"{what}: tree entry {shown} is not an object")
    if entry.get("type") != "file":
        return None
    path, oid, lfs = entry.get("path"), entry.get("oid"), entry.get("lfs")
    if not isinstance(path, str):
        raise errors.InvalidListingError(f"{what}: tree entry {shown} has no path")
    if oid is not None and not isinstance(oid, str):
        raise errors.InvalidListingError(f"{what}: tree entry {shown} has a malformed oid")
    digest = None
    if lfs is not None:
        lfs_oid = lfs.get("oid") if isinstance(lfs, dict) else None
        if not isinstance(lfs_oid, str) or not _SHA256.match(lfs_oid):
            raise errors.InvalidListingError(f"{what}: tree entry {shown} has a malformed LFS sha256")
        digest = Digest("sha256", lfs_oid.lower())
    size = size_from_listing(entry.get("size", 0), f"{what}: {path[:80]!r}")
    return RemoteFile(path=path, size=size, digest=digest, version=oid)


class HFSource:
    """One model repository at one commit."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.uri = uri
        self.repo, self.revision = parse_hf_uri(uri)
        self._endpoint = (settings.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        token = settings.get("HF_TOKEN") or settings.get("HUGGING_FACE_HUB_TOKEN")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._headers["User-Agent"] = "localmodel"
        self._pool = _cloudhttp.make_pool(_cloudhttp.TLSOptions(), follow_redirects=True)
        self._lock = threading.Lock()
        self._sha: str | None = None
        self._limit = ListingLimit(settings, f"hf://{self.repo}")

    def _get_json(self, url: str, what: str) -> tuple[Any, str | None]:
        resp = _cloudhttp.request(self._pool, "GET", url, headers=self._headers, what=what)
        if resp.status != 200:
            failure = _cloudhttp.read_failure(resp, preloaded=True, code_header="X-Error-Code")
            if failure.status == 401 and failure.code == "RepoNotFound":
                # The Hub hides private repos from callers without access behind this answer.
                raise errors.SourceNotFoundError(
                    f"{what}: repository not found (or private, and HF_TOKEN is missing or has "
                    "no access)")
            _cloudhttp.raise_for_failure(failure, what, not_found_codes=_NOT_FOUND_CODES,
                                         auth_codes=_AUTH_CODES)
        try:
            return json.loads(resp.data), resp.headers.get("Link")
        except ValueError as exc:
            raise errors.SourceUnavailableError(f"{what}: the answer is not JSON") from exc

    def resolve_revision(self) -> str:
        """The commit sha of the requested revision, asked once per source."""
        with self._lock:
            if self._sha is not None:
                return self._sha
        repo_q = urllib.parse.quote(self.repo, safe="/")
        rev_q = urllib.parse.quote(self.revision, safe="")
        info, _ = self._get_json(f"{self._endpoint}/api/models/{repo_q}/revision/{rev_q}",
                                 f"resolve {self.repo}@{self.revision}")
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not sha:
            raise errors.SourceUnavailableError(f"{self.repo}@{self.revision}: no commit sha")
        with self._lock:
            if self._sha is None:
                self._sha = sha
            return self._sha

    def list_files(self) -> Listing:
        sha = self.resolve_revision()
        repo_q = urllib.parse.quote(self.repo, safe="/")
        url: str | None = (f"{self._endpoint}/api/models/{repo_q}/tree/{sha}"
                           "?recursive=true&expand=false")
        files: list[RemoteFile] = []
        while url:
            page, link = self._get_json(url, f"list {self.repo}@{sha}")
            if not isinstance(page, list):
                raise errors.SourceUnavailableError(f"list {self.repo}@{sha}: not a list")
            for entry in page:
                remote = _tree_file(entry, f"list {self.repo}@{sha}")
                if remote is not None:
                    files.append(remote)
            self._limit.check(len(files))
            nxt = _next_link(link)
            url = urllib.parse.urljoin(url, nxt) if nxt else None
        # A repository is a set of files, never an archive to unpack: a repo holding one
        # .zip must arrive as that .zip (KServe's hf:// downloader does not unpack either).
        return Listing(files=tuple(sorted(files, key=lambda f: f.path)), revision=sha,
                       details={"repo": self.repo, "requested_revision": self.revision,
                                "archive": "none"})

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        sha = self.resolve_revision()
        url = (f"{self._endpoint}/{urllib.parse.quote(self.repo, safe='/')}/resolve/{sha}/"
               f"{urllib.parse.quote(path, safe='/')}")
        return _cloudhttp.stream_range(
            self._pool, url, offset, length, headers=self._headers,
            what=f"read {self.repo}@{sha[:12]}/{path}", code_header="X-Error-Code",
            not_found_codes=_NOT_FOUND_CODES, auth_codes=_AUTH_CODES)

    def close(self) -> None:
        self._pool.clear()
