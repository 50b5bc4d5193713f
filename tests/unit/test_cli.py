"""The CLI as an operator meets it: help that says what each command does, exits with and how to
call it; only the flags that apply; and clean errors, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from function.cli import COMMAND_SETTINGS, EXAMPLES, EXIT_CODES
from tests.conftest import REPO


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BOOTSTRAP_", "GOOGLE_CLOUD_")) and not k.endswith("_EMULATOR_HOST")
    }
    return subprocess.run(
        [sys.executable, "-m", "function", *args],
        cwd=REPO,
        env={**clean, "GOOGLE_CLOUD_PROJECT": "local-project", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", sorted(EXIT_CODES))
def test_each_commands_help_gives_its_exit_codes_and_examples(command: str) -> None:
    help_text = run(command, "--help").stdout

    assert EXIT_CODES[command] in help_text
    for example in EXAMPLES[command]:
        assert f"python -m function {example}" in help_text


def test_publish_help_describes_the_force_flags() -> None:
    help_text = run("publish", "--help").stdout
    assert "--force-recreate-tables" in help_text and "drop and recreate the selected tables" in help_text
    assert "--confirm DATASET" in help_text and "the dataset id: required with a force flag" in help_text


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("backups", "--tables"),
        ("publish", "--schema-source"),
        ("events", "--dataset"),
        ("sync", "--schema-source"),
    ],
)
def test_a_command_refuses_flags_that_do_not_apply_to_it(command: str, flag: str) -> None:
    refused = run(command, flag, "x")
    assert refused.returncode == 2
    assert f"unrecognized arguments: {flag}" in refused.stderr


def test_every_command_takes_only_settings_flags_it_uses() -> None:
    assert set(COMMAND_SETTINGS) == set(EXIT_CODES)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plan_against_a_stopped_stack_says_so_without_a_traceback() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    stopped = run(
        "plan",
        SCHEMA_SOURCE="gs://tenant-schemas/schemas/",
        STORAGE_EMULATOR_HOST=url,
        BIGQUERY_EMULATOR_HOST=url,
        BOOTSTRAP_RETRY_DEADLINE="1",
    )

    assert stopped.returncode == 1
    assert stopped.stderr.startswith("error (transient, try again) (the emulators named by *_EMULATOR_HOST")
    assert "`make stack`" in stopped.stderr
    assert "Traceback" not in stopped.stderr


def test_uploading_a_missing_file_is_a_plain_error() -> None:
    missing = run("upload", "schemas/no_such_table.json", "--to", "gs://tenant-schemas/schemas/")

    assert missing.returncode == 1
    assert missing.stderr == "error: schemas/no_such_table.json: no such file\n"
