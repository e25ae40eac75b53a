"""A small aiohttp file server whose faults the tests control, plus counting of what it sent.

nginx is the real-world server; this one exists for what nginx will not do on request: flip a
byte, fail a few times with 503 + Retry-After, stall past the client's read timeout, drop the
connection mid-body, ignore Range, or trickle bytes slowly so a client can be killed
mid-download while the server knows exactly which bytes went out.

Fixture `fault_server` (session): `fault_server.add("/m/w.bin", data, **faults)` then fetch
`fault_server.url + "/m/w.bin"`. `served(path)` lists the byte ranges actually written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.servers import ports

_PIECE = 64 * 1024


@dataclass
class Faults:
    #: Flip the byte at this offset in every response that covers it.
    flip_at: int | None = None
    #: Answer the first `fail_times` requests with `fail_status`.
    fail_times: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    #: Sleep this long before the first body byte (read-timeout tests).
    stall_seconds: float = 0.0
    #: Close the connection after this many body bytes, for the first `drop_times` GETs.
    drop_after: int | None = None
    drop_times: int = 1
    #: Ignore Range (always 200 with the whole body), and do not advertise Accept-Ranges.
    ranges: bool = True
    #: Bytes per second per response (0 = as fast as possible).
    throttle: float = 0.0
    #: Send `Repr-Digest: sha-256=...` of the true content.
    digest: bool = False
    status: int | None = None
    #: Announce this Content-Length in HEAD answers (a size far beyond any disk).
    declared_size: int | None = None


@dataclass
class _Entry:
    data: bytes
    faults: Faults
    requests: int = 0
    gets: int = 0
    served: list[tuple[int, int]] = field(default_factory=list)


class FaultServer:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- configuration and inspection ------------------------------------------------------

    def add(self, path: str, data: bytes, **faults: object) -> str:
        with self._lock:
            self._entries[path] = _Entry(data, Faults(**faults))  # type: ignore[arg-type]
        return self.url + path

    def served(self, path: str) -> list[tuple[int, int]]:
        """Byte ranges [start, end) of the body written to clients, one per GET."""
        with self._lock:
            return list(self._entries[path].served)

    def body_bytes(self, path: str) -> int:
        return sum(end - start for start, end in self.served(path))

    def requests(self, path: str) -> int:
        with self._lock:
            return self._entries[path].requests

    # -- serving ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            entry = self._entries.get(request.path)
            if entry is None:
                raise web.HTTPNotFound()
            entry.requests += 1
            faults = entry.faults
            failing = entry.requests <= faults.fail_times
        if faults.status is not None:
            return web.Response(status=faults.status)
        if failing:
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return web.Response(status=faults.fail_status, headers=headers)
        data = entry.data
        headers = {"ETag": '"' + hashlib.md5(data).hexdigest() + '"',
                   "Content-Type": "application/octet-stream"}
        if faults.ranges:
            headers["Accept-Ranges"] = "bytes"
        if faults.digest:
            headers["Repr-Digest"] = "sha-256=:" + base64.b64encode(
                hashlib.sha256(data).digest()).decode() + ":"
        start, end, status = 0, len(data), 200
        range_header = request.headers.get("Range")
        if range_header and faults.ranges:
            first, _, last = range_header.removeprefix("bytes=").partition("-")
            start, end, status = int(first), min(int(last) + 1, len(data)), 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        if_match = request.headers.get("If-Match")
        if if_match and if_match != headers["ETag"]:
            return web.Response(status=412)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        if request.method == "HEAD" and faults.declared_size is not None:
            response.content_length = faults.declared_size
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        with self._lock:
            entry.gets += 1
            dropping = faults.drop_after is not None and entry.gets <= faults.drop_times
            slot = len(entry.served)
            entry.served.append((start, start))
        if faults.stall_seconds:
            await asyncio.sleep(faults.stall_seconds)
        position = start
        try:
            while position < end:
                piece = bytearray(data[position: min(end, position + _PIECE)])
                if faults.flip_at is not None and position <= faults.flip_at < position + len(piece):
                    piece[faults.flip_at - position] ^= 0xFF
                if dropping and position - start + len(piece) > faults.drop_after:  # type: ignore[operator]
                    cut = faults.drop_after - (position - start)  # type: ignore[operator]
                    await response.write(bytes(piece[:cut]))
                    self._note(entry, slot, position + cut)
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(bytes(piece))
                self._note(entry, slot, position + len(piece))
                position += len(piece)
                if faults.throttle:
                    await asyncio.sleep(len(piece) / faults.throttle)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    def _note(self, entry: _Entry, slot: int, end: int) -> None:
        with self._lock:
            entry.served[slot] = (entry.served[slot][0], end)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        port = ports.free_port()
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fault-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
