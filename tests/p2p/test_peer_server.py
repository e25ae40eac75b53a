"""The peer server: serves exactly the files of verified manifests, read-only, with Range and
piece tables, to callers whose token TokenReview (real apiserver) says is a node agent."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from localmodel.peers.protocol import (
    PIECE_SIZE,
    PIECE_SIZE_HEADER,
    file_url,
    manifest_url,
    pieces_url,
)
from tests.node.agent_process import wait_until
from tests.p2p.peers import (
    Identity,
    MiB,
    fill_from_origin,
    hub_model,
    mint_token,
    peer_servers,
    standard_files,
)
from tests.servers.hf import LocalHub

SHARD = "model-00001-of-00002.safetensors"


def get(url: str, token: str | None, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={**({"Authorization": f"Bearer {token}"} if token else {}),
                                                   **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture
def served(tmp_path: Path, hf_hub: LocalHub, identity: Identity):  # type: ignore[no-untyped-def]
    model = hub_model(hf_hub, standard_files("server"))
    root = tmp_path / "node"
    fill_from_origin(root, model)
    with peer_servers() as running:
        peer = running.serve(root, identity, "node")
        yield model, root, peer, running


def test_serves_manifest_files_whole_and_by_range(served, identity: Identity) -> None:  # type: ignore[no-untyped-def]
    model, _root, peer, _running = served
    token = identity.token("client-a")
    status, body, _ = get(manifest_url(peer.endpoint, model.key), token)
    assert status == 200 and b'"files"' in body
    data = model.files[SHARD]
    status, body, headers = get(file_url(peer.endpoint, model.key, SHARD), token)
    assert status == 200 and body == data
    assert headers["ETag"] == f'"sha256:{hashlib.sha256(data).hexdigest()}"'
    status, body, headers = get(file_url(peer.endpoint, model.key, SHARD), token, {"Range": "bytes=5000000-5999999"})
    assert status == 206 and body == data[5_000_000:6_000_000]
    assert headers["Content-Range"] == f"bytes 5000000-5999999/{len(data)}"
    status, body, _ = get(file_url(peer.endpoint, model.key, SHARD), token, {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    for bad in (f"bytes={len(data)}-", "bytes=0-1,5-6", "pages=1-2"):
        assert get(file_url(peer.endpoint, model.key, SHARD), token, {"Range": bad})[0] == 416


def test_piece_table_is_the_sha256_of_every_piece(served, identity: Identity) -> None:  # type: ignore[no-untyped-def]
    model, _root, peer, _running = served
    status, body, headers = get(pieces_url(peer.endpoint, model.key, SHARD), identity.token("client-b"))
    data = model.files[SHARD]
    expected = b"".join(hashlib.sha256(data[i:i + PIECE_SIZE]).digest() for i in range(0, len(data), PIECE_SIZE))
    assert status == 200 and body == expected
    assert headers[PIECE_SIZE_HEADER] == str(PIECE_SIZE)


def test_refuses_what_no_manifest_lists(served, identity: Identity) -> None:  # type: ignore[no-untyped-def]
    model, root, peer, _running = served
    token = identity.token("client-c")
    # A file dropped into the model folder, staging data, other keys, paths that climb out.
    (root / "models" / model.key / "extra.bin").write_bytes(b"not in the manifest")
    staging = root / "staging" / model.key / "data"
    staging.mkdir(parents=True)
    (staging / SHARD).write_bytes(b"partial")
    for path in ("extra.bin", f"../../staging/{model.key}/data/{SHARD}", "../" + model.key + "/" + SHARD,
                 "%2e%2e/x", ""):
        assert get(file_url(peer.endpoint, model.key, path), token)[0] == 404, path
    assert get(file_url(peer.endpoint, "0123456789abcdef", SHARD), token)[0] == 404
    assert get(f"{peer.endpoint}/v1/models/{model.key}/../../etc/passwd", token)[0] == 404
    # A model whose manifest is withdrawn (being downloaded again) is not served at all.
    (root / "manifests" / f"{model.key}.json").rename(root / "manifest.bak")
    assert get(file_url(peer.endpoint, model.key, SHARD), token)[0] == 404
    assert get(manifest_url(peer.endpoint, model.key), token)[0] == 404


def test_never_follows_a_symlink_in_or_as_the_model_folder(served, identity: Identity, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, root, peer, _running = served
    token = identity.token("client-d")
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"S" * len(model.files[SHARD]))
    folder = root / "models" / model.key
    os.rename(folder / SHARD, tmp_path / "moved.bin")
    os.symlink(outside, folder / SHARD)
    assert get(file_url(peer.endpoint, model.key, SHARD), token)[0] == 404
    # The whole model folder replaced by a symlink to a copy that looks complete.
    os.unlink(folder / SHARD)
    os.rename(tmp_path / "moved.bin", folder / SHARD)
    os.rename(folder, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", folder)
    assert get(file_url(peer.endpoint, model.key, SHARD), token)[0] == 404


def test_authentication_by_token_review(served, identity: Identity) -> None:  # type: ignore[no-untyped-def]
    model, root, _peer, running = served
    authenticator = identity.authenticator()
    from localmodel.peers.server import PeerServer, PeerServeSettings

    server = PeerServer(root, PeerServeSettings(bind_address="127.0.0.1", port=0), authenticator)
    endpoint = f"http://127.0.0.1:{server.start()}"
    running.servers.append(server)
    url = manifest_url(endpoint, model.key)

    status, _, headers = get(url, None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert get(url, "not-a-token")[0] == 401
    # The agent's identity, but for the apiserver's audience: a token that could be replayed
    # against the API is not accepted by peers, and the other way round.
    api_token = mint_token(identity.admin, "client-e", audiences=())
    assert get(url, api_token)[0] == 401
    # The peer audience, but another ServiceAccount.
    other = mint_token(identity.admin, "client-e", account="default")
    assert get(url, other)[0] == 401
    good = identity.token("client-e")
    # And the peer token is no key to the API: the apiserver refuses its audience.
    from lightkube import ApiError, Client, KubeConfig
    from lightkube.resources.core_v1 import Namespace

    replay = Client(KubeConfig.from_file(identity.kube.kubeconfig_for_token(good)))
    with pytest.raises(ApiError) as refused:
        list(replay.list(Namespace))
    assert refused.value.status.code == 401
    reviews = authenticator.reviews
    for _ in range(3):
        assert get(url, good)[0] == 200
    assert authenticator.reviews == reviews + 1  # cached after the first answer


def test_damaged_copy_is_withdrawn_not_served(served, identity: Identity) -> None:  # type: ignore[no-untyped-def]
    model, root, _peer, running = served
    from localmodel.peers.server import PeerServer, PeerServeSettings

    reported: list[tuple[str, str]] = []
    server = PeerServer(root, PeerServeSettings(bind_address="127.0.0.1", port=0), identity.authenticator(),
                        on_damage=lambda key, problem: reported.append((key, problem)))
    endpoint = f"http://127.0.0.1:{server.start()}"
    running.servers.append(server)
    target = root / "models" / model.key / SHARD
    data = bytearray(target.read_bytes())
    data[PIECE_SIZE + 7] ^= 0x01  # bit rot after the download
    target.write_bytes(bytes(data))
    token = identity.token("client-f")
    assert get(pieces_url(endpoint, model.key, SHARD), token)[0] == 404
    assert get(file_url(endpoint, model.key, SHARD), token)[0] == 404
    assert [key for key, _ in reported] == [model.key]
    # A file of the wrong size is refused outright.
    other = "model-00002-of-00002.safetensors"
    with open(root / "models" / model.key / other, "ab") as handle:
        handle.write(b"x")
    assert get(file_url(endpoint, model.key, other), token)[0] == 404
    assert len(reported) == 2


def test_connections_above_the_limit_get_503(tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    model = hub_model(hf_hub, {"w.safetensors": os.urandom(MiB)})
    root = tmp_path / "node"
    fill_from_origin(root, model)
    with peer_servers() as running:
        peer = running.serve(root, identity, "node", max_connections=2)
        port = int(peer.endpoint.rsplit(":", 1)[1])
        # Two idle keep-alive connections hold both slots.
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            status, _, headers = get(manifest_url(peer.endpoint, model.key), identity.token("client-g"))
            assert status == 503 and headers["Retry-After"] == "1"
        finally:
            for sock in held:
                sock.close()
        token = identity.token("client-g")
        ok = threading.Event()

        def retry() -> None:
            for _ in range(200):
                if get(manifest_url(peer.endpoint, model.key), token)[0] == 200:
                    ok.set()
                    return
                threading.Event().wait(0.05)

        retry()
        assert ok.is_set()


def test_rate_limited_server_serves_the_same_bytes(tmp_path: Path, hf_hub: LocalHub, identity: Identity) -> None:
    data = os.urandom(3 * MiB + 17)
    model = hub_model(hf_hub, {"w.safetensors": data})
    root = tmp_path / "node"
    fill_from_origin(root, model)
    with peer_servers() as running:
        peer = running.serve(root, identity, "node", rate_limit=64 * MiB)
        server = running.servers[-1]
        status, body, _ = get(file_url(peer.endpoint, model.key, "w.safetensors"), identity.token("client-h"))
        assert status == 200 and body == data
        # The server counts a slice after sendfile returns, which may be after the client read it.
        wait_until(lambda: server.counters.bytes_sent == len(data), "the server to count what it sent")
