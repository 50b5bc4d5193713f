"""Every shell script in the repository passes shellcheck. CI installs shellcheck (.ci/run); on a
machine without it the test is skipped and the run's summary says so plainly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_harness import Harness

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", ".venv-emulator", "venv", "node_modules", ".stack", ".bench", "__pycache__"}
SHEBANG_SHELLS = ("bash", "/sh", " sh", "dash", "ksh")


def shell_scripts() -> list[Path]:
    found = []
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if SKIP_DIRS.intersection(rel.parts) or not path.is_file():
            continue
        if path.suffix in (".sh", ".bash"):
            found.append(path)
            continue
        try:
            with path.open("rb") as fh:
                first = fh.readline(200).decode("utf-8", "replace")
        except OSError:
            continue
        if first.startswith("#!") and any(s in first for s in SHEBANG_SHELLS):
            found.append(path)
    return found


def test_the_deploy_scripts_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in shell_scripts()}
    assert {
        "deploy/deploy.sh",
        "deploy/steps.sh",
        "deploy/teardown.sh",
        "deploy/lib.sh",
        ".ci/run",
    } <= names


def test_shellcheck() -> None:
    exe = shutil.which("shellcheck")
    if not exe:
        pytest.skip("shellcheck is not installed: the shell scripts were not checked")
    scripts = [str(p.relative_to(REPO)) for p in shell_scripts()]
    done = subprocess.run(
        [exe, "--external-sources", *scripts],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_shellcheck_the_fake_gcloud_wrappers(harness: Harness) -> None:
    """The deploy tests' gcloud, bq and python: written by the harness, outside the repository."""
    exe = shutil.which("shellcheck")
    if not exe:
        pytest.skip("shellcheck is not installed: the shell scripts were not checked")
    wrappers = [str(harness.bin / prog) for prog in ("gcloud", "bq", "python")]
    done = subprocess.run([exe, *wrappers], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
