"""inferenceservice-config parsing: KServe's keys, defaults and error cases."""

import pytest

from localmodel.kube.config import ConfigError, parse_credentials_config, parse_local_model_config


def test_defaults_are_kserves() -> None:
    cfg = parse_local_model_config({"localModel": "{}"})
    assert cfg.enabled is False
    assert cfg.job_namespace == "kserve-localmodel-jobs"
    assert cfg.fs_group == 1000
    assert cfg.job_ttl_seconds_after_finished == 3600
    assert cfg.reconciliation_frequency_seconds == 60
    assert cfg.disable_volume_management is False


def test_reads_kserve_spelling() -> None:
    cfg = parse_local_model_config(
        {"localModel": '{"enabled": true, "reconcilationFrequencyInSecs": 7, "jobNamespace": "j"}'}
    )
    assert (cfg.enabled, cfg.reconciliation_frequency_seconds, cfg.job_namespace) == (True, 7, "j")


@pytest.mark.parametrize("data", [None, {}, {"localModel": "{not json"}, {"localModel": "[1]"},
                                  {"localModel": '{"fsGroup": "x"}'}])
def test_missing_or_bad_config_is_an_error(data: dict[str, str] | None) -> None:
    with pytest.raises(ConfigError):
        parse_local_model_config(data)


def test_credentials_config() -> None:
    cfg = parse_credentials_config(
        {"credentials": '{"storageSpecSecretName": "sc", "gcs": {"gcsCredentialFileName": "g.json"}}'}
    )
    assert cfg.storage_spec_secret_name == "sc"
    assert cfg.gcs_credential_file_name == "g.json"
    assert parse_credentials_config(None).storage_spec_secret_name == "storage-config"
