"""BigQuery through the official client: the actual state, and the writes and jobs that change
it, with bounded retries and the process's rate limiter on every request (README, Errors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests.adapters
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from .config import REQUEST_TIMEOUT, Settings
from .errors import PermanentError
from .model import Column, DatasetSpec, TableSpec, TimePartitioning, canonical_type, sorted_labels
from .plan import Patch, Property
from .ratelimit import RateLimitedAdapter, RateLimiter, bigquery_rates, shared_limiter
from .retries import make_retry, translate

if TYPE_CHECKING:
    from .gate import Fence

_RECONCILED_KEYS = {"name", "type", "mode", "description", "fields"}


def make_client(settings: Settings, limiter: RateLimiter | None = None) -> bigquery.Client:
    """The official client; against the emulator it needs explicit anonymous credentials.
    Its requests wait for `limiter` (default: the process's shared one for the settings' rates;
    none when both rates are 0: then only the retry policy deals with rate limits)."""
    options: dict[str, Any] = {}
    credentials = None
    emulator = settings.emulator("BIGQUERY_EMULATOR_HOST")
    if emulator:
        options["client_options"] = {"api_endpoint": emulator}
        credentials = AnonymousCredentials()
    # The dataset's location: where its jobs run and are found again by id.
    client = bigquery.Client(
        project=settings.project, credentials=credentials, location=settings.location, **options
    )
    # One pooled connection per worker thread and one for the dataset step on the calling
    # thread, so concurrency neither queues on the pool nor opens connections it then discards.
    pool = {"pool_connections": 4, "pool_maxsize": max(10, settings.concurrency + 1)}
    rates = bigquery_rates(settings.api_rate, settings.insert_rate)
    if limiter is not None or rates:
        adapter = RateLimitedAdapter(limiter or shared_limiter(rates), **pool)
    else:  # both rates off: only the retry policy deals with rate limits
        adapter = requests.adapters.HTTPAdapter(**pool)
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)
    return client


@dataclass(frozen=True)
class DatasetObject:
    """Something a dataset holds: a table (kind TABLE) can be backed up by a copy job; views,
    materialized views, external tables, snapshots, routines and models cannot."""

    name: str
    kind: str


class BigQueryAdapter:
    """One dataset, through the official client: its state as `DatasetSpec`/`TableSpec`, and
    the writes that change it.

    The one place that sees the client's exceptions: each method returns a lost race (409 on a
    create, 412 on a patch with a stale etag) as its result, and raises only `TransientError`
    (retried past the deadline) or `PermanentError` (with BigQuery's message)."""

    def __init__(self, client: bigquery.Client, dataset: str, retry_deadline: float) -> None:
        self.client = client
        self.dataset_ref = bigquery.DatasetReference(client.project, dataset)
        self._retry = make_retry(retry_deadline)
        self.deadline = retry_deadline

    def ref(self, table: str) -> bigquery.TableReference:
        return self.dataset_ref.table(table)

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`method(*args, **kwargs)` with the retry policy and timeout; errors translated, except
        NotFound, Conflict and PreconditionFailed, which the caller turns into results."""
        try:
            return method(*args, retry=self._retry, timeout=REQUEST_TIMEOUT, **kwargs)
        except (gexc.NotFound, gexc.Conflict, gexc.PreconditionFailed):
            raise
        except Exception as exc:
            raise translate(exc, f"BigQuery {what}", self.deadline) from exc

    def _expect(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`_call` where any answer but success is an error, NotFound and conflicts included."""
        try:
            return self._call(what, method, *args, **kwargs)
        except (gexc.NotFound, gexc.Conflict, gexc.PreconditionFailed) as exc:
            raise PermanentError(f"BigQuery refused to {what}: {exc.message}") from exc

    # --- dataset ----------------------------------------------------------------------------

    def get_dataset(self) -> tuple[DatasetSpec | None, bigquery.Dataset | None]:
        try:
            ds = self._call(
                f"read dataset {self.dataset_ref.dataset_id}", self.client.get_dataset, self.dataset_ref
            )
        except gexc.NotFound:
            return None, None
        return dataset_spec(ds), ds

    def create_dataset(
        self,
        spec: DatasetSpec,
        access: list[bigquery.AccessEntry] | None = None,
        mark: dict[str, str] | None = None,
        **settings: Any,
    ) -> bool:
        """Create it; False when another writer created it first (409). `access`: the access
        entries it starts with (a recreation keeps the old dataset's grants), else BigQuery's
        defaults. `mark`: labels beyond the declared ones (a recreation's). `settings`: other
        Dataset properties (default_table_expiration_ms...)."""
        ds = bigquery.Dataset(self.dataset_ref)
        ds.location = spec.location
        ds.description = spec.description or None
        ds.labels = {**spec.label_dict, **(mark or {})}
        if access is not None:
            ds.access_entries = access
        for name, value in settings.items():
            setattr(ds, name, value)
        try:
            self._call(f"create dataset {spec.name}", self.client.create_dataset, ds)
        except gexc.Conflict:
            return False
        return True

    def patch_dataset(self, ds: bigquery.Dataset, patch: Patch) -> bool:
        """datasets.patch of exactly the changed properties (description, labels), conditioned
        on the etag read; False when the dataset changed meanwhile (412)."""
        fields = []
        for prop, value in patch.items():
            if prop not in (Property.DESCRIPTION, Property.LABELS):
                raise ValueError(f"a dataset has no {prop}")  # a bug of the plan's, not an API answer
            setattr(ds, prop.value, value)
            fields.append(prop.value)
        try:
            self._expect_race(f"update dataset {ds.dataset_id}", self.client.update_dataset, ds, fields)
        except gexc.PreconditionFailed:
            return False
        return True

    def delete_dataset(self, fence: Fence) -> None:
        """Drop the dataset and everything in it: only with a fence, checked right before."""
        fence.check()
        self._expect(
            f"delete dataset {self.dataset_ref.dataset_id}",
            self.client.delete_dataset,
            self.dataset_ref,
            delete_contents=True,
            not_found_ok=True,
        )

    def inventory(self) -> list[DatasetObject]:
        """Everything the dataset holds: tables, views and the like, routines, models."""
        name = self.dataset_ref.dataset_id
        tables = self._expect(f"list the tables of {name}", self.client.list_tables, self.dataset_ref)
        routines = self._expect(f"list the routines of {name}", self.client.list_routines, self.dataset_ref)
        models = self._expect(f"list the models of {name}", self.client.list_models, self.dataset_ref)
        return sorted(
            [DatasetObject(t.table_id, t.table_type or "TABLE") for t in tables]
            + [DatasetObject(r.routine_id, "ROUTINE") for r in routines]
            + [DatasetObject(m.model_id, "MODEL") for m in models],
            key=lambda o: (o.name, o.kind),
        )

    # --- tables -----------------------------------------------------------------------------

    def get_table(self, name: str) -> tuple[TableSpec | None, bigquery.Table | None]:
        try:
            table = self._call(f"read table {name}", self.client.get_table, self.ref(name))
        except gexc.NotFound:
            return None, None
        return table_spec(table), table

    def create_table(self, spec: TableSpec, mark: dict[str, str] | None = None) -> bool:
        """Create it; False when another writer created it first (409). `mark`: labels beyond
        the declared ones (a recreation's)."""
        table = new_table(self.dataset_ref, spec)
        table.labels = {**spec.label_dict, **(mark or {})}
        try:
            self._call(f"create table {spec.name}", self.client.create_table, table)
        except gexc.Conflict:
            return False
        return True

    def patch_table(self, table: bigquery.Table, patch: Patch) -> bool:
        """tables.patch of exactly the changed properties, conditioned on the etag read; False
        when the table changed meanwhile (412): the caller re-reads and plans again."""
        fields = [_set_table_property(table, prop, value) for prop, value in patch.items()]
        try:
            self._expect_race(f"update table {table.table_id}", self.client.update_table, table, fields)
        except gexc.PreconditionFailed:
            return False
        return True

    def delete_table(self, name: str, fence: Fence) -> None:
        """Drop a table: only with a fence, checked right before."""
        fence.check()
        self._expect(f"delete table {name}", self.client.delete_table, self.ref(name), not_found_ok=True)

    def has_rows(self, name: str) -> bool:
        """Does the table hold a row? Asked of the rows themselves (one page of one row), not of
        the metadata's row count, which lags behind streamed and DML-written rows."""
        rows = self._expect(f"read the rows of {name}", self.client.list_rows, self.ref(name), max_results=1)
        return any(True for _ in rows)

    # --- jobs -------------------------------------------------------------------------------

    def copy_table(
        self,
        source: bigquery.TableReference,
        destination: bigquery.TableReference,
        *,
        job_id: str,
        write_disposition: str,
        wait: float,
        fence: Fence | None = None,
    ) -> None:
        """Run a copy job and wait for it. A copy that may replace rows (WRITE_TRUNCATE) needs
        a fence, checked right before."""
        what = f"copy {source.table_id} to {destination.dataset_id}.{destination.table_id}"
        if write_disposition != "WRITE_EMPTY":
            if fence is None:
                raise PermanentError(f"refused to {what} over its rows without the gate's fence")
            fence.check()
        config = bigquery.CopyJobConfig(write_disposition=write_disposition)
        self._job(what, job_id, wait, self.client.copy_table, source, destination, job_config=config)

    def run_query(self, sql: str, *, job_id: str, wait: float, fence: Fence | None = None) -> list[Any]:
        """Run one statement as a query job and wait for it; its rows (none for DDL). A
        statement that loses values (a dropped column) needs a fence, checked right before."""
        if fence is not None:
            fence.check()
        return list(self._job(sql, job_id, wait, self.client.query, sql, job_retry=None))

    def _job(
        self, what: str, job_id: str, wait: float, insert: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Insert a job and wait up to `wait` seconds for its result. `job_id` makes a retried
        insert, or a redelivery, find its own job (409) instead of starting another."""
        try:
            job = self._call(what, insert, *args, job_id=job_id, **kwargs)
        except gexc.Conflict:
            job = self._expect(f"read job {job_id}", self.client.get_job, job_id)
        try:
            return job.result(timeout=wait)
        except Exception as exc:
            raise translate(exc, f"BigQuery job {job_id} ({what})", wait) from exc

    def set_table_options(self, name: str, **options: Any) -> bigquery.Table:
        """Set properties of a table this tool just made (a backup)."""
        table = self._expect(f"read table {name}", self.client.get_table, self.ref(name))
        for key, value in options.items():
            setattr(table, key, value)
        return self._expect(f"update table {name}", self.client.update_table, table, list(options))

    def _expect_race(self, what: str, method: Callable[..., Any], *args: Any) -> Any:
        """`_call` for a conditional write: PreconditionFailed stays (the caller's lost race),
        anything else but success is an error."""
        try:
            return self._call(what, method, *args)
        except (gexc.NotFound, gexc.Conflict) as exc:
            raise PermanentError(f"BigQuery refused to {what}: {exc.message}") from exc


def _set_table_property(table: bigquery.Table, prop: Property, value: Any) -> str:
    """Set one planned change on the client's Table; the API field it patches."""
    if prop is Property.COLUMNS:
        table.schema = [bigquery.SchemaField.from_api_repr(c.to_api()) for c in value]
        return "schema"
    if prop is Property.PARTITION_EXPIRATION_MS:
        tp = table.time_partitioning
        table.time_partitioning = bigquery.TimePartitioning(
            type_=tp.type_, field=tp.field, expiration_ms=value
        )
        return "time_partitioning"
    if prop is Property.CLUSTERING:
        table.clustering_fields = list(value) if value else None
        return "clustering_fields"
    attribute = {
        Property.DESCRIPTION: "description",
        Property.LABELS: "labels",
        Property.REQUIRE_PARTITION_FILTER: "require_partition_filter",
        Property.EXPIRES: "expires",
    }[prop]
    setattr(table, attribute, value)
    return attribute


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
