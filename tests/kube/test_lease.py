"""The Lease rules leader election and the origin slots share (kube/lease.py), without an
apiserver; both users are tested against a real one in tests/controller and tests/p2p."""

from __future__ import annotations

from localmodel.kube import lease
from tests.clock import FakeClock


def test_a_record_expires_on_the_local_clock_only_when_it_stops_changing() -> None:
    clock = FakeClock()
    seen = lease.Observations(clock)
    spec = lease.holder_spec("node-a", 10, 0)
    assert not seen.expired("l", spec, 30)
    clock.now += 9
    assert not seen.expired("l", spec, 30)
    renewed = {**spec, "renewTime": "later"}
    clock.now += 5  # 14 s after the first look, but the record changed 0 s ago
    assert not seen.expired("l", renewed, 30)
    clock.now += 10.5
    assert seen.expired("l", renewed, 30)
    assert seen.holders(["l", "other"]) == {"node-a"}


def test_a_record_we_wrote_is_fresh() -> None:
    clock = FakeClock()
    seen = lease.Observations(clock)
    spec = lease.holder_spec("me", 5, 3)
    seen.wrote("l", spec)
    clock.now += 4
    assert not seen.expired("l", spec, 30)


def test_claim_free_live_expired_and_own() -> None:
    free = {"holderIdentity": "", "leaseTransitions": 2}
    taken = lease.claim(free, "me", 15, expired=False, keep_acquire_time=True)
    assert taken is not None and taken["holderIdentity"] == "me" and taken["leaseTransitions"] == 3
    assert taken["leaseDurationSeconds"] == 15 and taken["acquireTime"] == taken["renewTime"]
    live = lease.holder_spec("other", 15, 4)
    assert lease.claim(live, "me", 15, expired=False, keep_acquire_time=True) is None
    over = lease.claim(live, "me", 15, expired=True, keep_acquire_time=True)
    assert over is not None and over["leaseTransitions"] == 5
    own = {**lease.holder_spec("me", 15, 7), "acquireTime": "2026-01-01T00:00:00.000000Z"}
    renewed = lease.claim(own, "me", 15, expired=True, keep_acquire_time=True)
    assert renewed is not None and renewed["leaseTransitions"] == 7
    assert renewed["acquireTime"] == "2026-01-01T00:00:00.000000Z"
    retaken = lease.claim(own, "me", 15, expired=False, keep_acquire_time=False)
    assert retaken is not None and retaken["acquireTime"] == retaken["renewTime"]


def test_new_lease_object() -> None:
    obj = lease.new_lease("ns", "name", lease.holder_spec("me", 30, 0), labels={"k": "v"}).to_dict()
    assert obj["metadata"] == {"name": "name", "namespace": "ns", "labels": {"k": "v"}}
    assert obj["spec"]["holderIdentity"] == "me"
