"""Forced recreations that keep the rows (the request's "rows": "keep", its default), against
local-bigquery: what no DDL changes in place (the partitioning, NULLABLE to REQUIRED, a
narrowing) is made by copying the rows into a new table and swapping it in. Each change is read
back from the table's metadata and the rows compared before and after; a row that cannot be
carried fails the migration with the table untouched; a delivery stopped at any step is resumed
by the next one, never losing or duplicating a row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.cloud import bigquery, storage

from deploy.local.stack import Stack
from function.errors import TransientError
from function.results import EnsureResult
from tests.conftest import PROJECT, bundled_files
from tests.integration.test_destructive import deliver, drops, forced, settings_for
from tests.integration.test_engine import apply, edited, manifest_edited
from tests.integration.test_evolution import TABLE, column, table_rows, with_rows
from tests.support.proxy import FaultPlan, Proxy

pytestmark = pytest.mark.emulators


def migrating() -> dict[str, bytes]:
    """TABLE partitioned by month instead of day, clustered on tenant_id alone, `enforcement`
    REQUIRED (every row has one) and `quota_limit` a STRING: nothing BigQuery changes in place."""
    files = manifest_edited(
        bundled_files(),
        lambda m: m["tables"][TABLE].update(
            time_partitioning={"type": "MONTH", "field": "usage_date"}, clustering=["tenant_id"]
        ),
    )
    files = edited(files, TABLE, column("enforcement", "STRING", mode="REQUIRED"))
    return edited(files, TABLE, column("quota_limit", "STRING"))


def leftovers(client: bigquery.Client, dataset: str) -> list[str]:
    """Tables of the dataset that are not declared (a temporary table left behind)."""
    return sorted(t.table_id for t in client.list_tables(dataset) if t.table_id.startswith(f"{TABLE}__"))


def assert_migrated(client: bigquery.Client, dataset: str, before: dict[str, dict[str, Any]]) -> None:
    """TABLE holds exactly the rows it held, each carried into the declared types, under the
    declared partitioning and clustering, and nothing else is left."""
    table = client.get_table(f"{dataset}.{TABLE}")
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("MONTH", "usage_date")
    assert table.clustering_fields == ["tenant_id"]
    schema = {f.name: f for f in table.schema}
    assert schema["enforcement"].mode == "REQUIRED" and schema["quota_limit"].field_type == "STRING"
    ids = Counter(
        r["tenant_id"] for r in client.query(f"SELECT tenant_id FROM `{PROJECT}.{dataset}.{TABLE}`")
    )
    assert ids == Counter(before.keys())  # every row once: none lost, none duplicated
    after = table_rows(client, dataset)
    assert {k: v["quota_limit"] for k, v in after.items()} == {
        k: str(v["quota_limit"]) for k, v in before.items()
    }
    assert {k: v["enforcement"] for k, v in after.items()} == {k: v["enforcement"] for k, v in before.items()}
    assert leftovers(client, dataset) == []


@pytest.fixture
def client(bigquery_stack: Stack) -> bigquery.Client:
    return bigquery_stack.bigquery_client()


@pytest.fixture
def gcs(storage_stack: Stack) -> Iterator[storage.Client]:
    client = storage_stack.storage_client()
    yield client
    client.close()


def test_a_partitioning_change_keeps_every_row(bigquery_proxy, dataset_name, storage_stack, gcs, client):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    with_rows(settings, client, bundled_files())
    before = table_rows(client, dataset_name)
    request = forced(dataset_name, tables=[TABLE])

    planned = apply(
        settings,
        migrating(),
        request_id=request.request_id,
        tables=[TABLE],
        force_recreate_tables=True,
        confirm=dataset_name,
        dry_run=True,
    )
    assert [t.action for t in planned.tables] == ["recreated"]
    check, insert, swap = planned.tables[0].statements
    assert check.startswith("SELECT COUNT(*) AS total, COUNTIF(") and insert.startswith("INSERT INTO `")
    assert swap.endswith(f"RENAME TO `{TABLE}`")
    assert (
        client.get_table(f"{dataset_name}.{TABLE}").time_partitioning.type_ == "DAY"
    )  # a plan writes nothing

    result = deliver(settings, gcs, request, files=migrating())

    assert isinstance(result, EnsureResult) and result.status == "succeeded", result
    [table] = result.tables
    assert table.action == "recreated" and table.statements == planned.tables[0].statements
    assert f"{len(before)} row(s) migrated" in table.changes
    assert "column enforcement NULLABLE -> REQUIRED (every row checked first)" in table.changes
    assert_migrated(client, dataset_name, before)
    [backup] = result.backups
    assert backup["rows"] == len(before)
    assert drops(bigquery_proxy) == {TABLE: 1}


def test_a_row_that_cannot_be_carried_fails_the_migration_and_changes_nothing(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    with_rows(settings, client, bundled_files())  # `unit` is NULL in every row
    before = table_rows(client, dataset_name)
    metadata = client.get_table(f"{dataset_name}.{TABLE}").to_api_repr()
    bigquery_proxy.reset()

    result = deliver(
        settings,
        gcs,
        forced(dataset_name, tables=[TABLE]),
        files=edited(migrating(), TABLE, column("unit", "STRING", mode="REQUIRED")),
    )

    assert isinstance(result, EnsureResult) and result.status == "failed"
    [table] = result.tables
    assert table.action == "failed"
    assert f"column unit: {len(before)} row(s) are NULL but the column becomes REQUIRED" in (
        table.error or ""
    )
    assert "Nothing was changed" in (table.error or "")
    assert client.get_table(f"{dataset_name}.{TABLE}").to_api_repr() == metadata
    assert table_rows(client, dataset_name) == before
    assert result.backups == [] and drops(bigquery_proxy) == {} and leftovers(client, dataset_name) == []


def test_a_migration_losing_undeclared_columns_needs_drop_columns(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    with_rows(settings, client, bundled_files())
    without = edited(
        migrating(), TABLE, lambda schema: schema.remove(next(f for f in schema if f["name"] == "unit"))
    )

    refused = deliver(settings, gcs, forced(dataset_name, tables=[TABLE]), files=without)

    assert isinstance(refused, EnsureResult) and [t.action for t in refused.tables] == ["blocked"]
    assert "column(s) unit no longer declared" in (refused.tables[0].error or "")
    assert '"rows": "discard"' in (refused.tables[0].error or "")
    assert client.get_table(f"{dataset_name}.{TABLE}").time_partitioning.type_ == "DAY"

    result = deliver(settings, gcs, forced(dataset_name, tables=[TABLE], drop_columns=True), files=without)

    assert isinstance(result, EnsureResult) and result.status == "succeeded"
    assert "unit" not in {f.name for f in client.get_table(f"{dataset_name}.{TABLE}").schema}


def _stop_at_the_temporary_tables_creation(proxy: Proxy, client: bigquery.Client, dataset: str) -> None:
    proxy.faults = FaultPlan(probability=1.0, method="POST", path_regex=rf"/datasets/{dataset}/tables(\?|$)")


def _stop_at_the_drop(proxy: Proxy, client: bigquery.Client, dataset: str) -> None:
    proxy.faults = FaultPlan(probability=1.0, method="DELETE", path_regex=rf"/tables/{TABLE}(\?|$)")


def _stop_between_the_drop_and_the_swap(proxy: Proxy, client: bigquery.Client, dataset: str) -> None:
    def jobs_fail_from_now() -> None:
        proxy.faults = FaultPlan(probability=1.0, method="POST", path_regex=r"/jobs(\?|$)")

    proxy.before_next(jobs_fail_from_now, method="DELETE", path_regex=rf"/tables/{TABLE}(\?|$)")


@pytest.mark.parametrize(
    "stop",
    [_stop_at_the_temporary_tables_creation, _stop_at_the_drop, _stop_between_the_drop_and_the_swap],
    ids=["at the copy's creation", "at the drop", "between the drop and the swap"],
)
def test_a_migration_stopped_at_any_step_is_finished_by_the_next_delivery(
    stop: Callable[[Proxy, bigquery.Client, str], None],
    bigquery_proxy,
    dataset_name,
    storage_stack,
    gcs,
    client,
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    with_rows(settings, client, bundled_files())
    before = table_rows(client, dataset_name)
    request = forced(dataset_name, tables=[TABLE])
    stop(bigquery_proxy, client, dataset_name)

    with pytest.raises(TransientError):
        deliver(settings, gcs, request, files=migrating())
    bigquery_proxy.faults = None

    result = deliver(settings, gcs, request, files=migrating())  # the redelivery takes it over

    assert isinstance(result, EnsureResult) and result.status == "succeeded", result
    assert [t.action for t in result.tables] == ["recreated"]
    assert_migrated(client, dataset_name, before)
    assert drops(bigquery_proxy).get(TABLE) == 1
