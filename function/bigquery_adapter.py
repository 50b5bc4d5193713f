"""BigQuery, through the official client: read actual state, create, patch, drop.

Every call carries an explicit retry policy (transient errors and rate limits retried with
exponential backoff, bounded by the configured deadline) and a per-request timeout, so a
BigQuery that keeps failing surfaces as `TransientError` within the deadline instead of the
client's default ten minutes. Every HTTP request, retries included, first waits for a slot of
the process's rate limiter (`ratelimit`), so the engine's threads stay under BigQuery's
per-user request rates instead of collecting 403s; the retry policy stays as the safety net
for the quota that other processes of the same user spend.
"""

from __future__ import annotations

from typing import Any

import requests.adapters
import requests.exceptions
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from .config import REQUEST_TIMEOUT, Settings
from .errors import TransientError
from .model import Column, DatasetSpec, TableSpec, TimePartitioning, canonical_type, sorted_labels
from .ratelimit import RateLimitedAdapter, RateLimiter, shared_limiter

_TRANSIENT_TYPES = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    ConnectionError,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    auth_exceptions.TransportError,
)
# The reasons BigQuery gives to errors that go away on their own (403 rateLimitExceeded among them).
_TRANSIENT_REASONS = {"rateLimitExceeded", "backendError", "internalError", "badGateway"}
_RECONCILED_KEYS = {"name", "type", "mode", "description", "fields"}


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: 5xx, 429, rateLimitExceeded/backendError, lost connections."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    errors = getattr(exc, "errors", None) or []
    return any(isinstance(e, dict) and e.get("reason") in _TRANSIENT_REASONS for e in errors)


def make_retry(deadline: float) -> Retry:
    return Retry(predicate=is_transient, initial=0.25, maximum=8.0, multiplier=2.0, timeout=deadline)


def make_client(
    settings: Settings, limiter: RateLimiter | None = None, *, rate_limited: bool = True
) -> bigquery.Client:
    """The official client; against the emulator it needs explicit anonymous credentials.
    Its requests wait for `limiter` (default: the process's shared one) unless `rate_limited`
    is False (then only the retry policy deals with rate limits: the benchmark compares both)."""
    options: dict[str, Any] = {}
    credentials = None
    emulator = settings.emulator("BIGQUERY_EMULATOR_HOST")
    if emulator:
        options["client_options"] = {"api_endpoint": emulator}
        credentials = AnonymousCredentials()
    client = bigquery.Client(project=settings.project, credentials=credentials, **options)
    # One pooled connection per worker thread and one for the dataset step on the calling
    # thread, so concurrency neither queues on the pool nor opens connections it then discards.
    pool = {"pool_connections": 4, "pool_maxsize": max(10, settings.concurrency + 1)}
    if rate_limited:
        adapter = RateLimitedAdapter(limiter or shared_limiter(), **pool)
    else:
        adapter = requests.adapters.HTTPAdapter(**pool)
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)
    return client


class BigQueryAdapter:
    """The dataset's tables as `TableSpec`s, and the writes that change them."""

    def __init__(self, client: bigquery.Client, dataset: str, retry_deadline: float) -> None:
        self.client = client
        self.dataset_ref = bigquery.DatasetReference(client.project, dataset)
        self._retry = make_retry(retry_deadline)
        self.deadline = retry_deadline

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(*args, retry=self._retry, timeout=REQUEST_TIMEOUT, **kwargs)
        except gexc.RetryError as exc:
            raise TransientError(
                f"BigQuery {method} kept failing for {self.deadline:g} s: {exc.cause}"
            ) from exc
        except Exception as exc:
            if is_transient(exc):
                raise TransientError(f"BigQuery {method} failed: {exc}") from exc
            raise

    # --- dataset ----------------------------------------------------------------------------

    def get_dataset(self) -> tuple[DatasetSpec | None, bigquery.Dataset | None]:
        try:
            ds = self.call("get_dataset", self.dataset_ref)
        except gexc.NotFound:
            return None, None
        return dataset_spec(ds), ds

    def create_dataset(self, spec: DatasetSpec) -> bool:
        """Create it; False when another writer created it first (409)."""
        ds = bigquery.Dataset(self.dataset_ref)
        ds.location = spec.location
        ds.description = spec.description or None
        ds.labels = spec.label_dict
        try:
            self.call("create_dataset", ds)
        except gexc.Conflict:
            return False
        return True

    def patch_dataset(self, ds: bigquery.Dataset, patch: dict[str, Any]) -> None:
        for name, value in patch.items():
            setattr(ds, name, value)
        self.call("update_dataset", ds, list(patch))

    def delete_dataset(self) -> None:
        self.call("delete_dataset", self.dataset_ref, delete_contents=True, not_found_ok=True)

    # --- tables -----------------------------------------------------------------------------

    def get_table(self, name: str) -> tuple[TableSpec | None, bigquery.Table | None]:
        try:
            table = self.call("get_table", self.dataset_ref.table(name))
        except gexc.NotFound:
            return None, None
        return table_spec(table), table

    def create_table(self, spec: TableSpec) -> bool:
        """Create it; False when another writer created it first (409)."""
        try:
            self.call("create_table", new_table(self.dataset_ref, spec))
        except gexc.Conflict:
            return False
        return True

    def patch_table(self, table: bigquery.Table, patch: dict[str, Any]) -> None:
        """tables.patch of exactly the changed properties; the etag makes a concurrent change
        fail with 412 (PreconditionFailed) instead of being overwritten."""
        fields = []
        for name, value in patch.items():
            if name == "schema":
                table.schema = [bigquery.SchemaField.from_api_repr(c.to_api()) for c in value]
            elif name == "partition_expiration_ms":
                tp = table.time_partitioning
                table.time_partitioning = bigquery.TimePartitioning(
                    type_=tp.type_, field=tp.field, expiration_ms=value
                )
                name = "time_partitioning"
            else:
                setattr(table, name, value)
            fields.append(name)
        self.call("update_table", table, fields)

    def delete_table(self, name: str) -> None:
        self.call("delete_table", self.dataset_ref.table(name), not_found_ok=True)


# --- conversions between the API's resources and the normalised model -----------------------


def dataset_spec(ds: bigquery.Dataset) -> DatasetSpec:
    return DatasetSpec(ds.dataset_id, ds.location or "", ds.description or "", sorted_labels(ds.labels))


def table_spec(table: bigquery.Table) -> TableSpec:
    resource = table.to_api_repr()
    tp = table.time_partitioning
    partitioning = None
    if tp is not None:
        expiration = int(tp.expiration_ms) if tp.expiration_ms else None
        partitioning = TimePartitioning(tp.type_ or "DAY", tp.field, expiration)
    rpf = bool(table.require_partition_filter)
    return TableSpec(
        name=table.table_id,
        columns=tuple(column_from_api(f) for f in resource.get("schema", {}).get("fields", [])),
        description=table.description or "",
        labels=sorted_labels(table.labels),
        partitioning=partitioning,
        clustering=tuple(table.clustering_fields or ()),
        require_partition_filter=rpf,
        expires_ms=int(resource["expirationTime"]) if resource.get("expirationTime") else None,
    )


def column_from_api(resource: dict[str, Any]) -> Column:
    raw_type = resource.get("type", "STRING")
    return Column(
        name=resource["name"],
        type=canonical_type(raw_type) or raw_type.upper(),
        mode=(resource.get("mode") or "NULLABLE").upper(),
        description=resource.get("description") or "",
        fields=tuple(column_from_api(f) for f in resource.get("fields") or ()),
        extra=tuple(
            sorted((k, v) for k, v in resource.items() if k not in _RECONCILED_KEYS and v is not None)
        ),
    )


def new_table(dataset_ref: bigquery.DatasetReference, spec: TableSpec) -> bigquery.Table:
    table = bigquery.Table(
        dataset_ref.table(spec.name),
        schema=[bigquery.SchemaField.from_api_repr(c.to_api()) for c in spec.columns],
    )
    table.description = spec.description or None
    table.labels = spec.label_dict
    if spec.partitioning is not None:
        p = spec.partitioning
        table.time_partitioning = bigquery.TimePartitioning(
            type_=p.type, field=p.field, expiration_ms=p.expiration_ms
        )
    if spec.clustering:
        table.clustering_fields = list(spec.clustering)
    if spec.require_partition_filter:
        table.require_partition_filter = True
    return table
