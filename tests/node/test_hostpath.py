"""node/hostpath.py: the agent's root on the node from mountinfo, and the verdict on a node
group's volume path (kserve#4151). Pure functions on mountinfo text, and the kernel's own
mountinfo for a real bind mount."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmodel.errors import HostPathMismatchError
from localmodel.node.hostpath import (
    MOUNTINFO_ENV,
    HostRoot,
    Verdict,
    check_group_paths,
    group_volume_path,
    host_root,
    parse_mountinfo,
    read_host_root,
    verdict,
)

POD = "6b1f0a52-3c1e-4f43-9a7e-2f1c9d8e7a10"
SANDBOX = "4e5d0c2b9a8f7e6d5c4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a3928170605"

#: The agent container as the kubelet has containerd mount it, written after the recorded sample
#: below plus the kubelet's binds (disk /dev/vda): overlay root, the models hostPath /models on
#: /mnt/models, the emptyDir /tmp, /etc/hosts and the termination log from the kubelet's Pod
#: folder, hostname and resolv.conf from containerd's sandbox folder, projected tokens on tmpfs.
KUBELET_CONTAINER = f"""\
2330 2216 0:205 / / rw,relatime master:840 - overlay overlay rw,lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/95/fs,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/101/fs,workdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/101/work
2331 2330 0:208 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
2332 2330 0:209 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
2333 2332 0:210 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
2334 2332 0:204 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
2335 2330 0:211 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
2340 2330 254:0 /models /mnt/models rw,relatime - ext4 /dev/vda rw,discard
2341 2330 254:0 /var/lib/kubelet/pods/{POD}/volumes/kubernetes.io~empty-dir/tmp /tmp rw,relatime - ext4 /dev/vda rw,discard
2342 2330 254:0 /var/lib/kubelet/pods/{POD}/etc-hosts /etc/hosts rw,relatime - ext4 /dev/vda rw,discard
2343 2332 254:0 /var/lib/kubelet/pods/{POD}/containers/manager/0a1b2c3d /dev/termination-log rw,relatime - ext4 /dev/vda rw,discard
2344 2330 254:0 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SANDBOX}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw,discard
2345 2330 254:0 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{SANDBOX}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda rw,discard
2346 2332 0:203 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
2347 2330 0:199 / /var/run/secrets/kubernetes.io/serviceaccount ro,relatime - tmpfs tmpfs rw,size=307200k
2348 2330 0:200 / /var/run/secrets/localmodel/peer ro,relatime - tmpfs tmpfs rw,size=307200k
"""


#: Recorded, not written by hand: /proc/self/mountinfo inside a container of localmodel's image
#: (`localmodel dev image`) run by containerd 2.2.9 and runc with `ctr run --read-only --mount
#: type=bind,src=/var/tmp/lm-ctr/node-models,dst=/mnt/models`, on this kind of machine
#: (root filesystem ext4 on /dev/vda). No kubelet: nothing anchors the device as the node's root.
CONTAINERD_CTR_RUN = """\
76 53 0:40 / / ro,relatime - overlay overlay rw,lowerdir=/var/tmp/lm-ctr/root/io.containerd.snapshotter.v1.overlayfs/snapshots/2/fs:/var/tmp/lm-ctr/root/io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs,upperdir=/var/tmp/lm-ctr/root/io.containerd.snapshotter.v1.overlayfs/snapshots/5/fs,workdir=/var/tmp/lm-ctr/root/io.containerd.snapshotter.v1.overlayfs/snapshots/5/work,uuid=on
78 76 0:48 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
79 76 0:49 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
80 79 0:50 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
81 79 0:51 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
82 79 0:46 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
83 76 0:52 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
84 76 0:53 / /run rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
85 76 254:0 /var/tmp/lm-ctr/node-models /mnt/models rw,relatime - ext4 /dev/vda rw,discard,no_prefetch_block_bitmaps,resv_strict,resuid=65534,resgid=65534
54 78 0:48 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
55 78 0:48 /fs /proc/fs ro,nosuid,nodev,noexec,relatime - proc proc rw
56 78 0:48 /irq /proc/irq ro,nosuid,nodev,noexec,relatime - proc proc rw
57 78 0:48 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
58 78 0:54 / /proc/acpi ro,relatime - tmpfs tmpfs ro,size=4k,nr_inodes=1
60 78 0:49 /null /proc/interrupts rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
61 78 0:49 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
62 78 0:49 /null /proc/timer_list rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
63 83 0:54 / /sys/firmware ro,relatime - tmpfs tmpfs ro,size=4k,nr_inodes=1
"""


def _replace_models_mount(line: str) -> str:
    return "\n".join(line if " /mnt/models " in existing else existing
                     for existing in KUBELET_CONTAINER.splitlines()) + "\n"


#: The same Pod on a VM whose /mnt is a second disk (/dev/sdb1, Azure's resource disk), with
#: hostPath /mnt/models: the mount shows the path within that disk, /models.
SECOND_DISK = _replace_models_mount("2340 2330 8:17 /models /mnt/models rw,relatime - ext4 /dev/sdb1 rw")
#: A disk mounted whole at /models on the node: nothing says where.
WHOLE_DISK = _replace_models_mount("2340 2330 8:33 / /mnt/models rw,relatime - xfs /dev/sdc rw")
#: A path with a space, as the kernel escapes it.
ESCAPED = _replace_models_mount(r"2340 2330 254:0 /srv/model\040cache /mnt/models rw,relatime - ext4 /dev/vda rw")


def test_parse_reads_every_field_it_needs() -> None:
    mounts = parse_mountinfo(KUBELET_CONTAINER + "not a mountinfo line\n")
    assert len(mounts) == 15
    models = next(m for m in mounts if m.mount_point == "/mnt/models")
    assert (models.mount_id, models.parent_id, models.device, models.root, models.fstype, models.source) == (
        2340, 2330, "254:0", "/models", "ext4", "/dev/vda")
    # Optional fields ("master:840") before the separator do not shift the rest.
    assert mounts[0].fstype == "overlay" and mounts[0].mount_point == "/"


def test_hostpath_on_the_node_root_filesystem_is_the_host_path() -> None:
    found = host_root(parse_mountinfo(KUBELET_CONTAINER), "/mnt/models")
    assert found == HostRoot(path="/models", mount_point="/mnt/models", fstype="ext4", source="/dev/vda",
                             anchored=True)
    below = host_root(parse_mountinfo(KUBELET_CONTAINER), "/mnt/models/sub/")
    assert below is not None and below.path == "/models/sub"


def test_kserve_4151_mismatch_is_different_and_the_same_path_is_same() -> None:
    found = host_root(parse_mountinfo(KUBELET_CONTAINER), "/mnt/models")
    assert verdict(found, "/models") is Verdict.SAME
    assert verdict(found, "/models/") is Verdict.SAME
    assert verdict(found, "/mnt/models") is Verdict.DIFFERENT  # the classic mistake
    assert verdict(found, "/data/models") is Verdict.DIFFERENT
    assert verdict(found, None) is Verdict.UNKNOWN
    assert verdict(found, "relative/path") is Verdict.UNKNOWN


def test_second_disk_leaves_a_path_ending_the_same_unknown() -> None:
    found = host_root(parse_mountinfo(SECOND_DISK), "/mnt/models")
    assert found is not None and found.path == "/models" and not found.anchored
    assert verdict(found, "/mnt/models") is Verdict.UNKNOWN, "may well be right: never refused"
    assert verdict(found, "/models") is Verdict.SAME
    assert verdict(found, "/data/cache") is Verdict.UNKNOWN, "where /dev/sdb1 is mounted is not known"


def test_whole_filesystem_or_no_mount_says_nothing() -> None:
    assert host_root(parse_mountinfo(WHOLE_DISK), "/mnt/models") is None
    # An agent whose root is not a mount (a test, standalone mode): the overlay root holds it.
    assert host_root(parse_mountinfo(KUBELET_CONTAINER), "/var/lib/models") is None
    assert host_root([], "/mnt/models") is None
    assert verdict(None, "/models") is Verdict.UNKNOWN


def test_recorded_containerd_container_shows_the_bound_directory() -> None:
    mounts = parse_mountinfo(CONTAINERD_CTR_RUN)
    assert len(mounts) == len(CONTAINERD_CTR_RUN.splitlines())
    found = host_root(mounts, "/mnt/models")
    assert found == HostRoot(path="/var/tmp/lm-ctr/node-models", mount_point="/mnt/models", fstype="ext4",
                             source="/dev/vda", anchored=False)
    assert verdict(found, "/var/tmp/lm-ctr/node-models") is Verdict.SAME
    # Without a kubelet nothing shows that /dev/vda is the node's root filesystem; the node's
    # /models could be a bind mount of that directory.
    assert verdict(found, "/models") is Verdict.UNKNOWN
    assert host_root(mounts, "/opt/localmodel") is None, "the image's own files: overlay, whole"


def test_escaped_paths_are_decoded() -> None:
    found = host_root(parse_mountinfo(ESCAPED), "/mnt/models")
    assert found is not None and found.path == "/srv/model cache"


def test_group_volume_path_local_or_host_path() -> None:
    assert group_volume_path({"spec": {"persistentVolumeSpec": {"local": {"path": "/models"}}}}) == "/models"
    assert group_volume_path({"spec": {"persistentVolumeSpec": {"hostPath": {"path": "/m", "type": ""}}}}) == "/m"
    assert group_volume_path({"spec": {"persistentVolumeSpec": {"nfs": {"path": "/export"}}}}) is None
    assert group_volume_path({"spec": {}}) is None
    assert group_volume_path(None) is None


def test_check_names_the_group_and_both_paths() -> None:
    found = host_root(parse_mountinfo(KUBELET_CONTAINER), "/mnt/models")
    check_group_paths(found, {"gpu": "/models", "unknown": None})
    with pytest.raises(HostPathMismatchError) as raised:
        check_group_paths(found, {"gpu": "/models", "workers": "/mnt/models"})
    message = str(raised.value)
    assert raised.value.reason == "HostPathMismatch"
    assert "LocalModelNodeGroup workers mounts /mnt/models" in message
    assert "is the node's /models" in message
    check_group_paths(None, {"workers": "/mnt/models"})  # nothing known: nothing refused


# --- the kernel's mountinfo ------------------------------------------------------------------------


def _kubelet_file_on(source: str, mountinfo: str) -> str:
    """A kubelet-style /etc/hosts line on the same device as `source`'s mounts."""
    device = next(m.device for m in parse_mountinfo(mountinfo) if m.source == source)
    return f"9999 1 {device} /var/lib/kubelet/pods/{POD}/etc-hosts /etc/hosts rw,relatime - ext4 {source} rw\n"


@pytest.fixture
def scratch() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("bind mounts need root")
    folder = Path(tempfile.mkdtemp(prefix="localmodel-hostpath-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=True)


def test_real_bind_mount_shows_its_source_directory(scratch: Path) -> None:
    """A hostPath is a bind mount: in a private mount namespace, bind a directory of this
    machine's root filesystem (as /var/tmp is here) on another and read the kernel's view."""
    source, target = scratch / "node models", scratch / "mnt-models"
    source.mkdir()
    target.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
         'mount --bind "$1" "$2" && cat /proc/self/mountinfo', "sh", str(source), str(target)],
        capture_output=True, text=True, timeout=30, check=True)
    root_fs = next(m for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text()) if m.mount_point == "/")
    if root_fs.root != "/" or root_fs.device != next(
            m.device for m in parse_mountinfo(done.stdout) if m.mount_point == str(target)):
        pytest.fail("this test expects /var/tmp on the machine's root filesystem")
    found = host_root(parse_mountinfo(done.stdout), target)
    assert found is not None
    assert found.path == str(source), "the space in the name came back unescaped"
    assert verdict(found, str(source)) is Verdict.SAME
    assert verdict(found, str(target)) is Verdict.UNKNOWN, "no kubelet files anchor the device"
    anchored = host_root(parse_mountinfo(done.stdout + _kubelet_file_on(found.source, done.stdout)), target)
    assert anchored is not None and anchored.anchored
    assert verdict(anchored, str(target)) is Verdict.DIFFERENT
    # What the agent reads: the file named by the test-only variable, else its own.
    recorded = scratch / "mountinfo"
    recorded.write_text(done.stdout)
    assert read_host_root(target, {MOUNTINFO_ENV: str(recorded)}) == found
    assert read_host_root(target, {}) is None, "not a mount point in this process's namespace"
