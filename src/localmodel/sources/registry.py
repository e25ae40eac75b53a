"""Which source class serves a URI: a lazy scheme → "module:Class" map, fsspec style.

Classes are imported on first use, so a missing optional SDK only matters to the URIs that
need it, and then the error says what to install. Every source class is built the same way:
`Cls(uri, settings)`.

    s3://bucket/prefix                               localmodel.sources.s3:S3Source
    gs://bucket/prefix                               localmodel.sources.gcs:GCSSource
    https://<account>.blob.core.windows.net/c/path   localmodel.sources.azure:AzureBlobSource
      (also any http(s) URI below the blob endpoint named by the settings
       AZURE_STORAGE_BLOB_ENDPOINT or AZURE_STORAGE_CONNECTION_STRING, e.g. azurite)
    hf://owner/model[:revision]                      localmodel.sources.hf:HFSource
    oci://registry/repo[:tag|@sha256:…]              localmodel.sources.oci:OCISource
    http(s)://host/path/file                         localmodel.sources.http:HTTPSource
    file:///path, /path, relative/path, pvc://claim/path
                                                     localmodel.sources.local:LocalSource

URIs must not carry credentials (`user:password@host`): those belong in settings.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

from localmodel.errors import InvalidURIError
from localmodel.sources.base import Settings, Source
from localmodel.sources.uris import SCHEME, redact_uri

AZURE = "azure"
LOCAL = "local"


@dataclass(frozen=True)
class Entry:
    #: "package.module:ClassName"
    target: str
    #: What to install when the import fails.
    install_hint: str = ""


_registry: dict[str, Entry] = {
    "s3": Entry("localmodel.sources.s3:S3Source", "pip install boto3"),
    "gs": Entry("localmodel.sources.gcs:GCSSource", "pip install google-cloud-storage"),
    AZURE: Entry("localmodel.sources.azure:AzureBlobSource",
                 "pip install azure-storage-blob azure-identity"),
    "hf": Entry("localmodel.sources.hf:HFSource", "pip install huggingface_hub"),
    "oci": Entry("localmodel.sources.oci:OCISource", "pip install urllib3"),
    "http": Entry("localmodel.sources.http:HTTPSource", "pip install urllib3"),
    "https": Entry("localmodel.sources.http:HTTPSource", "pip install urllib3"),
    "file": Entry("localmodel.sources.local:LocalSource"),
    "pvc": Entry("localmodel.sources.local:LocalSource"),
    LOCAL: Entry("localmodel.sources.local:LocalSource"),
}

#: Read-only view of the scheme map ("azure" and "local" are the names used for Azure blob
#: URLs and plain paths, which have no scheme of their own).
registry: Mapping[str, Entry] = MappingProxyType(_registry)

_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def register(scheme: str, target: str, *, install_hint: str = "", clobber: bool = False) -> None:
    """Add a scheme. Refuses to replace an existing one unless `clobber`."""
    scheme = scheme.lower()
    if scheme in _registry and not clobber and _registry[scheme].target != target:
        raise ValueError(f"scheme {scheme!r} is already served by {_registry[scheme].target}")
    _registry[scheme] = Entry(target, install_hint)


def is_azure_blob_uri(uri: str, settings: Settings) -> bool:
    """Whether an http(s) URI names an Azure blob. The rule lives in one place,
    `AzureBlobSource.matches`; its module is imported here only when an http(s) URI is seen."""
    from localmodel.sources.azure import AzureBlobSource

    return AzureBlobSource.matches(uri, settings)


def scheme_of(uri: str, settings: Settings = MappingProxyType({})) -> str:
    """The registry key serving `uri`. Raises InvalidURIError for what no source serves."""
    if not uri or not uri.strip():
        raise InvalidURIError("empty storage URI")
    if _CONTROL.search(uri.strip(" ")) or uri != uri.strip():
        raise InvalidURIError("storage URI contains whitespace or control characters")
    match = SCHEME.match(uri)
    if match is None:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
            raise InvalidURIError(f"malformed storage URI {redact_uri(uri)!r}: expected scheme://...")
        return LOCAL
    scheme = match.group(1).lower()
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidURIError(f"malformed storage URI {redact_uri(uri)!r}: {exc}") from None
    if "@" in parts.netloc:
        raise InvalidURIError(
            f"storage URI {redact_uri(uri)!r} carries credentials; pass them as settings instead"
        )
    if scheme in ("http", "https") and is_azure_blob_uri(uri, settings):
        return AZURE
    if scheme not in _registry or scheme in (AZURE, LOCAL):
        supported = ", ".join(sorted(s + "://" for s in _registry if s not in (AZURE, LOCAL)))
        raise InvalidURIError(
            f"unsupported storage URI scheme {scheme!r} in {redact_uri(uri)!r} "
            f"(supported: {supported}, Azure blob URLs and local paths)"
        )
    return scheme


#: How every source class is built: `Cls(uri, settings)`.
SourceFactory = Callable[[str, Settings], Source]


def source_class(scheme: str) -> SourceFactory:
    """Import and return the class registered for `scheme`."""
    entry = _registry[scheme]
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: {entry.install_hint}" if entry.install_hint else ""
        raise ImportError(
            f"the {scheme} source needs a package that is missing ({exc.name or exc}){hint}"
        ) from exc
    factory: SourceFactory = getattr(module, class_name)
    return factory


def open_source(uri: str, settings: Settings = MappingProxyType({})) -> Source:
    """Build the source that serves `uri`, configured by `settings` (never os.environ)."""
    return source_class(scheme_of(uri, settings))(uri, settings)
