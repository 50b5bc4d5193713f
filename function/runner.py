"""One bootstrap run, wired from its parts (schema source, validation, engine), for the CloudEvent
handler and the CLI; the clients are made on first use and kept for a warm instance."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.cloud import bigquery

from .bigquery_adapter import BigQueryAdapter, make_client
from .config import Settings
from .engine import Engine, Prefetch
from .errors import RefusedError
from .manifest import MANIFEST_NAME
from .model import BIGQUERY_NAME, DeclaredState
from .request import BootstrapRequest
from .results import EnsureResult
from .schema_files import load_declared_state
from .sources import Listed, Snapshot, Superseded, parse_gcs_uri, read_prefix, read_source, read_upload

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

    emulator = settings.emulator("STORAGE_EMULATOR_HOST")
    if emulator:  # as for BigQuery: the settings' emulator, with no credentials to look for
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=settings.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": emulator},
        )
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
    dataset's description and labels are left to the manifest's own upload).

    From a bucket, the BigQuery reads go out while the prefix is listed (for the tables the last
    run declared, or the uploaded one) and while the files are downloaded (for the listed ones),
    and a warm instance downloads only what changed since it last read the prefix."""
    dataset_updates = upload is None or upload[0] == MANIFEST_NAME
    if not settings.schema_source.startswith("gs://"):
        declared = load_declared(settings)
        return Converged(run(request, settings, declared, dataset_updates=dataset_updates), declared.digest)
    adapter = bigquery_adapter(settings)
    with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="prefetch") as pool:
        # The tables to read while the prefix is listed: the uploaded one, or those it held.
        one = upload is not None and upload[0] != MANIFEST_NAME
        guess = (upload[0].removesuffix(".json"),) if one else _HELD.tables(settings.schema_source)  # type: ignore[index]
        prefetched = Prefetch(adapter, _selected(request, guess), pool)

        def read_listed(names: Iterable[str]) -> None:
            """The listed tables not read yet are read while their files download."""
            tables = (n.removesuffix(".json") for n in names if n != MANIFEST_NAME)
            for name in _selected(request, (t for t in tables if BIGQUERY_NAME.fullmatch(t))):
                if name not in prefetched.tables:
                    prefetched.tables[name] = pool.submit(adapter.get_table, name)

        declared = _HELD.declared(settings, upload, read_listed)
        if isinstance(declared, Superseded):
            return declared
        missing = [t for t in _selected(request, declared.tables) if t not in prefetched.tables]
        prefetched.tables.update((name, pool.submit(adapter.get_table, name)) for name in missing)
        engine = Engine(declared, settings, adapter)
        result = engine.ensure(request, dataset_updates=dataset_updates, prefetched=prefetched)
    return Converged(result, declared.digest)


class _Held:
    """What a warm instance holds of its schema prefix: the files at the generations it last
    read them, and the declared state validated from exactly those (never kept by time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._declared: dict[tuple[str, tuple[tuple[str, int], ...], bool], DeclaredState] = {}

    def tables(self, source: str) -> tuple[str, ...]:
        with self._lock:
            held = self._snapshots.get(source)
        names = (n.removesuffix(".json") for n, _ in held.generations) if held else ()
        return tuple(n for n in names if n != MANIFEST_NAME)

    def declared(
        self, settings: Settings, upload: tuple[str, int] | None, listed: Listed
    ) -> DeclaredState | Superseded:
        source = settings.schema_source
        name, prefix = parse_gcs_uri(source)
        with self._lock:
            held = self._snapshots.get(source)
        if upload is None:
            snapshot: Snapshot | Superseded = read_prefix(
                bucket(settings, name), prefix, held=held, listed=listed
            )
        else:
            snapshot = read_upload(bucket(settings, name), prefix, *upload, held=held, listed=listed)
        if isinstance(snapshot, Superseded):
            return snapshot
        complete = upload is None  # an upload's bucket may still be filling (sync sends the manifest first)
        key = (source, snapshot.generations, complete)
        with self._lock:
            self._snapshots[source] = snapshot
            known = self._declared.get(key)
        if known is None:
            known = load_declared_state(snapshot.files, complete=complete, source=source)
            with self._lock:
                self._declared = {k: v for k, v in self._declared.items() if k[0] != source or k[1] == key[1]}
                self._declared[key] = known
        return known


_HELD = _Held()


def _selected(request: BootstrapRequest, tables: Iterable[str]) -> list[str]:
    return [t for t in tables if request.tables is None or t in request.tables]


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
