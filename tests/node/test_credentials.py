"""Credentials classified as KServe's CredentialBuilder does, turned into engine settings."""

import base64
import json

import pytest

from localmodel.api.types import LocalModelInfo, LocalModelStorageSpec
from localmodel.errors import CredentialsConfigError
from localmodel.kube.config import CredentialsConfig, parse_credentials_config
from localmodel.node.credentials import (
    CredentialsPlan,
    SecretData,
    classify_secret,
    from_service_account,
    from_storage_spec,
    plan_credentials,
    redact,
    s3_settings,
    without_storage_secret,
)

CONFIG = CredentialsConfig()


def entry(**kw: object) -> LocalModelInfo:
    return LocalModelInfo.model_validate({"sourceModelUri": "s3://b/m", "modelName": "m", **kw})


# --- which objects to read -------------------------------------------------------------------


def test_no_service_account_and_no_storage_means_no_credentials_as_in_kserve() -> None:
    assert plan_credentials(entry(), CONFIG) == CredentialsPlan()


def test_service_account_named_by_the_entry() -> None:
    assert plan_credentials(entry(serviceAccountName="puller"), CONFIG).service_account == "puller"


def test_storage_without_key_falls_back_to_the_default_service_account() -> None:
    plan = plan_credentials(entry(storage={"parameters": {"type": "s3"}}), CONFIG)
    assert plan.service_account == "default"
    assert plan.storage_key is None


def test_storage_key_reads_the_storage_config_secret_with_parameters() -> None:
    config = parse_credentials_config({"credentials": json.dumps({"storageSpecSecretName": "my-config"})})
    plan = plan_credentials(
        entry(serviceAccountName="ignored", storage=LocalModelStorageSpec(key="k", parameters={"region": "x"})),
        config,
    )
    assert plan == CredentialsPlan(
        storage_key="k", storage_secret_name="my-config", parameters={"region": "x"}
    )


# --- service-account secrets ---------------------------------------------------------------------


def test_s3_secret_with_kserve_annotations() -> None:
    secret = SecretData(
        "s3creds",
        {"awsAccessKeyID": "AKIA1234", "awsSecretAccessKey": "s3cr3t-value"},
        {
            "serving.kserve.io/s3-endpoint": "minio.local:9000",
            "serving.kserve.io/s3-usehttps": "0",
            "serving.kserve.io/s3-region": "eu-west-1",
            "serving.kserve.io/s3-verifyssl": "0",
        },
    )
    kind, settings, files = classify_secret(secret, CONFIG)
    assert kind == "s3"
    assert files == {}
    assert settings == {
        "AWS_ACCESS_KEY_ID": "AKIA1234",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "S3_USE_HTTPS": "0",
        "S3_ENDPOINT": "minio.local:9000",
        "AWS_ENDPOINT_URL": "http://minio.local:9000",
        "S3_VERIFY_SSL": "0",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }


@pytest.mark.parametrize(
    ("endpoint", "use_https", "host", "url"),
    [
        ("https://s3.example.com", "1", "s3.example.com", "https://s3.example.com"),
        ("HTTP://s3.example.com:80", "0", "s3.example.com:80", "HTTP://s3.example.com:80"),
        ("s3.example.com", None, "s3.example.com", "https://s3.example.com"),
    ],
)
def test_s3_endpoint_scheme_decides_https(endpoint: str, use_https: str | None, host: str, url: str) -> None:
    out = s3_settings({"serving.kserve.io/s3-endpoint": endpoint}, None, {})
    assert out.get("S3_USE_HTTPS") == use_https
    assert out["S3_ENDPOINT"] == host
    assert out["AWS_ENDPOINT_URL"] == url


def test_s3_values_come_from_annotation_then_secret_data_then_config() -> None:
    config = {"s3Region": "from-config", "s3Endpoint": "config.example:9000", "s3UseHttps": "0"}
    out = s3_settings({}, {"AWS_DEFAULT_REGION": "from-secret"}, config)
    assert out["AWS_DEFAULT_REGION"] == "from-secret"
    assert out["AWS_ENDPOINT_URL"] == "http://config.example:9000"
    out = s3_settings({"serving.kserve.io/s3-region": "from-annotation"}, {"AWS_DEFAULT_REGION": "x"}, config)
    assert out["AWS_DEFAULT_REGION"] == "from-annotation"


def test_s3_key_names_can_be_renamed_by_the_credentials_config() -> None:
    config = parse_credentials_config(
        {"credentials": json.dumps({"s3": {"s3AccessKeyIDName": "id", "s3SecretAccessKeyName": "key"}})}
    )
    kind, settings, _ = classify_secret(SecretData("c", {"id": "AKIA", "key": "secret"}), config)
    assert kind == "s3"
    assert settings["AWS_ACCESS_KEY_ID"] == "AKIA"
    assert settings["AWS_SECRET_ACCESS_KEY"] == "secret"


def test_gcs_key_file_is_content_to_write_privately() -> None:
    key = '{"type": "service_account", "private_key": "-----BEGIN"}'
    kind, settings, files = classify_secret(SecretData("g", {"gcloud-application-credentials.json": key}), CONFIG)
    assert (kind, settings) == ("gcs", {})
    assert files == {"GOOGLE_APPLICATION_CREDENTIALS": key}


def test_azure_legacy_names_are_mapped_to_current_ones() -> None:
    kind, settings, _ = classify_secret(
        SecretData("az", {"AZ_CLIENT_ID": "cid", "AZ_TENANT_ID": "tid", "AZ_CLIENT_SECRET": "csecret"}), CONFIG
    )
    assert kind == "azure"
    assert settings == {"AZURE_CLIENT_ID": "cid", "AZURE_TENANT_ID": "tid", "AZURE_CLIENT_SECRET": "csecret"}


def test_azure_storage_access_key_alone() -> None:
    kind, settings, _ = classify_secret(SecretData("az", {"AZURE_STORAGE_ACCESS_KEY": "k3y"}), CONFIG)
    assert (kind, settings) == ("azure", {"AZURE_STORAGE_ACCESS_KEY": "k3y"})


def test_https_headers_are_keyed_by_host() -> None:
    headers = '{"Authorization": "Bearer tok3n"}'
    kind, settings, _ = classify_secret(
        SecretData("h", {"https-host": "models.example.com", "headers": headers}), CONFIG
    )
    assert (kind, settings) == ("https", {"models.example.com-headers": headers})


def test_hf_and_modelscope_tokens() -> None:
    assert classify_secret(SecretData("hf", {"HF_TOKEN": "hf_abc"}), CONFIG)[:2] == ("hf", {"HF_TOKEN": "hf_abc"})
    assert classify_secret(SecretData("ms", {"MODELSCOPE_API_TOKEN": "t"}), CONFIG)[:2] == (
        "modelscope", {"MODELSCOPE_API_TOKEN": "t"})


def test_first_match_wins_within_one_secret_in_kserve_order() -> None:
    # A secret with both an S3 key and an HF token is an S3 secret, as in KServe.
    kind, settings, _ = classify_secret(SecretData("both", {"awsSecretAccessKey": "s", "HF_TOKEN": "h"}), CONFIG)
    assert kind == "s3"
    assert "HF_TOKEN" not in settings


def test_service_account_merges_its_secrets_in_order_and_skips_unknown_ones() -> None:
    creds = from_service_account(
        "puller",
        {},
        [
            SecretData("token", {"token": "kubernetes-sa-token"}),
            SecretData("hf", {"HF_TOKEN": "hf_first"}),
            SecretData("hdfs", {"HDFS_NAMENODE": "nn:8020"}),
            SecretData("hf2", {"HF_TOKEN": "hf_second"}),
        ],
        CONFIG,
    )
    assert creds.settings == {"HF_TOKEN": "hf_second"}
    assert creds.origins == ("secret/hf (hf)", "secret/hf2 (hf)")
    assert creds.ignored == ("secret/hdfs: hdfs credentials (no hdfs source)",)


def test_irsa_service_account_annotations_give_endpoint_and_region() -> None:
    creds = from_service_account(
        "irsa",
        {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r", "serving.kserve.io/s3-region": "us-east-2"},
        [],
        CONFIG,
    )
    assert creds.settings == {"AWS_DEFAULT_REGION": "us-east-2"}


# --- storage-config secret -------------------------------------------------------------------------


def spec(raw: object, parameters: dict[str, str] | None = None, uri: str = "s3://b/m"):  # type: ignore[no-untyped-def]
    text = raw if isinstance(raw, str) or raw is None else json.dumps(raw)
    return from_storage_spec(text, secret_name="storage-config", storage_key="k", parameters=parameters or {}, uri=uri)


def test_storage_spec_s3_maps_like_the_storage_initializer() -> None:
    creds = spec(
        {"type": "s3", "access_key_id": "AKIA", "secret_access_key": "sk", "endpoint_url": "http://minio:9000",
         "region": "us-south", "anonymous": "False", "bucket": "ignored-here", "verify_ssl": "0"}
    )
    assert creds.settings == {
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "sk",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_DEFAULT_REGION": "us-south",
        "S3_VERIFY_SSL": "0",
        "awsAnonymousCredential": "False",
    }
    assert creds.origins == ("storage-config[k] (s3)",)


def test_storage_spec_parameters_override_the_secret() -> None:
    creds = spec({"type": "s3", "region": "a", "access_key_id": "x"}, {"region": "b"})
    assert creds.settings["AWS_DEFAULT_REGION"] == "b"
    assert creds.settings["AWS_ACCESS_KEY_ID"] == "x"


def test_storage_spec_type_may_come_from_parameters() -> None:
    assert spec({"token": "hf_x"}, {"type": "hf"}).settings == {"HF_TOKEN": "hf_x"}


def test_storage_spec_hf_as_in_kserves_own_sample() -> None:
    assert spec({"type": "hf", "token": "hf_tok", "endpoint": "http://hub"}).settings == {
        "HF_TOKEN": "hf_tok", "HF_ENDPOINT": "http://hub"}


def test_storage_spec_gs_key_becomes_a_private_file() -> None:
    key = '{"type": "service_account"}'
    encoded = base64.b64encode(key.encode()).decode()
    assert spec({"type": "gs", "base64_service_account": encoded}).files == {"GOOGLE_APPLICATION_CREDENTIALS": key}
    assert spec({"type": "gs", "service_account_json": key}).files == {"GOOGLE_APPLICATION_CREDENTIALS": key}


def test_storage_spec_https_headers_use_the_uri_host() -> None:
    creds = spec({"type": "https", "headers": '{"X-Key": "v4lue"}'}, uri="https://models.example.com/a.bin")
    assert creds.settings == {"models.example.com-headers": '{"X-Key": "v4lue"}'}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "storage key 'k' not found in storage secret 'storage-config'"),
        ("{not json", r"storage-config\[k\] is not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"region": "x"}, "unable to determine storage type"),
        ({"type": "ftp"}, "storage type must be one of"),
        ({"type": "gs"}, "needs service_account_json or base64_service_account"),
        ({"type": "gs", "base64_service_account": "%%%"}, "not base64"),
    ],
)
def test_storage_spec_errors_say_where_without_content(raw: object, message: str) -> None:
    with pytest.raises(CredentialsConfigError, match=message) as caught:
        spec(raw)
    assert caught.value.reason == "InvalidCredentials"


def test_storage_spec_error_does_not_echo_the_secret() -> None:
    with pytest.raises(CredentialsConfigError) as caught:
        spec('{"type": "s3", "secret_access_key": "TOPSECRET"')
    assert "TOPSECRET" not in str(caught.value)


# --- secrets stay secret ---------------------------------------------------------------------------


def test_repr_shows_names_never_values() -> None:
    creds = spec({"type": "s3", "access_key_id": "AKIAVISIBLE", "secret_access_key": "SUPERSECRET"})
    text = repr(creds) + repr(SecretData("s", {"awsSecretAccessKey": "SUPERSECRET"}))
    assert "SUPERSECRET" not in text and "AKIAVISIBLE" not in text
    assert "AWS_SECRET_ACCESS_KEY" in text


def test_redact_hides_every_value_including_header_values() -> None:
    creds = from_service_account(
        "sa", {}, [SecretData("h", {"https-host": "h.example", "headers": '{"Authorization": "Bearer abc123xyz"}'})],
        CONFIG,
    )
    message = "GET https://h.example failed: 401 for header Authorization: Bearer abc123xyz"
    assert redact(message, creds.secret_values) == (
        "GET https://h.example failed: 401 for header Authorization: ***"
    )


def test_redact_replaces_longest_first() -> None:
    assert redact("key=abcdef and abcd", ["abcd", "abcdef"]) == "key=*** and ***"


# --- a missing storage-config secret: downloaded without it, as KServe's agent does ---------------

MISSING = "storage secret jobs/storage-config not found"


@pytest.mark.parametrize("uri", ["hf://org/model", "gs://bucket/m", "https://host/m.bin",
                                 "https://acct.blob.core.windows.net/c/m"])
def test_missing_storage_secret_downloads_without_credentials_and_says_so(uri: str) -> None:
    creds = without_storage_secret(uri, missing=MISSING, parameters={}, config=CONFIG)
    assert creds.settings == {} and creds.files == {}
    assert creds.missing == f"{MISSING}; downloading without credentials"


def test_missing_storage_secret_refuses_s3_when_no_endpoint_is_known() -> None:
    """The Secret may name a private endpoint: without it the bucket name would go to AWS."""
    with pytest.raises(CredentialsConfigError, match="refusing to read s3://b/m without it") as caught:
        without_storage_secret("s3://b/m", missing=MISSING, parameters={}, config=CONFIG)
    assert caught.value.reason == "InvalidCredentials"
    assert MISSING in str(caught.value)


def test_missing_storage_secret_s3_goes_to_the_clusters_configured_endpoint() -> None:
    config = parse_credentials_config({"credentials": json.dumps(
        {"s3": {"s3Endpoint": "minio.store:9000", "s3UseHttps": "0"}})})
    creds = without_storage_secret("s3://b/m", missing=MISSING, parameters={}, config=config)
    assert creds.settings["AWS_ENDPOINT_URL"] == "http://minio.store:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in creds.settings
    assert creds.missing is not None and MISSING in creds.missing


def test_missing_storage_secret_with_typed_parameters_uses_them_as_the_spec() -> None:
    creds = without_storage_secret(
        "s3://b/m", missing=MISSING, parameters={"type": "s3", "endpoint_url": "http://minio:9000"},
        config=CONFIG)
    assert creds.settings == {"AWS_ENDPOINT_URL": "http://minio:9000"}
    assert creds.missing == f"{MISSING}; downloading with storage.parameters only"


def test_missing_note_is_shown_by_repr_but_never_values() -> None:
    creds = without_storage_secret("hf://o/m", missing=MISSING, parameters={}, config=CONFIG)
    assert "downloading without credentials" in repr(creds)


def test_a_dockerconfigjson_secret_is_the_oci_registry_credential() -> None:
    from localmodel.node.credentials import OCI_AUTH_SETTING, SecretData, classify_secret
    from localmodel.sources.oci import AUTH_SETTING

    config_json = '{"auths": {"reg.example": {"auth": "dTpw"}}}'
    kind, settings, files = classify_secret(
        SecretData(name="pull", data={".dockerconfigjson": config_json}, annotations={}),
        CredentialsConfig())
    assert (kind, settings, files) == ("oci", {AUTH_SETTING: config_json}, {})
    assert OCI_AUTH_SETTING == AUTH_SETTING


def test_the_agents_insecure_registries_reach_every_download(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from localmodel.fetch.options import FetchOptions
    from localmodel.node.credentials import Credentials
    from localmodel.node.downloads import OCI_INSECURE_SETTING, Jobs
    from localmodel.node.store import ModelStore
    from localmodel.sources.oci import INSECURE_SETTING

    jobs = Jobs(ModelStore(tmp_path), max_concurrent=1, options=FetchOptions(),
                insecure_registries=("registry.lab:5000", "10.0.0.5"))
    try:
        settings, folder = jobs._materialize(Credentials(settings={"HF_TOKEN": "t"}))
    finally:
        jobs.shutdown(timeout=5)
    assert settings == {"HF_TOKEN": "t", INSECURE_SETTING: "registry.lab:5000,10.0.0.5"} and folder is None
    assert OCI_INSECURE_SETTING == INSECURE_SETTING
