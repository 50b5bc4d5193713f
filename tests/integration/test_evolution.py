"""Schema evolution against local-bigquery: each change read back from the table's metadata, and
the rows counted (and compared) before and after. Widening and renames are made in place from
any run; a dropped column needs the request's consent and a backup first; a change no DDL
makes stays blocked, with the table untouched."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from google.cloud import bigquery

from function import ddl
from tests.conftest import PROJECT, bundled_files
from tests.integration.test_engine import actions, apply, edited, manifest_edited, settings_for
from tests.support.rows import required_row

pytestmark = pytest.mark.emulators

TABLE = "tenant_usage_quotas"  # partitioned on usage_date, clustered on tenant_id, usage_date
ROWS = 4


@pytest.fixture
def client(bigquery_stack: Any) -> bigquery.Client:
    return bigquery_stack.bigquery_client()


def column(name: str, kind: str, **extra: Any) -> Any:
    """An edit of TABLE's schema file: `name` declared with type `kind` (and `extra` keys)."""

    def change(schema: list[dict[str, Any]]) -> None:
        field = next(f for f in schema if f["name"] == name)
        field.update(type=kind, **extra)

    return change


def removed(name: str) -> Any:
    return lambda schema: schema.remove(next(f for f in schema if f["name"] == name))


def renamed(old: str, new: str) -> Any:
    return lambda schema: next(f for f in schema if f["name"] == old).update(name=new)


def with_rows(settings: Any, client: bigquery.Client, files: dict[str, bytes]) -> list[dict[str, Any]]:
    """TABLE created from `files`, with ROWS rows streamed into it."""
    result = apply(settings, files, tables=[TABLE])
    assert actions(result) == {TABLE: "created"}, result
    ref = f"{settings.dataset}.{TABLE}"
    rows = [
        required_row(client, ref, i) | {"quota_limit": 100 + i, "enforcement": f"mode-{i}"}
        for i in range(ROWS)
    ]
    assert client.insert_rows_json(ref, rows) == []
    return rows


def table_rows(client: bigquery.Client, dataset: str, table: str = TABLE) -> dict[str, dict[str, Any]]:
    query = f"SELECT * FROM `{PROJECT}.{dataset}.{table}`"
    return {r["tenant_id"]: dict(r.items()) for r in client.query(query).result()}


def fields(client: bigquery.Client, dataset: str) -> dict[str, dict[str, Any]]:
    return {f.name: f.to_api_repr() for f in client.get_table(f"{dataset}.{TABLE}").schema}


def test_a_lossless_widening_is_made_in_place_and_keeps_every_value(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = edited(bundled_files(), TABLE, column("unit", "STRING", maxLength="8"))
    with_rows(settings, client, files)
    before = table_rows(client, dataset_name)

    widened = edited(
        edited(files, TABLE, column("unit", "STRING", maxLength="32")),
        TABLE,
        column("quota_limit", "NUMERIC"),
    )
    result = apply(settings, widened, tables=[TABLE])

    assert result.status == "succeeded" and actions(result) == {TABLE: "updated"}
    [table] = result.tables
    assert "column quota_limit type INT64 -> NUMERIC (widened in place, every value kept)" in table.changes
    assert "column unit type STRING(8) -> STRING(32) (widened in place, every value kept)" in table.changes
    now = fields(client, dataset_name)
    assert now["quota_limit"]["type"] == "NUMERIC"
    assert now["unit"]["maxLength"] == "32"
    after = table_rows(client, dataset_name)
    assert after.keys() == before.keys()
    assert {k: v["quota_limit"] for k, v in after.items()} == {
        k: Decimal(v["quota_limit"]) for k, v in before.items()
    }
    assert actions(apply(settings, widened, tables=[TABLE])) == {TABLE: "unchanged"}


def test_a_narrowing_is_blocked_and_leaves_the_table_as_it_was(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    with_rows(settings, client, files)
    before = fields(client, dataset_name)

    result = apply(settings, edited(files, TABLE, column("quota_limit", "STRING")), tables=[TABLE])

    assert actions(result) == {TABLE: "blocked"}
    assert "column quota_limit changes type INT64 -> STRING: not a widening BigQuery makes in place" in (
        result.tables[0].error or ""
    )
    assert fields(client, dataset_name) == before
    assert len(table_rows(client, dataset_name)) == ROWS


def test_a_declared_rename_keeps_the_values_and_is_a_no_op_once_done(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    with_rows(settings, client, files)
    before = table_rows(client, dataset_name)
    renaming = manifest_edited(
        edited(files, TABLE, renamed("quota_limit", "hard_limit")),
        lambda m: m["tables"][TABLE].update(renamed={"hard_limit": "quota_limit"}),
    )

    planned = apply(settings, renaming, tables=[TABLE], dry_run=True)
    assert planned.tables[0].statements == (
        f"ALTER TABLE `{PROJECT}.{dataset_name}.{TABLE}` RENAME COLUMN `quota_limit` TO `hard_limit`",
    )
    assert "quota_limit" in fields(client, dataset_name)  # a plan changes nothing

    result = apply(settings, renaming, tables=[TABLE])

    assert result.status == "succeeded" and actions(result) == {TABLE: "updated"}
    assert "rename column quota_limit -> hard_limit (its values kept)" in result.tables[0].changes
    assert result.tables[0].statements == planned.tables[0].statements
    now = fields(client, dataset_name)
    assert "hard_limit" in now and "quota_limit" not in now
    declared = {f["name"]: f for f in json.loads(files[TABLE + ".json"])}
    assert now["hard_limit"]["description"] == declared["quota_limit"]["description"]
    after = table_rows(client, dataset_name)
    assert {k: v["hard_limit"] for k, v in after.items()} == {k: v["quota_limit"] for k, v in before.items()}
    assert actions(apply(settings, renaming, tables=[TABLE])) == {TABLE: "unchanged"}


def test_a_drop_and_an_add_are_never_read_as_a_rename(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    with_rows(settings, client, files)
    before = fields(client, dataset_name)

    result = apply(settings, edited(files, TABLE, renamed("quota_limit", "hard_limit")), tables=[TABLE])

    assert actions(result) == {TABLE: "blocked"}
    error = result.tables[0].error or ""
    assert "column quota_limit is not declared" in error and "drop_columns" in error and "renamed" in error
    assert fields(client, dataset_name) == before


def test_a_column_drop_needs_consent_then_backs_up_and_keeps_every_other_value(
    bigquery_proxy, dataset_name, client
):
    settings = settings_for(bigquery_proxy, dataset_name, ALLOW_DESTRUCTIVE="true")
    files = bundled_files()
    with_rows(settings, client, files)
    before = table_rows(client, dataset_name)
    dropping = edited(files, TABLE, removed("enforcement"))

    refused = apply(settings, dropping, tables=[TABLE])
    assert actions(refused) == {TABLE: "blocked"}
    assert "enforcement" in fields(client, dataset_name)

    result = apply(settings, dropping, tables=[TABLE], drop_columns=True, confirm=dataset_name)

    assert result.status == "succeeded" and actions(result) == {TABLE: "updated"}
    assert result.tables[0].changes == (
        "drop column enforcement NULLABLE STRING (its values are lost; the table is backed up first)",
    )
    assert "enforcement" not in fields(client, dataset_name)
    after = table_rows(client, dataset_name)
    assert after == {k: {c: v for c, v in row.items() if c != "enforcement"} for k, row in before.items()}
    [backup] = result.backups
    assert backup["table"] == TABLE and backup["rows"] == ROWS
    saved = table_rows(client, f"{dataset_name}_backups", backup["backup"].split(".")[-1])
    assert {k: v["enforcement"] for k, v in saved.items()} == {k: v["enforcement"] for k, v in before.items()}


def test_a_partitioning_or_clustering_column_is_never_dropped(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name, ALLOW_DESTRUCTIVE="true")
    files = bundled_files()
    with_rows(settings, client, files)
    manifest = manifest_edited(files, lambda m: m["tables"][TABLE].update(clustering=["metric"]))

    result = apply(
        settings,
        edited(manifest, TABLE, removed("tenant_id")),
        tables=[TABLE],
        drop_columns=True,
        confirm=dataset_name,
    )

    assert actions(result) == {TABLE: "blocked"}
    assert "BigQuery does not drop a partitioning or clustering column" in (result.tables[0].error or "")
    assert "tenant_id" in fields(client, dataset_name)
    assert result.backups == []


def test_a_redelivered_statement_finds_its_job_instead_of_running_again(bigquery_proxy, dataset_name, client):
    """The rename's job insert reaches BigQuery but its answer is lost: the client sends the same
    job id again, is told it exists, and waits for that job."""
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    with_rows(settings, client, files)
    renaming = manifest_edited(
        edited(files, TABLE, renamed("quota_limit", "hard_limit")),
        lambda m: m["tables"][TABLE].update(renamed={"hard_limit": "quota_limit"}),
    )
    bigquery_proxy.fail_next(1, "drop_after", method="POST", path_regex=r"/jobs")
    bigquery_proxy.reset()

    result = apply(settings, renaming, tables=[TABLE])

    assert actions(result) == {TABLE: "updated"}
    table = f"{PROJECT}.{dataset_name}.{TABLE}"
    statement = ddl.Change(ddl.Kind.RENAME, "quota_limit", "hard_limit").sql(table)
    job_id = ddl.job_id("test-request", table, statement)
    inserts = [
        r for r in bigquery_proxy.requests() if r.method == "POST" and r.path.split("?")[0].endswith("/jobs")
    ]
    assert len(inserts) == 2  # the lost one, and the retry told 409
    assert [r.status for r in inserts] == [None, 409]
    assert client.get_job(job_id).state == "DONE"
    assert "hard_limit" in fields(client, dataset_name)
