"""The fill policy of one download on the real apiserver: complete peers found in
LocalModelNodes first, else an origin slot, else wait; liars quarantined across attempts;
fail open when slots cannot be used; no waiting for models a peer could not be trusted with."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localmodel.errors import IntegrityError, PeersStalledError
from localmodel.fetch import FetchOptions, Layout, download
from localmodel.peers.discovery import PeerDirectory
from localmodel.peers.fill import FillOutcome, FillSettings, PeerFill, WaitCancelled
from localmodel.peers.origin_slots import OriginSlots, SlotSettings
from localmodel.peers.partial import PartialDownloads
from localmodel.peers.source import Peer, PeerClient, PeerHealth
from tests.node.agent_process import wait_until
from tests.node.tokens import AGENT_NAMESPACE
from tests.p2p.peers import (
    EndForgingLiar,
    HubModel,
    Identity,
    MiB,
    advertise,
    corrupt_copy,
    fill_from_origin,
    forget,
    hub_model,
    peer_servers,
    standard_files,
    tree_digests,
)
from tests.servers.hf import LocalHub
from tests.servers.http import FaultServer

pytestmark = pytest.mark.usefixtures("localmodel_crds")
SHARD = "model-00001-of-00002.safetensors"


class Receiver:
    """The policy of one node, with what it decided."""

    def __init__(self, identity: Identity, root: Path, namespace: str = AGENT_NAMESPACE, slots: int = 1,
                 partials: PartialDownloads | None = None, stall_seconds: float = 30.0) -> None:
        self.node = f"recv-{uuid.uuid4().hex[:6]}"
        self.root = root
        token = identity.token(self.node)
        self.directory = PeerDirectory(identity.reviewer, node_name=self.node, ttl=0.2)
        self.health = PeerHealth()
        self.outcomes: list[FillOutcome] = []
        self.fill = PeerFill(
            directory=self.directory, client=PeerClient(lambda: token), health=self.health,
            slots=OriginSlots(identity.reviewer, SlotSettings(namespace=namespace, identity=self.node,
                                                              slots=slots, lease_seconds=30)),
            node_name=self.node, root=root, partials=partials,
            settings=FillSettings(stall_seconds=stall_seconds),
            on_finish=lambda key, outcome: self.outcomes.append(outcome))

    def download(self, uri: str, key: str, settings: dict[str, str],
                 cancel: threading.Event | None = None) -> None:
        cancel = cancel or threading.Event()

        def stop_when_cancelled(_progress: object) -> None:
            if cancel.is_set():  # as the agent's jobs do: the engine stops, staging is kept
                raise WaitCancelled()

        with self.fill.session(key, uri, settings, cancel) as factory:
            download(uri, Layout.in_store(self.root, key), settings=settings, source_factory=factory,
                     progress=stop_when_cancelled, options=FetchOptions(progress_interval=0.2))


@pytest.fixture
def model(hf_hub: LocalHub, tmp_path: Path) -> HubModel:
    return hub_model(hf_hub, standard_files(tmp_path.name))


@pytest.fixture
def nodes(identity: Identity) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    forget(identity.admin, *created)


def hold_slot(identity: Identity, key: str, node: str) -> object:
    slots = OriginSlots(identity.reviewer, SlotSettings(namespace=AGENT_NAMESPACE, identity=node, slots=1))
    slot = slots.try_acquire(key)
    assert slot is not None
    return slot


def test_a_free_slot_means_the_origin(model: HubModel, identity: Identity, tmp_path: Path, hf_hub: LocalHub) -> None:
    receiver = Receiver(identity, tmp_path / "r")
    before = hf_hub.bytes_served
    receiver.download(model.uri, model.key, model.settings)
    assert [o.mode for o in receiver.outcomes] == ["origin-slot"]
    assert hf_hub.bytes_served - before == model.size
    # Succeeded: the slot is left to lapse, so the next node looks for this one as a peer.
    assert Receiver(identity, tmp_path / "r2").fill.slots.try_acquire(model.key) is None  # type: ignore[union-attr]


def test_waits_while_the_slot_is_held_then_fills_from_the_new_peer(
        model: HubModel, identity: Identity, tmp_path: Path, hf_hub: LocalHub, nodes: list[str]) -> None:
    holder_node = f"holder-{uuid.uuid4().hex[:6]}"
    nodes.append(holder_node)
    advertise(identity.admin, holder_node, model.uri, None, phase="ModelDownloading")
    slot = hold_slot(identity, model.key, holder_node)
    receiver = Receiver(identity, tmp_path / "r")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            receiver.download(model.uri, model.key, model.settings)
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    # It looks again and again, and does not start while nobody holds the model complete.
    while receiver.directory.lists < 3:
        thread.join(0.1)
    assert thread.is_alive() and not receiver.outcomes
    # The holder finishes: its status says so and names its endpoint.
    seed = tmp_path / "holder"
    fill_from_origin(seed, model)
    before = hf_hub.bytes_served
    with peer_servers() as running:
        peer = running.serve(seed, identity, holder_node)
        advertise(identity.admin, holder_node, model.uri, peer.endpoint)
        thread.join(120)
    assert not thread.is_alive() and not failure, failure
    assert [o.mode for o in receiver.outcomes] == ["peers"]
    assert receiver.outcomes[0].waited_seconds > 0
    assert tree_digests(tmp_path / "r" / "models" / model.key) == model.digests()
    assert hf_hub.bytes_served - before == len(model.files["config.json"])
    slot.release()  # type: ignore[attr-defined]


def test_cancelled_while_waiting(model: HubModel, identity: Identity, tmp_path: Path) -> None:
    slot = hold_slot(identity, model.key, "someone-else")
    receiver = Receiver(identity, tmp_path / "r")
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    with pytest.raises(WaitCancelled):
        receiver.download(model.uri, model.key, model.settings, cancel)
    assert not (tmp_path / "r" / "models").exists()
    slot.release()  # type: ignore[attr-defined]


def test_no_waiting_for_a_model_peers_could_not_be_trusted_with(
        identity: Identity, tmp_path: Path, fault_server: FaultServer) -> None:
    # A plain HTTP file without a digest: nothing to check a peer's bytes against.
    uri = fault_server.add(f"/p2p/{uuid.uuid4().hex}/model.bin", b"x" * 100_000)
    from localmodel.api.keys import storage_key

    key = storage_key(uri)
    slot = hold_slot(identity, key, "someone-else")
    receiver = Receiver(identity, tmp_path / "r")
    receiver.download(uri, key, {})
    assert [o.mode for o in receiver.outcomes] == ["origin"]
    slot.release()  # type: ignore[attr-defined]


def test_fails_open_when_slots_cannot_be_used(model: HubModel, identity: Identity, tmp_path: Path) -> None:
    receiver = Receiver(identity, tmp_path / "r", namespace="default")  # no Lease rights there
    receiver.download(model.uri, model.key, model.settings)
    assert [o.mode for o in receiver.outcomes] == ["origin"]
    assert tree_digests(tmp_path / "r" / "models" / model.key) == model.digests()


def test_a_liar_is_quarantined_and_the_retry_goes_around_it(
        model: HubModel, identity: Identity, tmp_path: Path, nodes: list[str]) -> None:
    seed = tmp_path / "seed"
    fill_from_origin(seed, model)
    liar_root = tmp_path / "liar"
    corrupt_copy(seed, liar_root, model.key, "model-00002-of-00002.safetensors", [777])
    liar_node = f"liar-{uuid.uuid4().hex[:6]}"
    nodes.append(liar_node)
    receiver = Receiver(identity, tmp_path / "r")
    with peer_servers() as running:
        liar = running.serve(liar_root, identity, liar_node, server_class=EndForgingLiar)
        advertise(identity.admin, liar_node, model.uri, liar.endpoint)
        with pytest.raises(IntegrityError):
            receiver.download(model.uri, model.key, model.settings)
        assert liar_node in receiver.health.quarantined()
        # The agent's retry: the liar is left out, the slot is free, the origin serves.
        receiver.download(model.uri, model.key, model.settings)
    assert [o.mode for o in receiver.outcomes] == ["peers", "origin-slot"]
    assert tree_digests(tmp_path / "r" / "models" / model.key) == model.digests()


def holder_with_server(identity: Identity, root: Path, running: object) -> tuple[Receiver, Peer]:
    """A node that will download from the origin and serve the pieces it has written."""
    from localmodel.peers.server import PeerServer, PeerServeSettings

    partials = PartialDownloads()
    holder = Receiver(identity, root, partials=partials)
    server = PeerServer(root, PeerServeSettings(bind_address="127.0.0.1", port=0), identity.authenticator(),
                        partials=partials)
    running.servers.append(server)  # type: ignore[attr-defined]
    return holder, Peer(holder.node, f"http://127.0.0.1:{server.start()}")


def in_thread(function: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, failures


def test_fills_from_a_slot_holder_still_downloading(
        model: HubModel, identity: Identity, tmp_path: Path, hf_hub: LocalHub, nodes: list[str]) -> None:
    hf_hub.rate_limit = 6 * MiB  # the holder's download lasts a few seconds
    before = hf_hub.bytes_served
    with peer_servers() as running:
        holder, holder_peer = holder_with_server(identity, tmp_path / "holder", running)
        nodes.append(holder.node)
        advertise(identity.admin, holder.node, model.uri, holder_peer.endpoint, phase="ModelDownloading")
        holder_thread, holder_failures = in_thread(lambda: holder.download(model.uri, model.key, model.settings))
        wait_until(lambda: holder.fill.partials.table(model.key, SHARD) is not None
                   and holder.fill.partials.table(model.key, SHARD)[1] > 0,  # type: ignore[index]
                   "the holder to write its first piece")
        receiver = Receiver(identity, tmp_path / "r")
        receiver.download(model.uri, model.key, model.settings)
        holder_thread.join(120)
        served_partial = running.servers[0].counters.requests.get("partial", 0)
    assert not holder_failures, holder_failures
    assert [o.mode for o in holder.outcomes] == ["origin-slot"]
    assert [o.mode for o in receiver.outcomes] == ["peers"]
    assert served_partial > 0  # pieces went out before the holder had the whole model
    assert tree_digests(tmp_path / "r" / "models" / model.key) == model.digests()
    assert tree_digests(tmp_path / "holder" / "models" / model.key) == model.digests()
    counters = receiver.outcomes[0].counters
    assert counters is not None and counters.origin_bytes == len(model.files["config.json"])
    # One copy from the origin, plus the receiver's config.json.
    assert hf_hub.bytes_served - before == model.size + len(model.files["config.json"])


def test_a_holder_that_stops_stalls_its_readers_until_the_slot_is_taken_over(
        model: HubModel, identity: Identity, tmp_path: Path, hf_hub: LocalHub, nodes: list[str]) -> None:
    hf_hub.rate_limit = 4 * MiB
    with peer_servers() as running:
        holder, holder_peer = holder_with_server(identity, tmp_path / "holder", running)
        nodes.append(holder.node)
        advertise(identity.admin, holder.node, model.uri, holder_peer.endpoint, phase="ModelDownloading")
        stop_holder = threading.Event()
        holder_thread, _ = in_thread(lambda: holder.download(model.uri, model.key, model.settings, stop_holder))
        wait_until(lambda: (holder.fill.partials.table(model.key, SHARD) or (b"", 0))[1] >= 1,
                   "the holder to write its first piece")
        receiver = Receiver(identity, tmp_path / "r", stall_seconds=2.0)
        reader, reader_failures = in_thread(lambda: receiver.download(model.uri, model.key, model.settings))
        wait_until(lambda: running.servers[0].counters.requests.get("partial", 0) > 0, "the receiver to read")
        stop_holder.set()  # the holder stops: cancelled, its slot freed
        running.servers[0].stop()
        holder_thread.join(60)
        reader.join(120)
    assert reader_failures and isinstance(reader_failures[0], PeersStalledError), reader_failures
    staged = tmp_path / "r" / "staging" / model.key
    assert staged.is_dir()  # what it got is kept for the retry
    before = hf_hub.bytes_served
    hf_hub.rate_limit = None
    receiver.download(model.uri, model.key, model.settings)  # the retry takes the free slot
    assert [o.mode for o in receiver.outcomes] == ["peers", "origin-slot"]
    assert tree_digests(tmp_path / "r" / "models" / model.key) == model.digests()
    assert hf_hub.bytes_served - before < model.size  # resumed, not started over
