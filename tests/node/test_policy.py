"""Which source URIs a cluster agent accepts (pure)."""

from __future__ import annotations

import pytest

from localmodel.errors import SourceNotAllowedError
from localmodel.node.policy import check_source_allowed


@pytest.mark.parametrize("uri", [
    "file:///var/run/secrets/kubernetes.io/serviceaccount",
    "/mnt/models/models/0123456789abcdef",
    "relative/path",
    "pvc://claim/models",
    "FILE:///etc",
])
def test_local_sources_are_refused_in_a_cluster(uri: str) -> None:
    with pytest.raises(SourceNotAllowedError, match="--allow-local-sources"):
        check_source_allowed(uri, allow_local=False)
    check_source_allowed(uri, allow_local=True)


@pytest.mark.parametrize("uri", ["s3://b/m", "gs://b/m", "hf://o/m", "https://h/m.bin",
                                 "ftp://h/x", "http://", "s3:/b"])
def test_remote_and_invalid_uris_are_left_to_the_download(uri: str) -> None:
    check_source_allowed(uri, allow_local=False)  # invalid ones fail there, as InvalidURI


def test_the_refusal_never_shows_a_password() -> None:
    with pytest.raises(SourceNotAllowedError) as caught:
        check_source_allowed("file:///x?token=CANARY", allow_local=False)
    assert "CANARY" not in str(caught.value)
