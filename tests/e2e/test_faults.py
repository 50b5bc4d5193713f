"""Fault injection end to end: the function talks to local-bigquery and fake-gcs-server through
proxies that inject 503s, 429 rateLimitExceeded, dropped connections, lost answers and latency.
Under those faults, and across an emulator killed in the middle of a run, redeliveries of a
request must converge to the declared state without losing a row, and a destructive request
must still run its destructive part once.

The schemas are read from a bucket of their own (`gs://fault-schemas/schemas/`, which sends no
upload notifications), so that every run also reads through the storage proxy; the test edits
the declared state by writing that bucket directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import storage

from deploy.local.stack import Stack, StackConfig
from tests.conftest import SCHEMAS, TABLES
from tests.support.declared import differences, folder_files
from tests.support.e2e import (
    answers,
    count_rows,
    publish,
    push,
)
from tests.support.proxy import FAULT_KINDS, FaultPlan
from tests.support.rows import required_row
from tests.support.waiting import wait_until

pytestmark = pytest.mark.emulators

BUCKET = "fault-schemas"
PREFIX = "schemas/"
ROWS = 3  # inserted into every table before the faults start
TOPIC = "bootstrap-requests"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    config = StackConfig(
        workdir=workdir,
        # A killed and restarted emulator still holds the tables and rows.
        bigquery_keeps_data=True,
        function_env={
            "SCHEMA_SOURCE": f"gs://{BUCKET}/{PREFIX}",
            "BOOTSTRAP_RETRY_DEADLINE": "2",
            "ALLOW_DESTRUCTIVE": "true",
            # A short timeout, so that the lease of a killed delivery (timeout + 10 s) runs out
            # within the test.
            "BOOTSTRAP_TIMEOUT": "20",
        },
    )
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def declared(stack, proxies, tap, inbox, gcs) -> dict[str, bytes]:
    """The bundled schemas, bootstrapped without faults, and ROWS rows in every table. The
    returned mapping is the declared state: tests that change the bucket update it."""
    gcs.create_bucket(BUCKET)
    files = folder_files(SCHEMAS)
    write(gcs, files)
    publish(stack, {"request_id": "seed"})
    assert inbox.wait("seed").data["status"] == "succeeded"
    client = stack.bigquery_client()
    for table in TABLES:
        rows = [required_row(client, f"tenants.{table}", i) for i in range(ROWS)]
        assert client.insert_rows_json(f"tenants.{table}", rows) == []
    assert differences(client, "tenants", files) == []
    return files


def write(gcs: storage.Client, files: dict[str, bytes]) -> None:
    bucket = gcs.bucket(BUCKET)
    for name, data in files.items():
        bucket.blob(PREFIX + name).upload_from_string(data)


def with_column(files: dict[str, bytes], table: str, column: str) -> dict[str, bytes]:
    fields = json.loads(files[f"{table}.json"])
    fields.append(
        {"name": column, "type": "STRING", "mode": "NULLABLE", "description": "Added under faults."}
    )
    return {**files, f"{table}.json": json.dumps(fields, indent=2).encode()}


def request(request_id: str, **fields: Any) -> bytes:
    return json.dumps({"request_id": request_id, **fields}).encode()


def row_counts(stack: Stack) -> dict[str, int]:
    return {table: count_rows(stack, table) for table in TABLES}


def random_faults(seed: int) -> FaultPlan:
    return FaultPlan(probability=0.2, kinds=FAULT_KINDS, delay=0.2, seed=seed)


def test_repeated_deliveries_converge_under_20_percent_faults(stack, proxies, tap, inbox, gcs, declared):
    bq, gs = proxies["bigquery"], proxies["storage"]
    # The new declared state: a NULLABLE column more in every table, a new table, and new
    # dataset and table settings in the manifest.
    changed = dict(declared)
    for table in TABLES:
        changed = with_column(changed, table, f"{table}_fault_note")
    changed["tenant_fault_audit.json"] = json.dumps(
        [
            {"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Owner."},
            {"name": "at", "type": "TIMESTAMP", "mode": "REQUIRED", "description": "When."},
            {"name": "tags", "type": "STRING", "mode": "REPEATED", "description": "Free tags."},
        ]
    ).encode()
    manifest = changed["bootstrap.yaml"].decode()
    manifest = manifest.replace("Central registry", "Central registry (converged under faults)", 1)
    # A changed label value and an added key (the patch sends only those; BigQuery merges them).
    manifest = manifest.replace("labels: {domain: billing}", "labels: {domain: finance, tier: metered}", 1)
    manifest += (
        "  tenant_fault_audit:\n"
        '    description: "Audit trail written under faults."\n'
        "    time_partitioning: {type: DAY, field: at}\n"
        "    clustering: [tenant_id]\n"
    )
    changed["bootstrap.yaml"] = manifest.encode()
    write(gcs, changed)
    before = row_counts(stack)
    tap.reset()

    # First every patch of one table fails: the first deliveries apply part of the change and
    # answer 5xx (Pub/Sub's copy is then delivered again by the emulator, about every second).
    bq.faults = FaultPlan(probability=1.0, method="PATCH", path_regex=r"/tables/tenant_profiles$")
    publish(stack, {"request_id": "converge"})
    first = push(stack, request("converge"), message_id="converge-0")
    assert first.status_code >= 500, first.text
    wait_until(lambda: any(s and s >= 500 for s in answers(tap, TOPIC)), what="a 5xx to a Pub/Sub delivery")
    # Then 20 % of all requests to both emulators fail, in every way the proxies know.
    bq.faults, gs.faults = random_faults(seed=1), random_faults(seed=2)
    statuses = [first.status_code]
    try:
        while sum(200 <= s < 300 for s in statuses) < 3 and len(statuses) < 30:
            statuses.append(
                push(stack, request("converge"), message_id=f"converge-{len(statuses)}").status_code
            )
        successes = sum(200 <= s < 300 for s in statuses)
        inbox.wait("converge", count=successes + 1, timeout=120)  # + the Pub/Sub delivery's
    finally:
        bq.faults = gs.faults = None

    assert successes == 3, statuses
    assert all(200 <= s < 300 or s >= 500 for s in statuses), statuses  # never a 4xx
    assert bq.injected > 0 and gs.injected > 0
    assert any(r.path.startswith("/download/") for r in gs.requests())  # downloads were proxied too
    events = inbox.all("converge")
    assert len(events) == successes + 1
    # A completed delivery under transient faults never reports a failure (that would be
    # acknowledged and never retried): every one says the declared state holds.
    assert [e.data["status"] for e in events] == ["succeeded"] * len(events), [e.data for e in events]
    actions = {t["action"] for e in events for t in e.data["tables"]}
    assert actions <= {"created", "updated", "unchanged"}
    assert differences(stack.bigquery_client(), "tenants", changed) == []
    assert row_counts(stack) == before == dict.fromkeys(TABLES, ROWS)
    assert count_rows(stack, "tenant_fault_audit") == 0
    tap_statuses = answers(tap, TOPIC)
    assert tap_statuses[-1] in (200, 204) and all(s and (s < 300 or s >= 500) for s in tap_statuses)
    declared.update(changed)


def test_bigquery_killed_mid_run_answers_5xx_and_the_redelivery_completes(
    stack, proxies, tap, inbox, gcs, declared
):
    bq = proxies["bigquery"]
    changed = with_column(
        with_column(declared, "tenant_subscriptions", "renewal_note"), "tenant_api_keys", "owner_note"
    )
    write(gcs, changed)
    before = row_counts(stack)
    tap.reset()
    bq.reset()
    # Every patch waits 3 s in the proxy: long enough to kill the emulator while the run is
    # between its reads and its writes.
    bq.faults = FaultPlan(probability=1.0, kinds=("delay",), method="PATCH", delay=3.0)
    try:
        publish(stack, {"request_id": "killed-mid-run"})
        wait_until(
            lambda: (
                {"tenant_subscriptions", "tenant_api_keys"}
                <= {r.path.rsplit("/", 1)[-1] for r in bq.requests() if r.method == "GET" and r.status == 200}
            ),
            what="the run reading the tables it must patch",
        )
        stack.kill("bigquery")
        try:
            wait_until(
                lambda: any(s and s >= 500 for s in answers(tap, TOPIC)), what="a 5xx from the function"
            )
            assert inbox.all("killed-mid-run") == []
        finally:
            bq.faults = None
            stack.restart("bigquery")  # same data: the emulator is persistent
        event = inbox.wait("killed-mid-run", timeout=120)
    finally:
        bq.faults = None

    assert event.data["status"] == "succeeded", event.data
    # A redelivery that overlapped the restart may have patched a table before failing.
    assert {t["action"] for t in event.data["tables"]} <= {"updated", "unchanged"}
    assert answers(tap, TOPIC)[-1] in (200, 204)
    assert differences(stack.bigquery_client(), "tenants", changed) == []
    assert row_counts(stack) == before
    declared.update(changed)


def test_a_lost_answer_to_a_ledger_write_does_not_stall_a_forced_recreation(
    stack, proxies, inbox, gcs, declared
):
    table = "tenant_cloud_credentials"
    gs = proxies["storage"]
    client = stack.bigquery_client()
    backups_before = (
        {t.table_id for t in client.list_tables("tenants_backups")}
        if "tenants_backups" in {d.dataset_id for d in client.list_datasets()}
        else set()
    )
    forced = request("forced-lost-answer", tables=[table], force_recreate_tables=True, confirm="tenants")
    ledger_writes = r"/upload/storage/v1/b/bootstrap-state/o$"
    # The claim goes through; the entry's next write (the recreation recorded) is applied by
    # Cloud Storage but its answer is lost, so the client's retry finds the generation moved.
    gs.fail_next(1, "delay", method="POST", path_regex=ledger_writes, delay=0.0)
    gs.fail_next(1, "drop_after", method="POST", path_regex=ledger_writes)

    first = push(stack, forced, message_id="lost-0")
    again = push(stack, forced, message_id="lost-1")  # a redelivery, after the first finished

    assert gs.injected >= 2
    assert first.status_code in (200, 204), first.text
    assert again.status_code in (200, 204), again.text
    inbox.wait("forced-lost-answer", count=2)
    events = inbox.all("forced-lost-answer")
    assert [e.data.get("duplicate", False) for e in events] == [False, True]
    assert events[0].data["status"] == "succeeded", events[0].data
    assert [(t["table"], t["action"]) for t in events[0].data["tables"]] == [(table, "recreated")]
    [backup] = events[0].data["backups"]
    assert backup["rows"] == ROWS
    new_backups = {t.table_id for t in client.list_tables("tenants_backups")} - backups_before
    assert len(new_backups) == 1  # dropped once, backed up once
    assert count_rows(stack, table) == ROWS  # migrated into the new table, once
    assert differences(client, "tenants", declared) == []


def tenant_ids(stack: Stack, dataset: str, table: str) -> set[str]:
    query = f"SELECT tenant_id FROM `{stack.config.project}.{dataset}.{table}`"
    return {r["tenant_id"] for r in stack.bigquery_client().query(query).result()}


def test_eight_forced_tables_with_the_function_killed_between_two_recreations(
    stack, proxies, tap, inbox, gcs, declared
):
    """A forced recreation of every table; the function process is killed while one drop is
    in flight, after others are done. Pub/Sub delivers the request again; the new process
    waits out the dead one's lease, takes the request over and finishes it. Each table is
    dropped once, and every row written before the request is in the table or in a backup."""
    bq = proxies["bigquery"]
    client = stack.bigquery_client()
    written = {table: tenant_ids(stack, "tenants", table) for table in TABLES}  # the seed's rows
    assert sum(map(len, written.values())) >= ROWS * (len(TABLES) - 1)
    slow = TABLES[4]
    bq.reset()
    tap.reset()
    bq.faults = FaultPlan(
        probability=1.0, kinds=("delay",), method="DELETE", path_regex=f"/tables/{slow}$", delay=4.0
    )
    body = {"request_id": "killed-forced", "force_recreate_tables": True, "confirm": "tenants"}
    try:
        publish(stack, body)

        def dropped() -> dict[str, int]:
            out: dict[str, int] = {}
            for r in bq.requests():
                if r.method == "DELETE" and r.status in (200, 204):
                    name = r.path.split("?")[0].rsplit("/", 1)[-1]
                    out[name] = out.get(name, 0) + 1
            return out

        wait_until(lambda: len(dropped()) >= 2, what="two tables dropped")
        stack.crash("function")
        assert inbox.all("killed-forced") == []
    finally:
        bq.faults = None
        stack.restart("function")

    event = inbox.wait("killed-forced", timeout=180)

    assert event.data["status"] == "succeeded", event.data
    assert {t["action"] for t in event.data["tables"]} <= {"recreated", "created"}
    forced_tables = [t["table"] for t in event.data["tables"]]
    assert set(TABLES) <= set(forced_tables)
    # Each table dropped once; a copy left half made by the killed process is made again.
    assert {k: v for k, v in dropped().items() if "__migrating_" not in k} == dict.fromkeys(forced_tables, 1)
    assert [t.table_id for t in client.list_tables("tenants") if "__migrating_" in t.table_id] == []
    backups = event.data["backups"]
    for table, ids in written.items():
        kept = tenant_ids(stack, "tenants", table)
        for b in backups:
            if b["table"] == table:
                kept |= tenant_ids(stack, "tenants_backups", b["backup"].split(".")[-1])
        assert ids <= kept, table
    assert differences(client, "tenants", declared) == []
