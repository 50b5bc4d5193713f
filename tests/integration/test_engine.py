"""The ensure engine against bqemulator: what a user sees in BigQuery after each apply, and the
requests the official client actually sent (counted by a proxy in front of the emulator)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from google.cloud import bigquery

from function import gate
from function.bigquery_adapter import BigQueryAdapter, make_client
from function.config import Settings
from function.engine import Engine, EnsureResult
from function.errors import RefusedError
from function.model import canonical_type
from function.request import request_from_fields
from function.schema_files import load_declared_state
from tests.conftest import PROJECT, bundled_files
from tests.support.proxy import Proxy
from tests.support.rows import required_row

pytestmark = pytest.mark.emulators

PARTITIONED = {
    "tenant_usage_quotas": ("usage_date", ["tenant_id", "usage_date"]),
    "scheduled_pipeline_runs": ("scheduled_time", ["tenant_id", "state", "config_id"]),
    "pipeline_execution_queue": ("scheduled_time", ["state", "priority", "tenant_id"]),
}


def settings_for(proxy: Proxy, dataset: str, **extra: Any) -> Settings:
    env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "BIGQUERY_EMULATOR_HOST": proxy.url,
        "BOOTSTRAP_RETRY_DEADLINE": "5",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return Settings.from_env(env, dataset=dataset)


def apply(settings: Settings, files: dict[str, bytes], **fields: Any) -> EnsureResult:
    """One run as the CLI makes it: a destructive request passes the gate (without a ledger)."""
    adapter = BigQueryAdapter(make_client(settings), settings.dataset, settings.retry_deadline)
    declared = load_declared_state(files)
    request = request_from_fields({"request_id": "test-request", **fields}, "test-request")
    authorization = None
    if request.destructive and not request.dry_run:
        authorization = gate.authorize(request, declared, settings, None, started=time.monotonic())
    return Engine(declared, settings, adapter).ensure(request, authorization=authorization)


def actions(result: EnsureResult) -> dict[str, str]:
    return {t.table: t.action for t in result.tables}


def normalised(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A schema as the user declares it, with BigQuery's defaults and aliases spelt one way."""
    return [
        {
            "name": f["name"],
            "type": canonical_type(f["type"]),
            "mode": f.get("mode", "NULLABLE").upper(),
            "description": f.get("description") or "",
            "fields": normalised(f.get("fields", [])),
        }
        for f in fields
    ]


def edited(files: dict[str, bytes], table: str, change: Any) -> dict[str, bytes]:
    schema = json.loads(files[table + ".json"])
    change(schema)
    return {**files, table + ".json": json.dumps(schema).encode()}


def row_count(client: bigquery.Client, dataset: str, table: str) -> int:
    rows = client.query(f"SELECT COUNT(*) AS n FROM `{PROJECT}.{dataset}.{table}`").result()
    return next(iter(rows))["n"]


@pytest.fixture
def client(bigquery_stack: Any) -> bigquery.Client:
    return bigquery_stack.bigquery_client()


def test_fresh_apply_creates_exactly_the_declared_tables(bigquery_proxy, dataset_name, client):
    files = bundled_files()
    result = apply(settings_for(bigquery_proxy, dataset_name), files)

    assert result.status == "succeeded"
    assert result.dataset_action == "created"
    assert actions(result) == {name[:-5]: "created" for name in files if name.endswith(".json")}
    dataset = client.get_dataset(dataset_name)
    assert dataset.labels == {"platform": "convergence", "component": "tenant-registry"}
    assert dataset.description
    for name in actions(result):
        table = client.get_table(f"{dataset_name}.{name}")
        declared = json.loads(files[name + ".json"])
        assert normalised([f.to_api_repr() for f in table.schema]) == normalised(declared), name
        assert table.description, name
        if name in PARTITIONED:
            field, clustering = PARTITIONED[name]
            assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", field)
            assert table.clustering_fields == clustering
        else:
            assert table.time_partitioning is None, name
            assert not table.clustering_fields, name


def test_second_apply_is_unchanged_and_sends_no_write(bigquery_proxy, dataset_name):
    settings = settings_for(bigquery_proxy, dataset_name)
    apply(settings, bundled_files())
    bigquery_proxy.reset()

    result = apply(settings, bundled_files())

    assert result.status == "succeeded"
    assert result.dataset_action == "unchanged"
    assert set(actions(result).values()) == {"unchanged"}
    assert bigquery_proxy.writes() == []
    assert len(bigquery_proxy.reads()) == 1 + len(result.tables)  # the dataset, then each table once


def test_new_nullable_columns_are_added_in_place_and_rows_survive(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    table = "tenant_pipeline_configs"
    rows = [required_row(client, f"{dataset_name}.{table}", i) for i in range(3)]
    assert client.insert_rows_json(f"{dataset_name}.{table}", rows) == []

    def add_columns(schema: list[dict[str, Any]]) -> None:
        schema.append({"name": "notes", "type": "STRING", "mode": "NULLABLE", "description": "Free text."})
        record = next(f for f in schema if f["type"] == "RECORD")
        record["fields"].append({"name": "region", "type": "STRING", "description": "Where it runs."})

    result = apply(settings, edited(files, table, add_columns), tables=[table])

    assert result.status == "succeeded"
    [outcome] = result.tables
    assert outcome.action == "updated"
    assert any("add column notes" in c for c in outcome.changes)
    assert any(c.startswith("add column ") and c.split()[2].endswith(".region") for c in outcome.changes)
    after = client.get_table(f"{dataset_name}.{table}")
    assert after.schema[-1].name == "notes"
    record = next(f for f in after.schema if f.field_type in ("RECORD", "STRUCT"))
    assert record.fields[-1].name == "region"
    assert row_count(client, dataset_name, table) == 3
    bigquery_proxy.reset()
    assert apply(settings, edited(files, table, add_columns), tables=[table]).tables[0].action == "unchanged"
    assert bigquery_proxy.writes() == []


def _remove_column(schema: list[dict[str, Any]]) -> None:
    schema.pop()


def _change_type(schema: list[dict[str, Any]]) -> None:
    column = next(f for f in schema if f["type"] == "STRING" and f["name"] != "tenant_id")
    column["type"] = "INT64"


def _require_nullable(schema: list[dict[str, Any]]) -> None:
    column = next(f for f in schema if f.get("mode", "NULLABLE") == "NULLABLE" and f["type"] != "RECORD")
    column["mode"] = "REQUIRED"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda files: edited(files, "tenant_usage_quotas", _remove_column), "cannot drop a column"),
        (lambda files: edited(files, "tenant_usage_quotas", _change_type), "changes type STRING -> INTEGER"),
        (lambda files: edited(files, "tenant_usage_quotas", _require_nullable), "NULLABLE -> REQUIRED"),
        (
            lambda files: {
                **files,
                "bootstrap.yaml": files["bootstrap.yaml"].replace(b"field: usage_date", b"field: created_at"),
            },
            "partitioning: DAY on usage_date -> DAY on created_at",
        ),
    ],
    ids=["removed-column", "type-change", "nullable-to-required", "partitioning-change"],
)
def test_changes_bigquery_cannot_make_in_place_are_blocked_and_touch_nothing(
    bigquery_proxy, dataset_name, client, change, reason
):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    table = "tenant_usage_quotas"
    rows = [required_row(client, f"{dataset_name}.{table}", i) for i in range(4)]
    assert client.insert_rows_json(f"{dataset_name}.{table}", rows) == []
    before = client.get_table(f"{dataset_name}.{table}").to_api_repr()
    rows_before = _all_rows(client, dataset_name, table)
    bigquery_proxy.reset()

    result = apply(settings, change(files), tables=[table])

    assert result.status == "failed"
    [outcome] = result.tables
    assert outcome.action == "blocked"
    assert any(reason in c for c in outcome.changes), outcome.changes
    assert "force_recreate_tables" in outcome.error
    assert bigquery_proxy.writes() == []
    assert client.get_table(f"{dataset_name}.{table}").to_api_repr() == before
    assert _all_rows(client, dataset_name, table) == rows_before


@pytest.mark.parametrize(
    ("allow", "request_fields", "message"),
    [
        ("false", {"force_recreate_tables": True, "confirm": "{dataset}"}, "ALLOW_DESTRUCTIVE is not true"),
        ("true", {"force_recreate_tables": True}, 'set "confirm"'),
        ("true", {"force_recreate_tables": True, "confirm": "other"}, 'set "confirm"'),
        ("true", {"force_recreate_dataset": True, "confirm": "tenants"}, 'set "confirm"'),
    ],
    ids=["deployment-forbids", "no-confirm", "wrong-confirm", "confirm-names-another-dataset"],
)
def test_forced_recreation_is_refused_without_all_three_consents(
    bigquery_proxy, dataset_name, client, allow, request_fields, message
):
    settings = settings_for(bigquery_proxy, dataset_name, ALLOW_DESTRUCTIVE=allow)
    apply(settings, bundled_files())
    table = "tenant_profiles"
    assert (
        client.insert_rows_json(
            f"{dataset_name}.{table}", [required_row(client, f"{dataset_name}.{table}", 1)]
        )
        == []
    )
    bigquery_proxy.reset()
    fields = {
        k: v.format(dataset=dataset_name) if isinstance(v, str) else v for k, v in request_fields.items()
    }

    with pytest.raises(RefusedError, match=message) as refused:
        apply(settings, bundled_files(), **fields)

    assert "Nothing was changed" in str(refused.value)
    assert bigquery_proxy.requests() == []  # refused before any request, reads included
    assert row_count(client, dataset_name, table) == 1


def test_forced_recreation_with_all_three_consents_recreates(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name, ALLOW_DESTRUCTIVE="true")
    apply(settings, bundled_files())
    table = "tenant_profiles"
    assert (
        client.insert_rows_json(
            f"{dataset_name}.{table}", [required_row(client, f"{dataset_name}.{table}", 1)]
        )
        == []
    )

    result = apply(
        settings, bundled_files(), tables=[table], force_recreate_tables=True, confirm=dataset_name
    )

    assert result.status == "succeeded"
    assert actions(result) == {table: "recreated"}
    assert row_count(client, dataset_name, table) == 0
    assert row_count(client, dataset_name, "tenant_api_keys") == 0  # untouched: not selected


def test_dataset_description_and_labels_are_patched_in_place(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    manifest = files["bootstrap.yaml"].replace(b"component: tenant-registry", b"component: tenant-directory")
    bigquery_proxy.reset()

    result = apply(settings, {**files, "bootstrap.yaml": manifest})

    assert result.dataset_action == "updated"
    assert result.dataset_changes == ("dataset label component: 'tenant-registry' -> 'tenant-directory'",)
    assert client.get_dataset(dataset_name).labels["component"] == "tenant-directory"
    assert [(r.method, r.path.rsplit("/", 2)[-2:]) for r in bigquery_proxy.writes()] == [
        ("PATCH", ["datasets", dataset_name])
    ]


def test_a_dataset_in_another_location_is_blocked(bigquery_proxy, dataset_name):
    apply(settings_for(bigquery_proxy, dataset_name), bundled_files())
    bigquery_proxy.reset()

    result = apply(settings_for(bigquery_proxy, dataset_name, BOOTSTRAP_LOCATION="EU"), bundled_files())

    assert result.status == "failed"
    assert result.dataset_action == "blocked"
    assert "cannot move a dataset" in result.dataset_error
    assert bigquery_proxy.writes() == []


def test_eight_concurrent_applies_all_succeed_and_converge(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    results: list[EnsureResult | BaseException] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        try:
            results.append(apply(settings, bundled_files()))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert all(isinstance(r, EnsureResult) and r.status == "succeeded" for r in results), results
    created = [sum(a == "created" for a in actions(r).values()) for r in results]  # type: ignore[arg-type]
    assert sum(created) == 8  # each table created by exactly one run; the others saw it there
    assert sum(r.dataset_action == "created" for r in results) >= 1  # type: ignore[union-attr]
    again = apply(settings, bundled_files())
    assert set(actions(again).values()) == {"unchanged"}


# --- helpers ---------------------------------------------------------------------------------


def _all_rows(client: bigquery.Client, dataset: str, table: str) -> list[tuple[Any, ...]]:
    rows = client.query(f"SELECT * FROM `{PROJECT}.{dataset}.{table}` ORDER BY tenant_id").result()
    return [tuple(r.values()) for r in rows]


def test_a_new_label_is_added_and_the_next_run_is_unchanged(bigquery_proxy, dataset_name, client):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    table = "tenant_api_keys"  # labelled {domain: tenants, sensitivity: restricted}
    manifest = files["bootstrap.yaml"].replace(
        b"labels: {domain: tenants, sensitivity: restricted}",
        b"labels: {domain: tenants, sensitivity: restricted, retention: long}",
    )
    changed = {**files, "bootstrap.yaml": manifest}

    result = apply(settings, changed, tables=[table])

    assert [(t.action, t.changes) for t in result.tables] == [
        ("updated", ("label retention: (unset) -> 'long'",))
    ]
    labels = client.get_table(f"{dataset_name}.{table}").labels
    assert labels == {"domain": "tenants", "sensitivity": "restricted", "retention": "long"}
    bigquery_proxy.reset()
    assert apply(settings, changed, tables=[table]).tables[0].action == "unchanged"
    assert bigquery_proxy.writes() == []
