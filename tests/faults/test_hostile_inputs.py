"""Hostile inputs, as a table: every row is one model on one LocalModelNode, served by a real
server (the project's HF endpoint, moto's S3, nginx, CNCF distribution's registry, the fault
server) to one real agent.

Each row must end as ModelDownloadError with the expected reason and a message that says what
was wrong, except the few that are legitimate and must simply work without leaking anything.
Across the whole table:

- not one byte is written outside the model folders: the tree around the agent's root is
  snapshot before and after, and every place an escaping path could resolve to is checked;
- no secret is printed: canary values are planted in the storage-config secret (an HF token,
  an S3 secret key, an HTTP header), in URIs (a password, a pre-signed signature) and in a
  local file a URI points at, and the agent's log, every stored version of the node's status,
  its Events, its metrics and every file under its root are searched for them.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import figures
from tests.faults.helpers import entry, secret
from tests.faults.hostile import (
    World,
    TarMember,
    reg,
    special,
    tar_bz2_bomb,
    tar_of,
    tar_truncated,
    zip_bomb,
    zip_encrypted,
    zip_info,
    zip_lying_size,
    zip_of,
)
from tests.faults.observe import StatusRecorder
from tests.node.agent_process import wait_until
from tests.node.cluster import ClusterAgents
from tests.servers.hf import LocalHub
from tests.servers.http import FaultServer
from tests.servers.nginx import NginxServer
from tests.servers.oci import Registry
from tests.servers.s3 import S3Server

TOKEN = uuid.uuid4().hex[:10]
ESCAPE = f"escape-{TOKEN}.txt"
CANARIES = {name: f"CANARY-{name}-{TOKEN}" for name in ("hf-token", "s3-secret", "header", "uri-password",
                                                         "uri-user", "presigned", "local-file", "s3-uri")}
TiB = 2**40


@dataclass(frozen=True)
class Case:
    id: str
    #: What is hostile about it.
    what: str
    build: Callable[[World], str]
    #: The reason the status must show (ModelDownloaded for legitimate inputs).
    reason: str
    #: Words the message must contain (lower case).
    says: str = ""
    #: Key of the storage-config secret the entry names.
    storage: str | None = None


def hub(paths: dict[str, int]) -> Callable[[World], str]:
    return lambda w: w.hub_paths(_current(), paths)


def raw(tree: list[object]) -> Callable[[World], str]:
    return lambda w: w.hub_raw(_current(), tree)


def s3(keys: dict[str, bytes]) -> Callable[[World], str]:
    return lambda w: w.s3_keys(_current(), keys)


def web(name: str, data: Callable[[], bytes]) -> Callable[[World], str]:
    return lambda w: w.web_file(_current(), name, data())


def modelcar(*members: TarMember) -> Callable[[World], str]:
    """An OCI modelcar image whose one layer holds `members` below a real models/ folder."""
    return lambda w: w.oci_modelcar(_current(), [special("models", tarfile.DIRTYPE), *members])


def uri(text: str) -> Callable[[World], str]:
    return lambda w: text.format(nginx=w.nginx.http_url, hub=w.hub.url, s3=w.s3.endpoint,
                                 secret=w.secret_file, **{k.replace("-", "_"): v for k, v in CANARIES.items()})


_building: list[str] = []


def _current() -> str:
    return _building[-1]


UP = "../" * 12
LONG = "a" * 256
DEEP = "/".join(["d" * 200] * 22) + "/x.bin"  # every part legal, 4.4 KB in all

CASES: list[Case] = [
    # --- object keys and paths in listings (HF tree) -----------------------------------------
    Case("hf-dotdot", "`..` path", hub({f"../{ESCAPE}": 5}), "UnsafePath", "not allowed"),
    Case("hf-dotdot-deep", "`..` x12", hub({f"{UP}tmp/{ESCAPE}": 5}), "UnsafePath", "not allowed"),
    Case("hf-dotdot-inner", "`..` inside", hub({f"a/../../{ESCAPE}": 5}), "UnsafePath", "not allowed"),
    Case("hf-dotdot-alone", "path `..`", hub({"..": 5}), "UnsafePath", "not allowed"),
    Case("hf-dot", "`.` component", hub({"a/./b.bin": 5}), "UnsafePath", "not allowed"),
    Case("hf-dot-alone", "path `.`", hub({".": 5}), "UnsafePath", "not allowed"),
    Case("hf-empty-part", "empty component", hub({"a//b.bin": 5}), "UnsafePath", "not allowed"),
    Case("hf-absolute", "absolute path", hub({f"/tmp/{ESCAPE}": 5}), "UnsafePath", "absolute"),
    Case("hf-absolute-etc", "absolute /etc", hub({"/etc/cron.d/x": 5}), "UnsafePath", "absolute"),
    Case("hf-double-slash", "leading //", hub({f"//tmp/{ESCAPE}": 5}), "UnsafePath", "absolute"),
    Case("hf-empty", "empty path", hub({"": 5, "ok.bin": 1}), "UnsafePath", "empty"),
    Case("hf-nul", "NUL", hub({"a\x00b.bin": 5}), "UnsafePath", "control character"),
    Case("hf-newline", "newline", hub({"a\nb.bin": 5}), "UnsafePath", "control character"),
    Case("hf-cr", "carriage return", hub({"a\rb.bin": 5}), "UnsafePath", "control character"),
    Case("hf-tab", "tab", hub({"a\tb.bin": 5}), "UnsafePath", "control character"),
    Case("hf-escape-seq", "terminal escape", hub({"\x1b[2Jx.bin": 5}), "UnsafePath", "control character"),
    Case("hf-del", "DEL", hub({"a\x7fb.bin": 5}), "UnsafePath", "control character"),
    Case("hf-backslash", "backslash", hub({"a\\b.bin": 5}), "UnsafePath", "backslash"),
    Case("hf-backslash-dotdot", "`..\\`", hub({f"..\\..\\{ESCAPE}": 5}), "UnsafePath", "backslash"),
    Case("hf-drive", "drive letter", hub({"C:/x.bin": 5}), "UnsafePath", "drive-letter"),
    Case("hf-long-part", "256-byte name", hub({LONG: 5}), "UnsafePath", "longer than 255"),
    Case("hf-long-utf8", "256 bytes in UTF-8", hub({"é" * 128: 5}), "UnsafePath", "longer than 255"),
    Case("hf-long-path", "4.4 KB path", hub({DEEP: 5}), "UnsafePath", "path longer than 1024 bytes"),
    Case("hf-case", "case collision", hub({"Model.bin": 5, "model.bin": 5}), "UnsafePath", "collide"),
    Case("hf-unicode", "NFC/NFD collision", hub({"caf\u00e9.bin": 5, "cafe\u0301.bin": 5}), "UnsafePath",
         "collide"),
    Case("hf-file-folder", "file and folder", hub({"a": 5, "a/b.bin": 5}), "UnsafePath", "file and a folder"),
    Case("hf-folder-case", "folders collide", hub({"A/x.bin": 5, "a/y.bin": 5}), "UnsafePath", "collide"),
    # --- malformed listings -----------------------------------------------------------------------
    Case("hf-size-text", "size is text", raw([{"type": "file", "path": "a.bin", "size": "lots"}]),
         "InvalidListing", "file size"),
    Case("hf-size-negative", "negative size", raw([{"type": "file", "path": "a.bin", "size": -5}]),
         "InvalidListing", "file size"),
    Case("hf-size-float", "fractional size", raw([{"type": "file", "path": "a.bin", "size": 1.5}]),
         "InvalidListing", "file size"),
    Case("hf-no-path", "entry without path", raw([{"type": "file", "size": 5}]), "InvalidListing", "no path"),
    Case("hf-path-number", "path is a number", raw([{"type": "file", "path": 7, "size": 5}]),
         "InvalidListing", "no path"),
    Case("hf-entry-text", "entry is a string", raw(["a.bin"]), "InvalidListing", "not an object"),
    Case("hf-lfs-oid", "LFS oid not hex", raw([{"type": "file", "path": "a.bin", "size": 5,
                                                "lfs": {"oid": "../../x", "size": 5}}]),
         "InvalidListing", "lfs sha256"),
    # --- object keys in S3 --------------------------------------------------------------------------
    Case("s3-dotdot", "key with `..`", s3({f"../{ESCAPE}": b"x"}), "UnsafePath", "not allowed", "s3"),
    Case("s3-dotdot-inner", "key with inner `..`", s3({f"a/../../{ESCAPE}": b"x"}), "UnsafePath",
         "not allowed", "s3"),
    Case("s3-absolute", "key `prefix//abs`", s3({f"/tmp/{ESCAPE}": b"x"}), "UnsafePath", "absolute", "s3"),
    Case("s3-nul", "key with NUL", s3({"a\x00b.bin": b"x"}), "UnsafePath", "control character", "s3"),
    Case("s3-escape-seq", "key with a terminal escape", s3({"\x1b[2Ja.bin": b"x"}), "UnsafePath",
         "control character", "s3"),
    Case("s3-backslash", "key with backslash", s3({f"..\\{ESCAPE}": b"x"}), "UnsafePath", "backslash", "s3"),
    Case("s3-long", "256-byte key part", s3({LONG: b"x"}), "UnsafePath", "longer than 255", "s3"),
    Case("s3-case", "case collision", s3({"W.bin": b"x", "w.bin": b"y"}), "UnsafePath", "collide", "s3"),
    Case("s3-file-folder", "file and folder", s3({"a": b"x", "a/b": b"y"}), "UnsafePath", "file and a folder",
         "s3"),
    Case("s3-dot", "key with `.`", s3({"./x.bin": b"x"}), "UnsafePath", "not allowed", "s3"),
    # --- tar members --------------------------------------------------------------------------------
    Case("tar-symlink-abs", "symlink to /etc/passwd",
         web("m.tar", tar_of(special("passwd", tarfile.SYMTYPE, "/etc/passwd"))), "UnsafePath", "link", "web"),
    Case("tar-symlink-up", "symlink out of the folder",
         web("m.tar", tar_of(special("up", tarfile.SYMTYPE, f"{UP}tmp"))), "UnsafePath", "link", "web"),
    Case("tar-symlink-dir", "file written through a symlinked folder",
         web("m.tar", tar_of(special("d", tarfile.SYMTYPE, "/tmp"), reg(f"d/{ESCAPE}"))), "UnsafePath", "link",
         "web"),
    Case("tar-symlink-inside", "symlink to a sibling",
         web("m.tar", tar_of(reg("a.bin"), special("b.bin", tarfile.SYMTYPE, "a.bin"))), "UnsafePath", "link",
         "web"),
    Case("tar-hardlink-abs", "hard link to /etc/shadow",
         web("m.tar", tar_of(special("shadow", tarfile.LNKTYPE, "/etc/shadow"))), "UnsafePath", "link", "web"),
    Case("tar-hardlink-inside", "hard link to a member",
         web("m.tar", tar_of(reg("a.bin"), special("b.bin", tarfile.LNKTYPE, "a.bin"))), "UnsafePath", "link",
         "web"),
    Case("tar-hardlink-up", "hard link out of the folder",
         web("m.tar", tar_of(special("h", tarfile.LNKTYPE, f"{UP}{ESCAPE}"))), "UnsafePath", "link", "web"),
    Case("tar-absolute", "absolute member", web("m.tar", tar_of(reg(f"/tmp/{ESCAPE}"))), "UnsafePath", "absolute",
         "web"),
    Case("tar-dotdot", "`..` member", web("m.tar", tar_of(reg(f"../{ESCAPE}"))), "UnsafePath", "not allowed", "web"),
    Case("tar-dotdot-deep", "`..` x12 member", web("m.tar", tar_of(reg(f"{UP}tmp/{ESCAPE}"))), "UnsafePath",
         "not allowed", "web"),
    Case("tar-dotdot-inner", "inner `..` member", web("m.tar", tar_of(reg(f"a/../../{ESCAPE}"))), "UnsafePath",
         "not allowed", "web"),
    Case("tar-chardev", "character device", web("m.tar", tar_of(special("null", tarfile.CHRTYPE))), "UnsafePath",
         "special file", "web"),
    Case("tar-blockdev", "block device", web("m.tar", tar_of(special("sda", tarfile.BLKTYPE))), "UnsafePath",
         "special file", "web"),
    Case("tar-fifo", "FIFO", web("m.tar", tar_of(special("pipe", tarfile.FIFOTYPE))), "UnsafePath", "special file",
         "web"),
    Case("tar-duplicate", "the same name twice", web("m.tar", tar_of(reg("a.bin", b"1"), reg("a.bin", b"2"))),
         "UnsafePath", "collide", "web"),
    Case("tar-case", "case collision", web("m.tar", tar_of(reg("A.bin"), reg("a.bin"))), "UnsafePath", "collide",
         "web"),
    Case("tar-long-name", "300-byte name (GNU long name)", web("m.tar", tar_of(reg("n" * 300))), "UnsafePath",
         "longer than 255", "web"),
    Case("tar-newline", "newline in a name", web("m.tar", tar_of(reg("a\nb.bin"))), "UnsafePath",
         "control character", "web"),
    Case("tar-backslash", "backslash name", web("m.tar", tar_of(reg(f"..\\{ESCAPE}"))), "UnsafePath", "backslash",
         "web"),
    Case("tar-gz-dotdot", "`..` member, gzipped", web("m.tar.gz", tar_of(reg(f"../{ESCAPE}"), mode="w:gz")),
         "UnsafePath", "not allowed", "web"),
    Case("tar-xz-symlink", "symlink, xz", web("m.tar.xz", tar_of(special("l", tarfile.SYMTYPE, "/"), mode="w:xz")),
         "UnsafePath", "link", "web"),
    Case("tar-bz2-bomb", "bzip2 bomb (64 MiB of zeros)", web("m.tar.bz2", tar_bz2_bomb), "UnsafePath",
         "archive bomb", "web"),
    Case("tar-truncated", "archive cut in half", web("m.tar", tar_truncated), "IntegrityCheckFailed", "corrupt",
         "web"),
    Case("tar-garbage", "not a tar at all", web("m.tgz", lambda: b"\x1f\x8b" + os.urandom(4000)),
         "IntegrityCheckFailed", "corrupt", "web"),
    # --- zip members ------------------------------------------------------------------------------
    Case("zip-symlink", "symlink member", web("m.zip", zip_of((zip_info("l", stat.S_IFLNK | 0o777), b"/etc/passwd"))),
         "UnsafePath", "link", "web"),
    Case("zip-symlink-up", "symlink out of the folder",
         web("m.zip", zip_of((zip_info("l", stat.S_IFLNK | 0o777), UP.encode()))), "UnsafePath", "link", "web"),
    Case("zip-fifo", "FIFO member", web("m.zip", zip_of((zip_info("p", stat.S_IFIFO | 0o644), b""))), "UnsafePath",
         "special file", "web"),
    Case("zip-dotdot", "`..` member", web("m.zip", zip_of((f"../{ESCAPE}", b"x"))), "UnsafePath", "not allowed",
         "web"),
    Case("zip-dotdot-deep", "`..` x12 member", web("m.zip", zip_of((f"{UP}tmp/{ESCAPE}", b"x"))), "UnsafePath",
         "not allowed", "web"),
    Case("zip-absolute", "absolute member", web("m.zip", zip_of((f"/tmp/{ESCAPE}", b"x"))), "UnsafePath",
         "absolute", "web"),
    Case("zip-backslash", "backslash member", web("m.zip", zip_of((f"..\\..\\{ESCAPE}", b"x"))), "UnsafePath",
         "backslash", "web"),
    Case("zip-drive", "drive-letter member", web("m.zip", zip_of(("C:/Windows/x.bin", b"x"))), "UnsafePath",
         "drive-letter", "web"),
    Case("zip-dir-up", "`../` folder entry", web("m.zip", zip_of((f"../d-{TOKEN}/", b""))), "UnsafePath",
         "not allowed", "web"),
    Case("zip-duplicate", "the same name twice", web("m.zip", zip_of(("a.bin", b"1"), ("a.bin", b"2"))),
         "UnsafePath", "collide", "web"),
    Case("zip-case", "case collision", web("m.zip", zip_of(("A.bin", b"1"), ("a.bin", b"2"))), "UnsafePath",
         "collide", "web"),
    Case("zip-encrypted", "encrypted member", web("m.zip", zip_encrypted),
         "UnsafePath", "encrypted", "web"),
    Case("zip-bomb", "zip bomb (256 MiB of zeros)", web("m.zip", zip_bomb), "UnsafePath", "bomb", "web"),
    Case("zip-lying-size", "declares fewer bytes than it holds", web("m.zip", zip_lying_size),
         "IntegrityCheckFailed", "", "web"),
    Case("zip-garbage", "not a zip at all", web("m.zip", lambda: b"PK\x03\x04" + os.urandom(3000)),
         "IntegrityCheckFailed", "corrupt", "web"),
    # --- URIs carrying credentials -------------------------------------------------------------------
    Case("uri-https-password", "user:password@", uri("http://user:{uri_password}@127.0.0.1:1/m.bin"),
         "InvalidURI", "carries credentials"),
    Case("uri-user-only", "user@", uri("http://{uri_user}@127.0.0.1:1/m.bin"), "InvalidURI", "carries credentials"),
    Case("uri-s3-keys", "s3://key:secret@bucket", uri("s3://AKIA:{s3_uri}@bucket/m"), "InvalidURI",
         "carries credentials"),
    Case("uri-gs-password", "gs://u:p@bucket", uri("gs://u:{uri_password}@bucket/m"), "InvalidURI",
         "carries credentials"),
    Case("uri-hf-password", "hf://u:p@org/model", uri("hf://u:{uri_password}@org/model"), "InvalidURI",
         "carries credentials"),
    Case("uri-azure-password", "Azure URL with user info",
         uri("https://u:{uri_password}@acct.blob.core.windows.net/c/m"), "InvalidURI", "carries credentials"),
    Case("uri-https-storage", "user:password@ with a storage key",
         uri("https://u:{uri_password}@127.0.0.1:1/m.bin"), "InvalidURI", "carries credentials", "web"),
    Case("uri-presigned", "pre-signed query (legitimate)", lambda w: w.web_file(_current(), "m.bin", b"weights")
         + f"?X-Amz-Signature={CANARIES['presigned']}&X-Amz-Expires=60", "ModelDownloaded", ""),
    # --- malformed URIs ---------------------------------------------------------------------------
    Case("uri-empty", "empty", uri(""), "InvalidURI", "empty"),
    Case("uri-blank", "blank", uri("   "), "InvalidURI", "empty"),
    Case("uri-leading-space", "leading space", uri(" s3://b/m"), "InvalidURI", "whitespace"),
    Case("uri-trailing-newline", "trailing newline", uri("s3://b/m\n"), "InvalidURI", "whitespace"),
    Case("uri-inner-newline", "newline inside", uri("s3://b/m\nx"), "InvalidURI", "control characters"),
    Case("uri-nul", "NUL inside", uri("s3://b/m\x00x"), "InvalidURI", "control characters"),
    Case("uri-tab", "tab inside", uri("s3://b/\tm"), "InvalidURI", "control characters"),
    Case("uri-http-no-host", "http://", uri("http://"), "InvalidURI", "host"),
    Case("uri-https-no-host", "https:///m.bin", uri("https:///m.bin"), "InvalidURI", "host"),
    Case("uri-http-no-file", "no file name", uri("{nginx}/"), "InvalidURI", "no file name"),
    Case("uri-ipv6-open", "unclosed IPv6 bracket", uri("http://[::1/m.bin"), "InvalidURI", "malformed"),
    Case("uri-ipv6-open-storage", "unclosed bracket, storage key", uri("http://[::1/m.bin"), "InvalidURI",
         "malformed", "web"),
    Case("uri-port-range", "port 99999", uri("http://127.0.0.1:99999/m.bin"), "InvalidURI", "malformed"),
    Case("uri-port-text", "port not a number", uri("http://127.0.0.1:port/m.bin"), "InvalidURI", "malformed"),
    Case("uri-s3-empty", "s3://", uri("s3://"), "InvalidURI", "bucket"),
    Case("uri-s3-no-bucket", "s3:///key", uri("s3:///key"), "InvalidURI", "bucket"),
    Case("uri-s3-one-slash", "s3:/bucket", uri("s3:/bucket/m"), "InvalidURI", "expected scheme://"),
    Case("uri-gs-empty", "gs://", uri("gs://"), "InvalidURI", "bucket"),
    Case("uri-hf-empty", "hf://", uri("hf://"), "InvalidURI", "owner/model"),
    Case("uri-hf-owner-only", "hf://owner", uri("hf://owner"), "InvalidURI", "owner/model"),
    Case("uri-hf-three-parts", "hf://a/b/c", uri("hf://a/b/c"), "InvalidURI", "owner/model"),
    Case("uri-hf-dotdot", "hf://a/..", uri("hf://a/.."), "InvalidURI", "owner/model"),
    Case("uri-hf-empty-revision", "hf://a/b:", uri("hf://a/b:"), "InvalidURI", "revision"),
    Case("uri-hf-query", "hf://a/b?x", uri("hf://a/b?x=1"), "InvalidURI", "unexpected"),
    Case("uri-no-scheme-name", "://x (a relative path)", uri("://x"), "SourceNotAllowed", "local sources"),
    # --- unknown or unsupported schemes -----------------------------------------------------------
    *[Case(f"uri-scheme-{scheme}", f"{scheme}:// scheme", uri(f"{scheme}://host/m"), "InvalidURI", "unsupported")
      for scheme in ("ftp", "sftp", "hdfs", "webhdfs", "modelscope", "gopher", "rsync", "azure", "local",
                     "git+https", "ms")],
    Case("uri-javascript", "javascript:", uri("javascript:alert(1)"), "InvalidURI", "malformed"),
    Case("uri-data", "data:", uri("data:text/plain,weights"), "InvalidURI", "malformed"),
    # --- paths on the agent's own filesystem ---------------------------------------------------------
    Case("local-token", "the agent's ServiceAccount token",
         uri("file:///var/run/secrets/kubernetes.io/serviceaccount/token"), "SourceNotAllowed", "local sources"),
    Case("local-secret-file", "a file holding a canary", uri("file://{secret}"), "SourceNotAllowed",
         "local sources"),
    Case("local-plain-path", "a plain path", uri("{secret}"), "SourceNotAllowed", "local sources"),
    Case("local-relative", "a relative path", uri("relative/models"), "SourceNotAllowed", "local sources"),
    Case("local-proc", "/proc/self/environ", uri("file:///proc/self/environ"), "SourceNotAllowed",
         "local sources"),
    Case("local-other-model", "another model's folder", uri("/mnt/models/models/0123456789abcdef"),
         "SourceNotAllowed", "local sources"),
    Case("local-pvc-escape", "pvc://claim/../..", uri("pvc://claim/../../etc"), "SourceNotAllowed",
         "local sources"),
    # --- OCI layers and manifests (CNCF distribution's registry) -----------------------------------
    Case("oci-dotdot", "layer member `..`", modelcar(reg(f"models/../../{ESCAPE}")), "UnsafePath", "not allowed"),
    Case("oci-absolute", "absolute layer member", modelcar(reg(f"/tmp/{ESCAPE}")), "UnsafePath", "absolute"),
    Case("oci-symlink-out", "symlink out of the tree", modelcar(special("models/w.bin", tarfile.SYMTYPE,
                                                                       "/etc/passwd")), "UnsafePath", "symbolic link"),
    Case("oci-hardlink-out", "hard link out of the tree",
         modelcar(reg("etc/shadow", b"secret"), special("models/w.bin", tarfile.LNKTYPE, "etc/shadow")),
         "UnsafePath", "links outside"),
    Case("oci-whiteout-climbs", "whiteout `.wh...`", modelcar(reg("models/a/.wh...", b"")), "UnsafePath",
         "not allowed"),
    Case("oci-device", "character device", modelcar(special("models/null", tarfile.CHRTYPE)), "UnsafePath",
         "device"),
    Case("oci-fifo", "FIFO", modelcar(special("models/pipe", tarfile.FIFOTYPE)), "UnsafePath", "fifo"),
    Case("oci-models-link", "models/ is a symlink", lambda w: w.oci_modelcar(
        _current(), [special("models", tarfile.SYMTYPE, "/etc")]), "UnsafePath", "not a folder"),
    Case("oci-digest-mismatch", "blob bytes differ from its digest", lambda w: w.oci_damaged_blob(_current()),
         "IntegrityCheckFailed", "sha256"),
    Case("oci-huge-manifest", "manifest of 10^5 layers (15 MB)", lambda w: w.oci_huge_manifest(_current(), 100_000),
         "InvalidListing", "limit"),
    Case("oci-many-layers", "manifest of 26000 layers", lambda w: w.oci_many_layers(_current(), 26_000),
         "TooManyFiles", "more than"),
    # --- sizes ------------------------------------------------------------------------------------------
    Case("size-huge", "1 PiB declared", hub({"huge.bin": 2**50}), "InsufficientSpace", "needs"),
    Case("size-many-huge", "four files of 2^62 bytes", hub({f"h{i}.bin": 2**62 for i in range(4)}),
         "InsufficientSpace", "needs"),
    Case("size-http", "Content-Length of 2 TiB", lambda w: w.announced(_current(), 2 * TiB), "InsufficientSpace",
         "needs"),
    Case("size-files", "10^5 tiny files", hub({f"d{i // 1000:03d}/f{i:06d}.txt": 1 for i in range(100_000)}),
         "TooManyFiles", "more than 25000 files"),
]


def snapshot(base: Path) -> dict[str, tuple[str, int, int]]:
    """path → (type, size, mtime) of everything below `base`, links not followed."""
    found: dict[str, tuple[str, int, int]] = {}
    for current, dirs, names in os.walk(base, followlinks=False):
        for name in [*dirs, *names]:
            path = Path(current) / name
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
            found[str(path.relative_to(base))] = (kind, 0 if kind == "dir" else st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # the duplicate-member zips, on purpose
def test_hostile_inputs_get_clear_errors_write_nothing_outside_and_leak_nothing(
    agents: ClusterAgents, hf_hub: LocalHub, moto_s3: S3Server, nginx: NginxServer, fault_server: FaultServer,
    oci_registry: Registry, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    bucket = f"hostile-{TOKEN}"
    moto_s3.client().create_bucket(Bucket=bucket)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret_file = outside / "secret.txt"
    secret_file.write_text(CANARIES["local-file"])
    scratch = tmp_path_factory.mktemp("oci-scratch")  # outside tmp_path, which is snapshot
    world = World(TOKEN, hf_hub, moto_s3, bucket, nginx, fault_server, secret_file, oci_registry, scratch)
    agents.client.create(secret(agents.job_namespace, "storage-config", {
        "hub": json.dumps({"type": "hf", "endpoint": hf_hub.url, "token": CANARIES["hf-token"]}),
        "s3": json.dumps({"type": "s3", "access_key_id": "moto", "secret_access_key": CANARIES["s3-secret"],
                          "endpoint_url": moto_s3.endpoint, "region": moto_s3.region}),
        "web": json.dumps({"type": "https", "headers": json.dumps({"X-Canary": CANARIES["header"]})}),
    }))
    entries = []
    for case in CASES:
        _building.append(case.id)
        source = case.build(world)
        storage = case.storage or ("hub" if source.startswith("hf://") else None)
        entries.append(entry(source, case.id, **({"storage": {"key": storage}} if storage else {})))

    node = agents.node(entries)
    root = agents.root(node)
    root.mkdir()
    temp = tmp_path / "agent-tmp"
    temp.mkdir()
    before = snapshot(tmp_path)
    recorder = StatusRecorder(agents.kube.kubeconfig, node).start()
    started = time.monotonic()
    # A long retry delay: each row fails once and stays failed while the test looks.
    agent = agents.start_agent(node, "--max-concurrent-downloads", "8", "--temp-dir", str(temp),
                               "--reserve", "1Mi", "--retry-initial", "600", "--retry-max", "600")

    def outcome(case: Case) -> tuple[str, str | None, str] | None:
        """(phase, reason, message) of the first settled status of this row, if any."""
        for observation in recorder.observations():
            phase, detail = observation.phase(case.id), observation.detail(case.id)
            if phase == "ModelDownloaded" or (phase == "ModelDownloadError" and detail.get("reason")):
                return phase, detail.get("reason"), detail.get("message") or ""
        return None

    try:
        wait_until(lambda: all(outcome(c) for c in CASES), f"all {len(CASES)} hostile models to settle",
                   agent=agent, timeout=300, interval=1.0)
        elapsed = time.monotonic() - started
        metrics = agent.metrics()
    finally:
        recorder.stop()
        agent.stop()

    # 1. Each row: the expected reason, a message that says what was wrong.
    wrong = []
    for case in CASES:
        phase, reason, message = outcome(case) or ("", None, "")
        got = phase if phase == "ModelDownloaded" else reason
        if got != case.reason or case.says not in message.lower():
            wrong.append((case.id, got, message))
    assert not wrong, "\n".join(map(str, wrong))

    # 2. Not one byte outside the model folders.
    after = snapshot(tmp_path)
    ours = ("node-", "agent-", "root-")
    changed = {path: (before.get(path), now) for path, now in after.items()
               if before.get(path) != now and not path.startswith(tuple(f"root-{node}/{d}"
                                                                       for d in ("models", "manifests", "staging")))
               and path not in (f"root-{node}/agent-state.json", f"root-{node}", "agent-tmp")
               and not (path.startswith(ours[1]) and path.endswith(".log"))}
    assert changed == {}, changed
    assert list(temp.iterdir()) == []
    landed = [str(p) for p in (Path("/tmp") / ESCAPE, Path("/") / ESCAPE, tmp_path / ESCAPE, root / ESCAPE,
                               root / "staging" / ESCAPE, root / "models" / ESCAPE) if p.exists()]
    assert landed == []
    in_models = [p for p in (root / "models").rglob("*") if p.is_file()] if (root / "models").exists() else []
    assert [p.name for p in in_models] == ["m.bin"]  # only the legitimate pre-signed download

    # 3. No canary anywhere the agent writes.
    outputs = {
        "agent log": agent.log_text(),
        "status (every version)": json.dumps([o.status for o in recorder.observations()]),
        "Events": json.dumps(agents.events(node)),
        "metrics": metrics,
    }
    for path in root.rglob("*"):
        if path.is_file():
            outputs[f"file {path.relative_to(root)}"] = path.read_bytes().decode("utf-8", "replace")
    leaks = [(where, name) for where, text in outputs.items() for name, value in CANARIES.items() if value in text]
    assert leaks == []

    for case in CASES:
        phase, reason, message = outcome(case) or ("", None, "")
        figures.record("hostile rows", case.id, f"{case.what} -> {reason or phase}: {message[:160]}")
    reasons: dict[str, int] = {}
    for case in CASES:
        reasons[case.reason] = reasons.get(case.reason, 0) + 1
    figures.record("hostile inputs", "rows", len(CASES))
    figures.record("hostile inputs", "rows by outcome", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    figures.record("hostile inputs", "rows with the expected reason and message", len(CASES) - len(wrong))
    figures.record("hostile inputs", "bytes written outside the model folders", 0)
    figures.record("hostile inputs", "canaries planted / found in logs, status, Events, metrics, files",
                   f"{len(CANARIES)} / 0")
    figures.record("hostile inputs", "seconds until every row settled (one agent)", round(elapsed, 1))
