"""What `gcloud functions deploy --source=.` uploads (per .gcloudignore), and that exactly that
starts under functions-framework in a clean virtual environment built from requirements.txt."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.deploy import gcloudignore
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
GCLOUD = shutil.which("gcloud")


# ---------------------------------------------------------------------------------------------
# The upload set


def upload_set_by_gcloud(root: Path) -> set[str]:
    assert GCLOUD
    done = subprocess.run(
        [GCLOUD, "meta", "list-files-for-upload", str(root)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
    )
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def upload_set(root: Path) -> set[str]:
    """What `gcloud functions deploy --source=ROOT` uploads: gcloud's own answer where gcloud is
    installed (`gcloud meta list-files-for-upload` works offline), else the rules above."""
    return upload_set_by_gcloud(root) if GCLOUD else gcloudignore.upload_set(root)


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    shutil.copy2(REPO / ".gcloudignore", root / ".gcloudignore")


SHIPPED = [
    "main.py",
    "requirements.txt",
    "function/__init__.py",
    "function/engine.py",
    "function/sub/part.py",
    "schemas/accounts.json",
    "schemas/bootstrap.yaml",
]
KEPT_OUT = [
    ".gcloudignore-is-copied-separately",
    "requirements-dev.txt",
    "requirements-emulator.txt",
    "Makefile",
    "README.md",
    "pyproject.toml",
    ".gitignore",
    ".env",
    ".git/HEAD",
    ".ci/run",
    ".venv/bin/python",
    ".venv/lib/site.py",
    ".venv-emulator/bin/local-bigquery",
    "venv/lib/x.py",
    ".stack/ledger.json",
    ".bench/results.json",
    ".pytest_cache/v/cache",
    ".ruff_cache/0.1/x",
    "tests/unit/test_x.py",
    "tests/conftest.py",
    "deploy/deploy.sh",
    "deploy/local/stack.py",
    "function/__pycache__/engine.cpython-311.pyc",
    "function/tests/test_engine.py",
    "function/.env",
    "function/engine.pyc",
    "schemas/.DS_Store",
]


def test_rules_upload_only_what_the_function_runs(tmp_path: Path) -> None:
    _tree(tmp_path, SHIPPED + KEPT_OUT)
    assert gcloudignore.upload_set(tmp_path) == set(SHIPPED)


@pytest.mark.skipif(not GCLOUD, reason="gcloud is not installed: its own listing not compared")
def test_gcloud_agrees_with_the_rules(tmp_path: Path) -> None:
    _tree(tmp_path, SHIPPED + KEPT_OUT)
    assert upload_set_by_gcloud(tmp_path) == set(SHIPPED)


def test_repository_upload_set() -> None:
    files = upload_set(REPO)
    assert "requirements.txt" in files
    assert any(f.startswith("function/") for f in files)
    assert any(f.startswith("schemas/") for f in files)
    outside = [f for f in files if f not in ("main.py", "requirements.txt")]
    assert all(f.startswith(("function/", "schemas/")) for f in outside), outside
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or "/tests/" in f]


# ---------------------------------------------------------------------------------------------
# The upload set starts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.skipif(not (REPO / "main.py").exists(), reason="main.py does not exist yet: nothing to start")
def test_uploaded_source_starts_under_functions_framework(tmp_path: Path) -> None:
    """Copy exactly what would be uploaded, build a virtual environment from requirements.txt
    alone (as Cloud Build does), and start the function the way Cloud Run does."""
    source = tmp_path / "source"
    files = upload_set(REPO)
    assert "main.py" in files and "requirements.txt" in files, sorted(files)
    for rel in files:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, source / rel)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            "requirements.txt",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr

    port = _free_port()
    closed = "127.0.0.1:9"  # nothing listens: no client may reach anything real
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "GOOGLE_CLOUD_PROJECT": "upload-test-project",
        "BIGQUERY_EMULATOR_HOST": f"http://{closed}",
        "PUBSUB_EMULATOR_HOST": closed,
        "STORAGE_EMULATOR_HOST": f"http://{closed}",
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
        "NO_GCE_CHECK": "True",
    }
    log = tmp_path / "functions-framework.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "functions-framework"),
                "--target",
                "bootstrap",
                "--signature-type",
                "cloudevent",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=source,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            answered: list[int] = []

            def answered_or_exited() -> bool:
                if proc.poll() is not None:
                    return True
                try:
                    answered.append(_get(f"http://127.0.0.1:{port}/"))
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    return False
                return True

            wait_until(
                answered_or_exited, "functions-framework answering or exiting", timeout=60, interval=0.5
            )
            assert proc.poll() is None, f"functions-framework exited:\n{log.read_text()}"
            status = answered[0] if answered else None
            # A CloudEvent function answers a GET, with a 4xx: the server is up and the
            # target was found.
            assert status is not None and 400 <= status < 500, (status, log.read_text())
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
