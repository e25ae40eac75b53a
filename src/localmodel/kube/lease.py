"""coordination.k8s.io Leases held by one identity: the rules that leader election
(controller/leader.py, async) and the origin slots (peers/origin_slots.py, threads) share.

A Lease is live while its record (holder, renewTime, leaseTransitions) keeps changing. Expiry is
judged on the local clock from when this process first saw the current record, as client-go's
leader election does, so clock skew between holders and waiters does not matter. Writes replace
the object read (its resourceVersion makes a concurrent writer a 409), so each caller does its
own get/create/replace, sync or async; what to write comes from here.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from lightkube.resources.coordination_v1 import Lease


def now() -> str:
    """A Lease's MicroTime: now, UTC."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def holder_spec(identity: str, duration_seconds: float, transitions: int,
                acquire_time: str | None = None) -> dict[str, Any]:
    """The spec of a Lease `identity` holds, renewed now (acquired now unless `acquire_time`)."""
    renewed = now()
    return {"holderIdentity": identity, "leaseDurationSeconds": int(duration_seconds),
            "acquireTime": acquire_time or renewed, "renewTime": renewed, "leaseTransitions": transitions}


def new_lease(namespace: str, name: str, spec: Mapping[str, Any],
              labels: Mapping[str, str] | None = None) -> Lease:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return from_dict({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                      "spec": dict(spec)})


def from_dict(body: Mapping[str, Any]) -> Lease:
    return cast(Lease, Lease.from_dict(dict(body)))


def holder(spec: Mapping[str, Any]) -> str:
    return str(spec.get("holderIdentity") or "")


def transitions(spec: Mapping[str, Any]) -> int:
    return int(spec.get("leaseTransitions") or 0)


class Observations:
    """When each Lease's record was first seen with its current value (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: Lease name -> (record, local time it was first seen with that record).
        self._seen: dict[str, tuple[tuple[Any, ...], float]] = {}

    @staticmethod
    def _record(spec: Mapping[str, Any]) -> tuple[Any, ...]:
        return (holder(spec), spec.get("renewTime"), spec.get("leaseTransitions"))

    def expired(self, name: str, spec: Mapping[str, Any], default_duration: float) -> bool:
        """Note the record just read; True once it has not changed for the Lease's duration."""
        record = self._record(spec)
        current = self._clock()
        with self._lock:
            seen = self._seen.get(name)
            if seen is None or seen[0] != record:
                seen = self._seen[name] = (record, current)
        duration = float(spec.get("leaseDurationSeconds") or default_duration)
        return current > seen[1] + duration

    def wrote(self, name: str, spec: Mapping[str, Any]) -> None:
        """Note a record this process wrote itself (it is fresh from now)."""
        with self._lock:
            self._seen[name] = (self._record(spec), self._clock())

    def holders(self, names: Iterable[str]) -> set[str]:
        """Holders last seen on these Leases (free ones left out)."""
        with self._lock:
            return {seen[0][0] for name in names if (seen := self._seen.get(name)) is not None and seen[0][0]}


def claim(spec: Mapping[str, Any], identity: str, duration_seconds: float, *, expired: bool,
          keep_acquire_time: bool) -> dict[str, Any] | None:
    """The spec to write so that `identity` holds the Lease, or None while another holder's
    Lease is live. A change of hands counts one transition; a holder renewing its own Lease
    keeps its acquireTime when `keep_acquire_time`."""
    current = holder(spec)
    if current and current != identity and not expired:
        return None
    if current == identity:
        return holder_spec(identity, duration_seconds, transitions(spec),
                           spec.get("acquireTime") if keep_acquire_time else None)
    return holder_spec(identity, duration_seconds, transitions(spec) + 1)
