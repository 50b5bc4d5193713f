"""Fixtures of the deploy script tests, and the summary line for a skipped shellcheck."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_harness import Harness, Run


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


@pytest.fixture(scope="session")
def first_deploy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Harness, Run]:
    """One first run of deploy.sh on an empty project, shared by the tests that only read it."""
    harness = Harness(tmp_path_factory.mktemp("first-deploy"))
    run = harness.deploy()
    assert run.rc == 0, f"exit {run.rc}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return harness, run


@pytest.fixture
def deployed(tmp_path: Path, first_deploy: tuple[Harness, Run]) -> Harness:
    """A fresh harness whose project already holds what that first run made (the same code and
    settings, so deploy.sh finds everything up to date)."""
    harness = Harness(tmp_path)
    harness.write_state(first_deploy[0].read_state())
    return harness


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say plainly when the shell scripts were not checked: `make test` runs pytest -q, which
    would otherwise only count the skip."""
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if "shellcheck" in reason:
            terminalreporter.write_line(
                "NOTE: shellcheck is not installed, so the shell scripts were NOT checked. "
                "Install it (Debian/Ubuntu: apt-get install shellcheck; macOS: brew install "
                "shellcheck) and run make test again. CI always runs it.",
                yellow=True,
                bold=True,
            )
            return
