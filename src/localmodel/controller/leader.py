"""Leader election through a coordination.k8s.io Lease, as controller-runtime does it.

One replica holds the Lease `kserve-local-model-manager-leader-lock` and renews it every
`retry_period`; the others retry to take it. A holder that cannot renew within `renew_deadline`
steps down. Expiry is judged on the local clock from when this replica last saw the Lease
change, so clock skew between replicas does not matter.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, client: AsyncClient, settings: LeaseSettings) -> None:
        self._client = client
        self._settings = settings
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.is_leader = False

    def _spec(self, transitions: int, acquire_time: str | None) -> dict[str, Any]:
        now = _now()
        return {
            "holderIdentity": self._settings.identity,
            "leaseDurationSeconds": int(self._settings.lease_duration),
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self) -> bool:
        s = self._settings
        try:
            lease = (await self._client.get(Lease, s.name, namespace=s.namespace)).to_dict()
        except ApiError as error:
            if error.status.code != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": s.name, "namespace": s.namespace}, "spec": self._spec(0, None)}
            try:
                await self._client.create(Lease.from_dict(body))
            except ApiError as create_error:
                if create_error.status.code == 409:
                    return False
                raise
            self._observed_at = time.monotonic()
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        observed = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, time.monotonic()
        duration = spec.get("leaseDurationSeconds") or s.lease_duration
        expired = time.monotonic() > self._observed_at + duration
        if holder and holder != s.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == s.identity:
            new_spec = self._spec(transitions, spec.get("acquireTime"))
        else:
            new_spec = self._spec(transitions + 1, None)
        lease["spec"] = new_spec
        try:
            # replace carries the resourceVersion we read: a concurrent taker makes this a 409
            await self._client.replace(Lease.from_dict(lease))
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        self._observed = (s.identity, new_spec["renewTime"], new_spec["leaseTransitions"])
        self._observed_at = time.monotonic()
        return True

    async def _attempt(self) -> bool:
        try:
            return await self._try_acquire_or_renew()
        except Exception as error:  # apiserver unreachable: count as a failed attempt
            log.warning("leader election: %s", error)
            return False

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; run `lead()` while holding the Lease, cancel it when the Lease is lost."""
        s = self._settings
        while True:
            while not await self._attempt():
                await asyncio.sleep(s.retry_period)
            log.info("leader election: %s became leader of %s/%s", s.identity, s.namespace, s.name)
            self.is_leader = True
            leading = asyncio.create_task(lead())
            try:
                await self._hold(leading)
            finally:
                self.is_leader = False
                leading.cancel()
                await asyncio.gather(leading, return_exceptions=True)
            log.warning("leader election: %s lost the lease", s.identity)

    async def _hold(self, leading: asyncio.Task[None]) -> None:
        s = self._settings
        last_renew = time.monotonic()
        while not leading.done():
            await asyncio.sleep(s.retry_period)
            if await self._attempt():
                last_renew = time.monotonic()
            elif time.monotonic() - last_renew > s.renew_deadline:
                return
        leading.result()  # surface a crash of the leading work

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so the next replica takes over at once."""
        s = self._settings
        try:
            lease = (await self._client.get(Lease, s.name, namespace=s.namespace)).to_dict()
            if (lease.get("spec") or {}).get("holderIdentity") != s.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            await self._client.replace(Lease.from_dict(lease))
        except Exception as error:
            log.info("leader election: release failed: %s", error)
