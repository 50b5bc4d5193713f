"""The ensure engine against local-bigquery: what a user sees in BigQuery after each apply, and
the requests the official client actually sent (recorded by a proxy in front of the emulator).
Where the emulator cannot show what BigQuery does with a request (a field added inside a RECORD
by a patch), the request body is checked against BigQuery's discovery document instead.

Over 400 lines: one test per thing a user sees after an apply, sharing one emulator.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import yaml
from google.cloud import bigquery

from function import gate
from function.bigquery_adapter import BigQueryAdapter, make_client
from function.config import Settings
from function.engine import Engine
from function.errors import RefusedError
from function.model import canonical_type
from function.request import request_from_fields
from function.results import EnsureResult
from function.schema_files import load_declared_state
from tests.conftest import PROJECT, bundled_files
from tests.support import discovery
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
    return len(list(client.list_rows(f"{PROJECT}.{dataset}.{table}")))


def manifest_edited(files: dict[str, bytes], change: Any) -> dict[str, bytes]:
    """The files with `change(manifest)` applied to the parsed manifest."""
    manifest = yaml.safe_load(files["bootstrap.yaml"])
    change(manifest)
    return {**files, "bootstrap.yaml": yaml.safe_dump(manifest).encode()}


def _dataset_component(value: str) -> Any:
    return lambda manifest: manifest["dataset"]["labels"].update(component=value)


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


def _add_notes(schema: list[dict[str, Any]]) -> None:
    schema.append({"name": "notes", "type": "STRING", "mode": "NULLABLE", "description": "Free text."})


def test_a_new_nullable_column_is_added_in_place_rows_survive_and_new_rows_use_it(
    bigquery_proxy, dataset_name, client
):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    table = "tenant_pipeline_configs"
    ref = f"{dataset_name}.{table}"
    rows = [required_row(client, ref, i) for i in range(3)]
    assert client.insert_rows_json(ref, rows) == []
    bigquery_proxy.reset()

    result = apply(settings, edited(files, table, _add_notes), tables=[table])

    assert result.status == "succeeded"
    [outcome] = result.tables
    assert (outcome.action, outcome.changes) == ("updated", ("add column notes NULLABLE STRING",))
    [patch] = [s for s in bigquery_proxy.sent() if s.method == "PATCH"]
    assert set(patch.json()) == {"schema"}  # exactly the changed property
    assert discovery.problems("Table", patch.json()) == []
    after = client.get_table(ref)
    assert after.schema[-1].name == "notes"
    assert [f.name for f in after.schema[:-1]] == [f["name"] for f in json.loads(files[table + ".json"])]
    # The rows written before the patch are all there, with no value in the new column, and a
    # row written after it can use it.
    assert sorted((r["tenant_id"], r["notes"]) for r in client.list_rows(after)) == [
        (f"tenant-{i}", None) for i in range(3)
    ]
    assert client.insert_rows_json(ref, [{**required_row(client, ref, 9), "notes": "after the patch"}]) == []
    assert ("tenant-9", "after the patch") in {(r["tenant_id"], r["notes"]) for r in client.list_rows(after)}
    bigquery_proxy.reset()
    assert apply(settings, edited(files, table, _add_notes), tables=[table]).tables[0].action == "unchanged"
    assert bigquery_proxy.writes() == []


def test_a_field_added_inside_a_record_is_sent_as_bigquery_defines_the_patch(
    bigquery_proxy, dataset_name, client
):
    """local-bigquery answers 200 to this patch and ignores the new sub-field (a known gap), so
    what BigQuery would receive is checked instead: one PATCH of the schema alone, carrying every
    existing column unchanged and in its order, the RECORD with the new field last, and a body
    that fits BigQuery's published TableFieldSchema."""
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    table = "tenant_pipeline_configs"
    read = client.get_table(f"{dataset_name}.{table}")
    before = read.to_api_repr()["schema"]["fields"]
    region = {"name": "region", "type": "STRING", "mode": "NULLABLE", "description": "Where it runs."}

    def add_region(schema: list[dict[str, Any]]) -> None:
        record = next(f for f in schema if f["type"] == "RECORD")
        record["fields"].append(dict(region))

    bigquery_proxy.reset()
    result = apply(settings, edited(files, table, add_region), tables=[table])

    [outcome] = result.tables
    record_name = next(f["name"] for f in before if f["type"] in ("RECORD", "STRUCT"))
    assert (outcome.action, outcome.changes) == (
        "updated",
        (f"add column {record_name}.region NULLABLE STRING",),
    )
    [patch] = [s for s in bigquery_proxy.sent() if s.method == "PATCH"]
    assert patch.path.endswith(f"/datasets/{dataset_name}/tables/{table}")
    assert patch.headers["if-match"] == read.etag  # the table as the engine read it
    body = patch.json()
    assert set(body) == {"schema"}
    assert discovery.problems("Table", body) == []
    sent = body["schema"]["fields"]
    expected = [{**f, "fields": [*f["fields"], region]} if f["name"] == record_name else f for f in before]
    assert normalised(sent) == normalised(expected)
    sent_record = next(f for f in sent if f["name"] == record_name)
    assert sent_record["fields"][-1] == region


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
        (lambda files: edited(files, "tenant_usage_quotas", _remove_column), "dropping it loses its values"),
        (lambda files: edited(files, "tenant_usage_quotas", _change_type), "changes type STRING -> INT64"),
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


@pytest.mark.parametrize(("rows", "left"), [("keep", 1), ("discard", 0)])
def test_forced_recreation_with_all_three_consents_recreates(
    rows, left, bigquery_proxy, dataset_name, client
):
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
        settings, bundled_files(), tables=[table], force_recreate_tables=True, confirm=dataset_name, rows=rows
    )

    assert result.status == "succeeded"
    assert actions(result) == {table: "recreated"}
    assert row_count(client, dataset_name, table) == left  # the rows migrated, or discarded
    assert row_count(client, dataset_name, "tenant_api_keys") == 0  # untouched: not selected
    # The backup holds the row and expires on its own, after BOOTSTRAP_BACKUP_TTL_DAYS (7).
    [backup] = result.backups
    copy = client.get_table(backup["backup"])
    assert [r["tenant_id"] for r in client.list_rows(copy)] == ["tenant-1"]
    assert copy.expires is not None
    assert copy.expires.isoformat().replace("+00:00", "Z")[:19] == backup["expires_at"][:19]
    created, expires = (datetime.fromisoformat(t) for t in (backup["created_at"], backup["expires_at"]))
    assert expires - created == timedelta(days=7)
    assert copy.labels == {"bootstrap-backup": "true"}
    assert json.loads(copy.description)["backup_of"] == f"{dataset_name}.{table}"


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

    failed = [r if isinstance(r, BaseException) else r.to_json() for r in results if not _succeeded(r)]
    assert not failed, failed
    created = [sum(a == "created" for a in actions(r).values()) for r in results]  # type: ignore[arg-type]
    assert sum(created) == 8  # each table created by exactly one run; the others saw it there
    assert sum(r.dataset_action == "created" for r in results) >= 1  # type: ignore[union-attr]
    again = apply(settings, bundled_files())
    assert set(actions(again).values()) == {"unchanged"}


# --- helpers ---------------------------------------------------------------------------------


def _succeeded(result: EnsureResult | BaseException) -> bool:
    return isinstance(result, EnsureResult) and result.status == "succeeded"


def _all_rows(client: bigquery.Client, dataset: str, table: str) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in client.list_rows(f"{PROJECT}.{dataset}.{table}")), key=repr)


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


# --- races on the etag, label merges, table settings: what an emulator must show like BigQuery ---


def test_a_table_patch_that_loses_a_race_re_reads_and_keeps_the_other_writers_change(
    bigquery_proxy, dataset_name, client
):
    """Between the engine's read of a table and its patch, another writer (a DLP scanner, say)
    labels the table and edits its description. The engine's patch carries the etag it read,
    so BigQuery answers 412; the engine reads the table again, plans again against what the
    other writer left, and patches that: the declared state holds, the other writer's label
    stays, and its description edit (a declared property) is set back."""
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    table = "tenant_subscriptions"
    ref = f"{dataset_name}.{table}"
    declared_description = client.get_table(ref).description
    other_writer: list[str] = []

    def other_writer_patches() -> None:
        current = client.get_table(ref)  # straight to the emulator, not through the proxy
        current.labels = {"dlp-scan": "done"}
        current.description = "Edited elsewhere."
        other_writer.append(client.update_table(current, ["labels", "description"]).etag)

    bigquery_proxy.before_next(other_writer_patches, method="PATCH", path_regex=rf"/tables/{table}$")
    bigquery_proxy.reset()

    result = apply(settings, edited(files, table, _add_notes), tables=[table])

    assert other_writer, "the other writer did not run"
    assert result.status == "succeeded"
    [outcome] = result.tables
    assert outcome.action == "updated"
    # The changes are the second plan's, made against what the other writer left.
    assert set(outcome.changes) == {
        "add column notes NULLABLE STRING",
        f"description: 'Edited elsewhere.' -> {declared_description!r}",
    }
    on_table = [
        (r.method, r.status) for r in bigquery_proxy.requests() if r.path.endswith(f"/tables/{table}")
    ]
    assert on_table == [("GET", 200), ("PATCH", 412), ("GET", 200), ("PATCH", 200)]
    first, second = (s for s in bigquery_proxy.sent() if s.method == "PATCH")
    assert second.headers["if-match"] == other_writer[0] != first.headers["if-match"]
    after = client.get_table(ref)
    assert after.schema[-1].name == "notes"
    assert after.description == declared_description
    assert after.labels == {"domain": "billing", "dlp-scan": "done"}
    bigquery_proxy.reset()
    assert apply(settings, edited(files, table, _add_notes), tables=[table]).tables[0].action == "unchanged"
    assert bigquery_proxy.writes() == []


def test_a_dataset_patch_that_loses_a_race_re_reads_and_keeps_the_other_writers_change(
    bigquery_proxy, dataset_name, client
):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    changed = manifest_edited(files, _dataset_component("tenant-directory"))
    other_writer: list[str] = []

    def other_writer_patches() -> None:
        current = client.get_dataset(dataset_name)
        current.labels = {"cost-center": "cc-42"}
        other_writer.append(client.update_dataset(current, ["labels"]).etag)

    bigquery_proxy.before_next(other_writer_patches, method="PATCH", path_regex=rf"/datasets/{dataset_name}$")
    bigquery_proxy.reset()

    result = apply(settings, changed, tables=["tenant_profiles"])  # unchanged: the dataset alone

    assert other_writer, "the other writer did not run"
    assert (result.status, result.dataset_action) == ("succeeded", "updated")
    assert result.dataset_changes == ("dataset label component: 'tenant-registry' -> 'tenant-directory'",)
    on_dataset = [
        (r.method, r.status) for r in bigquery_proxy.requests() if r.path.endswith(f"/{dataset_name}")
    ]
    assert on_dataset == [("GET", 200), ("PATCH", 412), ("GET", 200), ("PATCH", 200)]
    assert client.get_dataset(dataset_name).labels == {
        "platform": "convergence",
        "component": "tenant-directory",
        "cost-center": "cc-42",
    }


def test_labels_other_tools_set_survive_and_a_patch_sends_only_the_labels_that_change(
    bigquery_proxy, dataset_name, client
):
    settings = settings_for(bigquery_proxy, dataset_name)
    files = bundled_files()
    apply(settings, files)
    table = "tenant_api_keys"  # labelled {domain: tenants, sensitivity: restricted}
    ref = f"{dataset_name}.{table}"
    # Other tools label the table and the dataset (billing, DLP).
    current = client.get_table(ref)
    current.labels = {"cost-center": "cc-42", "dlp-scan": "done"}
    client.update_table(current, ["labels"])
    dataset = client.get_dataset(dataset_name)
    dataset.labels = {"billing-account": "b-7"}
    client.update_dataset(dataset, ["labels"])
    assert client.get_table(ref).labels == {
        "domain": "tenants",
        "sensitivity": "restricted",
        "cost-center": "cc-42",
        "dlp-scan": "done",
    }  # BigQuery merges label maps on a patch
    changed = manifest_edited(files, _dataset_component("tenant-directory"))
    changed = manifest_edited(changed, lambda m: m["tables"][table]["labels"].update(sensitivity="secret"))
    bigquery_proxy.reset()

    result = apply(settings, changed, tables=[table])

    assert result.dataset_changes == ("dataset label component: 'tenant-registry' -> 'tenant-directory'",)
    assert [(t.action, t.changes) for t in result.tables] == [
        ("updated", ("label sensitivity: 'restricted' -> 'secret'",))
    ]
    bodies = {s.path.rsplit("/", 1)[-1]: s.json() for s in bigquery_proxy.sent() if s.method == "PATCH"}
    assert bodies == {
        dataset_name: {"labels": {"component": "tenant-directory"}},
        table: {"labels": {"sensitivity": "secret"}},
    }
    assert discovery.problems("Dataset", bodies[dataset_name]) == []
    assert discovery.problems("Table", bodies[table]) == []
    assert client.get_table(ref).labels == {
        "domain": "tenants",
        "sensitivity": "secret",
        "cost-center": "cc-42",
        "dlp-scan": "done",
    }
    assert client.get_dataset(dataset_name).labels == {
        "platform": "convergence",
        "component": "tenant-directory",
        "billing-account": "b-7",
    }
    bigquery_proxy.reset()
    again = apply(settings, changed, tables=[table])
    assert (again.dataset_action, again.tables[0].action) == ("unchanged", "unchanged")
    assert bigquery_proxy.writes() == []


def test_the_partition_filter_requirement_and_partition_expiration_are_created_and_changed_in_place(
    bigquery_proxy, dataset_name, client
):
    settings = settings_for(bigquery_proxy, dataset_name)
    table = "tenant_usage_quotas"
    ref = f"{dataset_name}.{table}"

    def settings_of(filter_required: bool, expiration_days: int) -> Any:
        def change(manifest: dict[str, Any]) -> None:
            entry = manifest["tables"][table]
            entry["require_partition_filter"] = filter_required
            entry["time_partitioning"]["expiration_days"] = expiration_days

        return change

    strict = manifest_edited(bundled_files(), settings_of(True, 400))

    created = apply(settings, strict, tables=[table])

    assert actions(created) == {table: "created"}
    read = client.get_table(ref)
    assert read.require_partition_filter is True
    assert read.time_partitioning.expiration_ms == 400 * 86_400_000
    bigquery_proxy.reset()
    assert apply(settings, strict, tables=[table]).tables[0].action == "unchanged"
    assert bigquery_proxy.writes() == []

    # Lengthened, not shortened: a shorter expiration would delete partitions at once (blocked).
    relaxed = manifest_edited(strict, settings_of(False, 800))
    result = apply(settings, relaxed, tables=[table])

    [outcome] = result.tables
    assert (outcome.action, set(outcome.changes)) == (
        "updated",
        {"partition expiration: 400 days -> 800 days", "require partition filter: yes -> no"},
    )
    read = client.get_table(ref)
    assert read.require_partition_filter is False
    assert (read.time_partitioning.type_, read.time_partitioning.field) == ("DAY", "usage_date")
    assert read.time_partitioning.expiration_ms == 800 * 86_400_000
    [patch] = [s for s in bigquery_proxy.sent() if s.method == "PATCH"]
    assert discovery.problems("Table", patch.json()) == []
    bigquery_proxy.reset()
    assert apply(settings, relaxed, tables=[table]).tables[0].action == "unchanged"
    assert bigquery_proxy.writes() == []


def test_column_settings_beyond_name_type_and_mode_are_created_and_kept_by_a_patch(
    bigquery_proxy, dataset_name, client
):
    """maxLength, policyTags, defaultValueExpression, collation, precision and scale: applied
    when the table is created, and still there after a patch adds a column (the patch sends
    every existing column as BigQuery returned it)."""
    settings = settings_for(bigquery_proxy, dataset_name)
    table = "tenant_api_keys"
    tag = {"names": [f"projects/{PROJECT}/locations/us/taxonomies/1/policyTags/2"]}
    extras = {
        "key_prefix": {"maxLength": "8", "collation": "und:ci"},
        "key_hash": {"policyTags": tag},
        "name": {"defaultValueExpression": "'unnamed'"},
    }

    def with_extras(schema: list[dict[str, Any]]) -> None:
        for field in schema:
            field.update(extras.get(field["name"], {}))
        schema.append({"name": "spend_cap", "type": "NUMERIC", "precision": "12", "scale": "2"})

    files = edited(bundled_files(), table, with_extras)
    apply(settings, files, tables=[table])

    def settings_of(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
        keys = ("maxLength", "collation", "policyTags", "defaultValueExpression", "precision", "scale")
        return {f["name"]: {k: f[k] for k in keys if k in f} for f in resource["schema"]["fields"]}

    wanted = {**extras, "spend_cap": {"precision": "12", "scale": "2"}}
    created = settings_of(client.get_table(f"{dataset_name}.{table}").to_api_repr())
    assert {name: value for name, value in created.items() if value} == wanted
    bigquery_proxy.reset()

    result = apply(settings, edited(files, table, _add_notes), tables=[table])

    assert result.tables[0].changes == ("add column notes NULLABLE STRING",)
    [patch] = [s for s in bigquery_proxy.sent() if s.method == "PATCH"]
    assert discovery.problems("Table", patch.json()) == []
    after = client.get_table(f"{dataset_name}.{table}").to_api_repr()
    assert {name: value for name, value in settings_of(after).items() if value} == wanted
    assert after["schema"]["fields"][-1]["name"] == "notes"
