"""Fixtures the end-to-end modules share. Each module defines its own `stack` (its own
emulators and function configuration); these build on whichever `stack` the module has."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.cloud import storage

from deploy.local.stack import Stack
from tests.support.e2e import Inbox, function_behind_proxies, pushes_through_proxy
from tests.support.proxy import Proxy


@pytest.fixture(scope="module")
def inbox(stack: Stack) -> Inbox:
    """Every completion event published while the module runs."""
    return Inbox(stack)


@pytest.fixture(scope="module")
def gcs(stack: Stack) -> storage.Client:
    return stack.storage_client()


@pytest.fixture(scope="module")
def proxies(stack: Stack) -> Iterator[dict[str, Proxy]]:
    """The function talks to BigQuery and Cloud Storage through fault-injecting proxies."""
    with function_behind_proxies(stack, "bigquery", "storage") as proxies:
        yield proxies


@pytest.fixture(scope="module")
def tap(stack: Stack) -> Iterator[Proxy]:
    """Pub/Sub pushes reach the function through a proxy that records each HTTP answer."""
    with pushes_through_proxy(stack) as proxy:
        yield proxy
