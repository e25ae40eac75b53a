"""Who may read models from this agent, and the token this agent shows to others.

Mechanism: a bound ServiceAccount token with a dedicated audience, checked with TokenReview.

- The DaemonSet projects a token for the agent's own ServiceAccount with audience
  `localmodel-peer` (kubelet rotates it; it dies with the Pod). The asking agent sends it as
  `Authorization: Bearer`; the serving agent asks the apiserver (`TokenReview` with that
  audience) who it is and accepts only the agent ServiceAccount.
- Because the audience is not the apiserver's, a token seen by a (malicious) peer cannot be
  replayed against the Kubernetes API, and an ordinary apiserver token is refused by peers.
- Answers are cached (by sha256 of the token) for `ttl` seconds, never beyond the token's own
  expiry, so a busy peer costs the apiserver about one review per client per minute, and
  serving keeps working through a short apiserver outage. Refusals are cached briefly so a
  flood of bad tokens does not become a flood of reviews.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lightkube import ApiError, Client
from lightkube.models.authentication_v1 import TokenReviewSpec
from lightkube.resources.authentication_v1 import TokenReview

logger = logging.getLogger(__name__)

#: The audience of the projected token agents show each other.
PEER_AUDIENCE = "localmodel-peer"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def agent_username(namespace: str, account: str = "kserve-localmodelnode-agent") -> str:
    return f"system:serviceaccount:{namespace}:{account}"


@dataclass(frozen=True)
class PeerIdentity:
    """An authenticated caller."""

    username: str
    #: The node of the Pod the token is bound to, when the token says.
    node: str | None = None


class AuthUnavailableError(Exception):
    """The apiserver could not be asked; the request is answered 503 (try another peer)."""


class Authenticator(Protocol):
    def authenticate(self, token: str) -> PeerIdentity | None:
        """The caller's identity, or None when the token is refused. May raise
        AuthUnavailableError."""
        ...


def token_expiry(token: str) -> float | None:
    """The `exp` claim (epoch seconds) of a JWT, read without checking the signature (only to
    bound how long a review answer is cached)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        exp = json.loads(base64.urlsafe_b64decode(payload)).get("exp")
    except (ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, (int, float)) else None


class TokenReviewAuthenticator:
    """Checks bearer tokens with the apiserver's TokenReview, caching the answers."""

    def __init__(self, client: Client, *, allowed_users: Iterable[str], audience: str = PEER_AUDIENCE,
                 ttl: float = 60.0, negative_ttl: float = 5.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._client = client
        self._allowed = frozenset(allowed_users)
        self._audience = audience
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, PeerIdentity | None]] = OrderedDict()
        #: TokenReviews sent (for tests and metrics).
        self.reviews = 0

    def authenticate(self, token: str) -> PeerIdentity | None:
        key = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
        identity = self._review(token)
        ttl = self._ttl if identity is not None else self._negative_ttl
        expiry = token_expiry(token)
        if expiry is not None:
            ttl = min(ttl, max(0.0, expiry - self._wall()))
        with self._lock:
            self._cache[key] = (now + ttl, identity)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return identity

    def _review(self, token: str) -> PeerIdentity | None:
        body = TokenReview(spec=TokenReviewSpec(token=token, audiences=[self._audience]))
        try:
            review = self._client.create(body)
        except ApiError as exc:
            raise AuthUnavailableError(f"TokenReview failed: HTTP {exc.status.code}") from exc
        except Exception as exc:  # noqa: BLE001 - connection errors of any kind
            raise AuthUnavailableError(f"TokenReview failed: {exc.__class__.__name__}: {exc}") from exc
        self.reviews += 1
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        if status.audiences is not None and self._audience not in status.audiences:
            return None
        username = status.user.username or ""
        if username not in self._allowed:
            logger.warning("peer request from an identity that is not a node agent",
                           extra={"user": username})
            return None
        nodes = (status.user.extra or {}).get(NODE_NAME_EXTRA) or []
        return PeerIdentity(username=username, node=nodes[0] if nodes else None)


class TokenFile:
    """The token this agent sends to peers, re-read when kubelet rotates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._token: str | None = None

    def token(self) -> str | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._token = self.path.read_text(encoding="utf-8").strip() or None
                except OSError:
                    return self._token
                self._stamp = stamp
            return self._token
