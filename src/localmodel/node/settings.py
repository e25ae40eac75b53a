"""Agent settings, grouped by concern. Read once from the command line; never from os.environ."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from localmodel.fetch.options import FetchOptions
from localmodel.node.aliases import FolderLayout


@dataclass(frozen=True)
class RetrySettings:
    """Backoff for failed downloads. KServe never retries a failed Job; we do."""

    #: Delay after the first failure.
    initial_seconds: float = 10.0
    #: Upper bound of the delay, however many failures came before.
    max_seconds: float = 600.0
    #: Growth per failure.
    factor: float = 2.0
    #: Spread each delay by up to this fraction, so nodes do not retry in step.
    jitter: float = 0.1


@dataclass(frozen=True)
class DownloadSettings:
    """How downloads run inside the agent."""

    #: Models downloaded at the same time; the rest wait as ModelDownloadPending.
    max_concurrent: int = 2
    #: Keep this many bytes free on the models filesystem; a download that would eat into it
    #: is refused with InsufficientSpace.
    reserve_bytes: int = 256 * 2**20
    #: Private folder for short-lived credential files (GCS keys); the DaemonSet mounts /tmp.
    temp_dir: Path | None = None
    #: Accept file://, plain paths and pvc:// (read from the agent's own filesystem; see
    #: `localmodel.node.policy`). Off in a cluster, on in the standalone mode.
    allow_local_sources: bool = False
    #: Registries (host[:port]) that oci:// may reach over plain HTTP besides loopback ones,
    #: as docker's insecure-registries (sources/oci.py).
    insecure_registries: tuple[str, ...] = ()
    #: The download engine's options (threads, chunk size, rate...), handed to it unchanged.
    engine_options: FetchOptions = field(default_factory=FetchOptions)


@dataclass(frozen=True)
class StatusSettings:
    """How often status is written."""

    #: Minimum seconds between writes that only move progress (bytes, rate, disk). A phase
    #: change is written at once.
    progress_interval_seconds: float = 5.0
    #: Seconds between log lines about a running download's progress; None for none.
    progress_log_seconds: float | None = 10.0


@dataclass(frozen=True)
class ScrubSettings:
    """Periodic full re-hash of every present model, to catch bit rot and tampering."""

    #: Seconds between two full checks of one model; None turns scrubbing off.
    interval_seconds: float | None = 7 * 24 * 3600.0


@dataclass(frozen=True)
class ServerSettings:
    """The operations endpoints. Port 0 picks a free port; None disables the endpoint."""

    bind_address: str = "0.0.0.0"
    health_port: int | None = 8081
    metrics_port: int | None = 8080


@dataclass(frozen=True)
class PeerSettings:
    """Peer-to-peer fill (see docs/p2p.md). Only in a cluster, and only when the agent has a
    peer token to show; otherwise every download reads its origin."""

    #: Port serving verified models to other agents; None turns peer-to-peer off.
    port: int | None = 8082
    #: Address other agents reach this one at ($POD_IP); None: serve, but publish no endpoint.
    advertise_address: str | None = None
    #: Headless Service over the agent Pods, in the agent's namespace: its EndpointSlices find
    #: peers whatever CRD is installed (KServe's prunes status.peerEndpoint); None: status only.
    service: str | None = "kserve-localmodelnode-agent-peers"
    #: Bytes per second served to all peers together; None = no cap.
    rate_limit: float | None = float(2**30)
    #: Peer connections served at once; more are answered 503 (busy).
    max_connections: int = 64
    #: The projected ServiceAccount token (audience `audience`) sent to peers.
    token_file: Path = Path("/var/run/secrets/localmodel/peer/token")
    #: Audience peer tokens must carry (TokenReview checks it).
    audience: str = "localmodel-peer"
    #: Usernames accepted from peers; empty: this agent's ServiceAccount in its namespace.
    allowed_users: tuple[str, ...] = ()
    #: Nodes that may download one model from its origin at once, cluster-wide; 0 = no bound.
    origin_slots: int = 1
    #: Seconds an origin slot outlives a holder that stopped renewing it.
    lease_seconds: int = 30
    #: Seconds a peer that sent bad data is left out.
    quarantine_seconds: float = 600.0
    #: Seconds without a new piece from peers still downloading before a fill gives up for now.
    stall_seconds: float = 30.0


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent needs to run, except what comes from the cluster's ConfigMap."""

    #: The host folder mounted at /mnt/models; models live in <root>/models/<storageKey>.
    root: Path
    #: This node's name ($NODE_NAME); the standalone mode uses it only in status.json.
    node_name: str
    #: Namespace of the agent ($POD_NAMESPACE): where inferenceservice-config lives.
    namespace: str = "kserve"
    #: Also show each model as models/<modelName> (KServe <= 0.17's controller); see node/aliases.
    folder_layout: FolderLayout = FolderLayout.STORAGE_KEY
    retry: RetrySettings = field(default_factory=RetrySettings)
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    scrub: ScrubSettings = field(default_factory=ScrubSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    peers: PeerSettings = field(default_factory=PeerSettings)
    #: Seconds between level-triggered passes when the ConfigMap does not say
    #: (`reconcilationFrequencyInSecs`) or in standalone mode.
    resync_seconds: float = 60.0
