"""fetch: the download engine. Lists a source, fetches byte ranges in parallel into a staging
area, verifies sizes and digests, and publishes the model folder atomically with a manifest.

Public API (everything else in this package is internal):

    manifest = download("s3://bucket/model", "/data/models/abc", settings=..., options=...)
    adopt(uri, dest, ...)  # keep a folder that already holds the model without a manifest
    budget = SharedBudget(concurrency, rate)  # several downloads at once, one set of budgets
    download(..., budget=budget)             # DownloadCancelled when a sibling failed
    read_manifest(layout) / verify_quick(layout, manifest) / verify_full(layout, manifest)

Layouts of folder, staging and manifest are described in `localmodel.fetch.layout`.
"""

from localmodel.fetch.backoff import BackoffPolicy
from localmodel.fetch.engine import DownloadCancelled, SharedBudget, adopt, download
from localmodel.fetch.layout import Layout
from localmodel.fetch.manifest import Manifest, ManifestFile, read_manifest, verify_full, verify_quick
from localmodel.fetch.options import FetchOptions
from localmodel.fetch.progress import Progress

__all__ = [
    "BackoffPolicy",
    "DownloadCancelled",
    "FetchOptions",
    "Layout",
    "Manifest",
    "ManifestFile",
    "Progress",
    "SharedBudget",
    "adopt",
    "download",
    "read_manifest",
    "verify_full",
    "verify_quick",
]
