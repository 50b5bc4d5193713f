"""Forced recreations under faults: the gate, the request ledger (fake-gcs-server) and the engine
against the BigQuery emulator, driven as the function drives them. In every case each table is
dropped at most once, and every row written before the request survives in the table or in a
backup."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from google.cloud import bigquery, storage

from deploy.local.stack import Stack, StackConfig
from function import gate
from function.bigquery_adapter import BigQueryAdapter, make_client
from function.config import Settings
from function.engine import Engine
from function.errors import PermanentError, TransientError
from function.ledger import Entry, Ledger, LostLease
from function.migrate import copied_step
from function.request import BootstrapRequest, request_from_fields
from function.results import EnsureResult
from function.schema_files import load_declared_state
from function.storage_adapter import Bucket
from tests.conftest import PROJECT, TABLES, bundled_files
from tests.support.proxy import FaultPlan, Proxy
from tests.support.rows import required_row

pytestmark = pytest.mark.emulators


@pytest.fixture
def gcs(storage_stack: Stack) -> Iterator[storage.Client]:
    client = storage_stack.storage_client()
    yield client
    client.close()


@pytest.fixture
def client(bigquery_stack: Stack) -> bigquery.Client:
    return bigquery_stack.bigquery_client()


def settings_for(proxy: Proxy, dataset: str, storage_stack: Stack, **extra: Any) -> Settings:
    env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "BIGQUERY_EMULATOR_HOST": proxy.url,
        "STORAGE_EMULATOR_HOST": storage_stack.env["STORAGE_EMULATOR_HOST"],
        "BOOTSTRAP_STATE_BUCKET": StackConfig.state_bucket,
        "BOOTSTRAP_RETRY_DEADLINE": "3",
        "BOOTSTRAP_TIMEOUT": "60",
        "ALLOW_DESTRUCTIVE": "true",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return Settings.from_env(env, dataset=dataset)


def forced(dataset: str, **fields: Any) -> BootstrapRequest:
    body = {"request_id": f"force-{uuid.uuid4().hex[:8]}", "force_recreate_tables": True, "confirm": dataset}
    return request_from_fields({**body, **fields}, "")


def deliver(
    settings: Settings,
    gcs: storage.Client,
    request: BootstrapRequest,
    *,
    started: float | None = None,
    ledger: Ledger | None = None,
    files: dict[str, bytes] | None = None,
) -> EnsureResult | Entry:
    """One delivery of `request`, as the function handles it: the gate (with the ledger), the
    engine, then the ledger's answer; a failure that raises gives the claim up first. `files`:
    the declared state (the bundled schemas unless given)."""
    declared = load_declared_state(files or bundled_files())
    ledger = ledger or Ledger(Bucket(gcs, StackConfig.state_bucket, 5), settings)
    granted = gate.authorize(request, declared, settings, ledger, started=started or time.monotonic())
    if isinstance(granted, Entry):
        return granted
    adapter = BigQueryAdapter(make_client(settings), settings.dataset, settings.retry_deadline)
    try:
        result = Engine(declared, settings, adapter).ensure(request, authorization=granted)
    except LostLease:
        raise
    except Exception:
        granted.progress.release()  # type: ignore[attr-defined]
        raise
    granted.progress.finish({"status": result.status})  # type: ignore[attr-defined]
    return result


def bootstrap_with_rows(
    settings: Settings, client: bigquery.Client, rows_per_table: int = 3
) -> dict[str, set[str]]:
    """Create every bundled table and stream rows into each; the tenant ids written, by table."""
    adapter = BigQueryAdapter(make_client(settings), settings.dataset, settings.retry_deadline)
    request = request_from_fields({}, "initial")
    assert (
        Engine(load_declared_state(bundled_files()), settings, adapter).ensure(request).status == "succeeded"
    )
    written: dict[str, set[str]] = {}
    for table in TABLES:
        ref = f"{settings.dataset}.{table}"
        rows = [required_row(client, ref, i) for i in range(rows_per_table)]
        assert client.insert_rows_json(ref, rows) == []
        written[table] = {r["tenant_id"] for r in rows}
    return written


def tenant_ids(client: bigquery.Client, dataset: str, table: str) -> set[str]:
    query = f"SELECT tenant_id FROM `{PROJECT}.{dataset}.{table}`"
    return {r["tenant_id"] for r in client.query(query).result()}


def surviving(client: bigquery.Client, dataset: str, table: str) -> set[str]:
    """The table's rows and those of every backup of it."""
    found = tenant_ids(client, dataset, table)
    for item in client.list_tables(f"{dataset}_backups"):
        if item.table_id.startswith(f"{table}__"):
            found |= tenant_ids(client, f"{dataset}_backups", item.table_id)
    return found


def drops(proxy: Proxy) -> dict[str, int]:
    """Table drops BigQuery carried out, by table."""
    out: dict[str, int] = {}
    for r in proxy.requests():
        if r.method == "DELETE" and "/tables/" in r.path and r.status in (200, 204):
            table = r.path.split("?")[0].rsplit("/", 1)[-1]
            out[table] = out.get(table, 0) + 1
    return out


def assert_every_row_survives(client: bigquery.Client, dataset: str, written: dict[str, set[str]]) -> None:
    for table, ids in written.items():
        assert ids <= surviving(client, dataset, table), table


def test_eight_forced_tables_are_each_recreated_once_with_every_row_kept(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    written = bootstrap_with_rows(settings, client)
    bigquery_proxy.reset()
    request = forced(dataset_name)

    result = deliver(settings, gcs, request)

    assert isinstance(result, EnsureResult) and result.status == "succeeded", [
        t for t in result.tables if t.error
    ]
    assert {t.table: t.action for t in result.tables} == {t: "recreated" for t in TABLES}
    assert drops(bigquery_proxy) == {t: 1 for t in TABLES}
    assert sorted(b["table"] for b in result.backups) == TABLES
    assert {t: tenant_ids(client, dataset_name, t) for t in TABLES} == written  # migrated, in place
    assert_every_row_survives(client, dataset_name, written)
    entry = Ledger(Bucket(gcs, StackConfig.state_bucket, 5), settings).lookup(request)
    assert entry is not None and entry.data["recreated"] == sorted(TABLES + [copied_step(t) for t in TABLES])
    again = deliver(settings, gcs, request)
    assert isinstance(again, Entry) and again.state == "done"
    assert drops(bigquery_proxy) == {t: 1 for t in TABLES}


def test_a_crash_between_two_recreations_resumes_without_dropping_anything_twice(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    written = bootstrap_with_rows(settings, client)
    bigquery_proxy.reset()
    request = forced(dataset_name)
    crashed = TABLES[3]
    bigquery_proxy.faults = FaultPlan(probability=1.0, method="DELETE", path_regex=f"/tables/{crashed}$")

    with pytest.raises(TransientError):
        deliver(settings, gcs, request)
    first = drops(bigquery_proxy)
    assert crashed not in first and first  # the others went ahead; this one stayed in place
    bigquery_proxy.faults = None

    result = deliver(settings, gcs, request)  # the redelivery takes the interrupted request over

    assert isinstance(result, EnsureResult) and result.status == "succeeded"
    assert drops(bigquery_proxy) == {t: 1 for t in TABLES}
    assert {t.table: t.action for t in result.tables}[crashed] == "recreated"
    assert_every_row_survives(client, dataset_name, written)


@pytest.mark.parametrize("rows", ["keep", "discard"])
def test_a_run_past_its_deadline_stops_and_redeliveries_finish_the_work(
    rows, dataset_name, storage_stack, gcs, client, bigquery_stack
):
    with Proxy(bigquery_stack.env["BIGQUERY_EMULATOR_HOST"], latency=0.2) as proxy:
        settings = settings_for(
            proxy, dataset_name, storage_stack, BOOTSTRAP_TIMEOUT="10", BOOTSTRAP_CONCURRENCY="1"
        )
        written = bootstrap_with_rows(settings, client)
        proxy.reset()
        forced_tables = TABLES[:4]  # enough for a deadline mid-way, few enough to keep it short
        request = forced(dataset_name, rows=rows, tables=forced_tables)
        # Deadline = start + timeout - retry deadline: one second from now, mid-way through.
        with pytest.raises(gate.DeadlinePassed):
            deliver(settings, gcs, request, started=time.monotonic() - 6)
        first = drops(proxy)
        assert len(first) < len(forced_tables)

        for _ in range(3 * len(forced_tables)):  # each redelivery goes on from where the last one stopped
            try:
                result = deliver(settings, gcs, request)
                break
            except gate.DeadlinePassed:
                continue

        assert isinstance(result, EnsureResult) and result.status == "succeeded"
        # Each table dropped once (a copy a stopped delivery left half made is made again).
        assert {t: n for t, n in drops(proxy).items() if "__migrating_" not in t} == dict.fromkeys(
            forced_tables, 1
        )
        assert_every_row_survives(client, dataset_name, written)


def test_an_owner_whose_lease_ran_out_drops_nothing_once_another_took_over(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    written = bootstrap_with_rows(settings, client)
    request = forced(dataset_name)
    declared = load_declared_state(bundled_files())
    stale_ledger = Ledger(Bucket(gcs, StackConfig.state_bucket, 5), settings)
    stale_ledger.lease = timedelta(seconds=-1)  # it hung past its lease before its first step
    stale = gate.authorize(request, declared, settings, stale_ledger, started=time.monotonic())
    assert isinstance(stale, gate.Authorization)
    bigquery_proxy.reset()

    taker = deliver(settings, gcs, request)  # the redelivery: takes over, does the work
    adapter = BigQueryAdapter(make_client(settings), settings.dataset, settings.retry_deadline)
    with pytest.raises(LostLease):  # the old owner wakes up: its first fence fails
        Engine(declared, settings, adapter).ensure(request, authorization=stale)

    assert isinstance(taker, EnsureResult) and taker.status == "succeeded"
    assert drops(bigquery_proxy) == {t: 1 for t in TABLES}
    assert_every_row_survives(client, dataset_name, written)


def test_two_deliveries_racing_recreate_each_table_once(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    written = bootstrap_with_rows(settings, client)
    bigquery_proxy.reset()
    request = forced(dataset_name)
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def one() -> None:
        barrier.wait()
        try:
            results.append(deliver(settings, gcs, request))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # The other delivery either waited for the first to finish and got its recorded answer, or
    # was told to come back later (InProgress raises: Pub/Sub delivers it again).
    assert sorted(type(r).__name__ for r in results) in (
        ["EnsureResult", "Entry"],
        ["EnsureResult", "InProgress"],
    )
    assert drops(bigquery_proxy) == {t: 1 for t in TABLES}
    assert_every_row_survives(client, dataset_name, written)


def test_a_fence_past_the_invocations_end_sends_no_drop(bigquery_proxy, dataset_name, storage_stack, client):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    bootstrap_with_rows(settings, client, rows_per_table=1)
    adapter = BigQueryAdapter(make_client(settings), settings.dataset, settings.retry_deadline)
    bigquery_proxy.reset()
    fence = gate.Fence("the drop of tenant_profiles", generation=1, valid_until=time.monotonic() - 0.001)

    with pytest.raises(gate.DeadlinePassed):
        adapter.delete_table("tenant_profiles", fence)

    assert bigquery_proxy.requests() == []
    assert client.get_table(f"{dataset_name}.tenant_profiles")


def test_a_backup_after_a_takeover_copies_the_table_as_it_is_just_before_its_drop(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    bootstrap_with_rows(settings, client, rows_per_table=2)
    table = "tenant_profiles"
    request = forced(dataset_name, tables=[table])
    bigquery_proxy.faults = FaultPlan(probability=1.0, method="DELETE", path_regex=f"/tables/{table}$")
    with pytest.raises(TransientError):
        deliver(settings, gcs, request)  # backed up, then failed before the drop
    bigquery_proxy.faults = None
    ref = f"{dataset_name}.{table}"
    assert client.insert_rows_json(ref, [required_row(client, ref, 7)]) == []  # written in between

    result = deliver(settings, gcs, request)

    assert isinstance(result, EnsureResult) and result.status == "succeeded"
    assert len(result.backups) == 2  # the first owner's and the one taken just before the drop
    last = result.backups[-1]["backup"].split(".")[-1]
    assert tenant_ids(client, f"{dataset_name}_backups", last) == {"tenant-0", "tenant-1", "tenant-7"}


def test_rows_written_by_dml_are_backed_up_whatever_the_metadata_says(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    bootstrap_with_rows(settings, client, rows_per_table=0)
    table = "tenant_profiles"
    row = required_row(client, f"{dataset_name}.{table}", 5)
    columns = ", ".join(row)
    values = ", ".join(_literal(v) for v in row.values())
    client.query(f"INSERT INTO `{PROJECT}.{dataset_name}.{table}` ({columns}) VALUES ({values})").result()

    result = deliver(settings, gcs, forced(dataset_name, tables=[table]))

    assert isinstance(result, EnsureResult) and result.status == "succeeded"
    [backup] = result.backups
    assert tenant_ids(client, f"{dataset_name}_backups", backup["backup"].split(".")[-1]) == {"tenant-5"}


def test_a_dataset_recreation_refuses_to_lose_what_it_cannot_back_up(
    bigquery_proxy, dataset_name, storage_stack, gcs, client
):
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    written = bootstrap_with_rows(settings, client, rows_per_table=1)
    view = bigquery.Table(f"{PROJECT}.{dataset_name}.active_tenants")
    view.view_query = f"SELECT tenant_id FROM `{PROJECT}.{dataset_name}.tenant_profiles`"
    client.create_table(view)
    extra = bigquery.Table(
        f"{PROJECT}.{dataset_name}.notes", schema=[bigquery.SchemaField("tenant_id", "STRING")]
    )
    client.create_table(extra)
    assert client.insert_rows_json(extra, [{"tenant_id": "note-1"}]) == []
    bigquery_proxy.reset()
    body = {"force_recreate_dataset": True, "force_recreate_tables": None}

    refused = deliver(settings, gcs, forced(dataset_name, **body))

    assert isinstance(refused, EnsureResult) and refused.status == "failed"
    assert "it holds active_tenants (view), which cannot be backed up" in (refused.dataset_error or "")
    assert drops(bigquery_proxy) == {}
    assert not [r for r in bigquery_proxy.writes() if r.method == "DELETE"]

    accepted = deliver(settings, gcs, forced(dataset_name, accept_losses=["active_tenants"], **body))

    assert isinstance(accepted, EnsureResult) and accepted.status == "succeeded", accepted
    assert accepted.dataset_action == "recreated"
    assert sorted(b["table"] for b in accepted.backups) == sorted([*TABLES, "notes"])
    notes_backup = next(b for b in accepted.backups if b["table"] == "notes")
    assert tenant_ids(client, f"{dataset_name}_backups", notes_backup["backup"].split(".")[-1]) == {"note-1"}
    written_backups = {b["table"]: b["backup"].split(".")[-1] for b in accepted.backups}
    for table, ids in written.items():
        assert tenant_ids(client, f"{dataset_name}_backups", written_backups[table]) == ids


def test_a_copy_over_rows_is_refused_without_a_fence(bigquery_proxy, dataset_name, storage_stack, client):
    """A restore over rows (WRITE_TRUNCATE) is destructive: the adapter refuses it unfenced."""
    settings = settings_for(bigquery_proxy, dataset_name, storage_stack)
    bootstrap_with_rows(settings, client, rows_per_table=1)
    adapter = BigQueryAdapter(make_client(settings), settings.dataset, settings.retry_deadline)
    bigquery_proxy.reset()

    with pytest.raises(PermanentError, match="without the gate's fence"):
        adapter.copy_table(
            adapter.ref("tenant_profiles"),
            adapter.ref("tenant_api_keys"),
            job_id=f"j{uuid.uuid4().hex}",
            write_disposition="WRITE_TRUNCATE",
            wait=5,
        )
    assert bigquery_proxy.requests() == []


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return "'" + str(value).replace("'", "\\'") + "'"
