"""Serving this node's verified models to other agents, read-only (see `peers.protocol`).

What is served, and only that:
- storage keys with a manifest in `<root>/manifests/<key>.json` (complete and verified);
- files named in that manifest, exactly (no listing, no other path);
- for a key this agent is downloading right now, the pieces its download recorded as written
  (`peers.partial`) and nothing else of the staging area: the file named in the
  download's listing, a range whose every piece is recorded, the file at its listed size;
- opened from `<root>/models/<key>` one path component at a time with O_NOFOLLOW, so a
  symlink anywhere under the model folder (or the folder itself being one) is refused, and
  the file must be a regular file of the manifest's size.

Bodies go out with sendfile(2) in slices of `SLICE` bytes, each slice first paid for from a
token bucket shared by every connection (`rate_limit`). Each connection has a thread
(HTTP/1.1 keep-alive); above `max_connections` new connections get 503 at once, which
clients take as "busy, ask another peer" rather than as a failure.

Piece tables come from this agent's own download when it recorded every piece (the file was
just checked against the origin), else they are computed on first request by reading the file
once; that pass also recomputes the file's local digest (`ManifestFile.scrub_digest`: its
sha256, or the CRC/MD5 it was verified with; a chain table's last entry *is* the file's
sha256, so it takes one hash), and a file that no longer matches its manifest
is never served again: `on_damage` is told (the agent withdraws the manifest and
fetches the model again), so a peer whose disk rotted heals instead of spreading it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localmodel.fetch import chaining
from localmodel.fetch.hashing import new_hasher
from localmodel.fetch.layout import Layout
from localmodel.fetch.manifest import Manifest, ManifestFile, read_manifest
from localmodel.fetch.ratelimit import TokenBucket
from localmodel.peers.auth import Authenticator, AuthUnavailableError, PeerIdentity
from localmodel.peers.partial import PartialDownloads
from localmodel.peers.protocol import (
    CHAIN,
    PARTIAL_HEADER,
    PIECE_SIZE,
    PIECE_SIZE_HEADER,
    PIECES,
    PeerRequest,
    long_poll,
    parse_range,
    parse_request_path,
)

logger = logging.getLogger(__name__)

#: Bytes per sendfile call (and per rate-limit payment).
SLICE = 1024 * 1024
_READ_SIZE = 1024 * 1024
#: Seconds an idle keep-alive connection keeps its thread.
IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class PeerServeSettings:
    bind_address: str = "0.0.0.0"
    #: 0 picks a free port.
    port: int = 8082
    #: Bytes per second sent to all peers together; None = no cap.
    rate_limit: float | None = None
    #: Connections served at once; more get 503.
    max_connections: int = 64
    #: Piece tables kept in memory (each is 8 KiB per GiB of file).
    table_cache_entries: int = 256


class PeerCounters:
    """What the server counts; the agent maps these onto Prometheus metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.requests: dict[str, int] = {}

    def count(self, result: str) -> None:
        with self.lock:
            self.requests[result] = self.requests.get(result, 0) + 1

    def sent(self, count: int) -> None:
        with self.lock:
            self.bytes_sent += count


class _Refused(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def open_below(base: Path, parts: list[str]) -> int:
    """An fd for `base/<parts...>`, opened one component at a time without following any
    symlink below `base`. Raises _Refused for anything but a plain path to a regular file."""
    if not parts or any(part in ("", ".", "..") or "/" in part for part in parts):
        raise _Refused(404, "bad path")
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        current = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Refused(404, "not found") from exc
    try:
        for name in parts[:-1]:
            try:
                following = os.open(name, flags_dir, dir_fd=current)
            except OSError as exc:  # ELOOP/ENOTDIR: a symlink or a file where a folder belongs
                raise _Refused(404, "not found") from exc
            os.close(current)
            current = following
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                         dir_fd=current)
        except OSError as exc:
            raise _Refused(404, "not found") from exc
    finally:
        os.close(current)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Refused(404, "not a regular file")
    return fd


def open_model_file(models_dir: Path, key: str, relative: str) -> int:
    """`<models_dir>/<key>/<relative>`, see `open_below`."""
    return open_below(models_dir, [key, *relative.split("/")])


class _Manifests:
    """Manifests by key, re-read when the file changes (a re-download replaces it)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int, int], Manifest, bytes]] = {}

    def get(self, key: str) -> tuple[Manifest, bytes] | None:
        layout = Layout.in_store(self._root, key)
        try:
            st = os.stat(layout.manifest)
        except OSError:
            with self._lock:
                self._cache.pop(key, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1], cached[2]
        manifest = read_manifest(layout)
        if manifest is None:
            return None
        body = manifest.to_json().encode()
        with self._lock:
            self._cache[key] = (stamp, manifest, body)
        return manifest, body


class PeerServer:
    """The peer endpoint of one agent. `start()` binds and serves on background threads."""

    def __init__(self, root: Path, settings: PeerServeSettings, authenticator: Authenticator, *,
                 on_damage: Callable[[str, str], None] = lambda key, problem: None,
                 counters: PeerCounters | None = None, partials: PartialDownloads | None = None) -> None:
        self.root = root
        self.partials = partials
        self.models_dir = root / "models"
        self.settings = settings
        self.authenticator = authenticator
        self.on_damage = on_damage
        self.counters = counters or PeerCounters()
        self.bucket = TokenBucket(settings.rate_limit, burst=max(settings.rate_limit / 8, SLICE)) \
            if settings.rate_limit else None
        self._manifests = _Manifests(root)
        self._tables: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._table_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._damaged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._active = 0
        self._connections: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> int:
        server = _Server((self.settings.bind_address, self.settings.port), _Handler, self)
        self._httpd = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="peer-server", daemon=True)
        self._thread.start()
        logger.info("serving verified models to peers", extra={
            "address": self.settings.bind_address, "port": self.port,
            "rate_limit": self.settings.rate_limit, "max_connections": self.settings.max_connections})
        return self.port

    def stop(self) -> None:
        """Stop listening and cut every open connection (peers go elsewhere at once)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            for connection in self._httpd.open_connections():
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)

    # --- connections ----------------------------------------------------------------------

    def admit(self) -> bool:
        with self._lock:
            if self._active >= self.settings.max_connections:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    # --- requests -------------------------------------------------------------------------

    def identify(self, header: str | None) -> PeerIdentity:
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            raise _Refused(401, "no bearer token", {"WWW-Authenticate": 'Bearer realm="localmodel-peer"'})
        try:
            identity = self.authenticator.authenticate(header[7:].strip())
        except AuthUnavailableError as exc:
            raise _Refused(503, str(exc), {"Retry-After": "2"}) from exc
        if identity is None:
            raise _Refused(401, "token refused", {"WWW-Authenticate": 'Bearer realm="localmodel-peer"'})
        return identity

    def entry(self, request: PeerRequest) -> tuple[Manifest, ManifestFile]:
        found = self._manifests.get(request.key)
        if found is None:
            raise _Refused(404, "model not held")
        manifest = found[0]
        for item in manifest.files:
            if item.path == request.path:
                if (request.key, _identity(item)) in self._damaged:
                    raise _Refused(404, "damaged")
                return manifest, item
        raise _Refused(404, "no such file in the manifest")

    def partial_body(self, key: str) -> bytes:
        described = self.partials.describe(key) if self.partials is not None else None
        if described is None:
            raise _Refused(404, "not downloading")
        return described

    def partial_table(self, request: PeerRequest, known: int, wait: float) -> tuple[bytes, int]:
        found = self.partials.table(request.key, request.path, known=known, wait=wait, kind=request.kind) \
            if self.partials is not None else None
        if found is None:
            raise _Refused(404, "not held")
        return found

    def open_partial(self, request: PeerRequest, start: int, end: int) -> int:
        """The staging file of a download in progress, when [start, end) is all written."""
        assert self.partials is not None
        size = self.partials.size(request.key, request.path)
        data_dir = self.partials.covers(request.key, request.path, start, end)
        if size is None or data_dir is None:
            raise _Refused(425, "not written yet", {"Retry-After": "1"})
        staging = data_dir.parent.parent
        fd = open_below(staging, [request.key, data_dir.name, *request.path.split("/")])
        if os.fstat(fd).st_size != size:
            os.close(fd)
            raise _Refused(425, "not written yet", {"Retry-After": "1"})
        return fd

    def holds(self, key: str) -> bool:
        return self._manifests.get(key) is not None

    def manifest_body(self, key: str) -> bytes:
        found = self._manifests.get(key)
        if found is None:
            raise _Refused(404, "model not held")
        return found[1]

    def open_file(self, key: str, item: ManifestFile) -> int:
        fd = open_model_file(self.models_dir, key, item.path)
        if os.fstat(fd).st_size != item.size:
            os.close(fd)
            self._report_damage(key, item, f"{item.path} has the wrong size")
            raise _Refused(404, "damaged")
        return fd

    def piece_table(self, key: str, item: ManifestFile, kind: str = PIECES) -> bytes:
        """The table of `kind` of `item`, computed once (one reader at a time per file)."""
        table_key = (key, item.path, f"{kind}:{_identity(item)}")
        with self._lock:
            cached = self._tables.get(table_key)
            if cached is not None:
                self._tables.move_to_end(table_key)
                return cached
            lock = self._table_locks.setdefault(table_key, threading.Lock())
        with lock:
            with self._lock:
                cached = self._tables.get(table_key)
            if cached is not None:
                return cached
            table = self._recorded_table(key, item, kind) or self._compute_table(key, item, kind)
            with self._lock:
                self._tables[table_key] = table
                while len(self._tables) > self.settings.table_cache_entries:
                    self._tables.popitem(last=False)
                self._table_locks.pop(table_key, None)
        return table

    def _recorded_table(self, key: str, item: ManifestFile, kind: str) -> bytes | None:
        """The table this agent's own download recorded (its files were just checked against
        the origin's digests), instead of reading the file twice more."""
        if self.partials is None:
            return None
        return self.partials.finished_table(key, item.path, item.size, kind)

    def _compute_table(self, key: str, item: ManifestFile, kind: str) -> bytes:
        expected = item.scrub_digest
        if expected is None:  # downloaded without verification: nothing to vouch for it
            raise _Refused(404, "unverified")
        if kind == CHAIN:
            if expected.algorithm != "sha256":
                raise _Refused(404, "no sha256 to chain to")
            return self._compute_chain(key, item, expected.value)
        whole = new_hasher(expected.algorithm, expected.part_size)
        piece = hashlib.sha256()
        digests = bytearray()
        for data, piece_ends in self._read_by_piece(key, item):
            piece.update(data)
            whole.update(data)
            if piece_ends:
                digests += piece.digest()
                piece = hashlib.sha256()
        if whole.hexdigest() != expected.value:
            self._report_damage(key, item, f"{item.path} no longer matches its manifest ({expected.algorithm})")
            raise _Refused(404, "damaged")
        return bytes(digests)

    def _compute_chain(self, key: str, item: ManifestFile, sha256: str) -> bytes:
        """The chaining value after every piece and the file's sha256 last: one pass."""
        hasher = chaining.Sha256()
        entries = bytearray()
        for data, piece_ends in self._read_by_piece(key, item):
            hasher.update(data)
            if piece_ends and hasher.length < item.size:
                entries += hasher.state().value
        digest = hasher.digest()
        if digest.hex() != sha256:
            self._report_damage(key, item, f"{item.path} no longer matches its manifest (sha256)")
            raise _Refused(404, "damaged")
        if item.size:
            entries += digest
        return bytes(entries)

    def _read_by_piece(self, key: str, item: ManifestFile) -> Iterator[tuple[memoryview, bool]]:
        """`item`'s bytes in order, one read at a time, each with whether it ends a piece; a
        file shorter than its manifest says is reported damaged."""
        fd = self.open_file(key, item)
        buffer = memoryview(bytearray(_READ_SIZE))
        position = 0
        try:
            while position < item.size:
                end = min(item.size, (position // PIECE_SIZE + 1) * PIECE_SIZE)  # this piece's
                count = os.preadv(fd, [buffer[: min(len(buffer), end - position)]], position)
                if count == 0:  # shrank since it was opened
                    self._report_damage(key, item, f"{item.path} is shorter than its manifest says")
                    raise _Refused(404, "damaged")
                position += count
                yield buffer[:count], position == end
        finally:
            os.close(fd)

    def _report_damage(self, key: str, item: ManifestFile, problem: str) -> None:
        with self._lock:
            first = (key, _identity(item)) not in self._damaged
            self._damaged.add((key, _identity(item)))
        if first:
            logger.warning("a served model is damaged; no longer serving it",
                           extra={"storage_key": key, "problem": problem})
            self.on_damage(key, problem)

    def send_file(self, connection: socket.socket, fd: int, start: int, end: int) -> None:
        position = start
        with os.fdopen(os.dup(fd), "rb", closefd=True) as handle:
            while position < end:
                count = min(SLICE, end - position)
                if self.bucket is not None:
                    self.bucket.take(count)
                sent = connection.sendfile(handle, position, count)
                if sent <= 0:
                    raise ConnectionError("peer stopped reading")
                position += sent
                self.counters.sent(sent)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 peer: PeerServer) -> None:
        self.peer = peer
        super().__init__(address, handler)

    def open_connections(self) -> list[socket.socket]:
        with self.peer._lock:  # noqa: SLF001 - the server and its owner share one lock
            return list(self.peer._connections)  # noqa: SLF001

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.peer.admit():
            self.peer.counters.count("busy")
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.peer._lock:  # noqa: SLF001
            self.peer._connections.add(request)  # noqa: SLF001
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.peer._lock:  # noqa: SLF001
                self.peer._connections.discard(request)  # noqa: SLF001
            self.peer.leave()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "localmodel-peer"
    timeout = IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and a small body leave in separate writes: without NODELAY the body waits
        # for the client's delayed ACK (40 ms per piece table here).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        logger.debug("peer request: " + format, *args)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    def _refuse(self, refused: _Refused) -> None:
        self.server.peer.counters.count(str(refused.status))
        body = (refused.reason + "\n").encode()
        self.send_response(refused.status)
        for name, value in refused.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self, *, head: bool) -> None:
        peer = self.server.peer
        try:
            request = parse_request_path(self.path)
            if request is None:
                raise _Refused(404, "unknown path")
            identity = peer.identify(self.headers.get("Authorization"))
            if request.kind == "manifest":
                self._send_bytes(peer.manifest_body(request.key), "application/json", head)
            elif request.kind == "partial":
                self._send_bytes(peer.partial_body(request.key), "application/json", head)
            elif request.kind in (PIECES, CHAIN) and peer.holds(request.key):
                _manifest, item = peer.entry(request)
                table = peer.piece_table(request.key, item, request.kind)
                self._send_bytes(table, "application/octet-stream", head,
                                 {PIECE_SIZE_HEADER: str(PIECE_SIZE)})
            elif request.kind in (PIECES, CHAIN):
                partial, present = peer.partial_table(request, *long_poll(self.path))
                self._send_bytes(partial, "application/octet-stream", head,
                                 {PIECE_SIZE_HEADER: str(PIECE_SIZE), PARTIAL_HEADER: str(present)})
            elif peer.holds(request.key):
                self._send_file(peer, request, head)
            else:
                self._send_partial(peer, request, head)
            logger.debug("peer request served", extra={"peer": identity.node, "path": self.path})
        except _Refused as refused:
            self._refuse(refused)
        except (ConnectionError, TimeoutError, OSError) as exc:
            peer.counters.count("aborted")
            logger.debug("peer connection ended early", extra={"error": str(exc)})
            self.close_connection = True

    def _send_bytes(self, body: bytes, content_type: str, head: bool,
                    extra: dict[str, str] | None = None) -> None:
        self.server.peer.counters.count("200")
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_file(self, peer: PeerServer, request: PeerRequest, head: bool) -> None:
        _manifest, item = peer.entry(request)
        wanted = parse_range(self.headers.get("Range"), item.size)
        if wanted is False:
            raise _Refused(416, "unsatisfiable range", {"Content-Range": f"bytes */{item.size}"})
        fd = peer.open_file(request.key, item)
        start, end = wanted if isinstance(wanted, tuple) else (0, item.size)
        self._send_range(peer, fd, start, end, item.size, isinstance(wanted, tuple), head,
                         {"ETag": f'"{_identity(item)}"'})

    def _send_partial(self, peer: PeerServer, request: PeerRequest, head: bool) -> None:
        size = peer.partials.size(request.key, request.path) if peer.partials is not None else None
        if size is None:
            raise _Refused(404, "model not held")
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted is False:
            raise _Refused(416, "unsatisfiable range", {"Content-Range": f"bytes */{size}"})
        start, end = wanted if isinstance(wanted, tuple) else (0, size)
        fd = peer.open_partial(request, start, end)
        peer.counters.count("partial")
        self._send_range(peer, fd, start, end, size, isinstance(wanted, tuple), head, {PARTIAL_HEADER: "1"})

    def _send_range(self, peer: PeerServer, fd: int, start: int, end: int, size: int, partial: bool,
                    head: bool, extra: dict[str, str]) -> None:
        try:
            peer.counters.count("206" if partial else "200")
            self.send_response(206 if partial else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            for name, value in extra.items():
                self.send_header(name, value)
            if partial:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if not head and end > start:
                self.wfile.flush()
                peer.send_file(self.connection, fd, start, end)
        finally:
            os.close(fd)


def _identity(item: ManifestFile) -> str | None:
    """What tells one copy of a file from another: its local digest."""
    digest = item.scrub_digest
    return None if digest is None else f"{digest.algorithm}:{digest.value}"
