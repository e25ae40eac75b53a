"""Knobs of the download engine, grouped in one frozen dataclass with measured defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from localmodel.fetch.backoff import BackoffPolicy

MiB = 1024 * 1024


@dataclass(frozen=True)
class FetchOptions:
    #: Parallel ranged requests (threads). Loopback nginx saturates 2 cores at 4; real object
    #: stores give more per connection with 8-16.
    concurrency: int = 8
    #: Bytes per ranged request; files larger than this are split. 16 MiB beat 64 MiB when the
    #: network is the bottleneck (bench/download.py, 64 MiB/s per connection: 0.39-0.49 vs
    #: 0.34-0.37 GB/s): when the last bytes of a file arrive, the chunks other threads wrote
    #: ahead of the hash frontier (up to concurrency-1 chunks) are still to be hashed, and
    #: smaller chunks leave less of that tail. CPU per GB was the same within the noise.
    chunk_size: int = 16 * MiB
    #: Progress inside a request is journaled every this many bytes, so a crash loses at most
    #: this much per in-flight request. With 16 MiB chunks, 8 MiB let a SIGKILL cost 39 MiB per
    #: restart on average (max 83, 21 per in-flight file); 4 MiB: 17 (max 42, 14 per file,
    #: below one chunk). Journal lines are appends without fsync, so the cost is nil.
    checkpoint_size: int = 4 * MiB
    #: Retry timing for transient source errors.
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    #: Average bytes per second taken from the source, shared by all threads; None = no cap.
    rate_limit: float | None = None
    #: KServe STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS (fnmatch globs).
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    #: Hash every byte once, with the cheapest digest the source guarantees (a CRC64NVME or
    #: crc32c per range, else sha256 or md5; BLAKE3 when the source gives none), check it
    #: against the source's value, and keep it in the manifest for scrubs (`fetch/hashing.py`).
    #: False (for benchmarks and sources trusted end to end) checks sizes only, hashes nothing,
    #: and records no digest (`verify_full` then reports the files as unverifiable). Never the
    #: default: without it a corrupted byte goes unnoticed.
    verify: bool = True
    #: Use md5 / multipart-ETag provider digests (md5 costs ~1.5 CPU-s/GB here, more than
    #: sha256 with SHA-NI); False hashes such files with the local BLAKE3 instead, unchecked
    #: against the source. CRC and sha256 digests are always checked.
    verify_md5: bool = True
    #: fdatasync every file before the manifest is written, so the manifest never vouches
    #: for bytes that a power loss could still take away.
    fsync: bool = True
    #: Download again even if a complete copy with a manifest for this URI exists.
    force: bool = False
    #: Keep a destination folder that has no manifest but holds exactly the listed files
    #: (sizes, and provider digests where given): hash it, write its manifest, fetch nothing.
    #: This is how KServe's folders are taken over (see `localmodel.fetch.adopt`). Off with force.
    adopt: bool = True
    #: Share files through the layout's content store (`Layout.blobs`, the agent's
    #: `<root>/blobs/`): a verified file whose bytes the store holds becomes a hard link to
    #: them (entries keyed by sha256 or BLAKE3, the digest the engine computed), and a listed
    #: file whose sha256 the store holds is not downloaded at all.
    dedup: bool = True
    #: Largest ratio of unpacked size to archive size accepted (zip/tar bomb guard).
    max_unpack_ratio: float = 1000.0
    #: Seconds between progress callbacks.
    progress_interval: float = 1.0
    #: Most files one model may have. Each costs ~4 KiB of memory while the download runs
    #: (bench/many_files.py: 238 MiB peak for 50,000 tiny files), so two downloads at this
    #: limit stay within the agent's 300Mi; a longer listing fails with TooManyFiles before
    #: any byte is fetched, and sources stop listing at the first page past it.
    max_files: int = 25_000

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.chunk_size < 64 * 1024:
            raise ValueError("chunk_size must be at least 64 KiB")
        if self.checkpoint_size < 64 * 1024:
            raise ValueError("checkpoint_size must be at least 64 KiB")
        if self.max_files < 1:
            raise ValueError("max_files must be at least 1")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
