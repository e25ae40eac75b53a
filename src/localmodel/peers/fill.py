"""How one download job decides where its bytes come from: peers, or the origin under a
cluster-wide slot, or — when neither is possible yet — waiting.

    session(key, uri) ─ list the origin (the only source of truth for files and digests)
        │  no file a peer could be checked on (no strong digest, or a single archive)
        │      → plain origin download, as without peer-to-peer
        └─ loop:
             complete peers agreeing with the listing, or a live origin-slot holder serving
             the pieces it has written (plus other nodes downloading the same listing)
                  → PeerSource: complete peers with per-piece origin fallback; partial peers
                    waited for, never replaced by the origin
             else an origin slot (Lease) free or expired
                  → origin download, slot held; its pieces offered to peers as they land
             else wait (0.25 s doubling to `wait_seconds`), cancellable

So the first K nodes read the origin and every other node starts at once, pulling the pieces
the slot holders (and each other) have written: the fan-out overlaps the origin download
instead of following it. A holder that dies stalls its readers (`PeersStalledError` after
`stall_seconds`, staging kept) until its Lease lapses and a waiter takes the slot over.
A download that fails its whole-file check after using peers quarantines the peers whose
piece digests it relied on, so the agent's retry goes around them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from localmodel.backoff import exponential_delay
from localmodel.errors import IntegrityError, PeerTablesRejectedError
from localmodel.fetch.archive import archive_kind
from localmodel.fetch.layout import Layout
from localmodel.peers.discovery import PeerDirectory
from localmodel.peers.origin_slots import OriginSlot, OriginSlots, SlotsUnavailableError
from localmodel.peers.partial import PartialDownloads, RecordingSource
from localmodel.peers.protocol import strong_digest
from localmodel.peers.source import (
    FillCounters,
    Peer,
    PeerClient,
    PeerError,
    PeerHealth,
    PeerMissing,
    PeerSource,
    compatible_peers,
)
from localmodel.sources.base import Listing, Settings, Source
from localmodel.sources.registry import SourceFactory, open_source

logger = logging.getLogger(__name__)


class FillStrategy(Protocol):
    """What the download pool asks before it runs the engine."""

    def session(self, key: str, uri: str, settings: Settings, cancel: threading.Event,
                open_origin: SourceFactory | None = None) -> AbstractContextManager[SourceFactory | None]: ...


class WaitCancelled(Exception):
    """The job was cancelled while it waited for a peer or a slot."""


class PeerDataRejectedError(IntegrityError):
    """A file filled from peers failed its origin digest, and the peers whose piece digests it
    relied on are now quarantined: worth one immediate retry, which goes around them."""


@dataclass(frozen=True)
class FillSettings:
    #: Longest pause between two looks for peers or a slot while waiting.
    wait_seconds: float = 1.0
    #: Age at which the cluster-wide list of LocalModelNodes is read again while waiting (the
    #: slot holders' own objects are read on every look).
    list_seconds: float = 10.0
    #: Peers whose manifests are fetched per look (a random subset when more hold the key).
    max_peers: int = 8
    #: Seconds without a new piece from peers still downloading before giving up for now.
    stall_seconds: float = 30.0
    #: Check md5/ETag digests (the engine's `verify_md5`): whether those files may come from peers.
    verify_md5: bool = True


@dataclass
class FillOutcome:
    """How the last session went (for logs, metrics and tests)."""

    mode: str = ""  # "peers", "origin-slot", "origin"
    waited_seconds: float = 0.0
    counters: FillCounters | None = None


@dataclass(frozen=True)
class _PeerPlan:
    complete: dict[str, list[Peer]]
    partial: dict[str, list[Peer]]


class PeerFill:
    """The agent's peer-to-peer policy, shared by all its download threads."""

    def __init__(self, *, directory: PeerDirectory, client: PeerClient, health: PeerHealth,
                 slots: OriginSlots | None, node_name: str, root: Path,
                 partials: PartialDownloads | None = None, settings: FillSettings | None = None,
                 open_origin: SourceFactory = open_source,
                 on_finish: Callable[[str, FillOutcome], None] = lambda key, outcome: None) -> None:
        self.directory = directory
        self.client = client
        self.health = health
        self.slots = slots
        self.node_name = node_name
        self.root = root
        self.partials = partials if partials is not None else PartialDownloads()
        self.settings = settings or FillSettings()
        self._open_origin = open_origin
        self._on_finish = on_finish
        #: Whether peers can find each other: False once the apiserver is seen pruning
        #: status.peerEndpoint (KServe's CRDs). Then downloads read the origin, without slots:
        #: waiting for a peer nobody can find would only serialize them.
        self.discovery_works: Callable[[], bool] = lambda: True

    # --- the session --------------------------------------------------------------------------

    @contextmanager
    def session(self, key: str, uri: str, settings: Settings, cancel: threading.Event,
                open_origin: SourceFactory | None = None) -> Iterator[SourceFactory | None]:
        """Blocks until this node may download `key`, then yields the source factory to hand to
        the engine (None: the origin source). `open_origin` overrides the policy's own (the
        agent passes the download's one listed origin)."""
        started = time.monotonic()
        outcome = FillOutcome()
        origin = (open_origin or self._open_origin)(uri, settings)
        owned = True  # closed here unless the engine's source took it over
        try:
            listing = origin.list_files()
            if not self._peers_can_help(listing):
                outcome.mode = "origin"
                origin.close()
                owned = False
                yield None
                return
            waits = 0
            list_age: float | None = None
            announced = False
            while True:
                if cancel.is_set():
                    raise WaitCancelled()
                if not self.discovery_works():
                    owned = False
                    with self._filling_from_origin(key, origin, listing, None, outcome) as factory:
                        yield factory
                    return
                plan = self._peer_plan(key, listing, list_age)
                if plan is not None:
                    owned = False
                    outcome.mode = "peers"
                    outcome.waited_seconds = time.monotonic() - started
                    with self._filling_from_peers(key, origin, listing, plan, outcome) as factory:
                        yield factory
                    return
                slot = self._try_slot(key)
                if slot is not None:  # a slot, or no bound to respect (False: slots unusable)
                    owned = False
                    outcome.waited_seconds = time.monotonic() - started
                    held = slot if isinstance(slot, OriginSlot) else None
                    with self._filling_from_origin(key, origin, listing, held, outcome) as factory:
                        yield factory
                    return
                if not announced:
                    announced = True
                    logger.info("waiting for a peer or a free origin slot", extra={"storage_key": key})
                if cancel.wait(exponential_delay(waits, base=0.25, cap=self.settings.wait_seconds)):
                    raise WaitCancelled()
                waits += 1
                list_age = self.settings.list_seconds
        finally:
            if owned:
                origin.close()
            self._on_finish(key, outcome)

    def _try_slot(self, key: str) -> OriginSlot | bool | None:
        """A slot; None when all are held; False when there is no bound (no slots configured,
        or the Leases cannot be used: fail open, as an agent without peer-to-peer)."""
        if self.slots is None:
            return False
        try:
            return self.slots.try_acquire(key)
        except SlotsUnavailableError as exc:
            logger.warning("origin slots unavailable; downloading from the origin",
                           extra={"storage_key": key, "error": str(exc)})
            return False

    @contextmanager
    def _filling_from_peers(self, key: str, origin: Source, listing: Listing, plan: _PeerPlan,
                            outcome: FillOutcome) -> Iterator[SourceFactory]:
        counters = FillCounters()
        outcome.counters = counters
        source = PeerSource(origin, listing, key, plan.complete, self.client, self.health,
                            self_name=self.node_name, partial_peers=plan.partial, partials=self.partials,
                            counters=counters, stall_seconds=self.settings.stall_seconds,
                            verify_md5=self.settings.verify_md5)
        logger.info("filling from peers", extra={
            "storage_key": key, "complete": sorted({p.name for v in plan.complete.values() for p in v}),
            "downloading": sorted({p.name for v in plan.partial.values() for p in v})})
        self.partials.begin(key, listing, self._data_dir(key), origin.uri)
        completed = False
        try:
            yield _handing(source)
            completed = True
        except IntegrityError as exc:
            blamed = self._blame(source, exc)
            if blamed:
                raise PeerDataRejectedError(f"{exc} (peers quarantined: {', '.join(sorted(blamed))})") from exc
            raise
        except PeerTablesRejectedError as exc:  # already quarantined by the source; staging kept
            raise PeerDataRejectedError(str(exc)) from exc
        finally:
            self.partials.end(key, completed=completed)
            source.close()

    @contextmanager
    def _filling_from_origin(self, key: str, origin: Source, listing: Listing, slot: OriginSlot | None,
                             outcome: FillOutcome) -> Iterator[SourceFactory]:
        outcome.mode = "origin-slot" if slot is not None else "origin"
        source = RecordingSource(origin, self.partials, key)
        self.partials.begin(key, listing, self._data_dir(key), origin.uri)
        completed = False
        try:
            yield _handing(source)
            completed = True
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        finally:
            self.partials.end(key, completed=completed)
            source.close()
        if slot is not None:
            slot.release(completed=True)

    def _data_dir(self, key: str) -> Path:
        return Layout.in_store(self.root, key).staging / "data"

    # --- peers ----------------------------------------------------------------------------------

    def _peers_can_help(self, listing: Listing) -> bool:
        """Some file has a digest a peer cannot forge, and the model is not one archive (an
        unpacked archive is no longer what the origin lists)."""
        files = [f for f in listing.files if not f.path.endswith("/")]
        if len(files) == 1 and listing.details.get("archive") != "none" and archive_kind(files[0].path):
            return False
        return any(strong_digest(f, verify_md5=self.settings.verify_md5) for f in files)

    def _peer_plan(self, key: str, listing: Listing, list_age: float | None) -> _PeerPlan | None:
        """Peers for every file a peer may serve: complete ones, or a live slot holder's
        download (with the other downloads in progress); None otherwise."""
        usable = self.health.usable
        complete = [p for p in self.directory.complete_peers(key, max_age=list_age) if usable(p.name)]
        downloading = [p for p in self.directory.downloading_peers(key, max_age=list_age) if usable(p.name)]
        holders = self.slots.holders(key) if self.slots is not None else []
        if holders:
            held_complete, held_downloading = self.directory.nodes(holders, key)
            complete = _merge(complete, [p for p in held_complete if usable(p.name)])
            downloading = _merge(downloading, [p for p in held_downloading if usable(p.name)])
        wanted = [f.path for f in listing.files if strong_digest(f, verify_md5=self.settings.verify_md5)]
        random.shuffle(complete)
        full = self._compatible(key, listing, complete, self.client.manifest) if complete else {}
        # Slot holders first: they are the ones sure to make progress.
        others = [p for p in downloading if p.name not in holders]
        random.shuffle(others)
        ordered = [p for p in downloading if p.name in holders] + others
        if full and all(path in full for path in wanted):
            # Downloads in progress help too, but are not needed.
            partial = self._compatible(key, listing, ordered, self.client.partial) if ordered else {}
            return _PeerPlan(full, partial)
        if not any(p.name in holders for p in ordered):
            return None
        partial = self._compatible(key, listing, ordered, self.client.partial)
        serving_holders = {p.name for peers in partial.values() for p in peers} & set(holders)
        if serving_holders and all(path in partial or path in full for path in wanted):
            return _PeerPlan(full, partial)
        return None

    def _compatible(self, key: str, listing: Listing, peers: Sequence[Peer],
                    describe: Callable[[Peer, str], Mapping[str, Mapping[str, Any]]]) -> dict[str, list[Peer]]:
        """path → peers (the first `max_peers`) whose manifest, or download listing, agrees
        with the origin's."""
        found = {}
        for peer in peers[: self.settings.max_peers]:
            try:
                found[peer.name] = (peer, describe(peer, key))
            except PeerMissing:
                continue
            except PeerError as exc:
                self.health.failed(peer.name)
                logger.debug("peer cannot describe the model", extra={"peer": peer.name, "error": str(exc)})
        return compatible_peers(listing, found, verify_md5=self.settings.verify_md5)

    def _blame(self, source: PeerSource, exc: IntegrityError) -> set[str]:
        """A file failed its whole-file check: the piece digests it was checked against lied.
        Returns the peers quarantined for it."""
        message = str(exc)
        blamed: set[str] = set()
        for path in source.peer_paths():
            if message.startswith(repr(path)):
                for name in source.table_providers(path):
                    self.health.quarantine(name, f"{path!r} failed its origin digest after a fill "
                                                 "checked against this peer's piece digests")
                    blamed.add(name)
        return blamed


def _merge(first: list[Peer], more: list[Peer]) -> list[Peer]:
    return first + [peer for peer in more if peer not in first]


def _handing(source: Source) -> SourceFactory:
    def factory(_uri: str, _settings: Settings) -> Source:
        return source
    return factory
