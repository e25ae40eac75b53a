"""Which source URIs the node agent accepts. Pure: a decision on the URI's scheme, no I/O.

The agent downloads inside its own process, so a local source (`file://`, a plain path,
`pvc://`) would be read from the agent's filesystem: its ServiceAccount token under
/var/run/secrets, other tenants' credential files in its temp folder, and every model of the
node under its root. Anyone allowed to create a LocalModelNamespaceCache could copy those into
a model folder and mount it. KServe runs each download in a Job whose filesystem holds nothing
of the kind, so in a cluster local sources are refused unless the operator opts in
(`--allow-local-sources`); the standalone mode, fed by a file the node's admin writes, allows
them.
"""

from __future__ import annotations

from localmodel.errors import InvalidURIError, SourceNotAllowedError
from localmodel.sources.registry import LOCAL, scheme_of
from localmodel.sources.uris import redact_uri

LOCAL_SCHEMES = frozenset({LOCAL, "file", "pvc"})


def check_source_allowed(uri: str, *, allow_local: bool) -> None:
    """Raise SourceNotAllowedError for a local source when those are not allowed. A URI no
    source serves is left to the download, which reports it as InvalidURI."""
    if allow_local:
        return
    try:
        scheme = scheme_of(uri)
    except InvalidURIError:
        return
    if scheme in LOCAL_SCHEMES:
        raise SourceNotAllowedError(
            f"{redact_uri(uri)!r} is a path on the node agent's own filesystem; local sources are "
            "refused in a cluster (start the agent with --allow-local-sources to permit them)")
