"""Pure rules of peer-to-peer: request paths, ranges, piece tables, which digests a peer cannot
forge, when a peer's copy is the origin's, discovery from LocalModelNode objects, and the
bookkeeping of pieces written by a download in progress."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmodel.api.keys import storage_key
from localmodel.fetch import chaining
from localmodel.peers.auth import token_expiry
from localmodel.peers.discovery import endpoints_by_node, peers_by_key, valid_endpoint
from localmodel.peers.partial import PartialDownloads, RecordingSource
from localmodel.peers.protocol import (
    CHAIN,
    PIECE_SIZE,
    PIECES,
    PeerRequest,
    PieceTable,
    compatible,
    decode_table,
    file_url,
    long_poll,
    manifest_entries,
    parse_range,
    parse_request_path,
    piece_bounds,
    piece_count,
    pieces_url,
    strong_digest,
)
from localmodel.peers.source import Peer, compatible_peers
from localmodel.sources.base import Digest, Listing, RemoteFile
from tests.p2p.peers import table_of

KEY = "0123456789abcdef"


def test_request_paths() -> None:
    assert parse_request_path(f"/v1/models/{KEY}/manifest") == PeerRequest(KEY, "manifest")
    assert parse_request_path(f"/v1/models/{KEY}/partial") == PeerRequest(KEY, "partial")
    assert parse_request_path(f"/v1/models/{KEY}/files/a/b%20c.bin?x=1") == PeerRequest(KEY, "files", "a/b c.bin")
    assert parse_request_path(file_url("http://h:1", KEY, "sub/w 1.bin").removeprefix("http://h:1")) == \
        PeerRequest(KEY, "files", "sub/w 1.bin")
    for bad in ("/v1/models/NOTAKEY/manifest", f"/v1/models/{KEY}/other/x", f"/v1/models/{KEY}/files/",
                "/metrics", f"/v1/models/{KEY}", f"/v1/models/{KEY}/files/%ff"):
        assert parse_request_path(bad) is None, bad


def test_ranges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-9", 10) == (0, 10)
    assert parse_range("bytes=2-", 10) == (2, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=5-100", 10) == (5, 10)
    for bad in ("bytes=10-", "bytes=3-2", "bytes=0-1,4-5", "items=0-1", "bytes=-0", "bytes=a-b", "bytes=5"):
        assert parse_range(bad, 10) is False, bad


def test_long_poll_query() -> None:
    assert long_poll(pieces_url("http://h:1", KEY, "w", known=3, wait=1.0)) == (3, 1.0)
    assert long_poll(pieces_url("http://h:1", KEY, "w")) == (-1, 0.0)
    assert long_poll("/x?known=1&wait=999") == (1, 5.0)  # capped
    assert long_poll("/x?known=z") == (-1, 0.0)


def test_piece_tables() -> None:
    size = 2 * PIECE_SIZE + 5
    assert piece_count(size) == 3 and piece_bounds(2, size) == (2 * PIECE_SIZE, size)
    body = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(3))
    table = decode_table(body, size, PIECE_SIZE)
    assert table is not None and len(table) == 3 and table.matches(1, bytes([1]))
    assert decode_table(body[:-1], size, PIECE_SIZE) is None
    assert decode_table(body, size, 0) is None
    other = decode_table(body[:32] + bytes(32) + body[64:], size, PIECE_SIZE, partial=True)
    assert other is not None and other.partial and not other.has(1) and other.has(2)
    assert table.first_difference(other) == 1 and table.first_difference(table) is None


@pytest.mark.parametrize(("digest", "verify_md5", "strong"), [
    (Digest("sha256", "ab"), True, True),
    (Digest("md5", "ab"), True, True),
    (Digest("md5", "ab"), False, False),  # not checked by the engine then
    (Digest("s3-etag", '"abc"'), True, True),
    (Digest("s3-etag", '"abc-4"'), True, False),  # multipart without part size: not checkable
    (Digest("s3-etag", '"abc-4"', part_size=8 * 2**20), True, True),
    (Digest("crc32c", "ab"), True, False),  # forgeable
    (None, True, False),
])
def test_which_digests_a_peer_cannot_forge(digest: Digest | None, verify_md5: bool, strong: bool) -> None:
    assert strong_digest(RemoteFile("w", 1, digest), verify_md5=verify_md5) is strong


def test_a_peer_copy_is_the_origins_only_with_the_same_size_and_digest() -> None:
    sha = "a" * 64
    remote = RemoteFile("w", 10, Digest("sha256", sha))
    assert compatible({"size": 10, "sha256": sha}, remote)
    assert not compatible({"size": 11, "sha256": sha}, remote)
    assert not compatible({"size": 10, "sha256": "b" * 64}, remote)
    # a download in progress describes the origin digest, not yet a sha256 of its own
    assert compatible({"size": 10, "digest": {"algorithm": "sha256", "value": sha}}, remote)
    md5 = RemoteFile("w", 10, Digest("md5", "0f"))
    assert compatible({"size": 10, "sha256": sha, "digest": {"algorithm": "md5", "value": "0F"}}, md5)
    assert not compatible({"size": 10, "sha256": sha, "digest": {"algorithm": "md5", "value": "aa"}}, md5)
    assert not compatible({"size": 10, "sha256": sha}, RemoteFile("w", 10, None))
    assert not compatible(None, remote) and not compatible({"sha256": sha}, remote)


def test_a_local_blake3_never_stands_for_an_origin_digest() -> None:
    """Files whose origin names no digest (plain HTTP, file://) are hashed with BLAKE3 by the
    agent that fetched them: a digest of bytes a peer chooses. It never makes a file eligible
    for peers, and it never matches the origin's digest in `compatible`, even spelled alike."""
    value = "c" * 64
    blake3_entry = {"size": 10, "sha256": None, "digest": None, "digest_checked": False,
                    "local_digest": {"algorithm": "blake3", "value": value, "part_size": None}}
    assert not strong_digest(RemoteFile("w", 10, None))
    assert not compatible(blake3_entry, RemoteFile("w", 10, None))
    assert not compatible(blake3_entry, RemoteFile("w", 10, Digest("sha256", value)))
    assert not compatible(blake3_entry, RemoteFile("w", 10, Digest("blake3", value)))
    # A peer's manifest of an HF LFS file written with BLAKE3 in place: the sha256 is still the
    # origin's (checked on download), so the copy is compatible as before.
    assert compatible({"size": 10, "sha256": value, "digest": {"algorithm": "sha256", "value": value},
                       "digest_checked": True}, RemoteFile("w", 10, Digest("sha256", value)))


def test_manifest_entries_and_compatible_peers() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    manifest = json.dumps({"files": [{"path": "w", "size": 1, "sha256": sha}, {"path": "c.json", "size": 2,
                                                                               "sha256": "c" * 64}]})
    assert set(manifest_entries(manifest)) == {"w", "c.json"}
    assert manifest_entries(json.dumps({"files": [], "archive": {"path": "m.tgz"}})) == {}
    assert manifest_entries("not json") == {}
    listing = Listing(files=(RemoteFile("w", 1, Digest("sha256", sha)), RemoteFile("c.json", 2, None)))
    peer = Peer("n", "http://h:1")
    assert compatible_peers(listing, {"n": (peer, manifest_entries(manifest))}) == {"w": [peer]}


def test_discovery_reads_complete_and_downloading_keys_from_spec_and_status() -> None:
    uri_a, uri_b = "hf://o/a", "s3://b/m"
    node = {
        "metadata": {"name": "n1"},
        "spec": {"localModels": [{"sourceModelUri": uri_a, "modelName": "a"},
                                 {"sourceModelUri": uri_b, "modelName": "b", "namespace": "ns"}]},
        "status": {"peerEndpoint": "http://10.0.0.1:8082", "modelStatus": {"a": "ModelDownloaded",
                                                                           "ns/b": "ModelDownloading"}},
    }
    peer = Peer("n1", "http://10.0.0.1:8082")
    assert peers_by_key([node], exclude="me") == {storage_key(uri_a): [peer]}
    from localmodel.api.types import ModelStatus

    assert peers_by_key([node], exclude="me", phase=ModelStatus.DOWNLOADING) == {storage_key(uri_b): [peer]}
    assert peers_by_key([node], exclude="n1") == {}
    # modelDetails naming another storage key (a stale entry) is not believed
    stale = json.loads(json.dumps(node))
    stale["status"]["modelDetails"] = {"a": {"storageKey": "ffffffffffffffff"}}
    assert peers_by_key([stale], exclude="me") == {}
    for endpoint in ("http://10.0.0.1", "ftp://h:1", "http://u:p@h:1", "http://h:1/x", "http://h:1?q", 5, None):
        assert valid_endpoint(endpoint) is None, endpoint
    assert valid_endpoint("https://[fd00::1]:8082/") == "https://[fd00::1]:8082"


def test_token_expiry_is_read_without_verifying() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1234}).encode()).decode().rstrip("=")
    assert token_expiry(f"h.{payload}.s") == 1234.0
    assert token_expiry("opaque") is None and token_expiry("a.!!.c") is None


# --- pieces of a download in progress ------------------------------------------------------------


class _Chunks:
    """A source yielding given bytes in chunks of `step` (a stand-in origin for RecordingSource)."""

    uri = "mem://x"

    def __init__(self, data: bytes, step: int, algorithm: str = "md5") -> None:
        # md5 (an Azure Content-MD5): a "pieces" table; sha256: a "chain" table.
        self.data, self.step, self.algorithm = data, step, algorithm
        self.width = 64 if algorithm == "sha256" else 32

    def list_files(self) -> Listing:
        return Listing(files=(RemoteFile("w", len(self.data), Digest(self.algorithm, "0" * self.width)),))

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        for start in range(offset, offset + length, self.step):
            yield self.data[start:min(offset + length, start + self.step)]

    def close(self) -> None:
        pass


def test_pieces_are_recorded_once_written_and_only_whole() -> None:
    data = bytes(range(256)) * (PIECE_SIZE // 256) * 2 + b"tail"
    inner = _Chunks(data, 1024 * 1024 + 7)
    partials = PartialDownloads()
    partials.begin(KEY, inner.list_files(), Path("/nonexistent"), "mem://x")
    source = RecordingSource(inner, partials, KEY)
    reader = source.read_range("w", 0, PIECE_SIZE + 10)
    consumed = 0
    for item in reader:
        consumed += len(item)
        if consumed >= PIECE_SIZE:
            break
    # The generator has not been resumed after the item that completed piece 0: not written yet.
    assert partials.table(KEY, "w")[1] == 0  # type: ignore[index]
    rest = list(reader)
    assert consumed + sum(map(len, rest)) == PIECE_SIZE + 10
    table, count = partials.table(KEY, "w")  # type: ignore[misc]
    assert count == 1 and table[:32] == hashlib.sha256(data[:PIECE_SIZE]).digest()
    assert partials.covers(KEY, "w", 0, PIECE_SIZE) is not None
    assert partials.covers(KEY, "w", 0, PIECE_SIZE + 1) is None
    # A request starting inside a piece cannot vouch for that piece; the next ones it can.
    list(source.read_range("w", PIECE_SIZE + 10, len(data) - PIECE_SIZE - 10))
    assert partials.table(KEY, "w")[1] == 2  # type: ignore[index]  # piece 2 (the tail), not 1
    partials.end(KEY, completed=True)
    assert partials.describe(KEY) is None
    assert partials.finished_table(KEY, "w", len(data)) is None  # piece 1 was never recorded


def test_a_chain_file_is_recorded_from_the_engines_chaining_values_not_hashed_again() -> None:
    data = bytes(range(256)) * (PIECE_SIZE // 256) * 2 + b"tail"
    inner = _Chunks(data, 1024 * 1024 + 7, algorithm="sha256")
    partials = PartialDownloads()
    partials.begin(KEY, inner.list_files(), Path("/nonexistent"), "mem://x")
    source = RecordingSource(inner, partials, KEY)
    assert b"".join(source.read_range("w", 0, len(data))) == data
    assert partials.table(KEY, "w", kind=CHAIN)[1] == 0  # type: ignore[index]  # nothing hashed here
    assert partials.table(KEY, "w", kind=PIECES) is None  # the other kind is not served for it
    hasher = chaining.Sha256()
    hasher.update(data[:PIECE_SIZE])
    source.chained("w", PIECE_SIZE, hasher.state().value, False)
    source.chained("w", PIECE_SIZE + 64, bytes(32), False)  # not a piece boundary: ignored
    table, count = partials.table(KEY, "w", kind=CHAIN)  # type: ignore[misc]
    assert count == 1 and table[:32] == hasher.state().value
    hasher.update(data[PIECE_SIZE:2 * PIECE_SIZE])
    source.chained("w", 2 * PIECE_SIZE, hasher.state().value, False)
    source.chained("w", len(data), hashlib.sha256(data).digest(), True)
    partials.end(KEY, completed=True)
    assert partials.finished_table(KEY, "w", len(data), CHAIN) == table_of(data, CHAIN)
    assert partials.finished_table(KEY, "w", len(data), PIECES) is None


@pytest.mark.parametrize("size", [1, 64, PIECE_SIZE, PIECE_SIZE + 1, 3 * PIECE_SIZE - 64])
def test_a_chain_table_checks_each_piece_alone_and_ends_at_the_files_sha256(size: int) -> None:
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    table = decode_table(table_of(data, CHAIN), size, PIECE_SIZE, kind=CHAIN)
    assert table is not None and table.digest(len(table) - 1) == hashlib.sha256(data).digest()
    for index in reversed(range(len(table))):  # any order: each piece needs only its table
        start, end = piece_bounds(index, size)
        piece = data[start:end]
        assert table.matches(index, piece)
        assert not table.matches(index, piece[:-1] + bytes([piece[-1] ^ 1]))
        assert not table.matches(index, piece[:-1])
    # A lying entry breaks the chain where it is used as a start, too.
    if len(table) > 1:
        forged = PieceTable(PIECE_SIZE, b"\x01" * 32 + table.digests[32:], kind=CHAIN)
        assert not forged.matches(1, data[PIECE_SIZE:2 * PIECE_SIZE])


def test_a_long_poll_returns_when_a_piece_is_recorded() -> None:
    partials = PartialDownloads()
    listing = Listing(files=(RemoteFile("w", 3 * PIECE_SIZE, None),))
    partials.begin(KEY, listing, Path("/nonexistent"), "mem://x")
    timer = threading.Timer(0.2, partials.record, (KEY, "w", 1, b"\x01" * 32))
    timer.start()
    table, count = partials.table(KEY, "w", known=0, wait=30.0)  # type: ignore[misc]
    assert count == 1 and table[32:64] == b"\x01" * 32
    partials.record(KEY, "w", 0, b"\x02" * 32)
    partials.record(KEY, "w", 2, b"\x03" * 32)
    partials.end(KEY, completed=True)
    assert partials.finished_table(KEY, "w", 3 * PIECE_SIZE) == b"\x02" * 32 + b"\x01" * 32 + b"\x03" * 32
    assert partials.finished_table(KEY, "w", 3 * PIECE_SIZE + 1) is None


# --- peers found through the peer Service's EndpointSlices (any CRD) -------------------------------


def _slice(name: str, port: int, *endpoints: dict[str, object], family: str = "IPv4") -> dict[str, object]:
    return {"metadata": {"name": name}, "addressType": family,
            "ports": [{"name": "metrics", "port": 8080}, {"name": "peer", "port": port}],
            "endpoints": list(endpoints)}


def test_endpoint_slices_map_each_node_to_its_agents_peer_url() -> None:
    slices = [
        _slice("b", 8082, {"addresses": ["10.0.0.9"], "nodeName": "n1"}),  # n1 is in "a" first
        _slice("a", 8082, {"addresses": ["10.0.0.1"], "nodeName": "n1"},
               {"addresses": ["10.0.0.2"], "nodeName": "n2", "conditions": {"terminating": True}},
               {"addresses": [], "nodeName": "n3"}, {"addresses": ["10.0.0.4"]}),
        _slice("c", 8082, {"addresses": ["fd00::5"], "nodeName": "n5"}, family="IPv6"),
        _slice("d", 8082, {"addresses": ["agent.example"], "nodeName": "n6"}, family="FQDN"),
        {"metadata": {"name": "e"}, "addressType": "IPv4", "ports": [{"name": "other", "port": 1}],
         "endpoints": [{"addresses": ["10.0.0.7"], "nodeName": "n7"}]},
    ]
    assert endpoints_by_node(slices) == {"n1": "http://10.0.0.1:8082", "n5": "http://[fd00::5]:8082",
                                         "n6": "http://agent.example:8082"}


def test_a_pruned_peer_endpoint_is_taken_from_the_service() -> None:
    uri = "hf://org/m"
    objects = [{"metadata": {"name": "n1"},
                "spec": {"localModels": [{"sourceModelUri": uri, "modelName": "m"}]},
                "status": {"modelStatus": {"m": "ModelDownloaded"}}},  # KServe's CRD: no peerEndpoint
               {"metadata": {"name": "n2"},
                "spec": {"localModels": [{"sourceModelUri": uri, "modelName": "m"}]},
                "status": {"modelStatus": {"m": "ModelDownloaded"}, "peerEndpoint": "http://10.0.0.2:8082"}}]
    found = peers_by_key(objects, exclude="self",
                         endpoints={"n1": "http://10.0.0.1:8082", "n2": "http://10.9.9.9:8082"})
    assert found[storage_key(uri)] == [Peer("n1", "http://10.0.0.1:8082"), Peer("n2", "http://10.0.0.2:8082")]
    assert peers_by_key(objects[:1], exclude="self") == {}, "no address, no peer"
