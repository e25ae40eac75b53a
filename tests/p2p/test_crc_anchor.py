"""Peers of an origin whose cheapest digest is a CRC (S3's CRC64NVME, as S3 gives every new
object): a file from the origin alone is verified with the CRC, but a file filled from peers
is verified with the anchor beside it (the ETag's MD5), because a peer can forge a CRC. The
liar here does: its bytes differ from the origin's and still have the origin's CRC64NVME."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localmodel.api.keys import storage_key
from localmodel.errors import IntegrityError
from localmodel.fetch import Layout, download, read_manifest
from localmodel.fetch.hashing import crc_update
from localmodel.peers.protocol import anchored, strong_digest
from localmodel.peers.source import FillCounters, PeerClient, PeerHealth, PeerSource, compatible_peers
from localmodel.sources.base import Digest
from localmodel.sources.registry import open_source
from tests.p2p.peers import ConsistentLiar, Identity, pattern_bytes, peer_servers
from tests.servers.s3 import S3Server

SHARD = "model.safetensors"
MiB = 1024 * 1024


@dataclass
class S3Model:
    uri: str
    data: bytes
    settings: dict[str, str]

    @property
    def key(self) -> str:
        return storage_key(self.uri)


@pytest.fixture
def s3_model(moto_s3: S3Server, tmp_path: Path) -> Iterator[S3Model]:
    client = moto_s3.client()
    bucket = f"crc-{tmp_path.name[-20:].lower().replace('_', '-')}".rstrip("-")
    client.create_bucket(Bucket=bucket)
    data = pattern_bytes(9 * MiB + 4321, tmp_path.name)
    client.put_object(Bucket=bucket, Key=f"m/{SHARD}", Body=data, ChecksumAlgorithm="CRC64NVME")
    yield S3Model(f"s3://{bucket}/m", data, moto_s3.settings())


def forge_same_crc64nvme(data: bytes, flip_at: int, fix_at: int) -> bytes:
    """`data` with the byte at `flip_at` changed and the 8 bytes at `fix_at` chosen so that the
    CRC64NVME is still the original's: a CRC is affine over GF(2), so the change each of the 64
    bits makes to it is a fixed vector, and 64 of them solve for any change (Gaussian
    elimination)."""
    def crc(buffer: bytes | bytearray) -> int:
        return crc_update("crc64nvme", bytes(buffer))

    target = crc(data)
    forged = bytearray(data)
    forged[flip_at] ^= 0xFF
    base = crc(forged)
    columns = []
    for bit in range(64):
        trial = bytearray(forged)
        trial[fix_at + bit // 8] ^= 1 << (bit % 8)
        columns.append((crc(trial) ^ base, 1 << bit))
    wanted, chosen = base ^ target, 0
    basis: dict[int, tuple[int, int]] = {}  # leading bit -> (vector, bits combined)
    for vector, bits in columns:
        for lead in sorted(basis, reverse=True):
            if vector >> lead & 1:
                vector, bits = vector ^ basis[lead][0], bits ^ basis[lead][1]
        if vector:
            basis[vector.bit_length() - 1] = (vector, bits)
    for lead in sorted(basis, reverse=True):
        if wanted >> lead & 1:
            wanted, chosen = wanted ^ basis[lead][0], chosen ^ basis[lead][1]
    assert wanted == 0, "64 bits of a CRC64 window always span every change"
    for bit in range(64):
        if chosen >> bit & 1:
            forged[fix_at + bit // 8] ^= 1 << (bit % 8)
    assert crc(forged) == target and bytes(forged) != data
    return bytes(forged)


def fill(model: S3Model, root: Path, peers: list, identity: Identity) -> tuple[PeerSource, PeerHealth, FillCounters]:
    token = identity.token("receiver")
    client = PeerClient(lambda: token)
    origin = open_source(model.uri, model.settings)
    listing = origin.list_files()
    manifests = {p.name: (p, client.manifest(p, model.key)) for p in peers}
    usable = compatible_peers(listing, manifests)
    assert SHARD in usable, "a peer holding the same object must be usable beside a CRC"
    health, counters = PeerHealth(), FillCounters()
    source = PeerSource(origin, listing, model.key, usable, client, health, self_name="receiver",
                        counters=counters, busy_patience=2.0)
    download(model.uri, Layout.in_store(root, model.key), settings=model.settings,
             source_factory=lambda _u, _s: source)
    return source, health, counters


def test_the_origin_alone_is_verified_with_its_crc_and_peers_with_the_anchor(
        s3_model: S3Model, tmp_path: Path, identity: Identity) -> None:
    seed = tmp_path / "seed"
    download(s3_model.uri, Layout.in_store(seed, s3_model.key), settings=s3_model.settings)
    manifest = read_manifest(Layout.in_store(seed, s3_model.key))
    assert manifest is not None
    [entry] = manifest.files
    # From the origin: the CRC64NVME, computed once per range from memory; no sha256 at all.
    assert entry.verified_with == "crc64nvme" and entry.sha256 is None
    assert entry.local == Digest("crc64nvme", f"{crc_update('crc64nvme', s3_model.data):016x}")
    origin = open_source(s3_model.uri, s3_model.settings)
    [remote] = origin.list_files().files
    origin.close()
    assert strong_digest(remote) and anchored(remote).digest == Digest("md5", hashlib.md5(s3_model.data).hexdigest())

    with peer_servers() as running:
        peer = running.serve(seed, identity, "seed")
        source, health, counters = fill(s3_model, tmp_path / "receiver", [peer], identity)
        assert counters.peer_bytes == len(s3_model.data) and health.quarantined() == {}
        assert (tmp_path / "receiver" / "models" / s3_model.key / SHARD).read_bytes() == s3_model.data
        filled = read_manifest(Layout.in_store(tmp_path / "receiver", s3_model.key))
        assert filled is not None
        # From peers: checked against the MD5 the origin guarantees, which no peer can forge.
        assert filled.files[0].verified_with == "md5" and filled.files[0].digest_checked
        # That copy (its manifest names the MD5, not the CRC) serves the next node in turn.
        second = running.serve(tmp_path / "receiver", identity, "receiver")
        _, health, counters = fill(s3_model, tmp_path / "third", [second], identity)
        assert counters.peer_bytes == len(s3_model.data) and health.quarantined() == {}
    assert (tmp_path / "third" / "models" / s3_model.key / SHARD).read_bytes() == s3_model.data


def test_a_liar_that_forges_the_crc_cannot_poison_the_cache(
        s3_model: S3Model, tmp_path: Path, identity: Identity) -> None:
    seed = tmp_path / "seed"
    download(s3_model.uri, Layout.in_store(seed, s3_model.key), settings=s3_model.settings)
    liar_root = tmp_path / "liar"
    shutil.copytree(seed, liar_root)
    target = liar_root / "models" / s3_model.key / SHARD
    target.write_bytes(forge_same_crc64nvme(s3_model.data, flip_at=12345, fix_at=5 * MiB + 17))
    receiver = tmp_path / "receiver"
    with peer_servers() as running:
        # Tables that match its forged bytes, a manifest that claims the origin's digests.
        liar = running.serve(liar_root, identity, "liar", server_class=ConsistentLiar)
        token = identity.token("receiver")
        client = PeerClient(lambda: token)
        origin = open_source(s3_model.uri, s3_model.settings)
        listing = origin.list_files()
        usable = compatible_peers(listing, {"liar": (liar, client.manifest(liar, s3_model.key))})
        source = PeerSource(origin, listing, s3_model.key, usable, client, PeerHealth(),
                            self_name="receiver", busy_patience=2.0)
        with pytest.raises(IntegrityError, match=SHARD) as caught:
            download(s3_model.uri, Layout.in_store(receiver, s3_model.key), settings=s3_model.settings,
                     source_factory=lambda _u, _s: source)
    # Every piece matched the liar's own table, so only the whole-file check could catch it,
    # and the agent blames the table's provider (`peers.fill`).
    assert source.table_providers(SHARD) == {"liar"}
    # The forged bytes pass the CRC64NVME; the ETag's MD5 refuses them: nothing published.
    assert "md5" in str(caught.value)
    assert read_manifest(Layout.in_store(receiver, s3_model.key)) is None
    assert not (receiver / "models" / s3_model.key).exists()
