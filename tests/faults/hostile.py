"""Builders of hostile models for tests/faults/test_hostile_inputs.py: listings with hostile
paths and sizes (the project's HF endpoint and moto's S3), archives with hostile members (served
by nginx), files announced far larger than any disk (the fault server), and URIs.

Every builder returns the URI of one model. Paths that try to escape are named after a token,
so the test can look for them wherever they could have landed.
"""

from __future__ import annotations

import bz2
import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers.hf import LocalHub
from tests.servers.http import FaultServer
from tests.servers.nginx import NginxServer
from tests.servers.s3 import S3Server


@dataclass
class World:
    """The servers and names one run of the hostile table uses."""

    tag: str
    hub: LocalHub
    s3: S3Server
    bucket: str
    nginx: NginxServer
    faults: FaultServer
    #: A file outside every model holding a canary, for local-path URIs to point at.
    secret_file: Path

    # --- listings --------------------------------------------------------------------------

    def hub_paths(self, case: str, paths: dict[str, int]) -> str:
        self.hub.declare(f"hostile-{self.tag}/{case}", paths)
        return f"hf://hostile-{self.tag}/{case}"

    def hub_raw(self, case: str, tree: list[Any]) -> str:
        self.hub.declare_raw(f"hostile-{self.tag}/{case}", tree)
        return f"hf://hostile-{self.tag}/{case}"

    def s3_keys(self, case: str, keys: dict[str, bytes]) -> str:
        client = self.s3.client()
        for key, data in keys.items():
            client.put_object(Bucket=self.bucket, Key=f"{case}/{key}", Body=data)
        return f"s3://{self.bucket}/{case}"

    # --- files served over HTTP --------------------------------------------------------------

    def web_file(self, case: str, name: str, data: bytes) -> str:
        folder = self.nginx.root / f"hostile-{self.tag}" / case
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        return f"{self.nginx.http_url}/hostile-{self.tag}/{case}/{name}"

    def announced(self, case: str, size: int) -> str:
        return self.faults.add(f"/hostile-{self.tag}/{case}/huge.bin", b"x" * 1024, declared_size=size)


# --- archives -------------------------------------------------------------------------------

TarMember = tuple[tarfile.TarInfo, bytes | None]


def tar_bytes(members: list[TarMember], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def reg(name: str, data: bytes = b"data") -> TarMember:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, target: str = "") -> TarMember:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def tar_of(*members: TarMember, mode: str = "w") -> Callable[[], bytes]:
    return lambda: tar_bytes(list(members), mode)


def tar_truncated() -> bytes:
    whole = tar_bytes([reg("weights.bin", b"w" * 100_000)])
    return whole[: len(whole) // 2]


def tar_bz2_bomb() -> bytes:
    """A .tar.bz2 of 64 MiB of zeros: a few hundred bytes that expand 10^5-fold."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = 64 * 2**20
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return bz2.compress(raw.getvalue(), 9)


def zip_bytes(entries: list[tuple[zipfile.ZipInfo | str, bytes]], *, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as bundle:
        for info, data in entries:
            bundle.writestr(info, data)
    return buffer.getvalue()


def zip_info(name: str, mode: int = stat.S_IFREG | 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def zip_encrypted() -> bytes:
    """A member flagged as encrypted (general purpose bit 0), in both of its headers;
    zipfile clears that bit when writing, so it is set afterwards."""
    data = bytearray(zip_bytes([("secret.bin", b"x" * 100)]))
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    data[local + 6] |= 0x1
    data[central + 8] |= 0x1
    return bytes(data)


def zip_of(*entries: tuple[zipfile.ZipInfo | str, bytes]) -> Callable[[], bytes]:
    return lambda: zip_bytes(list(entries))


def zip_bomb() -> bytes:
    """256 MiB of zeros, deflated: ~250 KiB whose central directory declares 1000x more."""
    return zip_bytes([("zeros.bin", bytes(256 * 2**20))], compress=True)


def zip_lying_size() -> bytes:
    """A member whose local and central headers both declare fewer bytes than it holds."""
    data = zip_bytes([("weights.bin", b"A" * 1000)])
    return data.replace((1000).to_bytes(4, "little"), (10).to_bytes(4, "little"))
