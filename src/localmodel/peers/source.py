"""A source that reads a model's bytes from other nodes' agents, checked piece by piece, with
the origin as the fallback for every piece a peer cannot give.

    PeerSource(origin, listing, peers)
      list_files()  → the ORIGIN's listing (paths, sizes, digests: never a peer's word);
                      a file peers may serve is checked against a digest no peer can forge
                      (beside a CRC, the origin's anchor: `protocol.anchored`)
      read_range()  → for a file with a strong origin digest and compatible peers:
                        piece table: from one peer, cross-checked with a second when there is
                        one; a disagreement is settled by one piece read from the origin
                        every piece: read from a peer into a buffer, checked against the
                        table before a byte is yielded; a mismatch quarantines that peer and
                        the piece is read again from another peer, else from the origin
      vouch()       → (chain tables, `protocol`) the chaining value a checked piece ends at,
                      so the engine's sha256 jumps over bytes already checked: one pass
      chained()     ← the engine's sha256 chaining values as its hash passes each piece,
                      recorded for the peers that fill from this download (`partial`)
                      otherwise → straight from the origin

A lying peer therefore costs a re-read, never a bad byte on disk: pieces that do not match the
table are dropped, and a table that lies consistently with its owner's bytes is caught by the
engine's whole-file check against the origin digest (the agent then quarantines the peers
whose tables were used, see `table_providers`). The origin is asked only when no peer can
give a piece (errors, 404, quarantine for bad data about that very file); when a peer this
fill quarantined was the only source of another file, that file is not read from the origin
around the origin slots: the fill stops and starts again without it (`_stop_for_caught`).
Busy peers (503) are waited for, and after
`busy_patience` the range fails as transient (the engine retries it later), so load alone
never turns into origin traffic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from localmodel.backoff import exponential_delay
from localmodel.errors import IntegrityError, PeersStalledError, PeerTablesRejectedError, SourceUnavailableError
from localmodel.fetch import chaining
from localmodel.fetch.ranges import RangeSet
from localmodel.peers.partial import PartialDownloads
from localmodel.peers.protocol import (
    CHAIN,
    DIGEST_SIZE,
    PARTIAL_HEADER,
    PIECE_SIZE,
    PIECE_SIZE_HEADER,
    PIECES,
    ZERO_DIGEST,
    PieceTable,
    anchored,
    chain_end,
    compatible,
    decode_table,
    file_url,
    manifest_entries,
    manifest_url,
    partial_url,
    piece_bounds,
    piece_count,
    piece_matches,
    pieces_url,
    strong_digest,
    table_kind,
)
from localmodel.sources.base import Listing, RemoteFile, Source

logger = logging.getLogger(__name__)

#: How long a piece waits for busy peers before its range fails as transient.
BUSY_PATIENCE = 30.0
#: Failed requests in a row after which a peer is left out for a while.
FAILURES_BEFORE_PAUSE = 3
#: Without a complete peer: seconds without any new piece of a file before the download
#: gives up (transient; the agent retries, by then the slot may have a new holder).
STALL_SECONDS = 30.0
#: Seconds a peer still downloading may hold a request for its piece table until it has more.
LONG_POLL = 1.0
#: Every this many looks at the partial peers, one besides the slot holder is asked too.
SPREAD_EVERY = 3


@dataclass(frozen=True)
class Peer:
    """Another node's agent."""

    #: Its node name (what quarantine and logs refer to).
    name: str
    #: Base URL, e.g. http://10.0.0.7:8082
    endpoint: str


# --- errors talking to a peer ------------------------------------------------------------------


class PeerError(Exception):
    """A peer could not answer (connection, timeout, 5xx, short body...)."""


class PeerBusy(PeerError):
    """503/429: the peer is at its connection limit; ask again later."""


class PeerMissing(PeerError):
    """404: the peer does not (or no longer) hold this."""


class PeerNotYet(PeerError):
    """425: the peer is downloading this and has not written that range yet."""


# --- peer health, shared by every download of the agent ------------------------------------------


class PeerHealth:
    """Which peers to avoid: quarantined (sent bad data; long) or failing (short, growing)."""

    def __init__(self, *, quarantine_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 on_quarantine: Callable[[str, str], None] = lambda peer, reason: None) -> None:
        self.quarantine_seconds = quarantine_seconds
        self._clock = clock
        self._on_quarantine = on_quarantine
        self._lock = threading.Lock()
        self._quarantined: dict[str, tuple[float, str]] = {}
        self._failures: dict[str, tuple[int, float]] = {}

    def quarantine(self, peer: str, reason: str) -> None:
        with self._lock:
            fresh = peer not in self._quarantined or self._quarantined[peer][0] <= self._clock()
            self._quarantined[peer] = (self._clock() + self.quarantine_seconds, reason)
        if fresh:
            logger.warning("peer quarantined", extra={"peer": peer, "reason": reason,
                                                      "seconds": self.quarantine_seconds})
            self._on_quarantine(peer, reason)

    def quarantined(self) -> dict[str, str]:
        now = self._clock()
        with self._lock:
            return {peer: reason for peer, (until, reason) in self._quarantined.items() if until > now}

    def failed(self, peer: str) -> None:
        """One failed request. The piece that failed goes elsewhere; only failures in a row
        (a dead or drowning peer) keep the peer out for a while, doubling to 30 s."""
        with self._lock:
            count = self._failures.get(peer, (0, 0.0))[0] + 1
            pause = (0.0 if count < FAILURES_BEFORE_PAUSE
                     else exponential_delay(count - FAILURES_BEFORE_PAUSE, base=1.0, cap=30.0))
            self._failures[peer] = (count, self._clock() + pause)

    def succeeded(self, peer: str) -> None:
        with self._lock:
            self._failures.pop(peer, None)

    def usable(self, peer: str) -> bool:
        now = self._clock()
        with self._lock:
            quarantined = self._quarantined.get(peer)
            if quarantined is not None and quarantined[0] > now:
                return False
            failing = self._failures.get(peer)
            return failing is None or failing[1] <= now


# --- HTTP to peers --------------------------------------------------------------------------------


class PeerClient:
    """urllib3 to every peer (the fastest Python client measured here), with the agent's
    bearer token on every request. Thread-safe; shared by all downloads of an agent."""

    def __init__(self, token: Callable[[], str | None], *, connect_timeout: float = 3.0,
                 read_timeout: float = 30.0, connections_per_peer: int = 8) -> None:
        self._token = token
        self._pool = urllib3.PoolManager(
            num_pools=64, maxsize=connections_per_peer, block=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
        )

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity", **(extra or {})}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _get(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        try:
            response = self._pool.request("GET", url, headers=self._headers(headers),
                                          preload_content=False, decode_content=False)
        except (Urllib3Error, OSError) as exc:
            raise PeerError(f"{url}: {exc.__class__.__name__}: {exc}"[:300]) from exc
        if response.status in (200, 206):
            return response
        response.drain_conn()
        response.release_conn()
        if response.status in (429, 503):
            raise PeerBusy(f"{url}: HTTP {response.status}")
        if response.status == 425:
            raise PeerNotYet(f"{url}: not written yet")
        if response.status == 404:
            raise PeerMissing(f"{url}: HTTP 404")
        raise PeerError(f"{url}: HTTP {response.status}")

    def get_bytes(self, url: str, limit: int = 64 * 2**20) -> tuple[bytes, Mapping[str, str]]:
        """A small body (manifest, piece table) and its headers."""
        response = self._get(url)
        try:
            length = int(response.headers.get("Content-Length", "-1"))
            if length < 0 or length > limit:
                raise PeerError(f"{url}: body of {length} bytes")
            body = response.read(length)
        except (Urllib3Error, OSError, ValueError) as exc:
            response.close()
            raise PeerError(f"{url}: {exc.__class__.__name__} while reading") from exc
        if len(body) != length:
            response.close()
            raise PeerError(f"{url}: short body")
        response.release_conn()
        return body, response.headers

    def read_into(self, url: str, start: int, end: int, buffer: memoryview) -> None:
        """Fill buffer[:end-start] with bytes [start, end) of the file at `url`."""
        length = end - start
        response = self._get(url, {"Range": f"bytes={start}-{end - 1}"})
        complete = False
        try:
            if response.status != 206 or response.headers.get("Content-Range", "").split("/")[0] \
                    != f"bytes {start}-{end - 1}":
                raise PeerError(f"{url}: answered another range than asked")
            raw = response._fp  # http.client response: readinto without a copy
            received = 0
            while received < length:
                count = raw.readinto(buffer[received:length])
                if not count:
                    raise PeerError(f"{url}: connection closed after {received} of {length} bytes")
                received += count
            complete = True
        except (Urllib3Error, OSError, ValueError) as exc:
            raise PeerError(f"{url}: {exc.__class__.__name__} while reading") from exc
        finally:
            if complete:
                response.release_conn()
            else:
                response.close()

    def manifest(self, peer: Peer, key: str) -> dict[str, Mapping[str, Any]]:
        body, _ = self.get_bytes(manifest_url(peer.endpoint, key))
        return manifest_entries(body)

    def partial(self, peer: Peer, key: str) -> dict[str, Mapping[str, Any]]:
        """The listing a peer's download in progress follows."""
        body, _ = self.get_bytes(partial_url(peer.endpoint, key))
        return manifest_entries(body)

    def piece_table(self, peer: Peer, key: str, remote: RemoteFile, *, known: int | None = None,
                    wait: float = 0.0, kind: str = PIECES) -> PieceTable:
        """A peer's piece table of `kind`; from a peer still downloading, `wait` seconds at
        most for more than `known` pieces."""
        body, headers = self.get_bytes(pieces_url(peer.endpoint, key, remote.path, known=known, wait=wait,
                                                  kind=kind))
        try:
            piece_size = int(headers.get(PIECE_SIZE_HEADER, "0"))
        except ValueError:
            piece_size = 0
        table = decode_table(body, remote.size, piece_size, partial=PARTIAL_HEADER in headers, kind=kind)
        if table is None or piece_size != PIECE_SIZE:
            raise PeerError(f"{peer.name}: malformed piece table for {remote.path!r}")
        return table

    def close(self) -> None:
        self._pool.clear()


# --- the source -----------------------------------------------------------------------------------


@dataclass
class FillCounters:
    """Bytes by where they came from, and what was refused (for metrics and tests)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    peer_bytes: int = 0
    origin_bytes: int = 0
    rejected_pieces: int = 0
    #: Bytes read from the origin only to check a piece table or a suspicious piece.
    arbitration_bytes: int = 0

    def add(self, name: str, count: int) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + count)


@dataclass
class _Vouch:
    """A piece checked against chaining values: from `previous` (None: the start value) to
    `end_value`, and the bytes of it yielded to the engine so far."""

    previous: bytes | None
    end_value: bytes
    yielded: RangeSet = field(default_factory=RangeSet)


@dataclass
class _File:
    remote: RemoteFile
    #: Peers holding the file complete, whose manifest agrees with the origin.
    complete: list[Peer]
    #: Peers downloading it now (same listing), serving the pieces they have written.
    partial: list[Peer]
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The agreed table of the complete peers.
    table: PieceTable | None = None
    table_done: bool = False
    table_providers: tuple[str, ...] = ()
    #: Without an agreed table: digests pinned from partial tables, first come (zeros: unknown).
    pinned: bytearray = field(default_factory=bytearray)
    pin_providers: set[str] = field(default_factory=set)
    #: The last table of each partial peer (which pieces it can give), and how many it had.
    seen: dict[str, PieceTable] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: One thread at a time asks the partial peers; the others wait on `changed`.
    refreshing: bool = False
    rounds: int = 0
    changed: threading.Condition = field(init=False)
    #: When a piece of this file was last pinned or received (stall detection).
    progress_at: float = field(default_factory=time.monotonic)
    #: The table kind peers exchange for this file (`protocol.table_kind`).
    kind: str = PIECES
    #: Chain tables: piece index → what was checked of it and yielded (see `vouch`).
    vouches: dict[int, _Vouch] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)


class PeerSource:
    """See the module docstring. Thread-safe, like every source."""

    #: The engine keeps its sha256 chaining value at every piece boundary (`fetch.chaining`).
    chain_interval = PIECE_SIZE

    def __init__(self, origin: Source, listing: Listing, key: str, peers: Mapping[str, Sequence[Peer]],
                 client: PeerClient, health: PeerHealth, *, self_name: str = "",
                 partial_peers: Mapping[str, Sequence[Peer]] | None = None,
                 partials: PartialDownloads | None = None,
                 counters: FillCounters | None = None, busy_patience: float = BUSY_PATIENCE,
                 stall_seconds: float = STALL_SECONDS, verify_md5: bool = True) -> None:
        self.origin = origin
        self.uri = origin.uri
        self.listing = listing
        self.key = key
        self.client = client
        self.health = health
        self.partials = partials
        self.counters = counters or FillCounters()
        self.busy_patience = busy_patience
        self.stall_seconds = stall_seconds
        self._spread = int(hashlib.sha256(self_name.encode()).hexdigest()[:8], 16)
        self._local = threading.local()
        self._closed = False
        #: Peers this fill quarantined for bad data → (the file, whether their table was
        #: refused on sight, before any of their bytes: see `_stop_for_caught`).
        self._caught: dict[str, tuple[str, bool]] = {}
        self._files: dict[str, _File] = {}
        for remote in listing.files:
            if strong_digest(remote, verify_md5=verify_md5):
                complete = list(peers.get(remote.path, ()))
                partial = list((partial_peers or {}).get(remote.path, ()))
            else:
                complete, partial = [], []
            self._files[remote.path] = _File(remote, complete, partial,
                                             pinned=bytearray(piece_count(remote.size) * DIGEST_SIZE),
                                             kind=table_kind(remote, verify_md5=verify_md5))
        served = {path for path, state in self._files.items() if state.complete or state.partial}
        self.listing = dataclasses.replace(listing, files=tuple(
            anchored(remote, verify_md5=verify_md5) if remote.path in served else remote
            for remote in listing.files))

    # --- Source protocol ------------------------------------------------------------------

    def list_files(self) -> Listing:
        """The origin's listing, with the anchor as the digest of each file peers may serve
        whose own digest is a CRC (`protocol.anchored`): the engine checks those files against
        a digest no peer can forge."""
        return self.listing

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
        state = self._files.get(path)
        if state is None or not (state.complete or state.partial):
            yield from self._from_origin(path, offset, length)
            return
        if state.complete and self._table(state) is None and not state.partial:
            # Not straight to the origin when a liar is why no peer can give the table (it
            # lied about this file or, found out first, about another): every node that met
            # it would read the file from it at once, around the origin slots.
            self._stop_for_caught(state, [peer.name for peer in state.complete])
            yield from self._from_origin(path, offset, length)
            return
        end = offset + length
        position = offset
        while position < end:
            index = position // PIECE_SIZE
            start, stop = piece_bounds(index, state.remote.size)
            piece, (digest, previous) = self._piece(state, index, start, stop)
            if state.kind == CHAIN:
                with state.lock:
                    vouch = state.vouches.get(index)
                    if vouch is None or (vouch.previous, vouch.end_value) != (previous, digest):
                        vouch = state.vouches[index] = _Vouch(previous, digest)
                    vouch.yielded.add(position, min(end, stop))
            yield piece[position - start: min(end, stop) - start]
            # Asked for more: the engine wrote it. A whole piece can be offered to others
            # (chain tables: the engine records its chaining values itself, see `chained`).
            if (self.partials is not None and state.kind == PIECES and position == start
                    and min(end, stop) == stop):
                self.partials.record(self.key, path, index, digest)
            position = min(end, stop)

    def vouch(self, path: str, current: chaining.ChainState, limit: int) -> tuple[int, bytes, bool] | None:
        """For the engine's sha256 of `path`, now at `current`: when every byte of the piece
        starting there was yielded from a piece checked against chaining values that start at
        `current`, (the piece's end ≤ `limit`, the chaining value there or, for the last piece,
        the file's sha256, whether it is the last). The engine then skips hashing those bytes:
        they are the ones that were checked, hashed from the very state the engine holds."""
        state = self._files.get(path)
        if state is None or state.kind != CHAIN or current.length % PIECE_SIZE:
            return None
        index = current.length // PIECE_SIZE
        count = piece_count(state.remote.size)
        if index >= count:
            return None
        start, stop = piece_bounds(index, state.remote.size)
        with state.lock:
            for passed in [i for i in state.vouches if i < index]:  # the hash only moves on
                del state.vouches[passed]
            vouch = state.vouches.get(index)
            if vouch is None or stop > limit or vouch.yielded.covered() != stop - start:
                return None
            if (vouch.previous if index else chaining.START.value) != current.value:
                return None
            del state.vouches[index]
        return stop, vouch.end_value, index == count - 1

    def chained(self, path: str, end: int, value: bytes, final: bool) -> None:
        """The engine's sha256 of `path` reached `end` with chaining value `value` (`final`:
        the file's sha256): offered to peers filling from this download."""
        if self.partials is not None:  # it records only files with a chain table
            self.partials.record_chain(self.key, path, end, value, final)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.origin.close()

    # --- what the agent asks afterwards ---------------------------------------------------

    def table_providers(self, path: str | None = None) -> set[str]:
        """Peers whose piece tables were relied on (all files, or one)."""
        if path is None:
            files = list(self._files.values())
        else:
            files = [self._files[path]] if path in self._files else []
        return {name for state in files for name in (*state.table_providers, *state.pin_providers)}

    def peer_paths(self) -> list[str]:
        return [path for path, state in self._files.items() if state.complete or state.partial]

    # --- origin ---------------------------------------------------------------------------

    def _from_origin(self, path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
        for item in self.origin.read_range(path, offset, length):
            self.counters.add("origin_bytes", len(item))
            yield item

    def _origin_piece(self, path: str, start: int, stop: int, buffer: memoryview, counter: str) -> memoryview:
        filled = 0
        for item in self.origin.read_range(path, start, stop - start):
            view = memoryview(item).cast("B")
            if filled + len(view) > stop - start:
                raise IntegrityError(f"{path!r}: the origin sent more bytes than asked")
            buffer[filled:filled + len(view)] = view
            filled += len(view)
        if filled != stop - start:
            raise SourceUnavailableError(f"{path!r}: the origin ended a piece early")
        self.counters.add(counter, filled)
        return buffer[:filled]

    # --- piece tables of complete peers -----------------------------------------------------

    def _rotate(self, peers: Sequence[Peer], index: int) -> list[Peer]:
        usable = [peer for peer in peers if self.health.usable(peer.name)]
        if not usable:
            return []
        turn = (self._spread + index) % len(usable)
        return usable[turn:] + usable[:turn]

    def _fetch_table(self, state: _File, skip: set[str]) -> tuple[Peer, PieceTable] | None:
        for peer in self._rotate(state.complete, 0):
            if peer.name in skip:
                continue
            skip.add(peer.name)
            try:
                table = self.client.piece_table(peer, self.key, state.remote, kind=state.kind)
            except (PeerMissing, PeerBusy):
                continue
            except PeerError as exc:
                self.health.failed(peer.name)
                logger.info("peer could not give a piece table", extra={"peer": peer.name, "error": str(exc)})
                continue
            if table.partial:
                continue
            if not self._ends_at_origin(state, peer, table):
                continue
            return peer, table
        return None

    def _ends_at_origin(self, state: _File, peer: Peer, table: PieceTable) -> bool:
        """A chain table's last entry, when present, is the origin's sha256, or the peer lies."""
        last = len(table) - 1
        if state.kind != CHAIN or last < 0 or not table.has(last) or table.digest(last) == chain_end(state.remote):
            return True
        self._quarantine(peer.name, state.remote.path,
                         f"chain table of {state.remote.path!r} does not end at the origin's sha256",
                         on_sight=True)
        return False

    def _quarantine(self, name: str, path: str, reason: str, *, on_sight: bool = False) -> None:
        """Quarantine peer `name` for bad data about `path` (`on_sight`: a table refused
        before any of its bytes were taken), and remember it for this fill."""
        self.health.quarantine(name, reason)
        self._caught.setdefault(name, (path, on_sight))  # atomic: callers hold at most their file's lock

    def _stop_for_caught(self, state: _File, names: Iterable[str], *, other_files_only: bool = False) -> None:
        """Raise when any of the peers `names` was quarantined by this fill (with
        `other_files_only`, about another file than this one): rather than read the file from
        the origin around the origin slots, the fill starts again at once without them,
        through the slots. PeerTablesRejectedError (staging kept) when each was refused on
        sight; else IntegrityError (staging wiped): the file's bytes so far came checked
        against tables of a peer caught sending bad data."""
        # Lookups only: another file's thread may add to `_caught` meanwhile.
        caught = {name: found for name in set(names) if (found := self._caught.get(name)) is not None
                  and not (other_files_only and found[0] == state.remote.path)}
        if not caught:
            return
        error = PeerTablesRejectedError if all(on_sight for _, on_sight in caught.values()) else IntegrityError
        lies = ", ".join(f"{name} (about {caught[name][0]!r})" for name in sorted(caught))
        raise error(f"{state.remote.path!r}: no peer left to fill it from; quarantined by this fill for "
                    f"bad data: {lies}")

    def _table(self, state: _File) -> PieceTable | None:
        """The complete peers' table, agreed by two or settled by the origin; None: no
        complete peer can give one."""
        with state.lock:
            if not state.table_done:
                state.table, state.table_providers = self._agree_on_table(state) if state.complete else (None, ())
                state.table_done = True
            return state.table

    def _agree_on_table(self, state: _File) -> tuple[PieceTable | None, tuple[str, ...]]:
        asked: set[str] = set()
        first = self._fetch_table(state, asked)
        if first is None:
            return None, ()
        second = self._fetch_table(state, asked)
        if second is None:
            return first[1], (first[0].name,)
        (peer_a, table_a), (peer_b, table_b) = first, second
        index = table_a.first_difference(table_b)
        if index is None:
            return table_a, (peer_a.name, peer_b.name)
        # Two peers disagree: one piece from the origin says who is lying.
        start, stop = piece_bounds(index, state.remote.size)
        truth = self._origin_piece(state.remote.path, start, stop, self._buffer(), "arbitration_bytes")
        for winner, table, loser in ((peer_a, table_a, peer_b), (peer_b, table_b, peer_a)):
            if table.matches(index, truth):
                self._quarantine(loser.name, state.remote.path,
                                 f"piece table of {state.remote.path!r} disagrees with the origin")
                return table, (winner.name,)
        for peer in (peer_a, peer_b):
            self._quarantine(peer.name, state.remote.path,
                             f"piece table of {state.remote.path!r} disagrees with the origin")
        found = self._fetch_table(state, asked)
        return (found[1], (found[0].name,)) if found else (None, ())

    # --- partial peers ------------------------------------------------------------------------

    def _await_news(self, state: _File) -> None:
        """Learn which pieces the partial peers hold now. One thread per file asks (a long
        poll to the first, now and then a quick look at another); the others wait for it."""
        with state.lock:
            if state.refreshing:
                state.changed.wait(LONG_POLL + 1.0)
                return
            state.refreshing = True
            state.rounds += 1
            usable = [peer for peer in state.partial if self.health.usable(peer.name)]
            known = {peer.name: state.counts.get(peer.name, -1) for peer in usable}
            rounds = state.rounds
        answered = False
        try:
            # The first (a slot holder, where new pieces appear first) every round, with a long
            # poll; one of the others now and then, or whenever the first did not answer
            # (busy, down): that spreads the reading over everyone who has the pieces.
            others = usable[1:]
            turn = others[(rounds // SPREAD_EVERY) % len(others)] if others else None
            for position, peer in enumerate(usable[:1] + ([turn] if turn else [])):
                if position == 1 and answered and rounds % SPREAD_EVERY:
                    break
                try:
                    table = self.client.piece_table(peer, self.key, state.remote, known=known[peer.name],
                                                    wait=LONG_POLL if position == 0 else 0.0, kind=state.kind)
                except (PeerMissing, PeerBusy):
                    continue
                except PeerError as exc:
                    self.health.failed(peer.name)
                    logger.info("partial peer did not answer", extra={"peer": peer.name, "error": str(exc)})
                    continue
                answered = True
                self._learn(state, peer, table)
        finally:
            with state.lock:
                state.refreshing = False
                state.changed.notify_all()
        if not answered:  # nobody to ask or nobody answered: do not spin
            time.sleep(0.2 + random.random() * 0.3)

    def _learn(self, state: _File, peer: Peer, table: PieceTable) -> None:
        if not self._ends_at_origin(state, peer, table):
            return
        with state.lock:
            state.seen[peer.name] = table
            state.counts[peer.name] = sum(1 for index in range(len(table)) if table.has(index))
            for index in range(len(table)):
                if table.has(index) and not self._pinned(state, index):
                    state.pinned[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE] = table.digest(index)
                    state.pin_providers.add(peer.name)
                    state.progress_at = time.monotonic()

    @staticmethod
    def _pinned(state: _File, index: int) -> bytes | None:
        digest = bytes(state.pinned[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE])
        return digest if digest != ZERO_DIGEST else None

    def _expected(self, state: _File, index: int) -> tuple[bytes, bytes | None] | None:
        """(the entry piece `index` must match, the entry before it: a chain's start), or None
        while unknown."""
        table = self._table(state) if state.complete else None
        if table is not None:
            return table.entry(index)
        with state.lock:
            digest = self._pinned(state, index)
            if digest is None:
                return None
            if state.kind != CHAIN or index == 0:
                return digest, None
            previous = self._pinned(state, index - 1)
            # A chain entry is checked from the one before it: wait until that one is known.
            return (digest, previous) if previous is not None else None

    def _candidates(self, state: _File, index: int, expected: bytes) -> list[Peer]:
        """Complete peers, then partial peers whose last table has this very piece."""
        with state.lock:
            partial = [peer for peer in state.partial
                       if (seen := state.seen.get(peer.name)) is not None and seen.has(index)
                       and (seen.digest(index) == expected or not seen.partial)]
        complete = self._rotate(state.complete, index) if state.table is not None else []
        return complete + self._rotate(partial, index)

    # --- pieces -----------------------------------------------------------------------------

    def _buffer(self) -> memoryview:
        buffer: memoryview | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = memoryview(bytearray(PIECE_SIZE))
        return buffer

    def _piece(self, state: _File, index: int, start: int, stop: int) -> tuple[memoryview, tuple[bytes, bytes | None]]:
        """Piece `index`, checked against its expected table entry, and (that entry, the one
        before it)."""
        buffer = self._buffer()
        view = buffer[: stop - start]
        path = state.remote.path
        busy_until = time.monotonic() + self.busy_patience
        while True:
            expected = self._expected(state, index)
            busy = waiting = False
            for peer in self._candidates(state, index, expected[0]) if expected is not None else []:
                try:
                    self.client.read_into(file_url(peer.endpoint, self.key, path), start, stop, view)
                except PeerBusy:
                    busy = True
                    continue
                except PeerNotYet:
                    waiting = True
                    continue
                except PeerError as exc:
                    self.health.failed(peer.name)
                    logger.info("peer read failed; trying another", extra={
                        "peer": peer.name, "path": path, "piece": index, "error": str(exc)})
                    continue
                assert expected is not None
                if piece_matches(state.kind, index, piece_count(state.remote.size), PIECE_SIZE, view, *expected):
                    self.health.succeeded(peer.name)
                    self.counters.add("peer_bytes", len(view))
                    with state.lock:
                        state.progress_at = time.monotonic()
                    return view, expected
                self.counters.add("rejected_pieces", 1)
                self._quarantine(peer.name, path, f"piece {index} of {path!r} does not match its table")
            if state.table is not None and not busy:
                if not any(self.health.usable(name) for name in state.table_providers):
                    # The table's peers were since caught sending bad data about another file:
                    # not the rest of this one from the origin, piece by piece, around the
                    # slots. (Caught about this file, one origin piece settles whether the
                    # piece or the table lied: `_origin_fallback`.)
                    self._stop_for_caught(state, state.table_providers, other_files_only=True)
                return self._origin_fallback(state, index, start, stop, buffer, state.table)
            if state.table is not None and time.monotonic() >= busy_until:
                # Load is no reason to go to the origin: the engine retries this range later.
                raise SourceUnavailableError(f"{path!r}: every peer holding it is busy")
            if state.table is None:
                # Only peers still downloading have it: wait for them, never the origin.
                with state.lock:
                    stalled = time.monotonic() - state.progress_at > self.stall_seconds
                if stalled:
                    raise PeersStalledError(f"{path!r}: no peer wrote a new piece for {self.stall_seconds:.0f}s")
                if waiting:  # a peer's table was a moment ahead of its disk
                    time.sleep(0.05)
                else:
                    self._await_news(state)
                continue
            time.sleep(0.2 + random.random() * 0.3)

    def _origin_fallback(self, state: _File, index: int, start: int, stop: int, buffer: memoryview,
                         table: PieceTable) -> tuple[memoryview, tuple[bytes, bytes | None]]:
        path = state.remote.path
        piece = self._origin_piece(path, start, stop, buffer, "origin_bytes")
        if not table.matches(index, piece):
            # The origin is the truth: the agreed table was wrong.
            for name in state.table_providers:
                self._quarantine(name, path, f"piece table of {path!r} disagrees with the origin")
            raise IntegrityError(f"{path!r}: the peers' piece table disagrees with the origin at "
                                 f"piece {index}; download again without them")
        return piece, table.entry(index)


def compatible_peers(listing: Listing, manifests: Mapping[str, tuple[Peer, Mapping[str, Mapping[str, Any]]]],
                     *, verify_md5: bool = True) -> dict[str, list[Peer]]:
    """path → peers whose manifest agrees with the origin listing, for files a peer may serve."""
    usable: dict[str, list[Peer]] = {}
    for remote in listing.files:
        if not strong_digest(remote, verify_md5=verify_md5):
            continue
        holders = [peer for peer, entries in manifests.values() if compatible(entries.get(remote.path), remote)]
        if holders:
            usable[remote.path] = holders
    return usable
