"""Crashes: the agent is SIGKILLed at random points of multi-file downloads and restarted, again
and again, against the real apiserver and the project's Hugging Face endpoint.

Two invariants are checked at every moment, not only at the end:

- a model is never reported ModelDownloaded unless its folder holds exactly the source's bytes
  (every version of the LocalModelNode's status is watched, and each time a model shows
  Downloaded its folder is hashed there and then);
- a restart never fetches again a byte the staging journal already vouched for, and fetches
  again only the unjournaled tails of the requests that were in flight when the agent died
  (the hub notes which bytes of which file it sent, per response, throttled so the socket
  buffers stay empty): about one journal checkpoint per request in flight at the most.

Kill points are drawn from a seeded RNG (`LOCALMODEL_FAULT_SEED` replays one run): most are
placed at a random fraction of the bytes still to come, the rest at a random time after the
restart (start-up, listing, hashing the resumed prefix, publishing, deleting an old round).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from localmodel.api.keys import storage_key
from localmodel.fetch.options import FetchOptions
from localmodel.fetch.ranges import RangeSet
from tests.faults import figures
from tests.faults.helpers import MiB, entry, hub_storage_config, journal, model_dir, overlap, union
from tests.faults.observe import Observation, StatusRecorder, file_digests
from tests.node.agent_process import AgentProcess, wait_until
from tests.node.cluster import ClusterAgents
from tests.servers.hf import LocalHub

#: Mid-download kills the test must reach.
KILLS_WANTED = 20
#: Bytes per second per response: slow enough that kills land mid-file, fast enough for CI.
THROTTLE = 24 * MiB
ENGINE = FetchOptions()


@dataclass
class Model:
    name: str
    repo: str
    files: dict[str, bytes]
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"hf://{self.repo}"

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


def make_round(hub: LocalHub, rng: random.Random, number: int, tag: str) -> list[Model]:
    """Two models of a config file and two weight files of 20-60 MiB each."""
    import hashlib

    models = []
    for letter in "ab":
        files = {"config.json": json.dumps({"round": number, "model": letter}).encode()}
        for part in (1, 2):
            size = rng.randint(20, 60) * MiB + rng.randint(0, 4095)
            files[f"model-0000{part}-of-00002.safetensors"] = rng.randbytes(size)
        model = Model(f"r{number}-{letter}", f"crash-{tag}/r{number}-{letter}", files,
                      {path: hashlib.sha256(data).hexdigest() for path, data in files.items()})
        hub.add_commit(model.repo, files)
        models.append(model)
    return models


class CrashRun:
    """The state of one crash run: agents, rounds of models, and what the hub sent."""

    def __init__(self, agents: ClusterAgents, hub: LocalHub, rng: random.Random) -> None:
        self.agents = agents
        self.hub = hub
        self.rng = rng
        self.tag = agents.job_namespace[-8:]
        self.models: dict[str, Model] = {}  # status key -> model, every round
        self.round: list[Model] = []
        self.generations: list[dict[tuple[str, str], list[tuple[int, int]]]] = []
        self.journaled: list[dict[tuple[str, str], RangeSet]] = []
        self.in_flight: list[int] = []
        self.kinds: list[str] = []
        self.downloaded_checks = 0
        self.wrong_content: list[str] = []
        self.node = ""
        self.agent: AgentProcess | None = None
        self._seen: dict[tuple[str, str], int] = {}
        #: Models of finished rounds, about to be removed from the spec: no longer checked.
        self.retired: set[str] = set()
        self._checking = threading.Lock()

    # --- the invariant checked on every status version -----------------------------------------

    def check(self, observation: Observation) -> None:
        with self._checking:
            self._check(observation)

    def _check(self, observation: Observation) -> None:
        # A model the spec no longer asks for is being deleted (its status goes in the same
        # pass): not checked from the moment the test decides to remove it.
        for key, phase in (observation.status.get("modelStatus") or {}).items():
            if phase != "ModelDownloaded" or key not in self.models or key not in observation.wanted \
                    or key in self.retired:
                continue
            model = self.models[key]
            self.downloaded_checks += 1
            found = file_digests(model_dir(self.agents.root(self.node), model.uri))
            if found != model.digests:
                folder = model_dir(self.agents.root(self.node), model.uri)
                differs = {path: (os.path.getsize(folder / path) if (folder / path).exists() else None,
                                  len(model.files.get(path, b"")))
                           for path in {*found, *model.digests} if found.get(path) != model.digests.get(path)}
                self.wrong_content.append(f"{key} at resourceVersion {observation.resource_version}: "
                                          f"{differs} differ (size on disk, expected)")
                self._evidence(key, model, observation, found)

    def _evidence(self, key: str, model: Model, observation: Observation, found: dict[str, str]) -> None:
        """Keep what the disk held when a wrong Downloaded was seen (for the failure report)."""
        root = self.agents.root(self.node)
        lines = [f"time {time.time():.3f} key {key} rv {observation.resource_version}",
                 f"status {json.dumps(observation.status)}"]
        for base in ("models", "staging", "manifests"):
            for current, _dirs, names in os.walk(root / base):
                for name in names:
                    path = Path(current) / name
                    st = path.lstat()
                    lines.append(f"{path.relative_to(root)} ino={st.st_ino} size={st.st_size} "
                                 f"mtime={st.st_mtime:.3f}")
        for path, digest in sorted(found.items()):
            lines.append(f"found {path} {digest} expected {model.digests.get(path)}")
            if digest != model.digests.get(path) and path in model.files:
                data = (root / "models" / storage_key(model.uri) / path).read_bytes()
                want = model.files[path]
                piece = 64 * 1024
                bad = [offset for offset in range(0, len(want), piece)
                       if data[offset:offset + piece] != want[offset:offset + piece]]
                zeros = [offset for offset in bad if not any(data[offset:offset + piece])]
                lines.append(f"  differing 64KiB pieces at {bad[:50]} ({len(bad)} in all, {len(zeros)} all-zero)")
                for offset in bad[:3]:
                    where = want.find(data[offset:offset + piece])
                    lines.append(f"  piece at {offset} is found in the expected file at {where}")
        manifest = root / "manifests" / f"{storage_key(model.uri)}.json"
        if manifest.exists():
            lines.append(manifest.read_text())
        (self.agents.tmp / f"wrong-content-{len(self.wrong_content)}.txt").write_text("\n".join(lines) + "\n")

    # --- rounds -----------------------------------------------------------------------------------

    def next_round(self, number: int) -> None:
        with self._checking:
            self.retired.update(m.name for m in self.round)
        self.round = make_round(self.hub, self.rng, number, self.tag)
        for model in self.round:
            self.models[model.name] = model
        entries = [entry(m.uri, m.name, storage={"key": "hub"}) for m in self.round]
        if self.node:
            self.agents.set_entries(self.node, entries)
        else:
            self.node = self.agents.node(entries)

    def round_done(self, recorder: StatusRecorder) -> bool:
        history = recorder.observations()
        if not history:
            return False
        phases = history[-1].status.get("modelStatus") or {}
        return all(phases.get(m.name) == "ModelDownloaded" for m in self.round)

    def files(self) -> list[tuple[str, str, int]]:
        return [(m.repo, path, len(data)) for m in self.models.values() for path, data in m.files.items()]

    def covered(self) -> tuple[int, int]:
        """(bytes of this round the hub has sent at least once, bytes of this round)."""
        done = total = 0
        for model in self.round:
            for path, data in model.files.items():
                done += union(self.hub.served(model.repo, path)).covered()
                total += len(data)
        return done, total

    # --- kills --------------------------------------------------------------------------------

    def start_agent(self) -> None:
        self.agent = self.agents.start_agent(self.node, "--max-concurrent-downloads", "2")

    def close_generation(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """The ranges the hub sent since the previous generation ended."""
        generation = {}
        for repo, path, _size in self.files():
            served = self.hub.served(repo, path)
            start = self._seen.get((repo, path), 0)
            generation[(repo, path)] = served[start:]
            self._seen[(repo, path)] = len(served)
        self.generations.append(generation)
        return generation

    def kill(self, kind: str) -> None:
        assert self.agent is not None
        self.agent.kill()
        time.sleep(0.3)  # let the hub notice the closed connections
        before = union_all(self.generations)
        generation = self.close_generation()
        in_flight = 0
        for model in self.round:
            for path, data in model.files.items():
                sent = generation[(model.repo, path)]
                whole = union([*before.get((model.repo, path), RangeSet()), *sent])
                if sum(end - start for start, end in sent) and whole.covered() < len(data):
                    in_flight += 1
        self.in_flight.append(in_flight)
        self.kinds.append(kind)
        vouched: dict[tuple[str, str], RangeSet] = {}
        for model in self.round:
            staged = self.agents.root(self.node) / "staging" / storage_key(model.uri)
            try:
                kept = (staged / "journal.jsonl").read_text()
            except OSError:
                kept = "(none)"
            with open(self.agents.tmp / f"journals-{model.name}.txt", "a") as out:
                out.write(f"--- after kill {len(self.kinds) - 1} ({kind}) at {time.time():.3f}\n{kept}")
            done, _sizes = journal(self.agents.root(self.node) / "staging" / storage_key(model.uri))
            for path, ranges in done.items():
                vouched[(model.repo, path)] = ranges
        self.journaled.append(vouched)


def union_all(generations: list[dict[tuple[str, str], list[tuple[int, int]]]]) -> dict[tuple[str, str], RangeSet]:
    merged: dict[tuple[str, str], RangeSet] = {}
    for generation in generations:
        for file_key, ranges in generation.items():
            target = merged.setdefault(file_key, RangeSet())
            for start, end in ranges:
                target.add(start, end)
    return merged


def test_sigkill_at_random_points_never_shows_wrong_content_and_refetches_little(
    agents: ClusterAgents, hf_hub: LocalHub
) -> None:
    seed = int(os.environ.get("LOCALMODEL_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    hf_hub.faults.throttle = THROTTLE
    hub_storage_config(agents.client, agents.job_namespace, hf_hub.url)
    run = CrashRun(agents, hf_hub, rng)
    run.next_round(0)
    recorder = StatusRecorder(agents.kube.kubeconfig, run.node, on_status=run.check).start()
    started = time.monotonic()
    run.start_agent()
    rounds, mid_download = 1, 0
    try:
        while True:
            if run.round_done(recorder):
                if mid_download >= KILLS_WANTED:
                    break
                run.next_round(rounds)
                rounds += 1
                continue
            done, total = run.covered()
            if rng.random() < 0.8 and done < total:
                kind = "bytes"
                target = done + rng.uniform(0.05, 0.95) * (total - done)
                reached = wait_until(lambda: run.covered()[0] >= target or run.round_done(recorder),
                                     f"{target:.0f} bytes of round {rounds - 1} sent", agent=run.agent)
            else:
                kind = "time"
                deadline = time.monotonic() + rng.uniform(0.0, 3.0)
                while time.monotonic() < deadline and not run.round_done(recorder):
                    time.sleep(0.02)
                reached = True
            if run.round_done(recorder) or not reached:
                continue
            run.kill(kind)
            if sum(end - start for ranges in run.generations[-1].values() for start, end in ranges):
                mid_download += 1
            run.start_agent()
        wait_until(lambda: run.round_done(recorder), "the last round downloaded", agent=run.agent)
    finally:
        recorder.stop()
    elapsed = time.monotonic() - started
    run.close_generation()

    # 1. Never Downloaded with wrong content, checked on every status version.
    assert run.wrong_content == [], f"seed {seed}: Downloaded with wrong content: {run.wrong_content}"
    assert run.downloaded_checks > 0
    for model in run.round:
        assert file_digests(model_dir(agents.root(run.node), model.uri)) == model.digests

    # 2. Journaled bytes are never fetched again; at most one chunk per in-flight file is.
    refetched: list[int] = []
    for kill, (vouched, in_flight) in enumerate(zip(run.journaled, run.in_flight)):
        before = union_all(run.generations[: kill + 1])
        after = run.generations[kill + 1]
        again = 0
        for file_key, ranges in after.items():
            sent = union(ranges)
            assert overlap(sent, vouched.get(file_key, RangeSet())) == 0, (
                f"seed {seed}: after kill {kill} the agent fetched again bytes of {file_key} that "
                f"its journal vouched for")
            again += overlap(sent, before.get(file_key, RangeSet()))
        # Each request in flight loses at most its unjournaled tail (< one checkpoint, and never
        # more than its chunk); at most `concurrency` requests are in flight.
        assert again <= ENGINE.concurrency * min(ENGINE.chunk_size, 2 * ENGINE.checkpoint_size), (
            seed, kill, again, in_flight)
        refetched.append(again)
    sent_total = sum(end - start for generation in run.generations
                     for ranges in generation.values() for start, end in ranges)
    model_total = sum(m.size for m in run.models.values())

    # Staging is gone for every published model; folders of earlier rounds are deleted.
    root = agents.root(run.node)
    assert sorted(os.listdir(root / "models")) == sorted(storage_key(m.uri) for m in run.round)
    assert not (root / "staging").exists() or not [p for p in os.listdir(root / "staging")
                                                   if not p.endswith(".lock")]

    logs = "".join(agent.log_text() for agent in agents.agents)
    per_in_flight = [again / n for again, n in zip(refetched, run.in_flight) if n]
    figures.record("crashes", "seed", seed)
    figures.record("crashes", "kills (SIGKILL)", len(run.kinds))
    figures.record("crashes", "kills mid-download", mid_download)
    figures.record("crashes", "kills by byte position / by time", f"{run.kinds.count('bytes')} / "
                   f"{run.kinds.count('time')}")
    figures.record("crashes", "models downloaded (rounds x 2)", len(run.models))
    figures.record("crashes", "Downloaded observations content-checked", run.downloaded_checks)
    figures.record("crashes", "Downloaded with wrong content", len(run.wrong_content))
    figures.record("crashes", "journaled bytes fetched again", 0)
    figures.record("crashes", "MiB re-fetched per restart (mean / max)",
                   f"{sum(refetched) / len(refetched) / MiB:.2f} / {max(refetched) / MiB:.2f}")
    figures.record("crashes", f"MiB re-fetched per in-flight file (max; chunk {ENGINE.chunk_size // MiB}, "
                   f"checkpoint {ENGINE.checkpoint_size // MiB}, {ENGINE.concurrency} requests)",
                   f"{max(per_in_flight, default=0) / MiB:.2f}")
    figures.record("crashes", "bytes sent / model bytes", f"{sent_total / model_total:.3f}")
    figures.record("crashes", "publishes finished after a kill between folder move and manifest",
                   logs.count("finished a publish interrupted by a crash"))
    figures.record("crashes", "wall seconds", round(elapsed, 1))
