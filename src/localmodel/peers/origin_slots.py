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

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from lightkube import ApiError, Client
from lightkube.resources.coordination_v1 import Lease

logger = logging.getLogger(__name__)

KEY_LABEL = "localmodel.kserve.io/storage-key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "localmodel"}


class SlotsUnavailableError(Exception):
    """The Leases cannot be read or written (RBAC, apiserver down). Callers fail open: they
    download from the origin, as an agent without peer-to-peer would."""


def lease_name(key: str, index: int) -> str:
    return f"localmodel-origin-{key}-{index}"


def _lease(body: dict[str, Any]) -> Lease:
    return cast(Lease, Lease.from_dict(body))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        self._clock = clock
        self._lock = threading.Lock()
        #: Lease name → (the record last seen, when it was first seen with that value).
        self._observed: dict[str, tuple[tuple[Any, ...], float]] = {}

    def _spec(self, transitions: int) -> dict[str, Any]:
        now = _now()
        return {"holderIdentity": self.settings.identity,
                "leaseDurationSeconds": int(self.settings.lease_seconds),
                "acquireTime": now, "renewTime": now, "leaseTransitions": transitions}

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
        with self._lock:
            seen = [self._observed.get(lease_name(key, index)) for index in range(self.settings.slots)]
        return sorted({record[0][0] for record in seen if record is not None and record[0][0]}
                      - {self.settings.identity})

    def _take(self, key: str, name: str) -> bool:
        namespace = self.settings.namespace
        try:
            lease = self.client.get(Lease, name, namespace=namespace).to_dict()
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": namespace,
                                 "labels": {KEY_LABEL: key, **MANAGED_BY}},
                    "spec": self._spec(0)}
            try:
                self.client.create(_lease(body))
            except ApiError as create_error:
                if create_error.status.code == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self._clock()
        with self._lock:
            seen = self._observed.get(name)
            if seen is None or seen[0] != record:
                seen = self._observed[name] = (record, now)
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_seconds)
        expired = now > seen[1] + duration
        if holder and holder != self.settings.identity and not expired:
            return False
        if holder and holder != self.settings.identity:
            logger.info("origin slot expired; taking it over", extra={"lease": name, "previous": holder})
        lease["spec"] = self._spec(int(spec.get("leaseTransitions") or 0) + (holder != self.settings.identity))
        try:
            self.client.replace(_lease(lease))  # carries resourceVersion: a race is a 409
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        return True

    def renew(self, name: str) -> bool:
        """Renew a held Lease; False when another node holds it now."""
        lease = self.client.get(Lease, name, namespace=self.settings.namespace).to_dict()
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.settings.identity:
            return False
        spec["renewTime"] = _now()
        spec["leaseDurationSeconds"] = int(self.settings.lease_seconds)
        try:
            self.client.replace(_lease(lease))
        except ApiError as exc:
            if exc.status.code == 409:  # someone wrote meanwhile: look again next period
                return True
            raise
        return True

    def release(self, name: str) -> None:
        """Empty a Lease this node holds, so a waiter takes it at once."""
        for _attempt in range(3):
            try:
                lease = self.client.get(Lease, name, namespace=self.settings.namespace).to_dict()
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.settings.identity:
                    return
                spec["holderIdentity"] = ""
                spec["renewTime"] = _now()
                self.client.replace(_lease(lease))
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
