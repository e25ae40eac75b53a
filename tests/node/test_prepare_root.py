"""`localmodel prepare-root` (the agent Pod's init container) on a real filesystem, as root:
a fresh root and folders left by others are given to 1000:1000, model data never; links and files
planted under the agent's folder names are refused without touching what they point to; and the
command works with CAP_CHOWN as its only capability."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmodel.node.prepare_root import UnsafeRootError, prepare_root

UID = GID = 1000
KSERVE_AGENT_UID = 65532  # a distroless "nonroot" user, as KServe's ko-built agent runs
KEY = "0123456789abcdef"


@pytest.fixture
def base() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("prepare-root changes owners: run the tests as root")
    # Not under /tmp: tests elsewhere bind-mount fresh tmpfs there in sandboxes.
    folder = Path(tempfile.mkdtemp(prefix="localmodel-prepare-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=True)


def _owner(path: Path) -> tuple[int, int]:
    status = path.lstat()
    return status.st_uid, status.st_gid


def _fresh_root(base: Path) -> Path:
    """As the kubelet leaves a DirectoryOrCreate hostPath: root-owned, 0755, empty."""
    root = base / "models-root"
    root.mkdir(mode=0o755)
    os.chown(root, 0, 0)
    return root


def test_fresh_root_is_given_to_the_agent_and_nothing_is_created(base: Path) -> None:
    root = _fresh_root(base)
    changes = prepare_root(root, UID, GID)
    assert [(c.path, c.uid_before, c.gid_before) for c in changes] == [(str(root), 0, 0)]
    assert _owner(root) == (UID, GID)
    assert root.stat().st_mode & 0o7777 == 0o755, "modes are not changed"
    assert list(root.iterdir()) == []
    assert prepare_root(root, UID, GID) == [], "a second run changes nothing"


def test_folders_of_another_agent_are_adopted_but_model_data_keeps_its_owner(base: Path) -> None:
    root = _fresh_root(base)
    for name in ("models", "manifests", "staging"):
        (root / name).mkdir(mode=0o755)
        os.chown(root / name, KSERVE_AGENT_UID, KSERVE_AGENT_UID)
    model = root / "models" / KEY
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w")
    for path in (model, model / "weights.bin"):
        os.chown(path, KSERVE_AGENT_UID, KSERVE_AGENT_UID)
    (root / "agent-state.json").write_text("{}")  # a file at the top: not the init's business

    changes = prepare_root(root, UID, GID)
    assert sorted(c.path for c in changes) == sorted(str(root / n) for n in ("", "models", "manifests", "staging"))
    for name in ("models", "manifests", "staging"):
        assert _owner(root / name) == (UID, GID)
    assert _owner(root) == (UID, GID)
    assert _owner(model) == _owner(model / "weights.bin") == (KSERVE_AGENT_UID, KSERVE_AGENT_UID)
    assert _owner(root / "agent-state.json") == (0, 0)
    assert prepare_root(root, UID, GID) == []


@pytest.mark.parametrize("name", ["models", "manifests", "staging"])
def test_symlink_at_an_agent_folder_name_is_refused_and_its_target_untouched(base: Path, name: str) -> None:
    root = _fresh_root(base)
    victim = base / "victim"  # stands for /etc or any root-owned directory on the node
    victim.mkdir()
    (victim / "secret").write_text("x")
    (root / name).symlink_to(victim)
    with pytest.raises(UnsafeRootError, match="is a symbolic link"):
        prepare_root(root, UID, GID)
    assert _owner(victim) == _owner(victim / "secret") == (0, 0)
    assert _owner(root) == (0, 0), "the agent must not start on a root holding a planted link"


def test_dangling_symlink_and_hard_linked_file_are_refused(base: Path) -> None:
    root = _fresh_root(base)
    (root / "models").symlink_to("/nonexistent/anywhere")
    with pytest.raises(UnsafeRootError, match="models is a symbolic link"):
        prepare_root(root, UID, GID)
    (root / "models").unlink()
    # A hard link to a root-owned file (same filesystem) where a folder belongs.
    target = base / "shadow"
    target.write_text("root:*:...")
    os.link(target, root / "staging")
    with pytest.raises(UnsafeRootError, match="staging is not a directory"):
        prepare_root(root, UID, GID)
    assert _owner(target) == (0, 0)


def test_root_itself_a_symlink_is_refused(base: Path) -> None:
    real = _fresh_root(base)
    link = base / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeRootError, match="without following links"):
        prepare_root(link, UID, GID)
    assert _owner(real) == (0, 0)


def _run_with_capabilities(capabilities: str, root: Path) -> subprocess.CompletedProcess[str]:
    """The init container's process: UID 0, only `capabilities` (setpriv's syntax), no new
    privileges."""
    return subprocess.run(
        ["setpriv", f"--bounding-set=-all{capabilities}", f"--inh-caps=-all{capabilities}",
         "--no-new-privs", "--", sys.executable, "-m", "localmodel", "prepare-root", "--root", str(root),
         "--uid", str(UID), "--gid", str(GID)],
        capture_output=True, text=True, timeout=60, check=False)


def test_command_needs_only_cap_chown(base: Path) -> None:
    root = _fresh_root(base)
    (root / "models").mkdir()
    os.chown(root / "models", KSERVE_AGENT_UID, KSERVE_AGENT_UID)
    done = _run_with_capabilities(",+chown", root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{root / 'models'}: owner {KSERVE_AGENT_UID}:{KSERVE_AGENT_UID} -> 1000:1000",
        f"{root}: owner 0:0 -> 1000:1000",
    ]
    again = _run_with_capabilities(",+chown", root)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    # The agent, once it owns the root, creates its folders itself as 1000.
    assert _owner(root) == _owner(root / "models") == (UID, GID)


def test_command_without_cap_chown_says_what_it_needs(base: Path) -> None:
    root = _fresh_root(base)
    done = _run_with_capabilities("", root)
    assert done.returncode == 1
    assert "needs UID 0 with CAP_CHOWN" in done.stderr
    assert _owner(root) == (0, 0)


def test_root_private_to_another_user_is_reported_not_forced(base: Path) -> None:
    """Without CAP_DAC_OVERRIDE, UID 0 may not search a root that is 0700 and not its own."""
    root = _fresh_root(base)
    (root / "models").mkdir()
    os.chown(root / "models", KSERVE_AGENT_UID, KSERVE_AGENT_UID)
    os.chown(root, UID, GID)
    root.chmod(0o700)
    done = _run_with_capabilities(",+chown", root)
    assert done.returncode == 1
    assert "permission denied" in done.stderr and "chmod o+rx" in done.stderr
    assert _owner(root / "models") == (KSERVE_AGENT_UID, KSERVE_AGENT_UID)


def test_command_refuses_a_planted_link_with_exit_1(base: Path) -> None:
    root = _fresh_root(base)
    (root / "manifests").symlink_to("/etc")
    done = _run_with_capabilities(",+chown", root)
    assert done.returncode == 1
    assert "manifests is a symbolic link: left alone" in done.stderr
    assert _owner(Path("/etc")) == (0, 0)
