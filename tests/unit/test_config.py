"""Settings.from_env: the contract's defaults, and a ConfigError naming the variable for each
mistake in the deployment's environment."""

from __future__ import annotations

import pytest

from function.config import BUNDLED_SCHEMAS, ConfigError, Settings
from function.errors import DeploymentError, PermanentError

PROJECT = {"GOOGLE_CLOUD_PROJECT": "local-project"}


def test_defaults() -> None:
    s = Settings.from_env(PROJECT)
    assert s == Settings(
        project="local-project",
        dataset="tenants",
        location="US",
        schema_source=str(BUNDLED_SCHEMAS),
        completion_topic="bootstrap-completed",
        allow_destructive=False,
        concurrency=32,
        retry_deadline=60.0,
        max_event_age=3600.0,
        state_bucket=None,
        backup_dataset="",
        backup_ttl_days=7.0,
        timeout=540.0,
        emulators=(),
    )
    assert s.backups == "tenants_backups"
    assert s.emulator("BIGQUERY_EMULATOR_HOST") is None
    assert (BUNDLED_SCHEMAS / "bootstrap.yaml").is_file()


def test_every_variable_is_read() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "my-project-123",
        "BOOTSTRAP_DATASET": "registry",
        "BOOTSTRAP_LOCATION": "EU",
        "SCHEMA_SOURCE": "gs://bucket/schemas/",
        "COMPLETION_TOPIC": "done",
        "ALLOW_DESTRUCTIVE": " Yes ",
        "BOOTSTRAP_CONCURRENCY": "16",
        "BOOTSTRAP_RETRY_DEADLINE": "2.5",
        "BOOTSTRAP_MAX_EVENT_AGE": "600",
        "BOOTSTRAP_STATE_BUCKET": "ledger",
        "BOOTSTRAP_BACKUP_DATASET": "registry_bak",
        "BOOTSTRAP_BACKUP_TTL_DAYS": "1",
        "BOOTSTRAP_TIMEOUT": "300s",
        "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050",
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
        "STORAGE_EMULATOR_HOST": "",
    }
    s = Settings.from_env(env)
    assert (s.project, s.dataset, s.location, s.schema_source) == (
        "my-project-123",
        "registry",
        "EU",
        "gs://bucket/schemas/",
    )
    assert (s.completion_topic, s.allow_destructive, s.concurrency) == ("done", True, 16)
    assert (s.retry_deadline, s.max_event_age, s.state_bucket) == (2.5, 600.0, "ledger")
    assert (s.backups, s.backup_ttl_days, s.timeout) == ("registry_bak", 1.0, 300.0)
    assert s.emulators == (
        ("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:9050"),
        ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
    )
    assert s.emulator("BIGQUERY_EMULATOR_HOST") == "http://127.0.0.1:9050"
    assert s.emulator("STORAGE_EMULATOR_HOST") is None


def test_gcp_project_is_the_fallback() -> None:
    assert Settings.from_env({"GCP_PROJECT": "legacy-project"}).project == "legacy-project"
    both = {"GCP_PROJECT": "legacy-project", "GOOGLE_CLOUD_PROJECT": "new-project"}
    assert Settings.from_env(both).project == "new-project"


def test_overrides_win_over_the_environment_and_none_means_not_given() -> None:
    env = {**PROJECT, "BOOTSTRAP_DATASET": "from_env"}
    s = Settings.from_env(env, dataset="from_flag", location=None, allow_destructive=True)
    assert (s.dataset, s.location, s.allow_destructive) == ("from_flag", "US", True)


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="BOOTSTRAP_DATASET='bad-name'"):
        Settings.from_env(PROJECT, dataset="bad-name")


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on"])
def test_allow_destructive_true(value: str) -> None:
    assert Settings.from_env({**PROJECT, "ALLOW_DESTRUCTIVE": value}).allow_destructive is True


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off"])
def test_allow_destructive_false(value: str) -> None:
    assert Settings.from_env({**PROJECT, "ALLOW_DESTRUCTIVE": value}).allow_destructive is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {}, "GOOGLE_CLOUD_PROJECT (or GCP_PROJECT) is not set: name the project", id="no project"
        ),
        pytest.param(
            {"GOOGLE_CLOUD_PROJECT": ""},
            "GOOGLE_CLOUD_PROJECT (or GCP_PROJECT) is not set",
            id="empty project",
        ),
        pytest.param(
            {"GOOGLE_CLOUD_PROJECT": "My Project"},
            "GOOGLE_CLOUD_PROJECT='My Project' is not a valid project id",
            id="invalid project",
        ),
        pytest.param(
            {**PROJECT, "ALLOW_DESTRUCTIVE": "maybe"},
            "ALLOW_DESTRUCTIVE='maybe': use true or false",
            id="ALLOW_DESTRUCTIVE maybe",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_CONCURRENCY": "many"},
            "BOOTSTRAP_CONCURRENCY='many' is not a whole number",
            id="concurrency not a number",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_CONCURRENCY": "2.5"},
            "BOOTSTRAP_CONCURRENCY='2.5' is not a whole number",
            id="concurrency a fraction",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_CONCURRENCY": "0"},
            "BOOTSTRAP_CONCURRENCY='0': must be between 1 and 64",
            id="concurrency 0",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_CONCURRENCY": "65"},
            "BOOTSTRAP_CONCURRENCY='65': must be between 1 and 64",
            id="concurrency 65",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_RETRY_DEADLINE": "soon"},
            "BOOTSTRAP_RETRY_DEADLINE='soon' is not a number",
            id="retry deadline not a number",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_RETRY_DEADLINE": "nan"},
            "BOOTSTRAP_RETRY_DEADLINE='nan': must be between 1 and 3600",
            id="retry deadline nan",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_MAX_EVENT_AGE": "0"},
            "BOOTSTRAP_MAX_EVENT_AGE='0': must be between 1 and 604800",
            id="max event age 0",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_DATASET": "my-dataset"},
            "BOOTSTRAP_DATASET='my-dataset': use 1-1024 letters, digits or underscores",
            id="dataset with a dash",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_DATASET": ""},
            "BOOTSTRAP_DATASET='': use 1-1024 letters, digits or underscores",
            id="dataset empty",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_BACKUP_DATASET": "bak.up"},
            "BOOTSTRAP_BACKUP_DATASET='bak.up'",
            id="backup dataset invalid",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_BACKUP_DATASET": "tenants"},
            "BOOTSTRAP_BACKUP_DATASET='tenants' is the dataset itself: a dataset recreation would delete its own backups",
            id="backup dataset is the dataset",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_DATASET": "registry", "BOOTSTRAP_BACKUP_DATASET": "registry"},
            "BOOTSTRAP_BACKUP_DATASET='registry' is the dataset itself",
            id="backup dataset is the configured dataset",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_DATASET": "ledger", "BOOTSTRAP_BACKUP_DATASET": "Ledger"},
            "BOOTSTRAP_BACKUP_DATASET='Ledger' is the dataset itself",
            id="backup dataset is the dataset in other case",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_TIMEOUT": "9s"},
            "BOOTSTRAP_TIMEOUT='9s': must be between 10 and 3600",
            id="timeout too short",
        ),
        pytest.param(
            {**PROJECT, "COMPLETION_TOPIC": "a b"},
            "COMPLETION_TOPIC='a b' is not a valid topic name",
            id="topic invalid",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_LOCATION": "  "},
            "BOOTSTRAP_LOCATION is empty: name a BigQuery location such as US or EU",
            id="location empty",
        ),
        pytest.param(
            {**PROJECT, "BOOTSTRAP_LOCATION": "europe west2"},
            "BOOTSTRAP_LOCATION='europe west2': use a BigQuery location such as US, EU or us-central1",
            id="location with a space",
        ),
    ],
)
def test_bad_configuration_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_config_errors_are_the_deployments_to_fix() -> None:
    """A misconfigured function raises (the event waits for the fix), it does not answer failed."""
    assert issubclass(ConfigError, DeploymentError)
    assert not issubclass(ConfigError, PermanentError)


def test_settings_are_hashable_for_the_client_cache() -> None:
    s = Settings.from_env({**PROJECT, "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050"})
    assert hash(s) == hash(Settings.from_env({**PROJECT, "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050"}))
