"""Fixtures shared by the suites: emulators started by the tests themselves, on free ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.stack import Stack, StackConfig
from tests.support.proxy import Proxy

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"
PROJECT = "local-project"
TABLES = sorted(p.stem for p in SCHEMAS.glob("*.json"))  # the bundled tables
BUCKET = StackConfig.schema_bucket  # the local stack's schema bucket and prefix
PREFIX = StackConfig.schema_prefix


@pytest.fixture(scope="session")
def bigquery_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The BigQuery emulator alone, for the engine's tests (one per test session; datasets
    isolate tests)."""
    config = StackConfig(
        project=PROJECT, components=frozenset({"bigquery"}), workdir=tmp_path_factory.mktemp("bq")
    )
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="session")
def storage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """fake-gcs-server alone (with the stack's schema and state buckets), for the ledger's tests."""
    config = StackConfig(
        project=PROJECT, components=frozenset({"storage"}), workdir=tmp_path_factory.mktemp("gcs")
    )
    with Stack(config) as stack:
        yield stack


@pytest.fixture
def bigquery_proxy(bigquery_stack: Stack) -> Iterator[Proxy]:
    """A recording proxy in front of the emulator: tests assert on the requests the client sent,
    and on their bodies."""
    with Proxy(bigquery_stack.env["BIGQUERY_EMULATOR_HOST"], record_bodies=True) as proxy:
        yield proxy


@pytest.fixture
def dataset_name() -> str:
    return f"tenants_{uuid.uuid4().hex[:10]}"


def bundled_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SCHEMAS.iterdir())}
