"""deploy.sh asks the function whether it accepts the environment it would deploy (python -m
function settings --check) before any command, --dry-run included: a deployment the function
would refuse on every event never starts."""

from __future__ import annotations

import pytest
from deploy_harness import PROJECT, Harness, Run

from function.config import ConfigError, Settings


def function_refuses(**env: str) -> list[str]:
    """The function's own messages for this environment."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"GOOGLE_CLOUD_PROJECT": PROJECT, **env})
    return str(info.value).split("; ")


def refused_before_any_command(run: Run, messages: list[str]) -> None:
    assert run.rc == 2, f"exit {run.rc}\nstderr:\n{run.stderr}"
    assert [line.removeprefix("error: ") for line in run.stderr.splitlines()[: len(messages)]] == messages
    assert "the function would refuse the settings above" in run.stderr
    assert run.calls == [] and run.stdout == ""


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)], ids=["run", "dry-run"])
@pytest.mark.parametrize(
    ("flag", "value", "variable"),
    [
        ("--concurrency", "65", "BOOTSTRAP_CONCURRENCY"),
        ("--max-event-age", "700000", "BOOTSTRAP_MAX_EVENT_AGE"),
        ("--retry-deadline", "4000", "BOOTSTRAP_RETRY_DEADLINE"),
        ("--timeout", "3601s", "BOOTSTRAP_TIMEOUT"),
        ("--location", "europe west2", "BOOTSTRAP_LOCATION"),
    ],
)
def test_a_setting_the_function_refuses_stops_the_run_with_its_message(
    harness: Harness, dry_run: tuple[str, ...], flag: str, value: str, variable: str
) -> None:
    messages = function_refuses(**{variable: value})
    assert variable in messages[0] and repr(value) in messages[0]
    refused_before_any_command(harness.deploy(*dry_run, flag, value), messages)
    refused_before_any_command(harness.deploy(*dry_run, **{variable: value}), messages)


def test_every_refused_setting_is_listed_at_once(harness: Harness) -> None:
    bad = {
        "BOOTSTRAP_CONCURRENCY": "65",
        "BOOTSTRAP_MAX_EVENT_AGE": "700000",
        "BOOTSTRAP_RETRY_DEADLINE": "4000",
        "COMPLETION_TOPIC": "x",
    }
    messages = function_refuses(**bad)
    assert len(messages) == len(bad)
    run = harness.deploy(
        "--concurrency=65", "--max-event-age=700000", "--retry-deadline=4000", "--completion-topic=x"
    )
    refused_before_any_command(run, messages)


def test_the_check_sees_only_what_is_deployed(harness: Harness) -> None:
    """Variables the deployment does not pass to the function cannot stop it, whatever the shell
    holds; ALLOW_DESTRUCTIVE comes from --allow-destructive only."""
    run = harness.deploy(
        "--dry-run",
        BOOTSTRAP_BACKUP_TTL_DAYS="0",
        ALLOW_DESTRUCTIVE="maybe",
        GCP_PROJECT="Not A Project",
    )
    assert run.rc == 0, run.stderr


def test_the_limits_themselves_are_deployed(harness: Harness) -> None:
    run = harness.deploy("--concurrency", "64", "--max-event-age", "604800", "--retry-deadline", "3600")
    assert run.rc == 0, run.stderr
    env = dict(pair.split("=", 1) for pair in run.one("functions", "deploy").flag("set-env-vars").split(","))
    assert (
        env["BOOTSTRAP_CONCURRENCY"],
        env["BOOTSTRAP_MAX_EVENT_AGE"],
        env["BOOTSTRAP_RETRY_DEADLINE"],
    ) == (
        "64",
        "604800",
        "3600",
    )
