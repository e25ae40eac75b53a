"""Azure Shared Key signing, byte for byte against the Azure SDK's own signer.

The data path signs its requests itself (urllib3 is the measured-fastest client; the SDK's
signer is a pipeline policy in a private module of azure-storage-blob, built for azure-core
requests, and would bring that SDK into the image). So every request the source makes is also
signed here by the SDK's `SharedKeyCredentialPolicy` (a test dependency), and the two
Authorization headers must be identical: listing pages (with paging markers and awkward
prefixes), HEAD of a single blob, ranged GETs with If-Match, for blob names that need quoting,
against an account endpoint and a path-style (emulator) endpoint. Ranges go in `x-ms-range`, as
the SDK sends them (the SDK signs no standard Range header).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

import pytest
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest
from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy

from localmodel.sources import _cloudhttp
from localmodel.sources.azure import AzureBlobSource

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

#: (model URI, settings, the account the signature names)
ENDPOINTS = {
    "account host": ("https://acct.blob.core.windows.net/models/llama", {"AZURE_STORAGE_ACCESS_KEY": KEY}, "acct"),
    "path style": ("http://127.0.0.1:10000/devstoreaccount1/models/llama",
                   {"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                    f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"},
                   "devstoreaccount1"),
}

NAMES = ["llama/config.json", "llama/sp ace.bin", "llama/plus+sign.bin", "llama/per%cent.bin",
         "llama/ünïcode/файл.bin", "llama/tilde~and'quote(1).bin", "llama/a&b=c;d.bin"]


def sdk_signature(account: str, method: str, url: str, headers: Mapping[str, str]) -> str:
    unsigned = {k: v for k, v in headers.items() if k != "Authorization"}
    request = PipelineRequest(HttpRequest(method, url, headers=unsigned), PipelineContext(None))
    SharedKeyCredentialPolicy(account, KEY).on_request(request)
    return str(request.http_request.headers["Authorization"])


class _Sent(Exception):
    """Stops a request at the wire: it was recorded, not sent."""


@dataclass
class _Page:
    """A List Blobs answer with no blobs and a paging marker, so that the next page is asked for."""

    marker: str
    status: int = 200

    @property
    def data(self) -> bytes:
        return (f"<EnumerationResults><Blobs/><NextMarker>{escape(self.marker)}</NextMarker>"
                "</EnumerationResults>").encode()


def requests_of(uri: str, settings: Mapping[str, str],
                monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, str]]]:
    """(method, url, headers) of what the source puts on the wire for listings (first pages and
    a page after a marker, awkward prefixes), HEAD of a single blob, and ranged GETs with and
    without If-Match: recorded at `_cloudhttp.request`, which every Azure request goes through."""
    sent: list[tuple[str, str, dict[str, str]]] = []
    marker = "2!120!MDAwMDM1IWxsYW1hL3NwIGFjZS5iaW4h/a b+c"

    def record(pool: object, method: str, url: str, *, headers: Mapping[str, str], **_: object) -> _Page:
        sent.append((method, url, dict(headers)))
        if "comp=list" in url and "marker=" not in url:
            return _Page(marker)
        raise _Sent

    monkeypatch.setattr(_cloudhttp, "request", record)
    for model in (uri, f"{uri} b+c/ü", uri.rsplit("/", 1)[0]):
        source = AzureBlobSource(model, settings)
        with pytest.raises(_Sent):
            source.list_files()
        source.close()
    source = AzureBlobSource(uri, settings)
    for name in NAMES:
        with pytest.raises(_Sent):
            source._head(name)
        source._listed = {"file": (name, "0x8DC2F1A2B3C4D5E")}
        with pytest.raises(_Sent):
            next(iter(source.read_range("file", 0, 16 * 2**20)))
        source._listed = {}
        with pytest.raises(_Sent):
            next(iter(source.read_range(name.removeprefix("llama/"), 16 * 2**20, 3_000_000)))
    source.close()
    return sent


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_request_is_signed_as_the_sdk_signs_it(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, settings, account = ENDPOINTS[endpoint]
    sent = requests_of(uri, settings, monkeypatch)
    assert len(sent) == 3 * 2 + 3 * len(NAMES)
    assert sum("marker=" in url for _, url, _ in sent) == 3
    assert sum("x-ms-range" in headers for _, _, headers in sent) == 2 * len(NAMES)
    for method, url, headers in sent:
        assert headers["Authorization"].startswith(f"SharedKey {account}:")
        assert headers["Authorization"] == sdk_signature(account, method, url, headers), (method, url)


def test_a_different_key_or_request_changes_the_signature() -> None:
    """The comparison above can fail: the SDK's signature differs for another key, verb or range."""
    uri, settings, account = ENDPOINTS["account host"]
    source = AzureBlobSource(uri, settings)
    url = source._url("llama/config.json")
    headers = source._headers("GET", url, {"x-ms-range": "bytes=0-9"})
    source.close()
    ours = headers["Authorization"]
    assert ours == sdk_signature(account, "GET", url, headers)
    assert ours != sdk_signature(account, "HEAD", url, headers)
    assert ours != sdk_signature(account, "GET", url, {**headers, "x-ms-range": "bytes=0-10"})
    other = PipelineRequest(HttpRequest("GET", url, headers={k: v for k, v in headers.items() if k != "Authorization"}),
                            PipelineContext(None))
    SharedKeyCredentialPolicy(account, KEY[:-4] + "AAA=").on_request(other)
    assert other.http_request.headers["Authorization"] != ours
