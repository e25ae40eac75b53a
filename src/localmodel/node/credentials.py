"""Download credentials the KServe way, turned into engine settings. Pure: secrets come in decoded.

KServe's agent gives each download Job environment variables built by its CredentialBuilder
(pkg/credentials) from objects in `jobNamespace`. The agent downloads in-process, so it builds
the same names into an env-style `settings` mapping for the engine instead of a Pod spec:

- An entry with `storage.key` reads that key of the storage-config secret (a JSON object with a
  `type`); `storage.parameters` override its fields (KServe's STORAGE_OVERRIDE_CONFIG).
- Otherwise, when the entry names a `serviceAccountName` or has a `storage` block, the secrets
  listed by that ServiceAccount (or `default`) are classified one by one, first match wins per
  secret, in KServe's order: S3, GCS, Azure (legacy, client, token, access key), HTTPS, HDFS,
  Hugging Face, ModelScope, then a dockerconfigjson (oci:// registries; the ServiceAccount's
  imagePullSecrets are read too). An entry with neither gets no credentials, as in KServe.

Differences from KServe, on purpose:
- storage-config types `hf`, `gs`/`gcs`, `azure` and `https` are understood besides `s3`
  (KServe's Go side accepts only s3/hdfs/webhdfs, though its own localmodelcache sample shows
  `"type": "hf"`);
- a GCS key is handed over as content; the I/O layer writes it to a private temp file and points
  GOOGLE_APPLICATION_CREDENTIALS at it for the length of the download;
- HDFS is recognised but not supported by localmodel's sources, so it is reported, not used;
- a missing storage-config Secret (or key) is downloaded without credentials, as KServe's agent
  does ("Failed to inject credentials"), but said so in an Event and the status, and refused for
  `s3://` unless an endpoint is known without the Secret (`without_storage_secret`).

`Credentials` never shows secret values in its repr; `secret_values` feeds `redact`, which the
agent applies to every message before it reaches a log, the status or an Event.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from localmodel.api.types import LocalModelInfo
from localmodel.errors import CredentialsConfigError
from localmodel.kube.config import CredentialsConfig

# --- names KServe uses (pkg/credentials) -----------------------------------------------------

S3_ACCESS_KEY_ID_NAME = "awsAccessKeyID"
S3_SECRET_ACCESS_KEY_NAME = "awsSecretAccessKey"  # noqa: S105 - a key name, not a secret
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
_S3_ANNOTATION = "serving.kserve.io/s3-"

GCS_CREDENTIALS_SETTING = "GOOGLE_APPLICATION_CREDENTIALS"

AZURE_LEGACY = {
    "AZURE_SUBSCRIPTION_ID": "AZ_SUBSCRIPTION_ID",
    "AZURE_TENANT_ID": "AZ_TENANT_ID",
    "AZURE_CLIENT_ID": "AZ_CLIENT_ID",
    "AZURE_CLIENT_SECRET": "AZ_CLIENT_SECRET",
}
AZURE_SETTINGS = (
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_ACCESS_TOKEN",
    "AZURE_ACCESS_EXPIRES_ON_SECONDS",
    "AZURE_ACCOUNT_NAME",
    "AZURE_SERVICE_URL",
)
HTTPS_HOST_KEY = "https-host"
HTTPS_HEADERS_KEY = "headers"
HDFS_NAMENODE_KEY = "HDFS_NAMENODE"
HF_TOKEN = "HF_TOKEN"  # noqa: S105 - a key name
MS_TOKEN = "MODELSCOPE_API_TOKEN"  # noqa: S105 - a key name
DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"
#: The oci:// source's setting for a docker config JSON (sources/oci.py AUTH_SETTING).
OCI_AUTH_SETTING = "LOCALMODEL_OCI_AUTH"

DEFAULT_SERVICE_ACCOUNT = "default"


@dataclass(frozen=True)
class SecretData:
    """A Secret as the classifier needs it: name, decoded data and annotations."""

    name: str
    data: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SecretData(name={self.name!r}, keys={sorted(self.data)!r})"


@dataclass(frozen=True)
class Credentials:
    """Settings for one download. Values are secret: repr shows setting names only."""

    #: Env-style settings for the engine (AWS_ACCESS_KEY_ID, HF_TOKEN, `{host}-headers`...).
    settings: Mapping[str, str] = field(default_factory=dict)
    #: Settings whose value is a file path: setting name → file content to write privately.
    files: Mapping[str, str] = field(default_factory=dict)
    #: Where the credentials came from ("secret/s3-creds", "storage-config[my-key]"), for logs.
    origins: tuple[str, ...] = ()
    #: Secrets that were found but cannot be used, with why (for a warning, never an error).
    ignored: tuple[str, ...] = ()
    #: Set when the entry asked for credentials that do not exist and the download goes ahead
    #: without them, as KServe's agent does: what is missing, for an Event, the status and any
    #: refusal the origin then gives.
    missing: str | None = None

    @property
    def secret_values(self) -> frozenset[str]:
        """Every value worth hiding from text shown to people."""
        values = {v for v in self.settings.values() if v}
        values.update(v for v in self.files.values() if v)
        for value in list(values):
            # Headers carry tokens inside a JSON object: hide each header value too.
            values.update(_header_values(value))
        return frozenset(v for v in values if len(v) >= 4)

    def __repr__(self) -> str:
        return (
            f"Credentials(settings={sorted(self.settings)!r}, files={sorted(self.files)!r}, "
            f"origins={self.origins!r}, missing={self.missing!r})"
        )


NO_CREDENTIALS = Credentials()


def redact(text: str, secret_values: Iterable[str]) -> str:
    """Replace every occurrence of a secret value in `text` with `***`, longest first."""
    for value in sorted(set(secret_values), key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    return text


def _header_values(value: str) -> list[str]:
    if not value.startswith("{"):
        return []
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return []
    if not isinstance(parsed, dict):
        return []
    return [str(v) for v in parsed.values()]


# --- what to read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialsPlan:
    """Which objects in jobNamespace hold an entry's credentials."""

    #: Read this key of the storage-config secret (storage.key path), or None.
    storage_key: str | None = None
    storage_secret_name: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    #: Else read this ServiceAccount and its secrets, or None (no credentials at all).
    service_account: str | None = None


def plan_credentials(entry: LocalModelInfo, config: CredentialsConfig) -> CredentialsPlan:
    """KServe's choice (localmodelnode controller `injectCredentials`), without any I/O."""
    storage = entry.storage
    if storage is not None and storage.key:
        return CredentialsPlan(
            storage_key=storage.key,
            storage_secret_name=config.storage_spec_secret_name,
            parameters=dict(storage.parameters or {}),
        )
    if entry.service_account_name or storage is not None:
        return CredentialsPlan(
            service_account=entry.service_account_name or DEFAULT_SERVICE_ACCOUNT
        )
    return CredentialsPlan()


# --- service-account secrets ----------------------------------------------------------------------


def _s3_value(
    annotations: Mapping[str, str],
    data: Mapping[str, str] | None,
    annotation: str,
    data_key: str,
    default: str,
) -> str:
    """KServe's getEnvValue: annotation, else secret data, else the credentials config."""
    if f"{_S3_ANNOTATION}{annotation}" in annotations:
        return annotations[f"{_S3_ANNOTATION}{annotation}"]
    if data is not None and data_key in data:
        return data[data_key]
    return default


def s3_settings(
    annotations: Mapping[str, str], data: Mapping[str, str] | None, s3_config: Mapping[str, Any]
) -> dict[str, str]:
    """KServe's BuildS3EnvVars: endpoint, TLS, region and bucket-style settings."""

    def conf(key: str) -> str:
        return str(s3_config.get(key) or "")

    out: dict[str, str] = {}
    endpoint = _s3_value(annotations, data, "endpoint", "S3_ENDPOINT", conf("s3Endpoint")).strip()
    if endpoint:
        lowered = endpoint.lower()
        if lowered.startswith("https://"):
            use_https, host, url = "1", endpoint[8:], endpoint
        elif lowered.startswith("http://"):
            use_https, host, url = "0", endpoint[7:], endpoint
        else:
            use_https = _s3_value(annotations, data, "usehttps", "S3_USE_HTTPS", conf("s3UseHttps"))
            host = endpoint
            url = ("http://" if use_https == "0" else "https://") + endpoint
        if use_https:
            out["S3_USE_HTTPS"] = use_https
        out["S3_ENDPOINT"] = host
        out["AWS_ENDPOINT_URL"] = url
    for annotation, name, conf_key in (
        ("verifyssl", "S3_VERIFY_SSL", "s3VerifySSL"),
        ("useanoncredential", "awsAnonymousCredential", "s3UseAnonymousCredential"),
        ("region", "AWS_DEFAULT_REGION", "s3Region"),
        ("usevirtualbucket", "S3_USER_VIRTUAL_BUCKET", "s3UseVirtualBucket"),
        ("useaccelerate", "S3_USE_ACCELERATE", "s3UseAccelerate"),
        ("cabundle", "AWS_CA_BUNDLE", "s3CABundle"),
    ):
        value = _s3_value(annotations, data, annotation, name, conf(conf_key))
        if value:
            out[name] = value
    return out


def _azure_settings(data: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in AZURE_SETTINGS:
        legacy = AZURE_LEGACY.get(name)
        key = legacy if legacy and legacy in data else name
        if key in data:
            out[name] = data[key]
    return out


def classify_secret(secret: SecretData, config: CredentialsConfig) -> tuple[str, dict[str, str], dict[str, str]]:
    """(kind, settings, files) for one secret; kind "" when it holds nothing KServe knows."""
    data = secret.data
    secret_key_name = str(config.s3.get("s3SecretAccessKeyName") or S3_SECRET_ACCESS_KEY_NAME)
    access_key_name = str(config.s3.get("s3AccessKeyIDName") or S3_ACCESS_KEY_ID_NAME)
    if secret_key_name in data:
        settings = {}
        if access_key_name in data:
            settings["AWS_ACCESS_KEY_ID"] = data[access_key_name]
        settings["AWS_SECRET_ACCESS_KEY"] = data[secret_key_name]
        settings.update(s3_settings(secret.annotations, data, config.s3))
        return "s3", settings, {}
    if config.gcs_credential_file_name in data:
        return "gcs", {}, {GCS_CREDENTIALS_SETTING: data[config.gcs_credential_file_name]}
    if "AZ_CLIENT_ID" in data or "AZURE_CLIENT_ID" in data or "AZURE_ACCESS_TOKEN" in data:
        return "azure", _azure_settings(data), {}
    if "AZURE_STORAGE_ACCESS_KEY" in data:
        return "azure", {"AZURE_STORAGE_ACCESS_KEY": data["AZURE_STORAGE_ACCESS_KEY"]}, {}
    if HTTPS_HOST_KEY in data:
        if HTTPS_HEADERS_KEY not in data:
            return "https", {}, {}
        return "https", {f"{data[HTTPS_HOST_KEY]}-headers": data[HTTPS_HEADERS_KEY]}, {}
    if HDFS_NAMENODE_KEY in data:
        return "hdfs", {}, {}
    if HF_TOKEN in data:
        return "hf", {HF_TOKEN: data[HF_TOKEN]}, {}
    if MS_TOKEN in data:
        return "modelscope", {MS_TOKEN: data[MS_TOKEN]}, {}
    if DOCKER_CONFIG_JSON_KEY in data:
        # kubernetes.io/dockerconfigjson: registry credentials for oci:// (the source picks the
        # entry for its registry host).
        return "oci", {OCI_AUTH_SETTING: data[DOCKER_CONFIG_JSON_KEY]}, {}
    return "", {}, {}


def from_service_account(
    service_account: str,
    annotations: Mapping[str, str],
    secrets: Sequence[SecretData],
    config: CredentialsConfig,
) -> Credentials:
    """Settings from a ServiceAccount's annotations and its secrets, in the order it lists them.

    Later secrets override earlier ones setting by setting, as later env entries win in a Pod.
    """
    settings: dict[str, str] = {}
    files: dict[str, str] = {}
    origins: list[str] = []
    ignored: list[str] = []
    if IRSA_ANNOTATION in annotations:
        # IRSA: the role itself is assumed through a projected token the agent Pod does not
        # carry for this ServiceAccount; the endpoint and region annotations still apply.
        settings.update(s3_settings(annotations, None, config.s3))
        origins.append(f"serviceaccount/{service_account}")
    for secret in secrets:
        kind, found_settings, found_files = classify_secret(secret, config)
        if kind == "hdfs":
            ignored.append(f"secret/{secret.name}: hdfs credentials (no hdfs source)")
            continue
        if not kind:
            continue
        settings.update(found_settings)
        files.update(found_files)
        origins.append(f"secret/{secret.name} ({kind})")
    return Credentials(settings=settings, files=files, origins=tuple(origins), ignored=tuple(ignored))


# --- storage-config secret ----------------------------------------------------------------------

_STORAGE_SPEC_S3 = (
    ("AWS_ENDPOINT_URL", "endpoint_url"),
    ("AWS_ACCESS_KEY_ID", "access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("AWS_DEFAULT_REGION", "region"),
    ("AWS_CA_BUNDLE", "ca_bundle"),
    ("S3_VERIFY_SSL", "verify_ssl"),
    ("awsAnonymousCredential", "anonymous"),
)
_STORAGE_SPEC_AZURE = (
    ("AZURE_STORAGE_ACCESS_KEY", "account_key"),
    ("AZURE_ACCOUNT_NAME", "account_name"),
    ("AZURE_CLIENT_ID", "client_id"),
    ("AZURE_TENANT_ID", "tenant_id"),
    ("AZURE_CLIENT_SECRET", "client_secret"),
    ("AZURE_SERVICE_URL", "service_url"),
)
STORAGE_SPEC_TYPES = ("s3", "hf", "gs", "gcs", "azure", "https")


def _gcs_key(spec: Mapping[str, str], where: str) -> str:
    if "service_account_json" in spec:
        return spec["service_account_json"]
    if "base64_service_account" in spec:
        try:
            return base64.b64decode(spec["base64_service_account"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CredentialsConfigError(f"{where}: base64_service_account is not base64 JSON") from exc
    raise CredentialsConfigError(f"{where}: type gs needs service_account_json or base64_service_account")


def from_storage_spec(
    raw: str | None,
    *,
    secret_name: str,
    storage_key: str,
    parameters: Mapping[str, str],
    uri: str,
) -> Credentials:
    """Settings from one key of the storage-config secret, with `parameters` on top.

    `raw` is the key's decoded value, or None when the secret or the key is missing, which is an
    error because the entry asked for that key explicitly (as in KServe).
    """
    where = f"{secret_name}[{storage_key}]"
    if raw is None:
        raise CredentialsConfigError(
            f"storage key {storage_key!r} not found in storage secret {secret_name!r}"
        )
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        # The message names the place, never the content.
        raise CredentialsConfigError(f"{where} is not valid JSON (line {exc.lineno})") from exc
    if not isinstance(spec, dict):
        raise CredentialsConfigError(f"{where} must be a JSON object")
    merged = {str(k): "" if v is None else str(v) for k, v in spec.items()}
    merged.update({str(k): str(v) for k, v in parameters.items()})
    kind = merged.get("type", "")
    if not kind:
        raise CredentialsConfigError(f"{where}: unable to determine storage type (no \"type\")")
    if kind not in STORAGE_SPEC_TYPES:
        raise CredentialsConfigError(
            f"{where}: storage type must be one of [{', '.join(STORAGE_SPEC_TYPES)}], not {kind!r}"
        )
    settings: dict[str, str] = {}
    files: dict[str, str] = {}
    if kind == "s3":
        settings.update({env: merged[key] for env, key in _STORAGE_SPEC_S3 if key in merged})
    elif kind == "hf":
        if "token" in merged:
            settings[HF_TOKEN] = merged["token"]
        if "endpoint" in merged:
            settings["HF_ENDPOINT"] = merged["endpoint"]
    elif kind in ("gs", "gcs"):
        files[GCS_CREDENTIALS_SETTING] = _gcs_key(merged, where)
    elif kind == "azure":
        settings.update({env: merged[key] for env, key in _STORAGE_SPEC_AZURE if key in merged})
    elif kind == "https":
        host = urlsplit(uri).hostname or ""
        if "headers" in merged and host:
            settings[f"{host}-headers"] = merged["headers"]
    return Credentials(settings=settings, files=files, origins=(f"{where} ({kind})",))


def without_storage_secret(
    uri: str,
    *,
    missing: str,
    parameters: Mapping[str, str],
    config: CredentialsConfig,
) -> Credentials:
    """Credentials for an entry whose storage-config Secret (or key) does not exist.

    KServe's agent logs "Failed to inject credentials" and downloads anyway, so a public model
    still arrives; so do we, and `missing` travels with the download for the Event, the status
    and the message of any refusal from the origin. `storage.parameters` with a `type` are used
    as the whole spec, as they would override the missing one.

    Refused where the missing Secret decides where the request goes: an `s3://` bucket name is
    global, so without the Secret's endpoint the request would go to AWS S3, where a bucket of
    that name may belong to someone else. It goes ahead when the cluster's credentials config
    (`s3.s3Endpoint`) or the parameters name an endpoint.
    """
    note = f"{missing}; downloading without credentials"
    if parameters.get("type"):
        found = from_storage_spec("{}", secret_name="storage.parameters", storage_key="-",
                                  parameters=parameters, uri=uri)
        return Credentials(settings=found.settings, files=found.files, origins=found.origins,
                           missing=f"{missing}; downloading with storage.parameters only")
    if urlsplit(uri).scheme.lower() == "s3":
        settings = s3_settings({}, None, config.s3)
        if "AWS_ENDPOINT_URL" not in settings:
            raise CredentialsConfigError(
                f"{missing}: refusing to read {uri} without it, since the Secret may name the S3 "
                "endpoint and without one the request would go to AWS S3, where a bucket of that "
                "name may belong to someone else (set credentials.s3.s3Endpoint, or create the Secret)"
            )
        return Credentials(settings=settings, origins=("credentials.s3 (endpoint only)",), missing=note)
    return Credentials(missing=note)
