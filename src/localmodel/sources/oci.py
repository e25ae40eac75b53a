"""OCI registries: `oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]` (the tag defaults to latest).

Two kinds of artifact, told apart by their media types:

- a **CNCF ModelPack** artifact (artifactType or config `application/vnd.cncf.model.*`, or any
  layer of that family): each layer is placed at its `org.cncf.model.filepath` annotation
  (`org.opencontainers.image.title` when that is missing, as `oras push` writes it). A raw layer
  is the file itself; a tar layer (`…tar`, `…tar+gzip`) is unpacked there.
- a **KServe modelcar** image (any other image manifest): the `/models` folder of the image's
  filesystem, built from its tar layers in order with whiteouts applied.

The listing is made of the artifact's blobs, each with its descriptor's sha256 as the digest the
engine checks before anything is published, plus `Listing.layers`, which tells the engine how
to build the model from them (`fetch/layers.py`). Blobs are read with ranged GETs from many
threads and resumed like any file.

The reference is resolved once, at listing time: a tag becomes the digest of the manifest (or
index) it names, which is the listing's revision; every later read names blobs by digest only.
Manifests are read with a size limit (4 MiB, like containerd) and checked against their digest.

Registry protocol, as docker and containerd speak it:

- anonymous, then on a 401 the challenge says how: `Bearer realm=…,service=…,scope=…` (a token
  from the realm, with Basic credentials when there are any) or `Basic`;
- credentials come from a docker config JSON in the setting `LOCALMODEL_OCI_AUTH` (`auths` by
  registry host, `auth` base64 user:password or `username`/`password`; `localmodel fetch` fills
  it from DOCKER_CONFIG or ~/.docker/config.json, the agent from a dockerconfigjson Secret);
- an index picks `LOCALMODEL_OCI_PLATFORM` (default: this machine's, so the agent picks its
  node's; linux/amd64 on x86-64) or fails naming the platforms it has;
- blob redirects (object storage) are followed; urllib3 drops the Authorization header when a
  redirect leaves the registry's host;
- plain HTTP only for loopback registries (127.0.0.0/8, ::1, localhost) and those named in
  `LOCALMODEL_OCI_INSECURE_REGISTRIES` (comma-separated host[:port]): HTTPS is tried first and
  plain HTTP used when the registry does not speak TLS, as docker does; any other registry is
  HTTPS only. TLS: LOCALMODEL_HTTP_CA_BUNDLE (and the other CA settings of http://).

The protocol pieces are written here on the project's urllib3 stack rather than taken from a
library. Looked at on PyPI: `oras` 0.2.43 (requests) pulls each blob in one stream into a file
of its own choosing, 8 KiB at a time, without ranges, resume, or a check of the blob's digest;
`olot` writes OCI layouts (a producer). Neither fits the engine's ranged, resumable,
thread-pooled, verified reads into staging. Measured on one 300 MB blob from a loopback registry
(2 busy CPUs): oras-py 1.4-1.6 s, 0.55 CPU-s, no digest check; `localmodel fetch` 1.8-2.9 s,
0.75 CPU-s with the sha256. What is hand-written is small: the token challenge, Basic, the
docker config lookup, manifest and index reading; the transport is `_cloudhttp`'s.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import platform
import re
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3

from localmodel import errors
from localmodel.sources import _cloudhttp
from localmodel.sources.base import (
    Digest,
    Layer,
    Listing,
    ListingLimit,
    RemoteFile,
    Settings,
    size_from_listing,
)

AUTH_SETTING = "LOCALMODEL_OCI_AUTH"
INSECURE_SETTING = "LOCALMODEL_OCI_INSECURE_REGISTRIES"
PLATFORM_SETTING = "LOCALMODEL_OCI_PLATFORM"
#: Go's names of the machine architectures Python reports.
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "i686": "386", "armv7l": "arm"}
_CA_SETTINGS = ("LOCALMODEL_HTTP_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")

#: Largest manifest or index read (containerd's limit); a manifest of 1e5 layers is ~15 MB.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Most layers one artifact may have, whatever the file limit (images rarely exceed 127).
MAX_LAYERS = 10_000

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
_INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})

MODELPACK_PREFIX = "application/vnd.cncf.model."
FILEPATH_ANNOTATION = "org.cncf.model.filepath"
TITLE_ANNOTATION = "org.opencontainers.image.title"
#: The folder of a modelcar image that holds the model (KServe mounts it at /mnt/models).
MODELCAR_FOLDER = "models"

_DIGEST = re.compile(r"^sha256:([a-f0-9]{64})$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    #: A tag or "sha256:…".
    reference: str

    @property
    def is_digest(self) -> bool:
        return bool(_DIGEST.match(self.reference))

    def __str__(self) -> str:
        separator = "@" if self.is_digest else ":"
        return f"oci://{self.registry}/{self.repository}{separator}{self.reference}"


def node_platform(machine: str | None = None) -> str:
    """The platform of the machine this runs on, as an index names it (linux/amd64 when the
    architecture is unknown): the agent picks its own node's image from a multi-arch index."""
    return "linux/" + _GO_ARCH.get((machine or platform.machine()).lower(), "amd64")


def parse_oci_uri(uri: str) -> Reference:
    """`oci://host[:port]/a/b[:tag|@sha256:…]`, checked as the distribution spec names them."""
    if not uri.startswith("oci://"):
        raise errors.InvalidURIError(f"not an oci:// URI: {uri!r}")
    rest = uri[len("oci://"):]
    if any(c in rest for c in "?#\\ ") or "://" in rest:
        raise errors.InvalidURIError(f"unexpected characters in {uri!r}")
    registry, _, path = rest.partition("/")
    if not registry or not _HOST.match(registry) or "@" in registry:
        raise errors.InvalidURIError(f"oci:// URI without a registry host: {uri!r}")
    reference = "latest"
    if "@" in path:
        path, _, reference = path.partition("@")
        if not _DIGEST.match(reference):
            raise errors.InvalidURIError(f"{uri!r}: only sha256 digests are supported after @")
    else:
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, _, reference = path.rpartition(":")
            if not _TAG.match(reference):
                raise errors.InvalidURIError(f"{uri!r}: malformed tag {reference[:130]!r}")
    components = path.split("/")
    if not path or not all(_REPO_COMPONENT.match(part) for part in components) or len(path) > 255:
        raise errors.InvalidURIError(f"{uri!r}: malformed repository name {path[:260]!r}")
    return Reference(registry.lower(), path, reference)


def is_loopback(registry: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1, with or without a port."""
    host = urllib.parse.urlsplit(f"//{registry}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def docker_config_path(environ: Mapping[str, str]) -> str | None:
    """Where docker keeps its config.json: $DOCKER_CONFIG/config.json, else ~/.docker/."""
    if environ.get("DOCKER_CONFIG"):
        return f"{environ['DOCKER_CONFIG'].rstrip('/')}/config.json"
    if environ.get("HOME"):
        return f"{environ['HOME'].rstrip('/')}/.docker/config.json"
    return None


def credentials_for(config_json: str, registry: str) -> tuple[str, str] | None:
    """(user, password) for `registry` from a docker config JSON, None when it has none.
    Keys may be a bare host[:port] or a URL (`https://index.docker.io/v1/`)."""
    if not config_json:
        return None
    try:
        config = json.loads(config_json)
    except ValueError:
        raise errors.CredentialsConfigError(f"{AUTH_SETTING} is not valid JSON") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = {registry}
    if registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        wanted |= {"docker.io", "index.docker.io", "registry-1.docker.io"}
    for key, entry in auths.items():
        host = urllib.parse.urlsplit(key if "://" in key else f"//{key}").netloc.lower()
        if host not in wanted or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise errors.CredentialsConfigError(
                    f"{AUTH_SETTING}: the auth of {key!r} is not base64 user:password") from None
            return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """("bearer"|"basic"|…, params) of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {match.group(1).lower(): (match.group(2) if match.group(2) is not None
                                       else match.group(3)).replace('\\"', '"')
              for match in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


class _Auth:
    """The Authorization header for one repository, renewed on a 401. Thread-safe."""

    def __init__(self, source: OCISource, credentials: tuple[str, str] | None) -> None:
        self._source = source
        self._credentials = credentials
        self._lock = threading.Lock()
        self.header: str | None = None
        self._challenge: tuple[str, dict[str, str]] | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.header} if self.header else {}

    @property
    def has_credentials(self) -> bool:
        return self._credentials is not None

    def answer(self, challenge: str | None, failed_with: str | None) -> bool:
        """Meet a 401: True when a new header is ready to try. `failed_with` is the header the
        refused request carried (another thread may have renewed it meanwhile)."""
        with self._lock:
            if self.header != failed_with:
                return True
            if challenge:
                self._challenge = parse_challenge(challenge)
            if self._challenge is None:
                return False
            scheme, params = self._challenge
            if scheme == "basic":
                if self._credentials is None or self.header is not None:
                    return False
                self.header = _basic(self._credentials)
                return True
            if scheme == "bearer":
                token = self._source.fetch_token(params, self._credentials)
                if f"Bearer {token}" == failed_with:
                    return False
                self.header = f"Bearer {token}"
                return True
            return False


def _descriptor(value: object, what: str) -> dict[str, Any]:
    """A descriptor from a manifest, checked: media type, sha256 digest, size."""
    if not isinstance(value, dict):
        raise errors.InvalidListingError(f"{what}: a descriptor is not an object")
    media_type, digest = value.get("mediaType"), value.get("digest")
    if not isinstance(media_type, str):
        raise errors.InvalidListingError(f"{what}: a descriptor has no media type")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise errors.InvalidListingError(
            f"{what}: descriptor digest {str(digest)[:80]!r} is not sha256:<64 hex>")
    size_from_listing(value.get("size"), f"{what}: {digest}")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise errors.InvalidListingError(f"{what}: {digest} has malformed annotations")
    return value


class OCISource:
    """One artifact in an OCI registry, at the digest its reference resolved to."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.ref = parse_oci_uri(uri)
        self.uri = uri
        self._settings = settings
        insecure = {item.strip().lower() for item in settings.get(INSECURE_SETTING, "").split(",")
                    if item.strip()}
        self._plain_http_allowed = is_loopback(self.ref.registry) or self.ref.registry in insecure
        verify = settings.get("LOCALMODEL_HTTP_VERIFY", "").lower() not in ("false", "0", "no")
        ca_bundle = next((settings[name] for name in _CA_SETTINGS if settings.get(name)), None)
        self._pool = _cloudhttp.make_pool(_cloudhttp.TLSOptions(verify=verify, ca_bundle=ca_bundle),
                                          follow_redirects=True)
        self._auth = _Auth(self, credentials_for(settings.get(AUTH_SETTING, ""), self.ref.registry))
        self._limit = ListingLimit(settings, str(self.ref))
        self._lock = threading.Lock()
        self._base: str | None = None
        self.platform = settings.get(PLATFORM_SETTING) or node_platform()

    # -- transport ---------------------------------------------------------------------------

    def base_url(self) -> str:
        """https://registry, or http:// for a loopback or insecure registry without TLS."""
        with self._lock:
            if self._base is not None:
                return self._base
        base = f"https://{self.ref.registry}"
        if self._plain_http_allowed:
            try:
                response = self._pool.request("GET", f"{base}/v2/", retries=False, timeout=5.0)
                response.drain_conn()
                response.release_conn()
            except urllib3.exceptions.SSLError as exc:
                if _untrusted_certificate(exc):
                    # It speaks TLS: falling back to plain HTTP would hide the real problem.
                    raise errors.PermanentError(
                        f"{self.ref.registry}: TLS certificate not trusted ({str(exc)[:200]}); "
                        "name its CA in LOCALMODEL_HTTP_CA_BUNDLE") from exc
                base = f"http://{self.ref.registry}"
            except urllib3.exceptions.ProtocolError:
                base = f"http://{self.ref.registry}"
            except urllib3.exceptions.HTTPError as exc:
                raise errors.SourceUnavailableError(f"{self.ref.registry}: {exc}") from exc
        with self._lock:
            self._base = self._base or base
            return self._base

    def _send(self, method: str, path: str, *, headers: Mapping[str, str], what: str,
              preload: bool) -> urllib3.BaseHTTPResponse:
        """A request to the registry, authenticated; a 401 is answered once per header."""
        url = f"{self.base_url()}{path}"
        for _ in range(3):
            sent = self._auth.header
            response = _cloudhttp.request(self._pool, method, url,
                                          headers={**headers, **self._auth.headers()},
                                          what=what, preload=preload)
            if response.status != 401:
                return response
            challenge = response.headers.get("WWW-Authenticate")
            _cloudhttp.read_failure(response, preloaded=preload)
            if not self._auth.answer(challenge, sent):
                break
        raise errors.SourceAuthError(
            f"{what}: HTTP 401: the registry refused "
            + ("the credentials" if self._auth.has_credentials else "anonymous access; give "
               f"credentials for {self.ref.registry} in {AUTH_SETTING} (a docker config)"))

    def fetch_token(self, params: Mapping[str, str], credentials: tuple[str, str] | None) -> str:
        """A bearer token from the challenge's realm, for pulling this repository."""
        realm = params.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise errors.SourceAuthError(f"{self.ref.registry}: bearer realm {realm[:200]!r} is not a URL")
        if parts.scheme == "http" and not self._plain_http_allowed:
            # Credentials in clear text only where the registry itself may be spoken to so.
            raise errors.SourceAuthError(
                f"{self.ref.registry}: refusing to send credentials to a plain-http token realm")
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = realm + ("&" if parts.query else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": _basic(credentials)} if credentials else {}
        what = f"token for {self.ref.registry}/{self.ref.repository}"
        response = _cloudhttp.request(self._pool, "GET", url, headers=headers, what=what)
        if response.status != 200:
            _cloudhttp.raise_for_failure(_cloudhttp.read_failure(response, preloaded=True), what)
        try:
            body = json.loads(response.data)
        except ValueError:
            raise errors.SourceAuthError(f"{what}: the answer is not JSON") from None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise errors.SourceAuthError(f"{what}: the answer holds no token")
        return token

    # -- manifests ---------------------------------------------------------------------------

    def _manifest(self, reference: str) -> tuple[dict[str, Any], str, str]:
        """(manifest, media type, digest) of `reference`, read within the size limit and
        checked against its digest."""
        what = f"manifest {self.ref.registry}/{self.ref.repository}@{reference}"
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        response = self._send("GET", path, headers={"Accept": _ACCEPT}, what=what, preload=False)
        try:
            if response.status != 200:
                _cloudhttp.raise_for_failure(_cloudhttp.read_failure(response), what)
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
                raise errors.InvalidListingError(
                    f"{what}: {int(length)} bytes, larger than the {MAX_MANIFEST_BYTES}-byte limit")
            body = response.read(MAX_MANIFEST_BYTES + 1, decode_content=True) or b""
        except urllib3.exceptions.HTTPError as exc:
            raise errors.SourceUnavailableError(f"{what}: {type(exc).__name__}") from exc
        finally:
            response.close()  # manifests are few: no keep-alive bookkeeping for a partial read
            response.release_conn()
        if len(body) > MAX_MANIFEST_BYTES:
            raise errors.InvalidListingError(f"{what}: larger than the {MAX_MANIFEST_BYTES}-byte limit")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = reference if _DIGEST.match(reference) else response.headers.get("Docker-Content-Digest")
        if expected and _DIGEST.match(expected) and expected != digest:
            raise errors.IntegrityError(f"{what}: the registry sent a manifest whose digest is {digest}")
        try:
            manifest = json.loads(body)
        except ValueError:
            raise errors.InvalidListingError(f"{what}: not JSON") from None
        if not isinstance(manifest, dict):
            raise errors.InvalidListingError(f"{what}: not a JSON object")
        media_type = manifest.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0]
        if media_type not in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST):
            media_type = OCI_INDEX if "manifests" in manifest else OCI_MANIFEST
        return manifest, media_type, digest

    def _choose_platform(self, index: Mapping[str, Any], what: str) -> str:
        entries = index.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise errors.InvalidListingError(f"{what}: an index without manifests")
        wanted = self.platform.split("/")
        seen: list[str] = []
        unplatformed: list[str] = []
        for entry in entries[:MAX_LAYERS]:
            descriptor = _descriptor(entry, what)
            platform = descriptor.get("platform")
            if not isinstance(platform, dict):
                unplatformed.append(descriptor["digest"])
                continue
            have = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
            if platform.get("variant"):
                have.append(str(platform["variant"]))
            seen.append("/".join(have))
            if have[:2] == wanted[:2] and (len(wanted) < 3 or have[2:] == wanted[2:]):
                return str(descriptor["digest"])
        if not seen and len(unplatformed) == 1:
            return unplatformed[0]  # an index of one artifact (ModelPack, oras)
        raise errors.PermanentError(
            f"{what}: no manifest for platform {self.platform} (the index has "
            f"{', '.join(sorted(set(seen))) or 'no platforms'}); set {PLATFORM_SETTING}")

    def resolve(self) -> tuple[str, dict[str, Any], str]:
        """(digest the reference names, chosen image manifest, its digest). Called once, by
        `list_files`; reads name blobs by digest only, so a tag moved meanwhile changes nothing."""
        top, media_type, digest = self._manifest(self.ref.reference)
        manifest, manifest_digest = top, digest
        for _ in range(2):  # an index, possibly of indexes
            if media_type not in _INDEXES:
                break
            chosen = self._choose_platform(manifest, f"index {digest}")
            manifest, media_type, manifest_digest = self._manifest(chosen)
        if media_type in _INDEXES:
            raise errors.InvalidListingError(f"{self.ref}: indexes nested too deep")
        return digest, manifest, manifest_digest

    # -- Source protocol ---------------------------------------------------------------------

    def list_files(self) -> Listing:
        digest, manifest, manifest_digest = self.resolve()
        what = f"{self.ref.registry}/{self.ref.repository}@{manifest_digest}"
        raw_layers = manifest.get("layers")
        if not isinstance(raw_layers, list):
            raise errors.InvalidListingError(f"{what}: a manifest without layers")
        if len(raw_layers) > MAX_LAYERS:
            raise errors.TooManyFilesError(f"{what}: {len(raw_layers)} layers, more than {MAX_LAYERS}")
        self._limit.check(len(raw_layers))
        descriptors = [_descriptor(item, what) for item in raw_layers]
        config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        modelpack = (str(manifest.get("artifactType", "")).startswith(MODELPACK_PREFIX)
                     or str(config.get("mediaType", "")).startswith(MODELPACK_PREFIX)
                     or any(d["mediaType"].startswith(MODELPACK_PREFIX) for d in descriptors))
        layers = (self._modelpack_layers(descriptors, what) if modelpack
                  else self._modelcar_layers(descriptors, what))
        blobs: dict[str, RemoteFile] = {}
        for descriptor in descriptors:
            name = _blob_name(descriptor["digest"])
            blobs.setdefault(name, RemoteFile(
                path=name, size=size_from_listing(descriptor["size"], what),
                digest=Digest("sha256", descriptor["digest"].split(":", 1)[1]),
                version=descriptor["digest"]))
        return Listing(files=tuple(blobs.values()), revision=digest, layers=tuple(layers),
                       details={"kind": "modelpack" if modelpack else "modelcar",
                                "reference": str(self.ref), "manifest": manifest_digest})

    @staticmethod
    def _modelpack_layers(descriptors: list[dict[str, Any]], what: str) -> list[Layer]:
        layers = []
        for descriptor in descriptors:
            annotations = descriptor.get("annotations") or {}
            path = annotations.get(FILEPATH_ANNOTATION) or annotations.get(TITLE_ANNOTATION)
            if not isinstance(path, str) or not path:
                raise errors.InvalidListingError(
                    f"{what}: layer {descriptor['digest']} has no {FILEPATH_ANNOTATION} annotation")
            path = path.strip("/") if not path.startswith("/") else path  # "/x" stays refused
            media_type: str = descriptor["mediaType"]
            if media_type.endswith(".tar") or media_type.endswith(".tar+gzip") \
                    or media_type.endswith(".tar+zstd") or media_type in _LAYER_COMPRESSION:
                compression = "gzip" if "gzip" in media_type else "zstd" if "zstd" in media_type else ""
                layers.append(Layer(blob=_blob_name(descriptor["digest"]), kind="tar", path=path,
                                    compression=compression))
            else:
                layers.append(Layer(blob=_blob_name(descriptor["digest"]), kind="file", path=path))
        return layers

    @staticmethod
    def _modelcar_layers(descriptors: list[dict[str, Any]], what: str) -> list[Layer]:
        layers = []
        for descriptor in descriptors:
            media_type = descriptor["mediaType"]
            if media_type not in _LAYER_COMPRESSION:
                raise errors.InvalidListingError(
                    f"{what}: layer {descriptor['digest']} has media type {media_type[:100]!r}, "
                    "neither an image layer nor a ModelPack one")
            layers.append(Layer(blob=_blob_name(descriptor["digest"]), kind="tar",
                                subtree=MODELCAR_FOLDER, compression=_LAYER_COMPRESSION[media_type],
                                whiteouts=True))
        return layers

    def read_range(self, path: str, offset: int, length: int) -> Iterator[memoryview]:
        match = re.fullmatch(r"sha256/([a-f0-9]{64})", path)
        if match is None:
            raise errors.SourceNotFoundError(f"{path!r} is not a blob of {self.ref}")
        url = f"{self.base_url()}/v2/{self.ref.repository}/blobs/sha256:{match.group(1)}"
        what = f"blob {self.ref.registry}/{self.ref.repository}@sha256:{match.group(1)[:12]}"
        for attempt in range(2):
            sent = self._auth.header
            chunks = _cloudhttp.stream_range(self._pool, url, offset, length,
                                             headers=self._auth.headers(), what=what)
            try:
                first = next(chunks)
            except StopIteration:
                return
            except errors.SourceAuthError:
                # A token that expired mid-download: renew it once (the listing's challenge).
                if attempt or not self._auth.answer(None, sent):
                    raise
                continue
            yield first
            yield from chunks
            return

    def close(self) -> None:
        self._pool.clear()


def _untrusted_certificate(exc: BaseException) -> bool:
    """Whether a TLS failure is a certificate the client does not trust (the server does speak
    TLS), as opposed to a server that answered the handshake with plain HTTP."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = nested or seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _blob_name(digest: str) -> str:
    """The listed name of a blob: `sha256/<hex>` (a safe relative path, one per content)."""
    return digest.replace(":", "/", 1)
