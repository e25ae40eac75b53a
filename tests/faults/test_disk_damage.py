"""On-disk damage under Downloaded models: a flipped byte, a truncated file, a deleted file and
an extra file, each in its own model, while a fifth model is left alone.

How each is found: names, types and sizes are compared with the manifest on every pass (every
`reconcilationFrequencyInSecs`, 1 s here), which catches truncation, deletion and extra files;
a flipped byte keeps the size, so only the scrub finds it (a full re-hash every
`--scrub-interval`, 3 s here, 7 days by default).

What "extra file" means: any entry inside the model folder that the manifest does not list (a
file, a folder, a symlink). The folder pods mount must be exactly the source's files, so an
extra entry is damage like the others: the model is fetched again and the folder replaced
whole, which drops the entry. While that runs the status shows the model leaving
ModelDownloaded, with reason Damaged and the offending path, and a ModelDamaged Event names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults import figures
from tests.faults.helpers import MiB, entry, hub_storage_config, model_dir
from tests.faults.observe import StatusRecorder, file_digests
from tests.node.agent_process import wait_until
from tests.node.cluster import ClusterAgents
from tests.servers.hf import LocalHub

WEIGHTS = "model-00001-of-00002.safetensors"


def flip_byte(folder: Path) -> str:
    path = folder / WEIGHTS
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    return WEIGHTS


def truncate(folder: Path) -> str:
    path = folder / WEIGHTS
    os.truncate(path, path.stat().st_size - 4096)
    return WEIGHTS


def delete(folder: Path) -> str:
    (folder / "config.json").unlink()
    return "config.json"


def add_extra(folder: Path) -> str:
    (folder / "extra.bin").write_bytes(b"not from the source")
    return "extra.bin"


DAMAGE: dict[str, tuple[Callable[[Path], str], str]] = {
    # kind: (how, the word the status and the Event use)
    "flipped-byte": (flip_byte, "sha256"),
    "truncated": (truncate, "size"),
    "deleted": (delete, "missing"),
    "extra-file": (add_extra, "unexpected"),
}


def test_damage_is_found_repaired_and_shown(agents: ClusterAgents, hf_hub: LocalHub) -> None:
    hub_storage_config(agents.client, agents.job_namespace, hf_hub.url)
    tag = agents.job_namespace[-8:]
    models: dict[str, dict[str, bytes]] = {}
    for name in [*DAMAGE, "untouched"]:
        files = {"config.json": json.dumps({"name": name}).encode(),
                 WEIGHTS: os.urandom(3 * MiB), "model-00002-of-00002.safetensors": os.urandom(3 * MiB)}
        hf_hub.add_commit(f"damage-{tag}/{name}", files)
        models[name] = files
    uris = {name: f"hf://damage-{tag}/{name}" for name in models}
    expected = {name: {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
                for name, files in models.items()}
    node = agents.node([entry(uris[name], name, storage={"key": "hub"}) for name in models])
    recorder = StatusRecorder(agents.kube.kubeconfig, node).start()
    agent = agents.start_agent(node, "--scrub-interval", "3", "--max-concurrent-downloads", "5")
    root = agents.root(node)
    try:
        for name in models:
            agents.wait_phase(node, name, "ModelDownloaded", agent)
        served_before = {name: sum(end - start for path in models[name]
                                   for start, end in hf_hub.served(f"damage-{tag}/{name}", path))
                         for name in models}
        damaged_at = time.monotonic()
        seen_from = len(recorder.observations())
        damaged_paths = {kind: how(model_dir(root, uris[kind])) for kind, (how, _word) in DAMAGE.items()}

        def repaired() -> bool:
            return all(agents.phase(node, kind) == "ModelDownloaded"
                       and file_digests(model_dir(root, uris[kind])) == expected[kind] for kind in DAMAGE)

        wait_until(repaired, "every damaged model fetched again", agent=agent)
        events = wait_until(lambda: [e for e in agents.events(node) if e["reason"] == "ModelDamaged"]
                            if len([e for e in agents.events(node) if e["reason"] == "ModelDamaged"]) >= 4
                            else None, "a ModelDamaged Event per model", agent=agent)
    finally:
        recorder.stop()

    after = recorder.observations()[seen_from:]
    for kind, (_how, word) in DAMAGE.items():
        path = damaged_paths[kind]
        # Visible in status: the model left ModelDownloaded with reason Damaged naming the path.
        shown = [o for o in after if o.phase(kind) != "ModelDownloaded"
                 and o.detail(kind).get("reason") == "Damaged"]
        assert shown, f"{kind}: never shown as damaged; phases {recorder.phases(kind)}"
        assert any(word in (o.detail(kind).get("message") or "") and path in (o.detail(kind).get("message") or "")
                   for o in shown), [o.detail(kind) for o in shown]
        assert any(path in (e["note"] or "") for e in events), (kind, events)
        # Repaired: exactly the source's files again, and the status says why no more.
        assert file_digests(model_dir(root, uris[kind])) == expected[kind]
        assert "reason" not in agents.detail(node, kind)
        detected = min(o.at for o in shown) - damaged_at
        repaired_after = next(o.at for o in after if o.at > min(o.at for o in shown)
                              and o.phase(kind) == "ModelDownloaded") - damaged_at
        fetched = sum(end - start for p in models[kind]
                      for start, end in hf_hub.served(f"damage-{tag}/{kind}", p)) - served_before[kind]
        size = sum(len(d) for d in models[kind].values())
        figures.record("damage", f"{kind}: detected after s / repaired after s / fetched again",
                       f"{detected:.1f} / {repaired_after:.1f} / {fetched / size:.2f} of the model")
    # The fifth model never left ModelDownloaded and was never fetched again.
    assert {o.phase("untouched") for o in after} == {"ModelDownloaded"}
    assert file_digests(model_dir(root, uris["untouched"])) == expected["untouched"]
    figures.record("damage", "damage kinds found and repaired", f"{len(DAMAGE)} of {len(DAMAGE)}")
