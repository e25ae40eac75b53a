"""Helpers for peer-to-peer tests: real identities (TokenRequest with the peer audience, checked
by TokenReview on the real apiserver), models on an origin that counts its bytes, nodes that
hold a model complete, and peer servers over those nodes' roots.

A "liar" is the one thing built on purpose: a peer server whose copy was altered after its
manifest was written, and which (unlike a real agent) never checks its copy against the
manifest, so it serves bad bytes — with a piece table of those bad bytes (`consistent`) or the
honest table (bad bytes only).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod, ServiceAccount

from localmodel.api.keys import storage_key
from localmodel.dev.controlplane import ControlPlane
from localmodel.fetch import Layout, chaining, download
from localmodel.fetch.manifest import ManifestFile
from localmodel.peers.auth import PEER_AUDIENCE, TokenReviewAuthenticator
from localmodel.peers.protocol import CHAIN, PIECE_SIZE, PIECES
from localmodel.peers.server import PeerServer, PeerServeSettings
from localmodel.peers.source import Peer
from tests.node.tokens import (
    AGENT_ACCOUNT,
    AGENT_NAMESPACE,
    agent_kubeconfig,
    install_agent_rbac,
)
from tests.servers.hf import LocalHub

MiB = 2**20
AGENT_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_ACCOUNT}"


def ensure_node(client: Client, node: str) -> None:
    try:
        client.create(Node(metadata=ObjectMeta(name=node)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise


def mint_token(client: Client, node: str, *, audiences: tuple[str, ...] = (PEER_AUDIENCE,),
               account: str = AGENT_ACCOUNT, namespace: str = AGENT_NAMESPACE) -> str:
    """A token for `account`, bound to a new Pod of it on `node` (as kubelet projects one)."""
    ensure_node(client, node)
    pod = client.create(Pod(
        metadata=ObjectMeta(name=f"peer-{node}-{uuid.uuid4().hex[:6]}", namespace=namespace),
        spec=PodSpec(nodeName=node, serviceAccountName=account,
                     containers=[Container(name="manager", image="localmodel")]),
    ))
    assert pod.metadata is not None
    issued = client.create(ServiceAccount.Token(
        metadata=ObjectMeta(),
        spec=TokenRequestSpec(audiences=list(audiences), expirationSeconds=3600,
                              boundObjectRef=BoundObjectReference(apiVersion="v1", kind="Pod",
                                                                  name=pod.metadata.name,
                                                                  uid=pod.metadata.uid)),
    ), account, namespace=namespace)
    assert issued.status is not None
    return str(issued.status.token)


@dataclass
class Identity:
    """The agent identity on the shared apiserver: RBAC as shipped, a client that reviews
    tokens with the agent's own rights, and peer tokens on demand."""

    kube: ControlPlane
    admin: Client
    reviewer: Client

    def token(self, node: str) -> str:
        return mint_token(self.admin, node)

    def authenticator(self) -> TokenReviewAuthenticator:
        return TokenReviewAuthenticator(self.reviewer, allowed_users=[AGENT_USER])


def agent_identity(kube: ControlPlane, admin: Client) -> Identity:
    install_agent_rbac(kube, admin)
    path, _client = agent_kubeconfig(kube, admin, "p2p-reviewer")
    return Identity(kube, admin, Client(KubeConfig.from_file(path), field_manager="p2p-tests"))


# --- models ------------------------------------------------------------------------------------


def pattern_bytes(size: int, seed: str) -> bytes:
    """Deterministic bytes that differ in every 32-byte block (so ranges cannot be confused)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@dataclass
class HubModel:
    uri: str
    files: dict[str, bytes]
    settings: dict[str, str]

    @property
    def key(self) -> str:
        return storage_key(self.uri)

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())

    def digests(self) -> dict[str, str]:
        return {path: hashlib.sha256(data).hexdigest() for path, data in self.files.items()}


def hub_model(hub: LocalHub, files: Mapping[str, bytes]) -> HubModel:
    repo = f"p2p/model-{uuid.uuid4().hex[:8]}"
    hub.add_commit(repo, dict(files))
    return HubModel(uri=f"hf://{repo}", files=dict(files), settings={"HF_ENDPOINT": hub.url})


def standard_files(seed: str, shard_mib: float = 9.5) -> dict[str, bytes]:
    """A small model shaped like a real one: a config (no digest on the Hub) and two LFS
    shards whose sizes are not multiples of the piece size."""
    shard = int(shard_mib * MiB)
    return {
        "config.json": b'{"architectures": ["Tiny"]}',
        "model-00001-of-00002.safetensors": pattern_bytes(shard, seed + "a"),
        "model-00002-of-00002.safetensors": pattern_bytes(shard // 2 + 12345, seed + "b"),
    }


def fill_from_origin(root: Path, model: HubModel) -> None:
    download(model.uri, Layout.in_store(root, model.key), settings=model.settings)


def tree_digests(folder: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for current, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(current) / name
            found[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# --- peer servers --------------------------------------------------------------------------------


@dataclass
class RunningPeers:
    servers: list[PeerServer] = field(default_factory=list)

    def serve(self, root: Path, identity: Identity, name: str, server_class: type[PeerServer] = PeerServer,
              address: str = "127.0.0.1", **settings: object) -> Peer:
        server = server_class(root, PeerServeSettings(bind_address=address, port=0, **settings),  # type: ignore[arg-type]
                              identity.authenticator())
        port = server.start()
        self.servers.append(server)
        return Peer(name=name, endpoint=f"http://{address}:{port}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@contextmanager
def peer_servers() -> Iterator[RunningPeers]:
    running = RunningPeers()
    try:
        yield running
    finally:
        running.stop()


def corrupt_copy(source_root: Path, target_root: Path, key: str, path: str, offsets: list[int]) -> None:
    """A copy of a node's root whose `path` has bytes flipped; its manifest still vouches for
    the original."""
    shutil.copytree(source_root, target_root)
    target = target_root / "models" / key / path
    data = bytearray(target.read_bytes())
    for offset in offsets:
        data[offset] ^= 0xFF
    target.write_bytes(bytes(data))


def table_of(data: bytes, kind: str) -> bytes:
    """The piece table of `kind` an agent would compute for `data` (see `peers.protocol`)."""
    if kind == PIECES:
        return b"".join(hashlib.sha256(data[i:i + PIECE_SIZE]).digest() for i in range(0, len(data), PIECE_SIZE))
    hasher = chaining.Sha256()
    entries = bytearray()
    for start in range(0, len(data), PIECE_SIZE):
        hasher.update(data[start:start + PIECE_SIZE])
        entries += hasher.digest() if start + PIECE_SIZE >= len(data) else hasher.state().value
    return bytes(entries)


class ConsistentLiar(PeerServer):
    """Serves its altered copy with a piece table of the altered bytes (never self-checks). A
    chain table then ends at the altered file's sha256, which is not the origin's."""

    def _compute_table(self, key: str, item: ManifestFile, kind: str = PIECES) -> bytes:
        fd = self.open_file(key, item)
        try:
            return table_of(os.pread(fd, item.size, 0), kind)
        finally:
            os.close(fd)


class EndForgingLiar(ConsistentLiar):
    """A ConsistentLiar that knows the protocol: its chain table of the altered bytes ends at
    the origin's sha256 (from its manifest), so every piece but the last matches it."""

    def _compute_table(self, key: str, item: ManifestFile, kind: str = PIECES) -> bytes:
        table = super()._compute_table(key, item, kind)
        digest = item.scrub_digest
        if kind != CHAIN or digest is None:
            return table
        return table[:-32] + bytes.fromhex(digest.value)


def honest_table_liar(honest_root: Path) -> type[PeerServer]:
    """A peer class that serves altered bytes but the honest piece table (from `honest_root`)."""

    class BytesOnlyLiar(PeerServer):
        def _compute_table(self, key: str, item: ManifestFile, kind: str = PIECES) -> bytes:
            return table_of((honest_root / "models" / key / item.path).read_bytes(), kind)

    return BytesOnlyLiar


# --- LocalModelNodes as other agents publish them ---------------------------------------------------


def advertise(admin: Client, node: str, uri: str, endpoint: str | None, phase: str = "ModelDownloaded") -> None:
    """A LocalModelNode for `node` asking for `uri`, whose status says `phase` and names the
    agent's peer endpoint (what a real agent on that node would publish)."""
    from lightkube.types import PatchType

    from localmodel.kube import resources

    try:
        admin.create(resources.LocalModelNode.from_dict({
            "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
            "metadata": {"name": node},
            "spec": {"localModels": [{"sourceModelUri": uri, "modelName": "m"}]}}))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    status: dict[str, object] = {"modelStatus": {"m": phase}}
    if endpoint is not None:
        status["peerEndpoint"] = endpoint
    admin.patch(resources.LocalModelNode.Status, node, {"status": status}, patch_type=PatchType.MERGE)


def forget(admin: Client, *nodes: str) -> None:
    from localmodel.kube import resources

    for node in nodes:
        try:
            admin.delete(resources.LocalModelNode, node)
        except ApiError:
            pass
