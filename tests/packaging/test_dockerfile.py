"""The Dockerfile, read as data (no Docker engine runs here): it builds with the script the wheel
test runs, copies only what .dockerignore lets through, and runs as UID 1000 without a shell."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass

import yaml

from tests.packaging.conftest import REPO


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    arguments: str


def _instructions() -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    result, stage = [], -1
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append(Instruction(stage, keyword.upper(), arguments.strip()))
    return result


def _final_stage() -> list[Instruction]:
    instructions = _instructions()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_two_stages_on_one_python_base() -> None:
    froms = [i.arguments for i in _instructions() if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    arg = next(i.arguments for i in _instructions() if i.keyword == "ARG" and i.stage == -1)
    image = arg.split("=", 1)[1]
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", image)
    assert match, image
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={match[1]}.{match[2]}", "the image's Python is the oldest supported one"


def test_builder_runs_the_tested_install_script() -> None:
    runs = [i.arguments for i in _instructions() if i.keyword == "RUN" and i.stage == 0]
    assert runs == ["hack/install-venv.sh /opt/localmodel"]
    assert os.access(REPO / "hack" / "install-venv.sh", os.X_OK), "RUN calls it directly: keep it executable"
    copies = [i.arguments for i in _final_stage() if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/localmodel /opt/localmodel"]


def test_runtime_is_non_root_with_an_exec_entrypoint() -> None:
    final = {i.keyword: i.arguments for i in _final_stage()}
    assert final["USER"] == "1000:1000"
    assert json.loads(final["ENTRYPOINT"]) == ["localmodel"]  # exec form: no shell
    assert "/opt/localmodel/bin" in final["ENV"]
    assert not [i for i in _final_stage() if i.keyword == "RUN"], "the runtime stage runs nothing"


def test_every_copied_path_exists_and_passes_dockerignore() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = []
    for instruction in _instructions():
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from"):
            continue
        *paths, _destination = shlex.split(instruction.arguments)
        sources += paths
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path"
        assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
    # And nothing is let through that the Dockerfile does not use.
    assert allowed == {s.rstrip("/") for s in sources}


def test_image_user_matches_the_manifests() -> None:
    """The Pods' runAsUser/runAsGroup and KServe's fsGroup are the image's user."""
    user = next(i.arguments for i in _final_stage() if i.keyword == "USER")
    uid, gid = (int(part) for part in user.split(":"))
    values = yaml.safe_load((REPO / "charts" / "localmodel" / "values.yaml").read_text())
    contexts = [values["podSecurityContext"]]
    for manifest in ("deploy/agent/daemonset.yaml", "deploy/controller/deployment.yaml"):
        workload = yaml.safe_load((REPO / manifest).read_text())
        contexts.append(workload["spec"]["template"]["spec"]["securityContext"])
    for context in contexts:
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert values["config"]["localModel"]["fsGroup"] == gid
    # The init container hands the hostPath to that same user.
    daemonset = yaml.safe_load((REPO / "deploy" / "agent" / "daemonset.yaml").read_text())
    [init] = daemonset["spec"]["template"]["spec"]["initContainers"]
    command = init["command"]
    assert command[command.index("--uid") + 1] == str(uid) and command[command.index("--gid") + 1] == str(gid)


def test_image_built_from_debian_packages_has_the_dockerfiles_config() -> None:
    """`localmodel dev image` writes its OCI config itself; it must say what the Dockerfile says."""
    from localmodel.dev.image import IMAGE_CONFIG

    final = _final_stage()
    keyword = {i.keyword: i.arguments for i in final}
    config = IMAGE_CONFIG.runtime_config()
    assert config["Entrypoint"] == json.loads(keyword["ENTRYPOINT"])
    assert config["Cmd"] == json.loads(keyword["CMD"])
    assert config["User"] == keyword["USER"]
    assert config["WorkingDir"] == keyword["WORKDIR"]
    dockerfile_env = dict(pair.split("=", 1) for pair in shlex.split(keyword["ENV"]))
    image_env = dict(entry.split("=", 1) for entry in config["Env"])
    # PATH: the venv first, then the base's; Debian's default PATH is the base here.
    assert dockerfile_env.pop("PATH") == "/opt/localmodel/bin:$PATH"
    assert image_env.pop("PATH").startswith("/opt/localmodel/bin:/usr/local/sbin:")
    assert image_env == dockerfile_env
    labels = dict(pair.split("=", 1) for pair in shlex.split(keyword["LABEL"]))
    assert {**labels, "org.opencontainers.image.version": _project_version()} == config["Labels"]


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
