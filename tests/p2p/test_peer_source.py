"""The engine filling a model from peers through PeerSource: every byte checked against the
origin's digests, bad pieces refused and fetched elsewhere, liars quarantined, failures of a
peer answered per piece by another peer or the origin (the local Hub counts its bytes)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from localmodel.errors import IntegrityError, PeerTablesRejectedError
from localmodel.fetch import Layout, chaining, download, read_manifest
from localmodel.peers.protocol import PIECE_SIZE
from localmodel.peers.server import PeerServer
from localmodel.peers.source import (
    FillCounters,
    Peer,
    PeerClient,
    PeerHealth,
    PeerSource,
    compatible_peers,
)
from localmodel.sources.registry import open_source
from tests.p2p.peers import (
    ConsistentLiar,
    EndForgingLiar,
    HubModel,
    Identity,
    corrupt_copy,
    fill_from_origin,
    honest_table_liar,
    hub_model,
    peer_servers,
    standard_files,
    tree_digests,
)
from tests.servers.hf import LocalHub

SHARD = "model-00001-of-00002.safetensors"


class Fill:
    """One fill of `model` into `root` from `peers`, with its counters and peer health."""

    def __init__(self, model: HubModel, peers: list[Peer], identity: Identity,
                 health: PeerHealth | None = None) -> None:
        self.model = model
        self.peers = peers
        token = identity.token("receiver")
        self.client = PeerClient(lambda: token)
        self.health = health or PeerHealth()
        self.counters = FillCounters()
        self.source: PeerSource | None = None

    def usable(self) -> dict[str, list[Peer]]:
        origin = open_source(self.model.uri, self.model.settings)
        try:
            listing = origin.list_files()
        finally:
            origin.close()
        manifests = {p.name: (p, self.client.manifest(p, self.model.key)) for p in self.peers}
        return compatible_peers(listing, manifests)

    def open(self) -> PeerSource:
        """The PeerSource `run` hands the engine (the caller closes it)."""
        origin = open_source(self.model.uri, self.model.settings)
        listing = origin.list_files()
        manifests = {}
        for peer in self.peers:
            try:
                manifests[peer.name] = (peer, self.client.manifest(peer, self.model.key))
            except Exception:  # noqa: BLE001 - a dead peer simply has no manifest
                pass
        usable = compatible_peers(listing, manifests)
        if not usable:  # only dead peers: still go through PeerSource with their names
            usable = {f.path: list(self.peers) for f in listing.files if f.digest is not None}
        self.source = PeerSource(origin, listing, self.model.key, usable, self.client, self.health,
                                 self_name="receiver", counters=self.counters, busy_patience=2.0)
        return self.source

    def run(self, root: Path) -> None:
        source = self.open()
        download(self.model.uri, Layout.in_store(root, self.model.key), settings=self.model.settings,
                 source_factory=lambda _u, _s: source)


def lfs_bytes(model: HubModel) -> int:
    return sum(len(d) for p, d in model.files.items() if p.endswith(".safetensors"))


@pytest.fixture
def seeded(tmp_path: Path, hf_hub: LocalHub) -> tuple[HubModel, Path]:
    model = hub_model(hf_hub, standard_files(tmp_path.name))
    seed = tmp_path / "seed"
    fill_from_origin(seed, model)
    return model, seed


def test_fill_from_two_honest_peers_takes_only_undigested_files_from_the_origin(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    model, seed = seeded
    second = tmp_path / "second"
    with peer_servers() as running:
        first_peer = running.serve(seed, identity, "seed")
        fill = Fill(model, [first_peer], identity)
        fill.run(second)  # the second node fills from the first...
        second_peer = running.serve(second, identity, "second")
        before = hf_hub.bytes_served
        fill = Fill(model, [first_peer, second_peer], identity)
        fill.run(tmp_path / "third")  # ... and the third from both
    assert tree_digests(tmp_path / "third" / "models" / model.key) == model.digests()
    # config.json has no sha256 on the Hub: a peer could not be checked, so it comes from the origin.
    assert hf_hub.bytes_served - before == len(model.files["config.json"])
    assert fill.counters.peer_bytes == lfs_bytes(model)
    assert fill.counters.rejected_pieces == 0 and fill.health.quarantined() == {}
    served = [server.counters.bytes_sent for server in running.servers]
    assert all(count > 0 for count in served[:2]), served  # pieces spread over both peers
    manifest = read_manifest(Layout.in_store(tmp_path / "third", model.key))
    assert manifest is not None and manifest.source == model.uri
    assert all(f.digest_checked for f in manifest.files if f.path.endswith(".safetensors"))


def test_a_peer_serving_bad_bytes_is_refused_per_piece_and_quarantined(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    model, seed = seeded
    size = len(model.files[SHARD])
    liar_root = tmp_path / "liar"
    corrupt_copy(seed, liar_root, model.key, SHARD, [i * PIECE_SIZE + 99 for i in range(size // PIECE_SIZE + 1)])
    with peer_servers() as running:
        honest = running.serve(seed, identity, "honest")
        liar = running.serve(liar_root, identity, "liar", server_class=honest_table_liar(seed))
        before = hf_hub.bytes_served
        fill = Fill(model, [liar, honest], identity)
        fill.run(tmp_path / "receiver")
    assert tree_digests(tmp_path / "receiver" / "models" / model.key) == model.digests()
    assert fill.counters.rejected_pieces >= 1
    assert "liar" in fill.health.quarantined() and "honest" not in fill.health.quarantined()
    # Every refused piece was read again from the honest peer, not from the origin.
    assert hf_hub.bytes_served - before == len(model.files["config.json"])


def test_a_file_filled_from_peers_is_hashed_once(
        seeded: tuple[HubModel, Path], tmp_path: Path, identity: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    """One sha256 pass per byte: each piece is checked against the chain table as it arrives,
    and the engine takes the checked chaining values instead of hashing the file again."""
    model, seed = seeded
    hashed = {"bytes": 0}
    lock = threading.Lock()
    update = chaining.Sha256.update

    def counting(self: chaining.Sha256, data: bytes | memoryview) -> None:
        if threading.current_thread().name.startswith("localmodel-"):  # the receiver's engine
            with lock:
                hashed["bytes"] += memoryview(data).nbytes
        update(self, data)

    with peer_servers() as running:
        peer = running.serve(seed, identity, "seed")
        monkeypatch.setattr(chaining.Sha256, "update", counting)
        fill = Fill(model, [peer], identity)
        fill.run(tmp_path / "receiver")
    assert tree_digests(tmp_path / "receiver" / "models" / model.key) == model.digests()
    assert fill.counters.peer_bytes == lfs_bytes(model)
    assert hashed["bytes"] == lfs_bytes(model)  # not twice that
    manifest = read_manifest(Layout.in_store(tmp_path / "receiver", model.key))
    assert manifest is not None
    assert {f.path: f.sha256 for f in manifest.files if f.path.endswith(".safetensors")} == {
        path: hashlib.sha256(data).hexdigest() for path, data in model.files.items() if path.endswith(".safetensors")}


def test_a_lone_liar_whose_chain_ends_elsewhere_stops_the_fill_without_origin_bytes(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    """The only complete peer's table is refused on sight: the file is not read from the
    origin behind the origin slots' back; the fill stops (staging kept) for a retry without it."""
    model, seed = seeded
    liar_root = tmp_path / "liar"
    corrupt_copy(seed, liar_root, model.key, SHARD, [12345])
    receiver = tmp_path / "receiver"
    with peer_servers() as running:
        liar = running.serve(liar_root, identity, "liar", server_class=ConsistentLiar)
        before = hf_hub.bytes_served
        fill = Fill(model, [liar], identity)
        with pytest.raises(PeerTablesRejectedError, match=SHARD):
            fill.run(receiver)
    assert "liar" in fill.health.quarantined()
    assert hf_hub.bytes_served - before <= len(model.files["config.json"])  # not the shard
    assert read_manifest(Layout.in_store(receiver, model.key)) is None
    assert (receiver / "staging" / model.key).is_dir()  # kept for the retry


@pytest.mark.parametrize("caught", ["mid-file", "before-its-table"])
@pytest.mark.parametrize(("liar_class", "stop"), [(ConsistentLiar, PeerTablesRejectedError),
                                                  (EndForgingLiar, IntegrityError)], ids=["own-end", "forged-end"])
def test_a_liar_caught_on_one_file_stops_the_files_it_was_filling_without_origin_bytes(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity, caught: str,
        liar_class: type[ConsistentLiar], stop: type[Exception]) -> None:
    """The lone peer lies only about SHARD, but the engine fills files side by side: once it
    is caught there, the other shard is not read from the origin around the origin slots
    either (mid-file: the rest of it, piece by piece; before its table: all of it).
    own-end: its SHARD table is refused on sight, and the other shard stops with its staging
    kept (PeerTablesRejectedError); forged-end: SHARD's last piece does not match, one origin
    piece shows the table lied (IntegrityError), and the other shard, whose bytes came checked
    against that liar's table, stops as an integrity failure too (staging wiped)."""
    model, seed = seeded
    other = "model-00002-of-00002.safetensors"
    assert len(model.files[other]) > PIECE_SIZE  # a piece before the liar is caught, one after
    corrupt_copy(seed, tmp_path / "liar", model.key, SHARD, [12345])
    last_piece = len(model.files[SHARD]) % PIECE_SIZE or PIECE_SIZE
    settled_by = 0 if liar_class is ConsistentLiar else last_piece  # the origin piece that shows the lie
    with peer_servers() as running:
        liar = running.serve(tmp_path / "liar", identity, "liar", server_class=liar_class)
        before = hf_hub.bytes_served
        fill = Fill(model, [liar], identity)
        source = fill.open()
        try:
            reading = source.read_range(other, 0, len(model.files[other]))
            if caught == "mid-file":
                first = bytes(next(reading))  # checked against the liar's honest table of `other`
                assert first == model.files[other][:PIECE_SIZE]
            with pytest.raises(stop, match=SHARD):
                list(source.read_range(SHARD, 0, len(model.files[SHARD])))
            with pytest.raises(stop, match=rf"{other}.*liar \(about '{SHARD}'\)"):
                list(reading)
        finally:
            source.close()
    assert fill.health.quarantined().keys() == {"liar"}
    assert fill.counters.origin_bytes == settled_by
    assert hf_hub.bytes_served - before == settled_by


@pytest.mark.parametrize(("liar_class", "origin_pieces"), [(ConsistentLiar, 0), (EndForgingLiar, 1)],
                         ids=["own-end", "forged-end"])
def test_a_lying_piece_table_beside_an_honest_one_is_caught(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity,
        liar_class: type[ConsistentLiar], origin_pieces: int) -> None:
    """own-end: a chain table that does not end at the origin's sha256 is refused on sight,
    before any piece, with no origin piece; forged-end: the two tables differ at piece 1, and
    one piece read from the origin settles who lied."""
    model, seed = seeded
    liar_root = tmp_path / "liar"
    corrupt_copy(seed, liar_root, model.key, SHARD, [PIECE_SIZE + 5])
    with peer_servers() as running:
        honest = running.serve(seed, identity, "honest")
        liar = running.serve(liar_root, identity, "liar", server_class=liar_class)
        before = hf_hub.bytes_served
        fill = Fill(model, [liar, honest], identity)
        fill.run(tmp_path / "receiver")
    assert tree_digests(tmp_path / "receiver" / "models" / model.key) == model.digests()
    assert "liar" in fill.health.quarantined()
    assert fill.counters.rejected_pieces == 0  # caught by its table, not by a piece
    assert fill.counters.arbitration_bytes == origin_pieces * PIECE_SIZE
    assert hf_hub.bytes_served - before == len(model.files["config.json"]) + origin_pieces * PIECE_SIZE
    assert fill.source is not None and "liar" not in fill.source.table_providers(SHARD)


def test_a_lone_consistent_liar_cannot_poison_the_cache(
        seeded: tuple[HubModel, Path], tmp_path: Path, identity: Identity) -> None:
    model, seed = seeded
    liar_root = tmp_path / "liar"
    corrupt_copy(seed, liar_root, model.key, SHARD, [12345])
    receiver = tmp_path / "receiver"
    with peer_servers() as running:
        liar = running.serve(liar_root, identity, "liar", server_class=EndForgingLiar)
        fill = Fill(model, [liar], identity)
        with pytest.raises(IntegrityError, match=SHARD):
            fill.run(receiver)
    # Every piece but the last matched the liar's own chain; the last link, the origin's
    # sha256, did not, and the origin's copy of the last piece did not match the table either.
    assert read_manifest(Layout.in_store(receiver, model.key)) is None
    assert not (receiver / "models" / model.key).exists()
    assert fill.source is not None and fill.source.table_providers(SHARD) == {"liar"}
    assert "liar" in fill.health.quarantined()


def test_a_peer_that_fails_mid_body_is_replaced_per_piece(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    model, seed = seeded

    class DropsEveryOtherBody(PeerServer):
        calls = 0

        def send_file(self, connection, fd, start, end):  # type: ignore[no-untyped-def]
            DropsEveryOtherBody.calls += 1
            if DropsEveryOtherBody.calls % 2:
                super().send_file(connection, fd, start, start + (end - start) // 2)
                raise ConnectionError("dropped on purpose")
            super().send_file(connection, fd, start, end)

    with peer_servers() as running:
        flaky = running.serve(seed, identity, "flaky", server_class=DropsEveryOtherBody)
        before = hf_hub.bytes_served
        fill = Fill(model, [flaky], identity)
        fill.run(tmp_path / "receiver")
    assert tree_digests(tmp_path / "receiver" / "models" / model.key) == model.digests()
    # Pieces the only peer failed came from the origin, piece by piece (not whole files).
    origin = hf_hub.bytes_served - before - len(model.files["config.json"])
    assert fill.counters.origin_bytes == origin + len(model.files["config.json"])
    assert 0 < origin < lfs_bytes(model)
    assert fill.counters.peer_bytes + origin == lfs_bytes(model)
    assert fill.health.quarantined() == {}  # failing is not lying


def test_an_unreachable_peer_means_the_origin(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    model, _seed = seeded
    from tests.servers.ports import free_port

    dead = Peer("dead", f"http://127.0.0.1:{free_port()}")
    before = hf_hub.bytes_served
    fill = Fill(model, [dead], identity)
    fill.run(tmp_path / "receiver")
    assert tree_digests(tmp_path / "receiver" / "models" / model.key) == model.digests()
    assert hf_hub.bytes_served - before == model.size
    assert fill.counters.peer_bytes == 0


def test_a_peer_holding_another_revision_is_not_used(
        seeded: tuple[HubModel, Path], tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    model, seed = seeded
    repo = model.uri.removeprefix("hf://")
    changed = dict(model.files)
    changed[SHARD] = changed[SHARD][:-1] + b"!"
    hf_hub.add_commit(repo, changed)  # main moves on; the seed holds the old commit
    with peer_servers() as running:
        old = running.serve(seed, identity, "old")
        fill = Fill(model, [old], identity)
        usable = fill.usable()
    assert SHARD not in usable
    assert [p.name for p in usable["model-00002-of-00002.safetensors"]] == ["old"]  # unchanged file
