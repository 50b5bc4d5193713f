"""One bootstrap run, wired from its parts: read the schemas, validate, plan and apply.

The CLI and the CloudEvent handler both come through here. Clients are created on first use
and kept for the life of the process (a warm function instance reuses them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.cloud import bigquery

from .bigquery_adapter import BigQueryAdapter, make_client
from .config import Settings
from .engine import Engine, EnsureResult
from .errors import RefusedError
from .manifest import MANIFEST_NAME
from .model import DeclaredState
from .request import BootstrapRequest
from .schema_files import load_declared_state
from .sources import Superseded, parse_gcs_uri, read_source, read_upload

if TYPE_CHECKING:  # imported where used: a bootstrap from a folder needs neither
    from google.cloud import storage

    from .gate import Authorization
    from .ledger import Ledger
    from .storage_adapter import Bucket


@functools.cache
def bigquery_client(settings: Settings) -> bigquery.Client:
    return make_client(settings)


@functools.cache
def storage_client(settings: Settings) -> storage.Client:
    from google.cloud import storage

    return storage.Client(project=settings.project)


def bucket(settings: Settings, name: str) -> Bucket:
    from .storage_adapter import Bucket

    return Bucket(storage_client(settings), name, settings.retry_deadline)


def load_declared(settings: Settings) -> DeclaredState:
    """Read SCHEMA_SOURCE and validate the declared state."""
    files = read_source(settings.schema_source, lambda name: bucket(settings, name))
    return load_declared_state(files, source=settings.schema_source)


def ledger(settings: Settings) -> Ledger:
    if not settings.state_bucket:
        raise RefusedError(
            "refused: a destructive request needs the request ledger, so that redeliveries never "
            "drop anything twice; set BOOTSTRAP_STATE_BUCKET to a bucket the function can write"
        )
    from .ledger import Ledger

    return Ledger(bucket(settings, settings.state_bucket), settings)


@dataclass(frozen=True)
class Converged:
    """A run that destroys nothing, done: what it did, and the digest of what it compared."""

    result: EnsureResult
    digest: str


def converge(
    request: BootstrapRequest,
    settings: Settings,
    *,
    upload: tuple[str, int] | None = None,
) -> Converged | Superseded:
    """Read the declared state from SCHEMA_SOURCE, validate it, and ensure it: what a bootstrap
    request or a schema upload does (`upload`: the object name under the prefix and the
    generation the event names; the answer is `Superseded` when it is no longer live, and the
    dataset's description and labels are left to the manifest's own upload)."""
    if upload is None:
        declared = load_declared(settings)
    else:
        name, prefix = parse_gcs_uri(settings.schema_source)
        files = read_upload(bucket(settings, name), prefix, *upload)
        if isinstance(files, Superseded):
            return files
        declared = load_declared_state(files, complete=False)
    dataset_updates = upload is None or upload[0] == MANIFEST_NAME
    return Converged(run(request, settings, declared, dataset_updates=dataset_updates), declared.digest)


def run(
    request: BootstrapRequest,
    settings: Settings,
    declared: DeclaredState,
    *,
    authorization: Authorization | None = None,
    dataset_updates: bool = True,
) -> EnsureResult:
    return Engine(declared, settings, bigquery_adapter(settings)).ensure(
        request, authorization=authorization, dataset_updates=dataset_updates
    )


def bigquery_adapter(settings: Settings, dataset: str | None = None) -> BigQueryAdapter:
    return BigQueryAdapter(bigquery_client(settings), dataset or settings.dataset, settings.retry_deadline)
