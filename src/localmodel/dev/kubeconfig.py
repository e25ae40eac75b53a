"""Write kubeconfig files for the local control plane.

Certificates and keys are embedded (`*-data` fields), so a kubeconfig is one self-contained file
that kubectl, lightkube and kopf all read, and that can be copied elsewhere.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "localmodel"


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    server_ca_pem: bytes,
    user: str,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> Path:
    """Write a kubeconfig with one cluster, one user and one context named `localmodel`.

    Give either a client certificate and key, or a bearer token.
    """
    if (client_cert_pem is None) != (client_key_pem is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    if (client_cert_pem is None) == (token is None):
        raise ValueError("give exactly one credential: a client certificate or a token")
    credential: dict[str, Any] = (
        {"token": token}
        if token is not None
        else {"client-certificate-data": _b64(client_cert_pem), "client-key-data": _b64(client_key_pem)}
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CONTEXT, "cluster": {"server": server, "certificate-authority-data": _b64(server_ca_pem)}}
        ],
        "users": [{"name": user, "user": credential}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user, "namespace": namespace}}],
        "current-context": CONTEXT,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # It holds a credential: owner-only, like ~/.kube/config. Replace atomically so a reader
    # never sees half a file when the port changes on restart.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    temporary.replace(path)
    return path


def _b64(data: bytes | None) -> str:
    assert data is not None
    return base64.b64encode(data).decode("ascii")
