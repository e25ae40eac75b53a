"""The agent with the content store (fetch/blobs.py): two revisions of a model sharing most
shards, run by a real `localmodel agent` process against the project's Hugging Face endpoint.
The status's `usedBytes` counts the bytes on disk, deleting one revision leaves the other
whole, and the store entries only the deleted one used are collected."""

from __future__ import annotations

import hashlib
from pathlib import Path

from localmodel.api.keys import storage_key
from localmodel.fetch import blobs as content
from localmodel.fetch.hashing import file_sha256
from localmodel.node.store import ModelStore
from tests.fetch.test_dedup import bytes_on_disk, entries, publish, revisions, store_name
from tests.node.agent_process import metric_value, wait_until
from tests.node.models import model_dir, tree_digests
from tests.node.test_standalone import Standalone, entry, standalone  # noqa: F401 - the fixture
from tests.servers.hf import LocalHub


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_used_counts_shared_shards_once_and_deleting_one_revision_keeps_the_other(
        standalone: Standalone, hf_hub: LocalHub, tmp_path: Path) -> None:  # noqa: F811
    first, second = revisions(seed=31)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/agent-dedup")
    standalone.write(entry(uri_1, "v1"), entry(uri_2, "v2"))
    agent = standalone.start("--max-concurrent-downloads", "1", env={"HF_ENDPOINT": hf_hub.url})
    standalone.wait_phase("v1", "ModelDownloaded", agent)
    standalone.wait_phase("v2", "ModelDownloaded", agent)
    root = standalone.root
    assert tree_digests(model_dir(root, uri_1)) == digests(first)
    assert tree_digests(model_dir(root, uri_2)) == digests(second)

    on_disk = bytes_on_disk(root)
    union = {hashlib.sha256(v).hexdigest(): len(v) for v in [*first.values(), *second.values()]}
    assert on_disk == sum(union.values())
    total = sum(map(len, first.values())) + sum(map(len, second.values()))
    assert on_disk < total
    wait_until(lambda: standalone.status()["disk"]["usedBytes"] == on_disk, "usedBytes to count shared files once",
               agent=agent)
    # Whichever revision came second fetched only what the first did not hold by sha256.
    shared_lfs = sum(len(v) for k, v in first.items() if second[k] == v and k.endswith(".safetensors"))
    fetched = metric_value(agent.metrics(), "localmodel_download_bytes_total")
    assert fetched == total - shared_lfs
    assert metric_value(agent.metrics(), "localmodel_download_reused_bytes_total") == shared_lfs
    assert metric_value(agent.metrics(), "localmodel_disk_used_bytes") == on_disk
    assert "already on this node (shared with other models, not fetched)" in agent.log_text()

    standalone.write(entry(uri_2, "v2"))
    wait_until(lambda: not model_dir(root, uri_1).exists(), "v1's folder to go", agent=agent)
    wait_until(lambda: set(entries(root)) == {store_name(k, v) for k, v in second.items()
                                              if len(v) >= content.MIN_SIZE},
               "entries only v1 used to be collected", agent=agent)
    assert tree_digests(model_dir(root, uri_2)) == digests(second)
    assert ModelStore(root).scrub(storage_key(uri_2)) == []
    wait_until(lambda: standalone.status()["disk"]["usedBytes"] == sum(map(len, second.values())),
               "usedBytes to drop to v2's bytes", agent=agent)


def test_damage_to_a_shared_file_repairs_every_model_holding_it_with_one_fetch(
        standalone: Standalone, hf_hub: LocalHub) -> None:  # noqa: F811
    first, second = revisions(seed=32)
    repo = "acme/agent-shared-damage"
    uri_1, uri_2 = publish(hf_hub, first, second, repo=repo)
    standalone.write(entry(uri_1, "v1"), entry(uri_2, "v2"))
    agent = standalone.start("--max-concurrent-downloads", "1", "--scrub-interval", "1",
                             env={"HF_ENDPOINT": hf_hub.url})
    standalone.wait_phase("v1", "ModelDownloaded", agent)
    standalone.wait_phase("v2", "ModelDownloaded", agent)
    root = standalone.root
    shard = sorted(k for k in first if k.endswith(".safetensors") and first[k] == second[k])[0]
    damaged = model_dir(root, uri_1) / shard
    assert damaged.stat().st_ino == (model_dir(root, uri_2) / shard).stat().st_ino
    served = sum(e - s for s, e in hf_hub.served(repo, shard))
    with open(damaged, "r+b") as handle:  # a flipped byte: the one inode both models hold
        handle.seek(12345)
        byte = handle.read(1)
        handle.seek(12345)
        handle.write(bytes([byte[0] ^ 0xFF]))

    def repaired() -> bool:
        return (tree_digests(model_dir(root, uri_1)) == digests(first)
                and tree_digests(model_dir(root, uri_2)) == digests(second)
                and standalone.phase("v1") == standalone.phase("v2") == "ModelDownloaded")

    wait_until(repaired, "both models repaired", agent=agent)
    assert "shares a damaged file with models/" in agent.log_text()
    # The shard crossed the network once for both models: the second repair linked the first's
    # (after a probe of it).
    assert sum(e - s for s, e in hf_hub.served(repo, shard)) - served == len(first[shard]) + content.PROBE_SIZE
    assert (model_dir(root, uri_1) / shard).stat().st_ino == (model_dir(root, uri_2) / shard).stat().st_ino
    assert file_sha256(root / "blobs" / "sha256" / hashlib.sha256(first[shard]).hexdigest()) \
        == hashlib.sha256(first[shard]).hexdigest()


def test_no_dedup_keeps_every_model_its_own_copies(standalone: Standalone, hf_hub: LocalHub) -> None:  # noqa: F811
    first, second = revisions(seed=33)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/agent-no-dedup")
    standalone.write(entry(uri_1, "v1"), entry(uri_2, "v2"))
    agent = standalone.start("--no-dedup", env={"HF_ENDPOINT": hf_hub.url})
    standalone.wait_phase("v1", "ModelDownloaded", agent)
    standalone.wait_phase("v2", "ModelDownloaded", agent)
    root = standalone.root
    total = sum(map(len, first.values())) + sum(map(len, second.values()))
    assert entries(root) == {} and bytes_on_disk(root) == total
    wait_until(lambda: standalone.status()["disk"]["usedBytes"] == total, "usedBytes to be both copies", agent=agent)
    assert metric_value(agent.metrics(), "localmodel_download_bytes_total") == total
