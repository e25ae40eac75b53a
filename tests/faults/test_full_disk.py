"""A full disk, on a small filesystem the test mounts (tmpfs, 96 MiB) as the agent's root.

1. A model larger than the free space is refused before any byte is fetched: ModelDownloadError
   with reason InsufficientSpace, and no staging folder.
2. Another tenant fills the disk while a model downloads: the download fails with
   InsufficientSpace, its staging folder is removed (the space goes back at once), and the
   model already on the disk stays Downloaded and intact throughout.
3. Space comes back (the filler is deleted, then the filesystem grows): both models are
   retried on their own and end Downloaded with the source's bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localmodel.api.keys import storage_key
from tests.faults import figures
from tests.faults.helpers import MiB, entry, hub_storage_config, model_dir
from tests.faults.observe import StatusRecorder, file_digests
from tests.node.agent_process import wait_until
from tests.node.cluster import ClusterAgents
from tests.servers.hf import LocalHub

DISK = 96 * MiB


@pytest.fixture
def mount_small_disk() -> Iterator[Callable[[Path], Path]]:
    """`mount_small_disk(path)` mounts a fresh 96 MiB tmpfs there; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def test_full_disk_fails_cleanly_keeps_other_models_and_recovers(
    agents: ClusterAgents, hf_hub: LocalHub, mount_small_disk: Callable[[Path], Path]
) -> None:
    hub_storage_config(agents.client, agents.job_namespace, hf_hub.url)
    hf_hub.faults.throttle = 16 * MiB
    tag = agents.job_namespace[-8:]
    sizes = {"kept": 12 * MiB, "large": 60 * MiB, "filled": 24 * MiB}  # per weight file, two each
    models: dict[str, dict[str, bytes]] = {}
    for name, size in sizes.items():
        files = {f"model-0000{i}-of-00002.safetensors": os.urandom(size) for i in (1, 2)}
        hf_hub.add_commit(f"disk-{tag}/{name}", files)
        models[name] = files
    uris = {name: f"hf://disk-{tag}/{name}" for name in models}
    expected = {n: {p: hashlib.sha256(d).hexdigest() for p, d in f.items()} for n, f in models.items()}
    entries = {name: entry(uris[name], name, storage={"key": "hub"}) for name in models}

    node = agents.node([entries["kept"]])
    root = mount_small_disk(agents.root(node))  # the agent's whole root is the small disk
    recorder = StatusRecorder(agents.kube.kubeconfig, node).start()
    agent = agents.start_agent(node, "--reserve", "1Mi")
    try:
        agents.wait_phase(node, "kept", "ModelDownloaded", agent)
        kept_since = len(recorder.observations())

        # 1. Too large for the free space: refused before any byte, nothing staged.
        agents.set_entries(node, [entries["kept"], entries["large"]])
        agents.wait_phase(node, "large", "ModelDownloadError", agent)
        refused = agents.detail(node, "large")
        assert refused["reason"] == "InsufficientSpace", refused
        assert "needs 120Mi more" in refused["message"] and "usable" in refused["message"], refused
        assert not (root / "staging" / storage_key(uris["large"])).exists()
        assert sum(end - start for p in models["large"]
                   for start, end in hf_hub.served(f"disk-{tag}/large", p)) == 0

        # 2. The disk fills up under a running download.
        agents.set_entries(node, [entries["kept"], entries["large"], entries["filled"]])
        wait_until(lambda: sum(end - start for p in models["filled"]
                               for start, end in hf_hub.served(f"disk-{tag}/filled", p)) >= 8 * MiB,
                   "the download to be under way", agent=agent)
        filler = root / "another-tenant"  # not a storage key: the agent leaves it alone
        with open(filler, "wb") as handle:
            try:
                handle.write(b"\0" * (free_bytes(root) - 256 * 1024))
            except OSError:
                pass  # the download took some of it meanwhile: full is full
        filled_at = time.monotonic()
        agents.wait_phase(node, "filled", "ModelDownloadError", agent)
        failed = agents.detail(node, "filled")
        assert failed["reason"] == "InsufficientSpace", failed
        # Staging is removed with the failure, and a retry is refused up front while full.
        wait_until(lambda: not (root / "staging" / storage_key(uris["filled"])).exists(),
                   "the staging folder removed", agent=agent)
        staged_left = sum(f.stat().st_size for f in (root / "staging").rglob("*") if f.is_file())
        assert file_digests(model_dir(root, uris["kept"])) == expected["kept"]
        event = wait_until(lambda: [e["note"] for e in agents.events(node) if e["reason"] == "DownloadFailed"
                                    and "filled" in (e["note"] or "") and "InsufficientSpace" in e["note"]],
                           "a DownloadFailed Event", agent=agent)

        # 3. Space comes back: the filler goes, then the filesystem grows.
        filler.unlink()
        freed_at = time.monotonic()
        agents.wait_phase(node, "filled", "ModelDownloaded", agent)
        recovered_after = time.monotonic() - freed_at
        assert agents.phase(node, "large") == "ModelDownloadError"
        subprocess.run(["mount", "-o", f"remount,size={4 * DISK}", str(root)], check=True)
        agents.wait_phase(node, "large", "ModelDownloaded", agent)
        for name in models:
            assert file_digests(model_dir(root, uris[name])) == expected[name], name
    finally:
        recorder.stop()
    # The model that was there first never left ModelDownloaded.
    assert {o.phase("kept") for o in recorder.observations()[kept_since:]} == {"ModelDownloaded"}
    assert not [p for p in (root / "staging").iterdir() if not p.name.endswith(".lock")]

    figures.record("full disk", "refused up front", f"{refused['reason']}: {refused['message']}")
    figures.record("full disk", "filled mid-download", f"{failed['reason']}: {failed['message']}")
    figures.record("full disk", "bytes left in staging after the failure", staged_left)
    figures.record("full disk", "failure shown after the disk filled (s)",
                   round(next(o.at for o in recorder.observations() if o.phase("filled") == "ModelDownloadError")
                         - filled_at, 1))
    figures.record("full disk", "downloaded again after space returned (s)", round(recovered_after, 1))
    figures.record("full disk", "other model intact and Downloaded throughout", "yes")
    del event
