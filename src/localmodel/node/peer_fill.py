"""How one download job decides where its bytes come from: complete peers, or the origin
under a cluster-wide slot, or — when neither is available yet — waiting.

    session(key, uri) ─ list the origin (the only source of truth for files and digests)
        │  no file with a digest a peer cannot forge → plain origin download (as without P2P)
        └─ loop:
             complete peers whose manifests agree with the listing → PeerSource (peers, with
                                                                    per-piece origin fallback)
             else an origin slot (Lease) free or expired          → origin download, slot held
             else wait (0.5 s doubling to `poll_seconds`), cancellable

Preferring complete peers to a free slot keeps origin traffic at about one copy once any copy
exists. A download that fails its whole-file check after using peers quarantines the peers
whose piece tables it relied on, so the agent's retry goes around them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from localmodel.errors import IntegrityError
from localmodel.node.origin_slots import OriginSlots, SlotsUnavailableError
from localmodel.node.peer_discovery import PeerDirectory
from localmodel.sources.base import Listing, Settings, Source
from localmodel.sources.peer import (
    FillCounters,
    Peer,
    PeerClient,
    PeerError,
    PeerHealth,
    PeerSource,
    compatible_peers,
)
from localmodel.sources.peer_protocol import strong_digest
from localmodel.sources.registry import SourceFactory, open_source

logger = logging.getLogger(__name__)


class FillStrategy(Protocol):
    """What the download pool asks before it runs the engine."""

    def session(self, key: str, uri: str, settings: Settings,
                cancel: threading.Event) -> AbstractContextManager[SourceFactory | None]: ...


class WaitCancelled(Exception):
    """The job was cancelled while it waited for a peer or a slot."""


@dataclass(frozen=True)
class FillSettings:
    #: Longest pause between two looks for peers or a slot while waiting.
    poll_seconds: float = 5.0
    #: Peers whose manifests are fetched per look (a random subset when more hold the key).
    max_peers: int = 8
    #: Check md5/ETag digests (the engine's `verify_md5`): whether those files may come from peers.
    verify_md5: bool = True


@dataclass
class FillOutcome:
    """How the last session went (for logs, metrics and tests)."""

    mode: str = ""  # "peers", "origin-slot", "origin"
    waited_seconds: float = 0.0
    counters: FillCounters | None = None


class PeerFill:
    """The agent's peer-to-peer policy, shared by all its download threads."""

    def __init__(self, *, directory: PeerDirectory, client: PeerClient, health: PeerHealth,
                 slots: OriginSlots | None, node_name: str, settings: FillSettings | None = None,
                 open_origin: SourceFactory = open_source,
                 on_finish: Callable[[str, FillOutcome], None] = lambda key, outcome: None) -> None:
        self.directory = directory
        self.client = client
        self.health = health
        self.slots = slots
        self.node_name = node_name
        self.settings = settings or FillSettings()
        self._open_origin = open_origin
        self._on_finish = on_finish

    # --- the session --------------------------------------------------------------------------

    @contextmanager
    def session(self, key: str, uri: str, settings: Settings,
                cancel: threading.Event) -> Iterator[SourceFactory | None]:
        """Blocks until this node may download `key`, then yields the source factory to hand to
        the engine (None: the registry's origin source)."""
        started = time.monotonic()
        outcome = FillOutcome()
        origin = self._open_origin(uri, settings)
        owned = True  # closed here unless a PeerSource took it over
        try:
            listing = origin.list_files()
            if not any(strong_digest(f, verify_md5=self.settings.verify_md5) for f in listing.files):
                outcome.mode = "origin"
                origin.close()
                owned = False
                yield None
                return
            delay = 0.5
            announced = False
            while True:
                if cancel.is_set():
                    raise WaitCancelled()
                usable = self._usable_peers(key, listing)
                if usable:
                    counters = FillCounters()
                    source = PeerSource(origin, listing, key, usable, self.client, self.health,
                                        self_name=self.node_name, counters=counters,
                                        verify_md5=self.settings.verify_md5)
                    owned = False
                    outcome.mode, outcome.counters = "peers", counters
                    outcome.waited_seconds = time.monotonic() - started
                    holders = sorted({p.name for peers in usable.values() for p in peers})
                    logger.info("filling from peers", extra={"storage_key": key, "peers": holders})
                    try:
                        yield _handing(source)
                    except IntegrityError as exc:
                        self._blame(source, exc)
                        raise
                    finally:
                        source.close()
                    return
                if self.slots is None:
                    outcome.mode = "origin"
                    break
                try:
                    slot = self.slots.try_acquire(key)
                except SlotsUnavailableError as exc:
                    logger.warning("origin slots unavailable; downloading from the origin",
                                   extra={"storage_key": key, "error": str(exc)})
                    outcome.mode = "origin"
                    break
                if slot is not None:
                    outcome.mode = "origin-slot"
                    outcome.waited_seconds = time.monotonic() - started
                    origin.close()
                    owned = False
                    try:
                        yield None
                    except BaseException:
                        slot.release()
                        raise
                    slot.release(completed=True)
                    return
                if not announced:
                    announced = True
                    logger.info("waiting for a complete peer or a free origin slot",
                                extra={"storage_key": key, "origin_slots": self.slots.settings.slots})
                if cancel.wait(delay):
                    raise WaitCancelled()
                delay = min(delay * 2, self.settings.poll_seconds)
            origin.close()
            owned = False
            yield None
        finally:
            if owned:
                origin.close()
            self._on_finish(key, outcome)

    # --- peers ----------------------------------------------------------------------------------

    def _usable_peers(self, key: str, listing: Listing) -> dict[str, list[Peer]]:
        """path → peers to read it from, when complete peers agree with the listing on every
        file a peer may serve; {} otherwise."""
        peers = [peer for peer in self.directory.complete_peers(key) if self.health.usable(peer.name)]
        if not peers:
            return {}
        random.shuffle(peers)
        manifests = {}
        for peer in peers[: self.settings.max_peers]:
            try:
                manifests[peer.name] = (peer, self.client.manifest(peer, key))
            except PeerError as exc:
                self.health.failed(peer.name)
                logger.info("peer manifest unavailable", extra={"peer": peer.name, "error": str(exc)})
        usable = compatible_peers(listing, manifests, verify_md5=self.settings.verify_md5)
        wanted = [f.path for f in listing.files if strong_digest(f, verify_md5=self.settings.verify_md5)]
        if not all(path in usable for path in wanted):
            return {}
        return usable

    def _blame(self, source: PeerSource, exc: IntegrityError) -> None:
        """A file failed its whole-file check: the piece tables it was checked against lied."""
        message = str(exc)
        for path in source.peer_paths():
            if message.startswith(repr(path)):
                for name in source.table_providers(path):
                    self.health.quarantine(name, f"{path!r} failed its origin digest after a fill "
                                                 "checked against this peer's piece table")


def _handing(source: Source) -> SourceFactory:
    def factory(_uri: str, _settings: Settings) -> Source:
        return source
    return factory
