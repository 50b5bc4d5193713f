"""`python -m function settings [--check]`, as deploy/deploy.sh runs it: a process with exactly
the environment given, that lists every setting and sends nothing anywhere."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from function.config import SETTINGS

REPO = Path(__file__).resolve().parents[2]


def settings(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "function", "settings", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def listing(stdout: str) -> dict[str, tuple[str, str]]:
    """variable -> (source, value): columns two spaces or more apart."""
    rows = [re.split(r"\s{2,}", line, maxsplit=2) for line in stdout.splitlines()]
    return {variable: (source, value) for variable, source, value in rows}


def test_check_passes_a_valid_environment_and_lists_every_setting_with_its_source() -> None:
    done = settings(
        "--check",
        GOOGLE_CLOUD_PROJECT="acme-prod",
        BOOTSTRAP_TIMEOUT="540s",
        BOOTSTRAP_CONCURRENCY="64",
        PUBSUB_EMULATOR_HOST="127.0.0.1:8085",
    )
    assert (done.returncode, done.stderr) == (0, "")
    rows = listing(done.stdout)
    assert list(rows) == [row.variable for row in SETTINGS] + ["PUBSUB_EMULATOR_HOST"]
    assert rows["GOOGLE_CLOUD_PROJECT"] == ("env", "acme-prod")
    assert rows["BOOTSTRAP_TIMEOUT"] == ("env", "540")
    assert rows["BOOTSTRAP_CONCURRENCY"] == ("env", "64")
    assert rows["BOOTSTRAP_DATASET"] == ("default", "tenants")
    assert rows["BOOTSTRAP_BACKUP_DATASET"] == ("default", "<dataset>_backups")
    assert rows["PUBSUB_EMULATOR_HOST"] == ("env", "127.0.0.1:8085")


def test_check_fails_with_every_problem_naming_variable_value_and_range() -> None:
    done = settings(
        "--check",
        GOOGLE_CLOUD_PROJECT="acme-prod",
        BOOTSTRAP_CONCURRENCY="65",
        BOOTSTRAP_MAX_EVENT_AGE="700000",
        BOOTSTRAP_RETRY_DEADLINE="4000",
        BOOTSTRAP_DATASET="tenants",
        BOOTSTRAP_BACKUP_DATASET="TENANTS",
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: BOOTSTRAP_BACKUP_DATASET='TENANTS' is the dataset itself: a dataset recreation would "
        "delete its own backups; name another dataset (compared without case)",
        "error: BOOTSTRAP_MAX_EVENT_AGE='700000': must be between 1 and 604800",
        "error: BOOTSTRAP_RETRY_DEADLINE='4000': must be between 1 and 3600",
        "error: BOOTSTRAP_CONCURRENCY='65': must be between 1 and 64",
    ]
    # The listing still shows what was given.
    assert listing(done.stdout)["BOOTSTRAP_CONCURRENCY"] == ("env", "'65'")


def test_a_missing_project_is_a_problem_too() -> None:
    done = settings("--check")
    assert done.returncode == 1
    assert "error: GOOGLE_CLOUD_PROJECT (or GCP_PROJECT) is not set" in done.stderr


def test_flags_override_the_environment_and_are_checked_too() -> None:
    done = settings(
        "--check", "--dataset", "bad-name", "--project", "flagged", GOOGLE_CLOUD_PROJECT="acme-prod"
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: BOOTSTRAP_DATASET='bad-name': use 1-1024 letters, digits or underscores"
    ]
    rows = listing(done.stdout)
    assert rows["GOOGLE_CLOUD_PROJECT"] == ("flag --project", "flagged")


def test_without_check_the_problems_are_shown_and_the_exit_is_0() -> None:
    done = settings(GOOGLE_CLOUD_PROJECT="acme-prod", BOOTSTRAP_CONCURRENCY="0")
    assert done.returncode == 0
    assert "error: BOOTSTRAP_CONCURRENCY='0': must be between 1 and 64" in done.stderr


def test_nothing_is_sent_to_any_api() -> None:
    """Every client would go to this listener (the emulator variables win over Google's
    endpoints); it sees no connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        done = settings(
            "--check",
            GOOGLE_CLOUD_PROJECT="acme-prod",
            SCHEMA_SOURCE="gs://acme-schemas/schemas/",
            BOOTSTRAP_STATE_BUCKET="acme-state",
            BIGQUERY_EMULATOR_HOST=f"http://{host}",
            PUBSUB_EMULATOR_HOST=host,
            STORAGE_EMULATOR_HOST=f"http://{host}",
        )
        assert (done.returncode, done.stderr) == (0, "")
        try:
            listener.accept()
        except BlockingIOError:
            pass
        else:
            raise AssertionError("settings --check connected to an API")
