"""The agent's peer-to-peer parts, built from settings and wired to its metrics: the server
that serves verified models, the policy that fills downloads from peers, and the endpoint the
agent publishes in `status.peerEndpoint`.

Peer-to-peer is on only in a cluster, with a peer port, and with a peer token to show; without
a token this agent could not read from peers, so it neither waits for them nor takes origin
slots (it downloads from the origin, as before).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightkube import Client

from localmodel.node.metrics import AgentMetrics
from localmodel.node.settings import AgentSettings, PeerSettings
from localmodel.peers.auth import TokenFile, TokenReviewAuthenticator, agent_username
from localmodel.peers.discovery import PeerDirectory
from localmodel.peers.fill import FillOutcome, FillSettings, PeerFill
from localmodel.peers.origin_slots import OriginSlots, SlotSettings
from localmodel.peers.partial import PartialDownloads
from localmodel.peers.server import PeerCounters, PeerServer, PeerServeSettings
from localmodel.peers.source import PeerClient, PeerHealth

logger = logging.getLogger(__name__)


class _MetricCounters(PeerCounters):
    def __init__(self, metrics: AgentMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def count(self, result: str) -> None:
        super().count(result)
        self._metrics.peer_requests.labels(result).inc()

    def sent(self, count: int) -> None:
        super().sent(count)
        self._metrics.peer_served_bytes.inc(count)


def _record_fill(metrics: AgentMetrics) -> Callable[[str, FillOutcome], None]:
    def finished(key: str, outcome: FillOutcome) -> None:
        if outcome.mode:
            metrics.fill_downloads.labels(outcome.mode).inc()
        counters = outcome.counters
        if counters is None:
            return
        metrics.fill_bytes.labels("peer").inc(counters.peer_bytes)
        metrics.fill_bytes.labels("origin").inc(counters.origin_bytes)
        metrics.fill_bytes.labels("arbitration").inc(counters.arbitration_bytes)
        metrics.peer_rejected_pieces.inc(counters.rejected_pieces)
        logger.info("fill finished", extra={
            "storage_key": key, "mode": outcome.mode, "peer_bytes": counters.peer_bytes,
            "origin_bytes": counters.origin_bytes, "arbitration_bytes": counters.arbitration_bytes,
            "rejected_pieces": counters.rejected_pieces, "waited_seconds": round(outcome.waited_seconds, 3)})
    return finished


@dataclass
class PeerRuntime:
    settings: PeerSettings
    root: Path
    bind_address: str
    authenticator: TokenReviewAuthenticator
    fill: PeerFill
    client: PeerClient
    metrics: AgentMetrics
    partials: PartialDownloads
    server: PeerServer | None = None
    #: Published in status once the server is listening.
    endpoint: str | None = None

    def start(self, *, on_damage: Callable[[str, str], None]) -> None:
        """Serve (a port already taken is logged, not fatal: filling from peers still works)."""
        assert self.settings.port is not None
        server = PeerServer(
            self.root,
            PeerServeSettings(bind_address=self.bind_address, port=self.settings.port,
                              rate_limit=self.settings.rate_limit,
                              max_connections=self.settings.max_connections),
            self.authenticator, on_damage=on_damage, counters=_MetricCounters(self.metrics),
            partials=self.partials)
        try:
            port = server.start()
        except OSError as exc:
            logger.error("cannot serve peers; this node only reads from them",
                         extra={"port": self.settings.port, "error": str(exc)})
            return
        self.server = server
        if self.settings.advertise_address:
            host = self.settings.advertise_address
            host = f"[{host}]" if ":" in host else host
            self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.client.close()


def build_peer_runtime(agent: AgentSettings, client: Client, metrics: AgentMetrics) -> PeerRuntime | None:
    """The peer parts for this agent, or None when peer-to-peer is off (logged)."""
    settings = agent.peers
    engine = agent.downloads.engine_options
    if settings.port is None:
        logger.info("peer-to-peer off (no peer port)")
        return None
    if not engine.verify:
        # Peers are trusted only because every file is checked against the origin's digests.
        logger.warning("peer-to-peer off: the engine is told not to verify downloads")
        return None
    verify_md5 = engine.verify_md5
    token = TokenFile(settings.token_file)
    if token.token() is None:
        logger.info("peer-to-peer off: no peer token", extra={"token_file": str(settings.token_file)})
        return None
    allowed = settings.allowed_users or (agent_username(agent.namespace),)
    authenticator = TokenReviewAuthenticator(client, allowed_users=allowed, audience=settings.audience)
    health = PeerHealth(quarantine_seconds=settings.quarantine_seconds,
                        on_quarantine=lambda peer, reason: metrics.peer_quarantines.inc())
    peer_client = PeerClient(token.token)
    slots = None
    if settings.origin_slots > 0:
        slots = OriginSlots(client, SlotSettings(namespace=agent.namespace, identity=agent.node_name,
                                                 slots=settings.origin_slots,
                                                 lease_seconds=settings.lease_seconds))
    partials = PartialDownloads()
    fill = PeerFill(directory=PeerDirectory(client, node_name=agent.node_name,
                                              service=(agent.namespace, settings.service) if settings.service else None), client=peer_client,
                    health=health, slots=slots, node_name=agent.node_name, root=agent.root, partials=partials,
                    settings=FillSettings(verify_md5=verify_md5, stall_seconds=settings.stall_seconds),
                    on_finish=_record_fill(metrics))
    return PeerRuntime(settings=settings, root=agent.root, bind_address=agent.server.bind_address,
                       authenticator=authenticator, fill=fill, client=peer_client, metrics=metrics,
                       partials=partials)
