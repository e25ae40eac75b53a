"""A local Hugging Face Hub endpoint (aiohttp), owned by the project, for sources and peers.

It speaks the part of the Hub protocol that downloaders use, closely enough for
`huggingface_hub.snapshot_download(endpoint=...)`:

    GET  /api/models/{owner}/{name}/revision/{rev}          sha + siblings
    GET  /api/models/{owner}/{name}/tree/{rev}?recursive=1  files (paginated, Link: rel="next")
    HEAD|GET /{owner}/{name}/resolve/{rev}/{path}           X-Repo-Commit, ETag, Range
    GET  /_lfs/{sha256}                                     LFS bytes ("CDN") after a 302,
                                                            under host "localhost" (see below)

Like the real Hub, LFS files answer `resolve` with a 302 to another host (the CDN; here the
same server as http://localhost:PORT) carrying X-Linked-Etag (the sha256) and X-Linked-Size,
and an unknown repo answers 401 (no token) or 404 with X-Error-Code.

Fault switches (reset around every test by the `hf_hub` fixture): answer 429 (or any status)
with Retry-After, 403 (gated), require a token, corrupt bytes of a file, cut responses short and
drop the connection, serve LFS files without a redirect, trickle each response slowly
(`faults.throttle`); `rate_limit` caps the bytes per second of all file bodies together, like a
WAN origin (benchmarks, downloads that must last). `bytes_served` counts the body bytes of file
responses and `served(repo, path)` lists the byte ranges sent per file; `tokens_sent_to_cdn`
counts CDN requests that carried a token (a leak).

`declare(repo, {path: size})` publishes a commit whose tree lists files that have no content
(hostile listings: paths that must never be written, sizes far beyond any disk).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web

from localmodel.fetch.ratelimit import TokenBucket

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack",
                ".ckpt", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
_PIECE = 64 * 1024
_THROTTLE_SLICE = 256 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
            f"size {size}\n").encode()


@dataclass(frozen=True)
class HubFile:
    """One file of one commit. Content lives in memory or in a file on disk."""

    path: str
    size: int
    sha256: str
    lfs: bool
    data: bytes | None = None
    disk_path: Path | None = None

    @property
    def oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer for LFS files."""
        if self.lfs:
            return git_blob_sha1(lfs_pointer(self.sha256, self.size))
        assert self.data is not None
        return git_blob_sha1(self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        assert self.disk_path is not None
        with open(self.disk_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


@dataclass
class Faults:
    """Switches that make the hub misbehave on purpose."""

    #: Answer the next N requests with `failing_status` (and Retry-After, unless None).
    failing_requests: int = 0
    failing_status: int = 429
    retry_after: int | None = 7
    #: Repos that answer 403 (gated, access not granted).
    gated: set[str] = field(default_factory=set)
    #: When set, every request must carry `Authorization: Bearer <token>`.
    required_token: str | None = None
    #: (repo, path) -> absolute byte offsets whose served value is flipped.
    corrupt: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    #: (repo, path) -> send only this many body bytes of each response, then drop the connection.
    truncate: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Serve LFS files directly from `resolve` instead of redirecting to /_lfs/.
    no_redirect: bool = False
    #: Bytes per second per file response (0 = as fast as possible). Throttled bodies go out
    #: in 64 KiB pieces, so `served` knows which bytes really left when a client is killed.
    throttle: float = 0.0


class LocalHub:
    """The hub's state and its aiohttp application, run on a thread with its own loop."""

    def __init__(self, tree_page_size: int = 1000) -> None:
        self.url = ""
        self.tree_page_size = tree_page_size
        self.faults = Faults()
        self.bytes_served = 0
        #: Bytes per second for all file bodies together (a WAN-like origin); None = no cap.
        self.rate_limit: float | None = None
        self._bucket: TokenBucket | None = None
        #: Requests to the CDN path that carried an Authorization header (must stay 0).
        self.tokens_sent_to_cdn = 0
        self.requests: list[tuple[str, str]] = []
        self._served: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._raw_trees: dict[tuple[str, str], list[object]] = {}
        self._tree_cache: dict[tuple[str, str, str, bool], list[dict[str, object]]] = {}
        self._commits: dict[str, dict[str, dict[str, HubFile]]] = {}  # repo -> sha -> files
        self._refs: dict[str, dict[str, str]] = {}  # repo -> ref -> sha
        self._lfs_blobs: dict[str, HubFile] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- content ----------------------------------------------------------------------------

    def add_commit(self, repo: str, files: Mapping[str, bytes | Path], *,
                   revision: str = "main", lfs: set[str] | None = None) -> str:
        """Record a new commit of `repo` with exactly `files`, point `revision` at it, return
        its sha. Older commits stay reachable by sha. Paths in `lfs` (default: by suffix or
        size) are LFS files."""
        entries: dict[str, HubFile] = {}
        for path, content in files.items():
            if isinstance(content, Path):
                sha = _sha256_file(content)
                size = content.stat().st_size
                is_lfs = True if lfs is None else path in lfs
                entry = HubFile(path, size, sha, is_lfs, disk_path=content)
            else:
                size = len(content)
                is_lfs = (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
                          if lfs is None else path in lfs)
                entry = HubFile(path, size, hashlib.sha256(content).hexdigest(), is_lfs,
                                data=content)
            entries[path] = entry
        with self._lock:
            seed = f"{repo}:{next(self._counter)}:" + ",".join(
                f"{p}={e.sha256}" for p, e in sorted(entries.items()))
            sha = hashlib.sha1(seed.encode()).hexdigest()
            self._commits.setdefault(repo, {})[sha] = entries
            self._refs.setdefault(repo, {})[revision] = sha
            for entry in entries.values():
                if entry.lfs:
                    self._lfs_blobs[entry.sha256] = entry
        return sha

    def declare(self, repo: str, sizes: Mapping[str, int], *, revision: str = "main") -> str:
        """Record a commit whose tree lists `sizes` (path -> declared size) and whose files
        have no content: for listings a client must refuse before reading any byte."""
        entries = {path: HubFile(path, size, hashlib.sha256(path.encode()).hexdigest(), True,
                                 data=b"") for path, size in sizes.items()}
        with self._lock:
            sha = hashlib.sha1(f"{repo}:declared:{next(self._counter)}".encode()).hexdigest()
            self._commits.setdefault(repo, {})[sha] = entries
            self._refs.setdefault(repo, {})[revision] = sha
        return sha

    def declare_raw(self, repo: str, tree: list[object], *, revision: str = "main") -> str:
        """A commit whose tree listing is exactly `tree` (any JSON, however malformed): for a
        client's defences against a hostile hub."""
        sha = self.declare(repo, {}, revision=revision)
        with self._lock:
            self._raw_trees[(repo, sha)] = list(tree)
        return sha

    def served(self, repo: str, path: str) -> list[tuple[int, int]]:
        """Byte ranges [start, end) of `path` written to clients, one per GET."""
        with self._lock:
            return list(self._served.get((repo, path), ()))

    def reset(self) -> None:
        """Every fault switch off, no rate limit, and an empty request log."""
        with self._lock:
            self.faults = Faults()
            self.rate_limit = None
            self.requests = []

    def _resolve(self, repo: str, revision: str) -> tuple[str, dict[str, HubFile]] | None:
        commits = self._commits.get(repo)
        if commits is None:
            return None
        sha = self._refs[repo].get(revision, revision)
        files = commits.get(sha)
        return (sha, files) if files is not None else None

    # -- HTTP -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults_middleware])
        app.router.add_get("/api/models/{owner}/{name}/revision/{rev:.+}", self._revision)
        app.router.add_get("/api/models/{owner}/{name}/tree/{rev:[^/]+}", self._tree)
        app.router.add_get("/api/models/{owner}/{name}/tree/{rev:[^/]+}/{sub:.*}", self._tree)
        app.router.add_route("*", "/{owner}/{name}/resolve/{rev}/{path:.+}", self._file)
        app.router.add_route("*", "/_lfs/{sha256}", self._lfs)
        app.router.add_get("/_stats", self._stats)
        return app

    async def _stats(self, _request: web.Request) -> web.Response:
        """What a hub in its own process tells a benchmark: bytes of file bodies sent."""
        return web.json_response({"bytes_served": self.bytes_served})

    @web.middleware
    async def _faults_middleware(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.requests.append((request.method, request.path_qs))
        faults = self.faults
        if request.path.startswith("/_lfs/") and "Authorization" in request.headers:
            with self._lock:
                self.tokens_sent_to_cdn += 1
        if faults.failing_requests > 0:
            with self._lock:
                faults.failing_requests -= 1
            headers = {} if faults.retry_after is None else {"Retry-After": str(faults.retry_after)}
            return web.Response(status=faults.failing_status, text="injected failure",
                                headers=headers)
        if faults.required_token is not None and not request.path.startswith("/_lfs/"):
            if request.headers.get("Authorization") != f"Bearer {faults.required_token}":
                return web.Response(status=401, text="Invalid credentials in Authorization header",
                                    headers={"X-Error-Message": "Invalid username or password."})
        owner, name = request.match_info.get("owner"), request.match_info.get("name")
        if owner and f"{owner}/{name}" in faults.gated:
            return web.Response(status=403, text="gated repo",
                                headers={"X-Error-Code": "GatedRepo"})
        return await handler(request)

    def _repo_or_error(self, request: web.Request) -> tuple[str, str, dict[str, HubFile]]:
        repo = f"{request.match_info['owner']}/{request.match_info['name']}"
        if repo not in self._commits:
            # The Hub does not tell anonymous callers whether a private repo exists.
            status = 404 if "Authorization" in request.headers else 401
            raise _error(status, "RepoNotFound", "Repository not found")
        found = self._resolve(repo, request.match_info["rev"])
        if found is None:
            raise _error(404, "RevisionNotFound", "Invalid rev id")
        return repo, *found

    async def _revision(self, request: web.Request) -> web.Response:
        repo, sha, files = self._repo_or_error(request)
        return web.json_response({
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
            "sha": sha, "private": False, "disabled": False, "gated": False, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(files)],
        })

    async def _tree(self, request: web.Request) -> web.Response:
        repo, sha, files = self._repo_or_error(request)
        sub = request.match_info.get("sub", "").strip("/")
        recursive = request.query.get("recursive", "false").lower() in ("1", "true")
        ordered = self._raw_trees.get((repo, sha))
        if ordered is None:
            key = (repo, sha, sub, recursive)
            ordered = self._tree_cache.get(key)
            if ordered is None:  # commits never change: list each tree once (10^5 files)
                ordered = self._tree_cache[key] = self._tree_entries(files, sub, recursive)
        start = int(request.query.get("cursor", "0"))
        page = ordered[start:start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(ordered):
            query = dict(request.query)
            query["cursor"] = str(start + self.tree_page_size)
            nxt = request.url.with_query(query)
            headers["Link"] = f'<{nxt}>; rel="next"'
        return web.json_response(page, headers=headers)

    @staticmethod
    def _tree_entries(files: Mapping[str, HubFile], sub: str, recursive: bool) -> list[dict[str, object]]:
        entries: dict[str, dict[str, object]] = {}
        for path, entry in sorted(files.items()):
            if sub and not path.startswith(sub + "/"):
                continue
            rest = path[len(sub) + 1:] if sub else path
            parts = rest.split("/")
            base = f"{sub}/" if sub else ""
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                folder = base + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                            "size": 0})
            if recursive or len(parts) == 1:
                item: dict[str, object] = {"type": "file", "path": path, "size": entry.size,
                                           "oid": entry.oid}
                if entry.lfs:
                    item["lfs"] = {"oid": entry.sha256, "size": entry.size,
                                   "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
                entries[path] = item
        return sorted(entries.values(), key=lambda e: str(e["path"]))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        repo, sha, files = self._repo_or_error(request)
        entry = files.get(request.match_info["path"])
        if entry is None:
            raise _error(404, "EntryNotFound", "Entry not found")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.etag}"'}
        if entry.lfs and not self.faults.no_redirect:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size),
                            "Location": f"{_cdn_origin(request)}/_lfs/{entry.sha256}"
                                        f"?repo={quote(repo)}&path={quote(entry.path)}"})
            return web.Response(status=302, headers=headers)
        return await self._serve(request, repo, entry, headers)

    async def _lfs(self, request: web.Request) -> web.StreamResponse:
        entry = self._lfs_blobs.get(request.match_info["sha256"])
        if entry is None:
            raise _error(404, "EntryNotFound", "no such blob")
        repo = request.query.get("repo", "")
        return await self._serve(request, repo, entry, {"ETag": f'"{entry.sha256}"'})

    async def _serve(self, request: web.Request, repo: str, entry: HubFile,
                     headers: dict[str, str]) -> web.StreamResponse:
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start, end = 0, entry.size
        status = 200
        range_header = request.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, entry.size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{entry.size}"
                return web.Response(status=416, headers=headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        corrupt = self.faults.corrupt.get((repo, entry.path), set())
        cut = self.faults.truncate.get((repo, entry.path))
        if self.faults.throttle and cut is None:
            return await self._trickle(request, repo, entry, start, end, status, headers, corrupt)
        with self._lock:
            self.bytes_served += end - start if cut is None else min(cut, end - start)
            self._served.setdefault((repo, entry.path), []).append(
                (start, end if cut is None else start + min(cut, end - start)))
        if cut is not None:
            return await _send_truncated(request, status, headers, entry.read(start, end)[:cut])
        if self.rate_limit and not corrupt:
            return await self._send_throttled(request, entry, start, end, status, headers)
        if entry.data is None and not corrupt:
            return _FileSlice(entry.disk_path, start, end, status, headers)  # type: ignore[arg-type]
        body = bytearray(entry.read(start, end))
        for offset in corrupt:
            if start <= offset < end:
                body[offset - start] ^= 0xFF
        return web.Response(status=status, body=bytes(body), headers=headers)

    async def _trickle(self, request: web.Request, repo: str, entry: HubFile, start: int, end: int,
                       status: int, headers: dict[str, str], corrupt: set[int]) -> web.StreamResponse:
        """Send the body in 64 KiB pieces at `faults.throttle` bytes/s, noting each piece sent."""
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        with self._lock:
            ranges = self._served.setdefault((repo, entry.path), [])
            slot = len(ranges)
            ranges.append((start, start))
        position = start
        try:
            while position < end:
                piece = bytearray(entry.read(position, min(end, position + _PIECE)))
                for offset in corrupt:
                    if position <= offset < position + len(piece):
                        piece[offset - position] ^= 0xFF
                await response.write(bytes(piece))
                position += len(piece)
                with self._lock:
                    self.bytes_served += len(piece)
                    ranges[slot] = (start, position)
                await asyncio.sleep(len(piece) / self.faults.throttle)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _send_throttled(self, request: web.Request, entry: HubFile, start: int, end: int,
                              status: int, headers: dict[str, str]) -> web.StreamResponse:
        """The body in slices, each paid for from one bucket shared by every response."""
        assert self.rate_limit is not None
        if self._bucket is None or self._bucket.rate != self.rate_limit:
            self._bucket = TokenBucket(self.rate_limit, burst=max(self.rate_limit / 10, _THROTTLE_SLICE))
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        position = start
        while position < end:
            count = min(_THROTTLE_SLICE, end - position)
            wait = self._bucket.reserve(count)
            if wait > 0:
                await asyncio.sleep(wait)
            await response.write(entry.read(position, position + count))
            position += count
        await response.write_eof()
        return response

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, port: int = 0) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            runner = web.AppRunner(self._app(), access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", port)
            loop.run_until_complete(site.start())
            bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{bound}"
            self._runner = runner
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="local-hf-hub", daemon=True)
        self._thread.start()
        if not ready.wait(20):
            raise RuntimeError("local HF hub did not start")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(20)


class _FileSlice(web.StreamResponse):
    """Bytes [start, end) of a file on disk, sent with sendfile (big benchmark models)."""

    def __init__(self, path: Path, start: int, end: int, status: int,
                 headers: dict[str, str]) -> None:
        super().__init__(status=status, headers=headers)
        self._slice_path, self._slice_start, self._slice_end = path, start, end

    async def prepare(self, request):  # type: ignore[no-untyped-def, override]
        writer = await super().prepare(request)
        loop = asyncio.get_running_loop()
        transport = request.transport
        assert transport is not None
        with open(self._slice_path, "rb") as f:
            await loop.sendfile(transport, f, self._slice_start,
                                self._slice_end - self._slice_start)
        await super().write_eof()
        return writer


async def _send_truncated(request: web.Request, status: int, headers: dict[str, str],
                          partial: bytes) -> web.StreamResponse:
    """Promise the full Content-Length, send `partial`, then drop the connection."""
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    await resp.write(partial)
    if request.transport is not None:
        request.transport.close()
    return resp


def _cdn_origin(request: web.Request) -> str:
    """The same server under another host name, like the Hub's CDN: clients must not send
    the token there, and huggingface_hub's HEAD stops at the redirect and reads X-Linked-*."""
    host = "localhost" if request.url.host != "localhost" else "127.0.0.1"
    return f"{request.url.scheme}://{host}:{request.url.port}"


def _error(status: int, code: str, message: str) -> web.HTTPException:
    exc = web.HTTPException(text=message, headers={"X-Error-Code": code,
                                                   "X-Error-Message": message})
    exc.set_status(status)
    return exc


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` -> [start, end); None when unsatisfiable."""
    if not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[6:].strip().partition("-")
    if first == "":
        if not last.isdigit() or int(last) == 0:
            return None
        return max(0, size - int(last)), size
    if not first.isdigit() or int(first) >= size:
        return None
    end = size if last == "" else min(size, int(last) + 1)
    return (int(first), end) if end > int(first) else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def hf_hub_server() -> Iterator[LocalHub]:
    """The local hub for the whole session; prefer `hf_hub`, which also resets fault switches."""
    hub = LocalHub()
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def hf_hub(hf_hub_server: LocalHub) -> Iterator[LocalHub]:
    """The local hub with every fault switch off and an empty request log, per test."""
    hf_hub_server.reset()
    yield hf_hub_server
    hf_hub_server.reset()


def serve_folders(repos: Mapping[str, Path], port: int = 0) -> LocalHub:
    """Start a hub whose repos are folders on disk (every file LFS, served with sendfile)."""
    hub = LocalHub()
    for repo, folder in repos.items():
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
                 if p.is_file()}
        hub.add_commit(repo, files)
    hub.start(port)
    return hub


def main() -> None:
    """`python -m tests.servers.hf --repo owner/name=DIR [--port N] [--rate-limit B]`: serve
    folders until killed (benchmarks run the hub in its own process so its CPU is not counted as
    the client's; GET /_stats tells the bytes it sent)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repo", action="append", required=True, metavar="OWNER/NAME=DIR")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=float, default=0.0,
                        help="bytes per second for all file bodies together (0: no cap)")
    args = parser.parse_args()
    repos = {spec.split("=", 1)[0]: Path(spec.split("=", 1)[1]) for spec in args.repo}
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # the server thread inherits this
    hub = serve_folders(repos, args.port)
    hub.rate_limit = args.rate_limit or None
    print(hub.url, flush=True)
    signal.sigwait(stop_signals)
    hub.stop()


if __name__ == "__main__":
    main()
