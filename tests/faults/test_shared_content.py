"""Shared content (fetch/blobs.py): the agent is SIGKILLed again and again while it fetches a
second revision whose shards the first revision already holds, then the first is deleted.

A real `localmodel agent` process (standalone mode) and the project's Hugging Face endpoint
(throttled, so kills land mid-download). Kill points are drawn from a seeded RNG
(`LOCALMODEL_FAULT_SEED` replays a run): half soon after a restart (listing, re-hashing the store
entries it links, publishing), half at a random moment of the download. After every kill, before
the restart, these hold:

- every content store entry hashes to its name (nothing was ever written through a link);
- the first revision's folder holds exactly its source's bytes;

and at the end: the second revision is Downloaded with its source's bytes, its shared shards were
never fetched again (only 64 KiB probes of them across every restart), the status's usedBytes is the
bytes on disk, and deleting the first revision leaves the second intact and the store holding
exactly the second revision's entries.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from localmodel.api.keys import storage_key
from localmodel.fetch import blobs as content
from localmodel.node.store import ModelStore
from tests.faults import figures
from tests.fetch.test_dedup import bytes_on_disk, entries, entry_intact, publish, store_name
from tests.node.agent_process import wait_until
from tests.node.models import model_dir, tree_digests
from tests.node.test_standalone import Standalone, entry, standalone  # noqa: F401 - the fixture
from tests.servers.hf import LocalHub

MiB = 2**20
KILLS = 10
THROTTLE = 2 * MiB


def digests(files: dict[str, bytes]) -> dict[str, str]:
    import hashlib

    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def two_revisions(rng: random.Random) -> tuple[dict[str, bytes], dict[str, bytes]]:
    shards = {f"model-{i:05d}-of-00006.safetensors": rng.randbytes(4 * MiB + i) for i in range(1, 7)}
    first = {"config.json": b'{"r": 1}', "tokenizer.json": rng.randbytes(300_000), **shards}
    second = dict(first)
    second["config.json"] = b'{"r": 2}'
    for name in sorted(shards)[-2:]:  # two of six shards change (and grow: kills land mid-file)
        second[name] = rng.randbytes(3 * len(first[name]))
    return first, second


def store_damage(root: Path) -> list[str]:
    """Store entries whose bytes no longer hash to their name."""
    return [name for name in entries(root) if not entry_intact(root, name)]


def test_sigkill_while_sharing_never_damages_a_model_or_the_store(
        standalone: Standalone, hf_hub: LocalHub) -> None:  # noqa: F811
    seed = int(os.environ.get("LOCALMODEL_FAULT_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    first, second = two_revisions(rng)
    repo = f"faults/shared-{seed}"
    uri_1, uri_2 = publish(hf_hub, first, second, repo=repo)
    env = {"HF_ENDPOINT": hf_hub.url}
    root = standalone.root

    standalone.write(entry(uri_1, "v1"))
    agent = standalone.start(env=env)
    standalone.wait_phase("v1", "ModelDownloaded", agent)
    assert tree_digests(model_dir(root, uri_1)) == digests(first)
    shared = [k for k in first if k.endswith(".safetensors") and first[k] == second[k]]
    served_before = {name: hf_hub.served(repo, name) for name in shared}

    hf_hub.faults.throttle = THROTTLE
    standalone.write(entry(uri_1, "v1"), entry(uri_2, "v2"))
    kills = linked_in_staging = damaged_entries = first_intact = 0
    while kills < KILLS and standalone.phase("v2") != "ModelDownloaded":
        delay = rng.uniform(0.3, 1.2) if kills % 2 == 0 else rng.uniform(0.5, 3.0)
        time.sleep(delay)
        if standalone.phase("v2") == "ModelDownloaded":
            break
        agent.kill()
        kills += 1
        staging = root / "staging" / storage_key(uri_2)
        if staging.is_dir() and any(p.is_file() and os.lstat(p).st_nlink > 1 for p in staging.rglob("*")):
            linked_in_staging += 1
        damage = store_damage(root)
        damaged_entries += len(damage)
        assert damage == [], f"kill {kills}: store entries damaged: {damage}"
        first_intact += tree_digests(model_dir(root, uri_1)) == digests(first)
        assert first_intact == kills, f"kill {kills}: the first revision's files changed"
        agent = standalone.start(env=env)
    hf_hub.faults.throttle = 0
    standalone.wait_phase("v2", "ModelDownloaded", agent)
    assert tree_digests(model_dir(root, uri_2)) == digests(second)
    assert tree_digests(model_dir(root, uri_1)) == digests(first)
    assert store_damage(root) == []
    # Shared shards are only ever probed again (64 KiB at a random offset, each time a download
    # takes them from the store), never fetched.
    again = [e - s for name in shared for s, e in hf_hub.served(repo, name)[len(served_before[name]):]]
    refetched = sum(size - content.PROBE_SIZE for size in again if size > content.PROBE_SIZE)
    assert refetched == 0
    on_disk = bytes_on_disk(root)
    wait_until(lambda: standalone.status()["disk"]["usedBytes"] == on_disk, "usedBytes to be the bytes on disk",
               agent=agent)

    standalone.write(entry(uri_2, "v2"))
    wait_until(lambda: not model_dir(root, uri_1).exists(), "v1 to be deleted", agent=agent)
    wanted = {store_name(name, data) for name, data in second.items() if len(data) >= content.MIN_SIZE}
    wait_until(lambda: set(entries(root)) == wanted, "the store to hold only v2's entries", agent=agent)
    assert ModelStore(root).scrub(storage_key(uri_2)) == []
    assert store_damage(root) == []

    figures.record("shared content", "seed", seed)
    figures.record("shared content", "kills (SIGKILL) while the second revision was fetched", kills)
    figures.record("shared content", "kills with store links in staging", linked_in_staging)
    figures.record("shared content", "store entries found damaged after a kill", damaged_entries)
    figures.record("shared content", "first revision intact after each kill", f"{first_intact} of {kills}")
    figures.record("shared content", "second revision intact after the first was deleted and collected", "yes")
    figures.record("shared content", "bytes of shared shards fetched again (beyond 64 KiB probes)", refetched)
    figures.record("shared content", "probes of shared shards (one per shard per download attempt that linked it)",
                   len(again))
    figures.record("shared content", "on disk / sum of both revisions",
                   f"{on_disk / (sum(map(len, first.values())) + sum(map(len, second.values()))):.2f}")
