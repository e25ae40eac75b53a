"""What every source, and everything that logs a URI, reads off a storage URI the same way:
the scheme, a redacted form safe for logs and Events, and a bucket URI's (bucket, prefix)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from localmodel.errors import InvalidURIError

#: `scheme://` at the start of a URI.
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def redact_uri(uri: str) -> str:
    """The URI without user info and without query values (pre-signed URLs carry secrets there)."""
    if not SCHEME.match(uri):
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<malformed URI>"
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{item.partition('=')[0]}=REDACTED" if "=" in item else item
        for item in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def bucket_and_prefix(uri: str, scheme: str) -> tuple[str, str]:
    """`s3://bucket/a/b/` (or `gs://…`) -> ("bucket", "a/b"): the prefix has no leading or
    trailing slash. A URI of another scheme, with credentials, without a bucket, or with a query
    or fragment is refused."""
    a = "an" if scheme == "s3" else "a"  # "an s3:// URI", "a gs:// URI"
    parsed = urlsplit(uri)
    if parsed.scheme != scheme:
        raise InvalidURIError(f"not {a} {scheme}:// URI: {uri!r}")
    if "@" in parsed.netloc:
        raise InvalidURIError(f"credentials do not belong in {a} {scheme}:// URI")
    if not parsed.netloc:
        raise InvalidURIError(f"{scheme}:// URI without a bucket: {uri!r}")
    if parsed.query or parsed.fragment:
        raise InvalidURIError(f"{scheme}:// URI with a query or fragment: {uri!r}")
    return parsed.netloc, parsed.path.strip("/")
