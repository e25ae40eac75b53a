"""One error tree for localmodel. Each error says whether retrying can help.

    LocalModelError
    ├── PermanentError                 retrying the same input cannot help
    │   ├── InvalidURIError(ValueError)       malformed URI, unknown scheme, credentials in URI
    │   ├── SourceNotAllowedError             a URI the node agent refuses (local paths)
    │   ├── TooManyFilesError                 a listing longer than the file limit
    │   ├── InvalidListingError               a listing the source sent is malformed
    │   ├── UnsafePathError(ValueError)       hostile object key or archive member
    │   ├── SourceNotFoundError(FileNotFoundError)  404 / no such bucket, prefix or repo
    │   ├── SourceAuthError(PermissionError)  401 / 403 / missing or bad credentials
    │   ├── HostPathMismatchError             the node group's volume is not the agent's host directory
    │   ├── InsufficientSpaceError(OSError)   not enough free space on the models filesystem
    │   │   ├── StorageLimitExceededError     the node group's storageLimit would be exceeded
    │   │   └── ModelSizeExceededError        the model is larger than the cache's modelSize
    │   └── CredentialsConfigError            storage-config secret/key missing or malformed
    ├── TransientError                 worth retrying with backoff
    │   ├── SourceUnavailableError            5xx, 429, timeouts, connection resets
    │   │                                     (carries retry_after seconds when the server said so)
    │   ├── IntegrityError                    size or digest mismatch after download
    │   └── PeersStalledError                 peers still downloading stopped progressing
    ├── ControlPlaneError              the local test/demo control plane (localmodel.dev) failed
    │   └── GoToolchainMissingError           `go` is not on PATH, so it cannot be built
    └── ImageBuildError                building the product image (localmodel.dev.image) failed

Source modules translate their SDK's exceptions into this tree where they enter
(`raise ... from exc`), so no SDK exception leaks into the engine, the agent or the CLI.
Messages never contain credentials.
"""

from __future__ import annotations


class LocalModelError(Exception):
    """Root of every error localmodel raises on purpose."""

    #: A short CamelCase reason, used in status, Events and metrics labels.
    reason: str = "Error"


class PermanentError(LocalModelError):
    """Retrying the same input cannot succeed; fix the input first."""


class TransientError(LocalModelError):
    """A retry after a backoff may succeed."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidURIError(PermanentError, ValueError):
    reason = "InvalidURI"


class SourceNotAllowedError(PermanentError):
    reason = "SourceNotAllowed"


class TooManyFilesError(PermanentError):
    reason = "TooManyFiles"


class InvalidListingError(PermanentError):
    reason = "InvalidListing"


class UnsafePathError(PermanentError, ValueError):
    reason = "UnsafePath"


class SourceNotFoundError(PermanentError, FileNotFoundError):
    reason = "NotFound"


class SourceAuthError(PermanentError, PermissionError):
    reason = "AccessDenied"


class HostPathMismatchError(PermanentError):
    """A LocalModelNodeGroup's PersistentVolume names another node directory than the one the
    agent's --root is mounted from (kserve#4151): Pods of that group would not see the model."""

    reason = "HostPathMismatch"


class InsufficientSpaceError(PermanentError, OSError):
    reason = "InsufficientSpace"


class StorageLimitExceededError(InsufficientSpaceError):
    reason = "StorageLimitExceeded"


class ModelSizeExceededError(InsufficientSpaceError):
    reason = "ModelSizeExceeded"


class CredentialsConfigError(PermanentError):
    reason = "InvalidCredentials"


class SourceUnavailableError(TransientError):
    reason = "SourceUnavailable"


class IntegrityError(TransientError):
    reason = "IntegrityCheckFailed"


class PeerTablesRejectedError(TransientError):
    """The peers a file was to come from were caught lying about a piece table (a chain
    table that does not end at the origin's sha256: for this file, or for another file of the
    same fill) and no other peer has the file: the fill starts again at once without them,
    through the origin slots, with staging kept. (A peer caught sending bytes or a table that
    the origin contradicts stops the files it was to fill with an IntegrityError instead:
    their bytes came checked against its tables; `peers.source`.)"""

    reason = "PeerDataRejected"


class PeersStalledError(TransientError):
    """Filling from peers that are still downloading, none of which made progress for a while
    (the node downloading from the origin stopped). Staging is kept; the agent retries."""

    reason = "PeersStalled"


class ControlPlaneError(LocalModelError):
    """The local control plane (etcd + kube-apiserver for tests and the demo) failed to build,
    start or stop. Messages name the log file to read."""

    reason = "ControlPlaneFailed"


class GoToolchainMissingError(ControlPlaneError):
    """The control plane is built from Go modules and no `go` binary was found."""

    reason = "GoToolchainMissing"


class ImageBuildError(LocalModelError):
    """Building the product image from Debian packages (mmdebstrap, the venv in a chroot, the
    OCI archive) failed. Messages name the step and the log to read."""

    reason = "ImageBuildFailed"
