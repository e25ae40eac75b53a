"""Origin slots: K Leases per model on the real apiserver, taken with the agent's own RBAC;
free, busy, released, expired (judged on the waiter's clock) and taken over."""

from __future__ import annotations

import uuid

import pytest
from lightkube import Client
from lightkube.resources.coordination_v1 import Lease

from localmodel.peers.origin_slots import (
    OriginSlots,
    SlotSettings,
    SlotsUnavailableError,
    lease_name,
)
from tests.clock import FakeClock
from tests.node.tokens import AGENT_NAMESPACE
from tests.p2p.peers import Identity


def slots_for(client: Client, node: str, k: int, clock: FakeClock | None = None, lease: int = 30) -> OriginSlots:
    settings = SlotSettings(namespace=AGENT_NAMESPACE, identity=node, slots=k, lease_seconds=lease)
    return OriginSlots(client, settings, clock=clock) if clock else OriginSlots(client, settings)


def key() -> str:
    return uuid.uuid4().hex[:16]


def holder(client: Client, name: str) -> str:
    lease = client.get(Lease, name, namespace=AGENT_NAMESPACE)
    return (lease.spec.holderIdentity or "") if lease.spec else ""


def test_k_slots_then_wait_then_a_released_slot(identity: Identity) -> None:
    client, model = identity.reviewer, key()
    a = slots_for(client, "node-a", 2).try_acquire(model)
    b = slots_for(client, "node-b", 2).try_acquire(model)
    assert a is not None and b is not None and {a.name, b.name} == {lease_name(model, 0), lease_name(model, 1)}
    waiter = slots_for(client, "node-c", 2)
    assert waiter.try_acquire(model) is None
    a.release()  # a failed download empties its slot at once
    assert holder(client, a.name) == ""
    c = waiter.try_acquire(model)
    assert c is not None and c.name == a.name and holder(client, c.name) == "node-c"
    labels = client.get(Lease, c.name, namespace=AGENT_NAMESPACE).metadata.labels  # type: ignore[union-attr]
    assert labels["localmodel.kserve.io/storage-key"] == model
    b.release(completed=True)  # a success lets the slot lapse: peers are preferred meanwhile
    assert holder(client, b.name) == "node-b"
    c.release()


def test_a_dead_holder_is_taken_over_after_the_lease_duration(identity: Identity) -> None:
    client, model = identity.reviewer, key()
    dead = slots_for(client, "node-dead", 1, lease=5).try_acquire(model)
    assert dead is not None
    dead._stop.set()  # the node died: no renewals, no release  # noqa: SLF001
    clock = FakeClock(1000.0)
    waiter = slots_for(client, "node-w", 1, clock)
    assert waiter.try_acquire(model) is None  # first look: the record is fresh on our clock
    clock.now += 4
    assert waiter.try_acquire(model) is None
    clock.now += 2  # 6 s of the same record > leaseDurationSeconds 5
    taken = waiter.try_acquire(model)
    assert taken is not None and holder(client, taken.name) == "node-w"
    spec = client.get(Lease, taken.name, namespace=AGENT_NAMESPACE).spec
    assert spec is not None and spec.leaseTransitions == 1
    taken.release()


def test_a_renewing_holder_is_never_taken_over(identity: Identity) -> None:
    client, model = identity.reviewer, key()
    live = slots_for(client, "node-live", 1, lease=3).try_acquire(model)  # renews every second
    assert live is not None
    clock = FakeClock(1000.0)
    waiter = slots_for(client, "node-w2", 1, clock)
    import time

    for _ in range(4):
        before = client.get(Lease, live.name, namespace=AGENT_NAMESPACE).spec.renewTime  # type: ignore[union-attr]
        # Wait for a renewal to land, then let the waiter's clock run past the duration.
        deadline = time.monotonic() + 30
        while client.get(Lease, live.name, namespace=AGENT_NAMESPACE).spec.renewTime == before:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the holder stopped renewing"
            time.sleep(0.1)
        assert waiter.try_acquire(model) is None
        clock.now += 2.5  # less than the duration since the record last changed
    assert holder(client, live.name) == "node-live"
    live.release()


def test_a_holder_that_lost_its_slot_notices(identity: Identity) -> None:
    client, model = identity.reviewer, key()
    slots = slots_for(client, "node-slow", 1, lease=30)
    slot = slots.try_acquire(model)
    assert slot is not None
    slot._stop.set()  # noqa: SLF001 - renewals late; someone takes over meanwhile
    lease = client.get(Lease, slot.name, namespace=AGENT_NAMESPACE).to_dict()
    lease["spec"]["holderIdentity"] = "node-other"
    client.replace(Lease.from_dict(lease))
    assert slots.renew(slot.name) is False
    slots.release(slot.name)  # does not empty someone else's slot
    assert holder(client, slot.name) == "node-other"


def test_without_lease_rights_slots_are_unavailable_not_blocking(identity: Identity) -> None:
    # The agent's Role covers Leases in its own namespace only.
    slots = OriginSlots(identity.reviewer, SlotSettings(namespace="default", identity="node-x", slots=1))
    with pytest.raises(SlotsUnavailableError, match="403"):
        slots.try_acquire(key())
