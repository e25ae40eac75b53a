"""Eight real agent processes on one apiserver fill each other: one copy from the origin (the
local Hub counts its bytes), the rest from peers found in LocalModelNode status; a malicious
peer is detected and bypassed; a slot holder that dies is replaced after its Lease lapses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client

from localmodel.dev.controlplane import ControlPlane
from tests.node.agent_process import wait_until
from tests.node.cluster import ClusterAgents, install_crds
from tests.node.tokens import AGENT_NAMESPACE, JOBS_NAMESPACE
from tests.p2p.agents import (
    PEER_TEST_ADDRESS,
    PeerAgents,
    add_peer_address,
    hub_storage_key,
    publish_endpoint,
    remove_peer_address,
    withdraw_endpoints,
)
from tests.p2p.peers import (
    ConsistentLiar,
    EndForgingLiar,
    Identity,
    MiB,
    advertise,
    corrupt_copy,
    fill_from_origin,
    forget,
    hub_model,
    pattern_bytes,
    peer_servers,
    standard_files,
    tree_digests,
)
from tests.servers.hf import LocalHub

pytestmark = pytest.mark.usefixtures("localmodel_crds")


@pytest.fixture(params=["localmodel", "kserve"])
def agents(request: pytest.FixtureRequest, kube: ControlPlane, kube_client: Client, identity: Identity,
           tmp_path: Path) -> Iterator[PeerAgents]:
    """Agents under localmodel's CRDs (peers found by status.peerEndpoint), and under KServe's,
    which prune it (peers found by the peer Service's EndpointSlices): the same tests, the same
    trust rules."""
    flavor = request.param
    if flavor == "kserve":
        install_crds(kube, "kserve")
        add_peer_address()
    cluster = ClusterAgents(kube, kube_client, tmp_path, flavor)
    cluster.write_config(AGENT_NAMESPACE, JOBS_NAMESPACE)
    try:
        yield PeerAgents(cluster, identity, by_service=flavor == "kserve")
    finally:
        cluster.close()
        withdraw_endpoints(identity.admin)
        if flavor == "kserve":
            remove_peer_address()
            install_crds(kube, "localmodel")


def all_downloaded(agents: PeerAgents) -> None:
    for node in agents.nodes:
        agents.cluster.wait_phase(node.name, "m", "ModelDownloaded", node.agent)


def test_eight_agents_take_one_copy_from_the_origin(agents: PeerAgents, hf_hub: LocalHub) -> None:
    model = hub_model(hf_hub, standard_files("eight", shard_mib=12))
    storage = hub_storage_key(agents.cluster, hf_hub.url)
    before = hf_hub.bytes_served
    for _ in range(8):
        agents.add(model, storage)
    all_downloaded(agents)
    for node in agents.nodes:
        assert tree_digests(node.root / "models" / model.key) == model.digests()
        status = agents.cluster.status(node.name)
        if agents.by_service:
            assert "peerEndpoint" not in status  # pruned by KServe's CRD: found by the Service
        else:
            assert status["peerEndpoint"] == f"http://127.0.0.1:{node.peer_port}"
    origin = hf_hub.bytes_served - before
    assert origin <= 1.2 * model.size, (origin, model.size)
    assert agents.metric("localmodel_fill_downloads_total", 'mode="origin-slot"') == 1
    assert agents.metric("localmodel_fill_downloads_total", 'mode="peers"') == 7
    assert agents.metric("localmodel_peer_served_bytes_total") >= 7 * (model.size - len(model.files["config.json"]))
    assert agents.metric("localmodel_peer_rejected_pieces_total") == 0
    # An agent that stops takes its endpoint out of discovery (its Pod's endpoint goes with the Pod).
    leaving = agents.nodes[0]
    assert leaving.agent.stop() == 0
    assert "peerEndpoint" not in agents.cluster.status(leaving.name)


@pytest.mark.parametrize("liar_class", [ConsistentLiar, EndForgingLiar], ids=["own-end", "forged-end"])
def test_a_malicious_peer_is_detected_and_bypassed(agents: PeerAgents, hf_hub: LocalHub, tmp_path: Path,
                                                   liar_class: type[ConsistentLiar]) -> None:
    """own-end: its chain table ends at its bad bytes' sha256 and is refused on sight;
    forged-end: the table ends at the origin's sha256, every piece but the last passes, the
    last fails, one origin piece shows the table lied, and the fill starts again without it."""
    model = hub_model(hf_hub, standard_files("liar", shard_mib=12))
    storage = hub_storage_key(agents.cluster, hf_hub.url)
    # A node that claims the model and serves altered bytes with a piece table to match.
    seed = tmp_path / "honest-copy"
    fill_from_origin(seed, model)
    liar_root = tmp_path / "liar"
    corrupt_copy(seed, liar_root, model.key, "model-00001-of-00002.safetensors", [3 * MiB, 9 * MiB + 1])
    liar_node = f"p2p-liar-{uuid.uuid4().hex[:6]}"
    with peer_servers() as running:
        liar = running.serve(liar_root, agents.identity, liar_node, server_class=liar_class,
                             address=PEER_TEST_ADDRESS if agents.by_service else "127.0.0.1")
        advertise(agents.identity.admin, liar_node, model.uri, liar.endpoint)
        if agents.by_service:
            publish_endpoint(agents.identity.admin, liar_node, int(liar.endpoint.rsplit(":", 1)[1]))
        try:
            before = hf_hub.bytes_served
            for _ in range(4):
                agents.add(model, storage)
            all_downloaded(agents)
        finally:
            forget(agents.identity.admin, liar_node)
        asked_liar = sum(running.servers[0].counters.requests.values())
    for node in agents.nodes:
        assert tree_digests(node.root / "models" / model.key) == model.digests()
    assert asked_liar > 0  # it was asked (its tables; pieces too, unless refused on sight)...
    assert agents.metric("localmodel_peer_quarantines_total") >= 1  # ...caught...
    logs = "".join(node.agent.log_text() for node in agents.nodes)
    assert "peer quarantined" in logs and liar_node in logs
    # ...and cost no more than re-reads: one copy from the origin, plus arbitration pieces.
    origin = hf_hub.bytes_served - before
    assert origin <= 1.2 * model.size + 4 * 4 * MiB, (origin, model.size)


def test_a_dead_slot_holder_is_replaced_after_its_lease_lapses(agents: PeerAgents, hf_hub: LocalHub) -> None:
    files = {"config.json": b"{}", "model.safetensors": pattern_bytes(24 * MiB, "dead-holder")}
    model = hub_model(hf_hub, files)
    storage = hub_storage_key(agents.cluster, hf_hub.url)
    hf_hub.rate_limit = 4 * MiB  # the origin download lasts seconds: time to kill its holder
    flags = ("--origin-slot-lease", "4", "--peer-stall-timeout", "3")
    first = agents.add(model, storage, *flags)
    def first_has_bytes() -> bool:
        if agents.cluster.pruned:  # KServe's CRD keeps only the phase: look at its staging data
            staged = first.root / "staging" / model.key
            return (agents.cluster.phase(first.name, "m") == "ModelDownloading" and staged.is_dir()
                    and any(f.stat().st_blocks for f in staged.rglob("*") if f.is_file()))
        return agents.cluster.detail(first.name, "m").get("bytesDone", 0) > 0

    wait_until(first_has_bytes, "the first agent to be downloading", agent=first.agent)
    others = [agents.add(model, storage, *flags) for _ in range(2)]
    # The others read the pieces the first has written while it downloads...
    wait_until(lambda: "filling from peers" in "".join(n.agent.log_text() for n in others),
               "the others to read from the first")
    first.agent.kill()  # ...until it dies: no release, no status update, the slot stays "held"
    for node in others:
        agents.cluster.wait_phase(node.name, "m", "ModelDownloaded", node.agent)
        assert tree_digests(node.root / "models" / model.key) == model.digests()
    logs = "".join(node.agent.log_text() for node in others)
    assert "PeersStalled" in logs  # they noticed, kept what they had, and retried
    assert "origin slot expired; taking it over" in logs
    assert agents.metric("localmodel_fill_downloads_total", 'mode="origin-slot"') == 1


@pytest.mark.parametrize("agents", ["kserve"], indirect=True)
def test_with_kserve_crds_and_no_peer_service_nobody_waits_for_peers_nobody_can_find(
        agents: PeerAgents, hf_hub: LocalHub) -> None:
    agents.by_service = False  # no EndpointSlices: the agents cannot find each other
    model = hub_model(hf_hub, standard_files("kserve-crds", shard_mib=6))
    storage = hub_storage_key(agents.cluster, hf_hub.url)
    before = hf_hub.bytes_served
    for _ in range(3):
        agents.add(model, storage)
    all_downloaded(agents)
    for node in agents.nodes:
        assert tree_digests(node.root / "models" / model.key) == model.digests()
        assert "peerEndpoint" not in agents.cluster.status(node.name)  # pruned
    # Every node read the origin, as KServe's agents do, and none sat waiting for a slot.
    assert hf_hub.bytes_served - before == 3 * model.size
    assert agents.metric("localmodel_fill_downloads_total", 'mode="peers"') == 0
