"""The README's curl examples, run as the README prints them, against the local stack: each
CloudEvent reaches the function, is acknowledged, and its completion event is published."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import storage

from deploy.local.demo import seed
from deploy.local.stack import Stack, StackConfig
from tests.conftest import BUCKET, PREFIX, REPO
from tests.support.e2e import Inbox

pytestmark = pytest.mark.emulators

MARKER = "<!-- README example: curl"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(StackConfig(workdir=tmp_path_factory.mktemp("stack"))) as stack:
        seed(stack)  # as `make stack` seeds it
        yield stack


def readme_block(marker: str) -> str:
    """The fenced shell block right after `marker` in the README."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(marker) :]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, f"no shell block after {marker!r}"
    return match.group(1)


def test_the_readme_curl_examples_reach_the_function(stack: Stack, inbox: Inbox, gcs: storage.Client) -> None:
    script = readme_block(MARKER)
    env = {**os.environ, **stack.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 0, done.stderr
    request = inbox.wait("curl-request-1")
    assert request["type"] == "com.convergence.bootstrap.v1.completed", request.data
    assert request.data["trigger"]["id"] == "curl-message-1"
    generation = gcs.bucket(BUCKET).get_blob(PREFIX + "tenant_profiles.json").generation
    upload = inbox.wait(f"{BUCKET}/{PREFIX}tenant_profiles.json#{generation}")
    assert upload.data["status"] == "succeeded", upload.data
    assert [t["table"] for t in upload.data["tables"]] == ["tenant_profiles"]
    assert upload.data["trigger"]["type"] == "storage"
