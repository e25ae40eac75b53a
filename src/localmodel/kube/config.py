"""The `localModel` and `credentials` keys of ConfigMap `inferenceservice-config`, KServe's defaults.

KServe spells one key `reconcilationFrequencyInSecs` (sic); we read it as written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from localmodel.errors import PermanentError

CONFIGMAP_NAME = "inferenceservice-config"
DEFAULT_NAMESPACE = "kserve"


class ConfigError(PermanentError):
    reason = "InvalidConfig"


class LocalModelConfig(BaseModel):
    """KServe's LocalModelConfig with its defaults."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    enabled: bool = False
    job_namespace: str = Field("kserve-localmodel-jobs", alias="jobNamespace")
    default_job_image: str = Field("kserve/storage-initializer:latest", alias="defaultJobImage")
    fs_group: int = Field(1000, alias="fsGroup")
    job_ttl_seconds_after_finished: int = Field(3600, alias="jobTTLSecondsAfterFinished")
    reconciliation_frequency_seconds: int = Field(60, alias="reconcilationFrequencyInSecs")
    disable_volume_management: bool = Field(False, alias="disableVolumeManagement")


class CredentialsConfig(BaseModel):
    """The parts of KServe's `credentials` key that locate download credentials."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    storage_spec_secret_name: str = Field("storage-config", alias="storageSpecSecretName")
    storage_secret_name_annotation: str = Field(
        "serving.kserve.io/storageSecretName", alias="storageSecretNameAnnotation"
    )
    gcs_credential_file_name: str = Field(
        "gcloud-application-credentials.json", alias="gcsCredentialFileName"
    )
    s3: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> CredentialsConfig:
        gcs = raw.get("gcs") or {}
        merged = dict(raw)
        if "gcsCredentialFileName" in gcs:
            merged["gcsCredentialFileName"] = gcs["gcsCredentialFileName"]
        return cls.model_validate(merged)


def _json_key(data: Mapping[str, str], key: str) -> dict[str, Any]:
    text = data.get(key)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{CONFIGMAP_NAME}: key {key!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{CONFIGMAP_NAME}: key {key!r} must be a JSON object")
    return value


def parse_local_model_config(data: Mapping[str, str] | None) -> LocalModelConfig:
    """Parse the ConfigMap's data. A missing `localModel` key is an error, as in KServe (C1)."""
    if not data or "localModel" not in data:
        raise ConfigError(f"{CONFIGMAP_NAME} has no localModel key")
    try:
        return LocalModelConfig.model_validate(_json_key(data, "localModel"))
    except ValidationError as exc:
        raise ConfigError(f"{CONFIGMAP_NAME}: localModel is invalid: {exc}") from exc


def parse_credentials_config(data: Mapping[str, str] | None) -> CredentialsConfig:
    try:
        return CredentialsConfig.from_raw(_json_key(data or {}, "credentials"))
    except ValidationError as exc:
        raise ConfigError(f"{CONFIGMAP_NAME}: credentials is invalid: {exc}") from exc
