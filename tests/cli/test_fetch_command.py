"""`localmodel fetch SRC DEST [SRC DEST]...`: the storage-initializer convention, run as a
real process with settings in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.fetch.models import NESTED, read_tree, write_tree
from tests.servers.http import FaultServer
from tests.servers.nginx import NginxServer

LOCALMODEL = str(Path(sys.executable).with_name("localmodel"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOCALMODEL, "fetch", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_pairs_of_sources_and_destinations(nginx: NginxServer, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    folder = uuid.uuid4().hex
    (nginx.root / folder).mkdir()
    (nginx.root / folder / "model.bin").write_bytes(b"weights" * 1000)
    result = run(str(source), str(tmp_path / "a"),
                 f"{nginx.https_url}/{folder}/model.bin", str(tmp_path / "b"),
                 env={"LOCALMODEL_HTTP_CA_BUNDLE": str(nginx.ca_bundle)})
    assert result.returncode == 0, result.stderr
    assert read_tree(tmp_path / "a") == NESTED
    assert read_tree(tmp_path / "b") == {"model.bin": b"weights" * 1000}
    events = [json.loads(line) for line in result.stderr.splitlines()]
    done = {event["dest"]: event for event in events if event["event"] == "done"}
    assert sorted(done) == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert done[str(tmp_path / "a")]["files"] == len(NESTED)
    assert all(event["event"] in ("progress", "done") for event in events)


def test_pairs_run_at_the_same_time(fault_server: FaultServer, tmp_path: Path) -> None:
    """The first pair's server holds its body back; the second pair, run beside it, is done
    first (run one after another, it could only finish second)."""
    held = fault_server.add(f"/cli/{uuid.uuid4().hex}/held.bin", b"h" * 1000, stall_seconds=5.0)
    quick = fault_server.add(f"/cli/{uuid.uuid4().hex}/quick.bin", b"q" * 1000)
    result = run(held, str(tmp_path / "held"), quick, str(tmp_path / "quick"))
    assert result.returncode == 0, result.stderr
    done = [json.loads(line)["dest"] for line in result.stderr.splitlines()
            if json.loads(line)["event"] == "done"]
    assert done == [str(tmp_path / "quick"), str(tmp_path / "held")]
    assert read_tree(tmp_path / "held") == {"held.bin": b"h" * 1000}


def test_first_failure_stops_the_other_pairs(fault_server: FaultServer, tmp_path: Path) -> None:
    """One pair fails: the others stop too (their staging stays, so a rerun resumes), and the
    failure is the one line reported."""
    slow = fault_server.add(f"/cli/{uuid.uuid4().hex}/slow.bin", b"s" * (8 << 20), throttle=256 * 1024)
    missing = f"{fault_server.url}/cli/{uuid.uuid4().hex}/missing.bin"
    result = run(slow, str(tmp_path / "slow"), missing, str(tmp_path / "missing"),
                 "--progress", "none", "--concurrency", "2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"localmodel fetch: {missing} -> {tmp_path / 'missing'}: NotFound: {missing} answered HTTP 404"]
    assert not (tmp_path / "slow").exists()
    assert (tmp_path / ".localmodel" / "staging" / "slow" / "journal.jsonl").exists()


def test_patterns_come_from_the_environment(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    result = run(str(source), str(tmp_path / "a"),
                 env={"STORAGE_ALLOW_PATTERNS": "*.json,tokenizer/*",
                      "STORAGE_IGNORE_PATTERNS": "*/empty"})
    assert result.returncode == 0, result.stderr
    assert sorted(read_tree(tmp_path / "a")) == ["config.json", "tokenizer/deep/er/vocab.txt"]


def test_failure_is_one_clear_line(nginx: NginxServer, tmp_path: Path) -> None:
    result = run(f"{nginx.http_url}/missing/model.bin", str(tmp_path / "a"), "--progress", "none")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"localmodel fetch: {nginx.http_url}/missing/model.bin -> {tmp_path / 'a'}: NotFound: "
        f"{nginx.http_url}/missing/model.bin answered HTTP 404"]
    assert not (tmp_path / "a").exists()


def test_transient_failure_exits_75(fault_server: FaultServer, tmp_path: Path) -> None:
    url = fault_server.add("/cli/busy.bin", b"x", fail_times=1000, fail_status=503)
    result = run(url, str(tmp_path / "a"), "--retries", "0", "--progress", "none")
    assert result.returncode == 75
    assert "SourceUnavailable" in result.stderr.splitlines()[-1]


def test_credentials_in_uri_are_refused_without_echo(tmp_path: Path) -> None:
    result = run("https://user:hunter2@example.com/m.bin", str(tmp_path / "a"))
    assert result.returncode == 1
    assert "hunter2" not in result.stderr
    assert "InvalidURI" in result.stderr


def test_arguments_come_in_pairs(tmp_path: Path) -> None:
    result = run("s3://bucket/model")
    assert result.returncode == 2
    assert "pairs" in result.stderr


def test_verify_none_writes_a_manifest_without_sha256(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    result = run("--verify", "none", "--progress", "none", str(source), str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert read_tree(tmp_path / "m") == NESTED
    manifest = json.loads((tmp_path / ".localmodel" / "manifests" / "m.json").read_text())
    assert {f["path"] for f in manifest["files"]} == set(NESTED)
    assert all(f["sha256"] is None for f in manifest["files"])
