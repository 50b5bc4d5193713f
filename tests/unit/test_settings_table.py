"""The settings table (function/config.py SETTINGS): every row is read, has its default, keeps to
its range, and every problem of an environment is reported at once."""

from __future__ import annotations

from dataclasses import fields

import pytest

from function.config import SETTINGS, ConfigError, Settings, read_settings
from function.setting_values import Number

PROJECT = {"GOOGLE_CLOUD_PROJECT": "local-project"}

# A valid text for each variable, other than its default, and the value it reads as.
SAMPLES: dict[str, tuple[str, object]] = {
    "GOOGLE_CLOUD_PROJECT": ("my-project-123", "my-project-123"),
    "BOOTSTRAP_DATASET": ("registry", "registry"),
    "BOOTSTRAP_LOCATION": ("europe-west2", "europe-west2"),
    "SCHEMA_SOURCE": ("gs://bucket/schemas/", "gs://bucket/schemas/"),
    "COMPLETION_TOPIC": ("done-events", "done-events"),
    "BOOTSTRAP_REQUESTS_TOPIC": ("asks", "asks"),
    "ALLOW_DESTRUCTIVE": ("on", True),
    "BOOTSTRAP_STATE_BUCKET": ("ledger", "ledger"),
    "BOOTSTRAP_BACKUP_DATASET": ("registry_bak", "registry_bak"),
    "BOOTSTRAP_BACKUP_TTL_DAYS": ("0.5", 0.5),
    "BOOTSTRAP_MAX_EVENT_AGE": ("600", 600.0),
    "BOOTSTRAP_RETRY_DEADLINE": ("2.5", 2.5),
    "BOOTSTRAP_CONCURRENCY": ("16", 16),
    "BOOTSTRAP_API_RATE": ("1000", 1000),
    "BOOTSTRAP_INSERT_RATE": ("0", 0),
    "BOOTSTRAP_TIMEOUT": ("300s", 300.0),
}
NUMBERS = [row for row in SETTINGS if isinstance(row.parse, Number)]


def test_the_table_has_a_row_for_every_field_of_the_settings() -> None:
    names = [row.name for row in SETTINGS]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in fields(Settings)} - {"emulators"}
    assert len({row.variable for row in SETTINGS}) == len(SETTINGS)


def test_every_row_has_a_sample_here() -> None:
    assert set(SAMPLES) == {row.variable for row in SETTINGS}


@pytest.mark.parametrize("row", SETTINGS, ids=lambda row: row.variable)
def test_every_row_is_read_from_its_variable(row) -> None:
    text, value = SAMPLES[row.variable]
    settings = Settings.from_env({**PROJECT, row.variable: text})
    assert getattr(settings, row.name) == value
    (reading,) = [r for r in read_settings({**PROJECT, row.variable: text}, {}) if r.setting is row]
    assert (reading.source, reading.text, reading.problem) == ("env", text, None)


@pytest.mark.parametrize("row", [r for r in SETTINGS if not r.required], ids=lambda row: row.variable)
def test_every_optional_row_has_its_default(row) -> None:
    assert getattr(Settings.from_env(PROJECT), row.name) == row.default
    assert getattr(Settings(project="p"), row.name) == row.default  # the dataclass agrees
    (reading,) = [r for r in read_settings(PROJECT, {}) if r.setting is row]
    assert (reading.source, reading.shown) == ("default", row.documented_default)


@pytest.mark.parametrize("row", NUMBERS, ids=lambda row: row.variable)
def test_numbers_keep_to_their_range(row) -> None:
    low, high = row.parse.low, row.parse.high
    for inside in (low, high):
        assert getattr(Settings.from_env({**PROJECT, row.variable: f"{inside:g}"}), row.name) == inside
    step = 1 if row.parse.kind is int else 0.01
    for outside in (low - step, high + step):
        text = str(outside)
        with pytest.raises(ConfigError) as info:
            Settings.from_env({**PROJECT, row.variable: text})
        assert str(info.value) == f"{row.variable}={text!r}: must be between {low:g} and {high:g}"


def test_the_function_refuses_what_deploy_sh_used_to_let_through() -> None:
    """The review's finding: each of these made every event of a deployment fail."""
    env = {
        **PROJECT,
        "BOOTSTRAP_CONCURRENCY": "65",
        "BOOTSTRAP_MAX_EVENT_AGE": "700000",
        "BOOTSTRAP_RETRY_DEADLINE": "4000",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).split("; ") == [
        "BOOTSTRAP_MAX_EVENT_AGE='700000': must be between 1 and 604800",
        "BOOTSTRAP_RETRY_DEADLINE='4000': must be between 1 and 3600",
        "BOOTSTRAP_CONCURRENCY='65': must be between 1 and 64",
    ]


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "My Project",
        "BOOTSTRAP_DATASET": "my-dataset",
        "BOOTSTRAP_LOCATION": " ",
        "COMPLETION_TOPIC": "a b",
        "ALLOW_DESTRUCTIVE": "maybe",
        "BOOTSTRAP_BACKUP_DATASET": "bak.up",
        "BOOTSTRAP_BACKUP_TTL_DAYS": "0",
        "BOOTSTRAP_MAX_EVENT_AGE": "old",
        "BOOTSTRAP_RETRY_DEADLINE": "nan",
        "BOOTSTRAP_CONCURRENCY": "2.5",
        "BOOTSTRAP_TIMEOUT": "9s",
    }
    readings = read_settings(env, {})
    refused = {r.setting.variable for r in readings if r.problem}
    assert refused == set(env)
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    problems = str(info.value).split("; ")
    assert problems == [r.problem for r in readings if r.problem]
    for problem, (variable, text) in zip(problems, env.items(), strict=True):
        # Each names its variable and, but for the blank location, the value and what is allowed.
        assert problem.startswith(variable), problem
        if text.strip():
            assert f"={text!r}" in problem, problem
    assert "must be between 0.05 and 3650" in problems[6]
    assert "use one from 1 to 604800" in problems[7]
    assert "use one from 1 to 64" in problems[9]


def test_a_check_against_another_row_waits_for_that_row_to_be_valid() -> None:
    # An invalid dataset is one problem, not also a comparison with the backup dataset.
    readings = read_settings({**PROJECT, "BOOTSTRAP_DATASET": "a-b", "BOOTSTRAP_BACKUP_DATASET": "a-b"}, {})
    assert [r.setting.variable for r in readings if r.problem] == [
        "BOOTSTRAP_DATASET",
        "BOOTSTRAP_BACKUP_DATASET",
    ]
    assert "is the dataset itself" not in " ".join(r.problem or "" for r in readings)


def test_overrides_are_read_like_the_environment_and_say_so() -> None:
    readings = {r.setting.name: r for r in read_settings(PROJECT, {"concurrency": "65", "dataset": "x"})}
    assert readings["concurrency"].source == "flag"
    assert readings["concurrency"].problem == "BOOTSTRAP_CONCURRENCY='65': must be between 1 and 64"
    assert (readings["dataset"].source, readings["dataset"].value) == ("flag --dataset", "x")
    assert Settings.from_env(PROJECT, concurrency=8, allow_destructive=True).concurrency == 8


def test_an_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="no such setting: datset"):
        Settings.from_env(PROJECT, datset="x")


def test_a_fallback_variable_is_named_as_the_source_and_in_its_problem() -> None:
    (project, *_) = read_settings({"GCP_PROJECT": "legacy-project"}, {})
    assert (project.source, project.value) == ("env GCP_PROJECT", "legacy-project")
    (project, *_) = read_settings({"GCP_PROJECT": "Legacy"}, {})
    assert project.problem and project.problem.startswith("GCP_PROJECT='Legacy' is not a valid project id")


def test_blank_is_the_default_except_for_names() -> None:
    blank = {row.variable: " " for row in SETTINGS if not row.required}
    refused = {r.setting.variable for r in read_settings({**PROJECT, **blank}, {}) if r.problem}
    assert refused == {row.variable for row in SETTINGS if row.keep_blank}
    assert refused == {
        "BOOTSTRAP_DATASET",
        "BOOTSTRAP_LOCATION",
        "COMPLETION_TOPIC",
        "BOOTSTRAP_REQUESTS_TOPIC",
    }
