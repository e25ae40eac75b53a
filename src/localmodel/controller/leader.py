"""Leader election through a coordination.k8s.io Lease, as controller-runtime does it.

One replica holds the Lease `kserve-local-model-manager-leader-lock` and renews it every
`retry_period`; the others retry to take it. A holder that cannot renew within `renew_deadline`
steps down. Expiry is judged on the local clock from when this replica last saw the Lease
change, so clock skew between replicas does not matter (kube/lease.py: the rules the origin
slots share).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lightkube import ApiError, AsyncClient
from lightkube.resources.coordination_v1 import Lease

from localmodel.kube import lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class LeaderElector:
    def __init__(self, client: AsyncClient, settings: LeaseSettings) -> None:
        self._client = client
        self._settings = settings
        self._observations = lease.Observations()
        self.is_leader = False

    async def _try_acquire_or_renew(self) -> bool:
        s = self._settings
        try:
            current = (await self._client.get(Lease, s.name, namespace=s.namespace)).to_dict()
        except ApiError as error:
            if error.status.code != 404:
                raise
            spec = lease.holder_spec(s.identity, s.lease_duration, 0)
            try:
                await self._client.create(lease.new_lease(s.namespace, s.name, spec))
            except ApiError as create_error:
                if create_error.status.code == 409:
                    return False
                raise
            self._observations.wrote(s.name, spec)
            return True
        spec = current.get("spec") or {}
        expired = self._observations.expired(s.name, spec, s.lease_duration)
        new_spec = lease.claim(spec, s.identity, s.lease_duration, expired=expired, keep_acquire_time=True)
        if new_spec is None:
            return False
        current["spec"] = new_spec
        try:
            # replace carries the resourceVersion we read: a concurrent taker makes this a 409
            await self._client.replace(lease.from_dict(current))
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        self._observations.wrote(s.name, new_spec)
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
            current = (await self._client.get(Lease, s.name, namespace=s.namespace)).to_dict()
            if lease.holder(current.get("spec") or {}) != s.identity:
                return
            current["spec"]["holderIdentity"] = ""
            current["spec"]["leaseDurationSeconds"] = 1
            await self._client.replace(lease.from_dict(current))
        except Exception as error:
            log.info("leader election: release failed: %s", error)
