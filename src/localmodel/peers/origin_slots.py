"""A cluster-wide bound on origin downloads per model: K coordination.k8s.io Leases per key.

    Lease <namespace>/localmodel-origin-<storageKey>-<i>,  i = 0 … K-1
        spec.holderIdentity = the node downloading from the origin, "" when free

An agent may download a model from its origin only while it holds one of the model's K
Leases; the others wait for a complete peer (see `peers.fill`). The holder renews its Lease
every lease_seconds / 3; when the download fails it empties the Lease, when it succeeds it
lets the Lease lapse (by then its status names it a complete peer, which waiters prefer). A holder
that dies stops renewing: the waiters see the same record for lease_seconds (judged on their
own clocks from when they first saw it, as client-go's leader election does, so clock skew
between nodes does not matter) and take the slot over. A holder that finds its Lease taken
(it was partitioned longer than lease_seconds) keeps downloading; for that moment the bound
is K+1, never a deadlock.

Leases are never deleted (a free one is a few hundred bytes); they carry the label
`localmodel.kserve.io/storage-key` so `kubectl delete lease -l ...` can clean up after a model
is gone from the cluster.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lightkube import ApiError, Client
from lightkube.resources.coordination_v1 import Lease

from localmodel.kube import lease

logger = logging.getLogger(__name__)

KEY_LABEL = "localmodel.kserve.io/storage-key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "localmodel"}


class SlotsUnavailableError(Exception):
    """The Leases cannot be read or written (RBAC, apiserver down). Callers fail open: they
    download from the origin, as an agent without peer-to-peer would."""


def lease_name(key: str, index: int) -> str:
    return f"localmodel-origin-{key}-{index}"


@dataclass(frozen=True)
class SlotSettings:
    #: Where the Leases live (the agent's namespace).
    namespace: str
    #: holderIdentity: this node's name.
    identity: str
    #: K: origin downloads of one model at a time, cluster-wide.
    slots: int = 1
    lease_seconds: int = 30


class OriginSlot:
    """One held Lease, renewed on a thread until `release()`."""

    def __init__(self, owner: OriginSlots, name: str) -> None:
        self.owner = owner
        self.name = name
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._renew_loop, name=f"renew-{name}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        period = max(1.0, self.owner.settings.lease_seconds / 3)
        while not self._stop.wait(period):
            try:
                if not self.owner.renew(self.name):
                    self.lost = True
                    logger.warning("origin slot taken over by another node (renewals were late); "
                                   "the download continues", extra={"lease": self.name})
                    return
            except Exception as exc:  # noqa: BLE001 - retry at the next period
                logger.warning("origin slot renewal failed", extra={"lease": self.name, "error": str(exc)})

    def release(self, *, completed: bool = False) -> None:
        """Stop renewing. After a failure the Lease is emptied so a waiter takes over at once;
        after a success it is left to lapse, because until this node's status says
        ModelDownloaded the waiters cannot see the new peer and would take a free slot."""
        self._stop.set()
        self._thread.join(5)
        if not self.lost and not completed:
            self.owner.release(self.name)


class OriginSlots:
    """Takes, renews and frees the origin-download Leases of this node (sync; download threads)."""

    def __init__(self, client: Client, settings: SlotSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.settings = settings
        #: When each slot's record was first seen with its current value, on our clock.
        self._observations = lease.Observations(clock)

    def try_acquire(self, key: str) -> OriginSlot | None:
        """A slot for `key` if one is free (or expired), else None. Never blocks for long.
        Raises SlotsUnavailableError when the Leases cannot be used at all."""
        indexes = list(range(self.settings.slots))
        random.shuffle(indexes)  # waiters spread over slots instead of racing for slot 0
        for index in indexes:
            name = lease_name(key, index)
            try:
                taken = self._take(key, name)
            except ApiError as exc:
                raise SlotsUnavailableError(f"Lease {name}: HTTP {exc.status.code}") from exc
            except Exception as exc:  # noqa: BLE001 - connection errors of any kind
                raise SlotsUnavailableError(f"Lease {name}: {exc.__class__.__name__}: {exc}") from exc
            if taken:
                logger.info("origin slot taken", extra={"lease": name, "storage_key": key})
                return OriginSlot(self, name)
        return None

    def holders(self, key: str) -> list[str]:
        """Nodes seen holding the slots of `key` at the last `try_acquire` (the ones whose
        downloads a waiter can read from, and whose status to watch)."""
        names = [lease_name(key, index) for index in range(self.settings.slots)]
        return sorted(self._observations.holders(names) - {self.settings.identity})

    def _take(self, key: str, name: str) -> bool:
        s = self.settings
        try:
            current = self.client.get(Lease, name, namespace=s.namespace).to_dict()
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            try:
                self.client.create(lease.new_lease(s.namespace, name, lease.holder_spec(s.identity, s.lease_seconds, 0),
                                                   labels={KEY_LABEL: key, **MANAGED_BY}))
            except ApiError as create_error:
                if create_error.status.code == 409:
                    return False
                raise
            return True
        spec = current.get("spec") or {}
        expired = self._observations.expired(name, spec, s.lease_seconds)
        new_spec = lease.claim(spec, s.identity, s.lease_seconds, expired=expired, keep_acquire_time=False)
        if new_spec is None:
            return False
        previous = lease.holder(spec)
        if previous and previous != s.identity:
            logger.info("origin slot expired; taking it over", extra={"lease": name, "previous": previous})
        current["spec"] = new_spec
        try:
            self.client.replace(lease.from_dict(current))  # carries resourceVersion: a race is a 409
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        return True

    def renew(self, name: str) -> bool:
        """Renew a held Lease; False when another node holds it now."""
        current = self.client.get(Lease, name, namespace=self.settings.namespace).to_dict()
        spec = current.get("spec") or {}
        if lease.holder(spec) != self.settings.identity:
            return False
        spec["renewTime"] = lease.now()
        spec["leaseDurationSeconds"] = int(self.settings.lease_seconds)
        try:
            self.client.replace(lease.from_dict(current))
        except ApiError as exc:
            if exc.status.code == 409:  # someone wrote meanwhile: look again next period
                return True
            raise
        return True

    def release(self, name: str) -> None:
        """Empty a Lease this node holds, so a waiter takes it at once."""
        for _attempt in range(3):
            try:
                current = self.client.get(Lease, name, namespace=self.settings.namespace).to_dict()
                spec = current.get("spec") or {}
                if lease.holder(spec) != self.settings.identity:
                    return
                spec["holderIdentity"] = ""
                spec["renewTime"] = lease.now()
                self.client.replace(lease.from_dict(current))
                logger.info("origin slot released", extra={"lease": name})
                return
            except ApiError as exc:
                if exc.status.code != 409:
                    logger.warning("origin slot release failed; it expires on its own",
                                   extra={"lease": name, "code": exc.status.code})
                    return
            except Exception as exc:  # noqa: BLE001
                logger.warning("origin slot release failed; it expires on its own",
                               extra={"lease": name, "error": str(exc)})
                return
