"""Builders of hostile models for tests/faults/test_hostile_inputs.py: listings with hostile
paths and sizes (the project's HF endpoint and moto's S3), archives with hostile members (served
by nginx), files announced far larger than any disk (the fault server), and URIs.

OCI rows push to CNCF distribution's registry with `crane` and `oras` (tests/servers/oci.py);
a manifest over the registry's own 4 MiB limit comes from the fault server instead, which
answers the registry API's manifest path.

Every builder returns the URI of one model. Paths that try to escape are named after a token,
so the test can look for them wherever they could have landed.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
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
from tests.servers.oci import Registry
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

    # --- OCI artifacts ---------------------------------------------------------------------------

    #: The registry the OCI rows push to.
    oci: Registry | None = None
    #: A scratch folder for what the OCI clients push.
    scratch: Path | None = None

    def _oci_repo(self, case: str) -> str:
        assert self.oci is not None
        return f"hostile-{self.tag}/{case}"

    def oci_modelcar(self, case: str, members: list[TarMember]) -> str:
        """A modelcar image of one layer holding `members` (crane append)."""
        assert self.oci is not None and self.scratch is not None
        layer = self.scratch / f"{case}.tar"
        layer.write_bytes(tar_bytes(members))
        self.oci.crane("append", "-f", str(layer), "-t", f"{self.oci.host}/{self._oci_repo(case)}:v1")
        return f"oci://{self.oci.host}/{self._oci_repo(case)}:v1"

    def _oci_file(self, case: str, data: bytes) -> tuple[str, str]:
        """A ModelPack-style artifact of one raw layer (oras push); (uri, blob digest)."""
        assert self.oci is not None and self.scratch is not None
        folder = self.scratch / case
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "w.bin").write_bytes(data)
        self.oci.oras("push", f"{self.oci.host}/{self._oci_repo(case)}:v1", "--artifact-type",
                      "application/vnd.cncf.model.manifest.v1+json",
                      "w.bin:application/vnd.cncf.model.weight.v1.raw", cwd=folder)
        return f"oci://{self.oci.host}/{self._oci_repo(case)}:v1", "sha256:" + hashlib.sha256(data).hexdigest()

    def oci_damaged_blob(self, case: str) -> str:
        """A blob the registry stores damaged: same size, other bytes, so only its digest tells."""
        assert self.oci is not None
        data = case.encode() * 5000
        uri, digest = self._oci_file(case, data)
        self.oci.blob_file(digest).write_bytes(bytes(255 - b for b in data))
        return uri

    def oci_many_layers(self, case: str, count: int) -> str:
        """A manifest of `count` layers (all one stored blob), pushed with `oras manifest push`."""
        assert self.oci is not None and self.scratch is not None
        _, digest = self._oci_file(case, b"one layer")
        layer = {"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": digest, "size": 9}
        config = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                  "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "artifactType": "application/vnd.cncf.model.manifest.v1+json", "config": config,
                    "layers": [layer] * count}
        path = self.scratch / f"{case}.json"
        path.write_text(json.dumps(manifest, separators=(",", ":")))
        self.oci.oras("manifest", "push", f"{self.oci.host}/{self._oci_repo(case)}:many", str(path))
        return f"oci://{self.oci.host}/{self._oci_repo(case)}:many"

    def oci_huge_manifest(self, case: str, layers: int) -> str:
        """A manifest of `layers` layers, over 4 MiB (no registry stores one: the fault server
        answers the registry API's manifest path)."""
        layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 1,
                 "digest": "sha256:" + "0" * 64}
        body = json.dumps({"schemaVersion": 2, "layers": [layer] * layers}).encode()
        assert len(body) > 4 * 2**20
        url = self.faults.add(f"/v2/hostile-{self.tag}/{case}/manifests/v1", body)
        host = url.split("://", 1)[1].split("/", 1)[0]
        return f"oci://{host}/hostile-{self.tag}/{case}:v1"


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
