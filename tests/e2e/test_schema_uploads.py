"""Schema uploads end to end: an object finalized in fake-gcs-server is notified to the Pub/Sub
emulator, pushed to functions-framework, and the function ensures the table it names; and the
Eventarc form (`google.cloud.storage.object.v1.finalized`) posted straight to the function.

Over 400 lines: every way an upload reaches the function, on one stack per module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from google.cloud import storage

from deploy.local.stack import Stack, StackConfig
from function.sync import sync_folder
from tests.conftest import BUCKET, PREFIX, PROJECT, REPO, SCHEMAS, TABLES
from tests.support.e2e import Inbox, bigquery_snapshot, log_lines, run_cli, wait_for_log
from tests.support.rows import required_row
from tests.support.waiting import wait_until

pytestmark = pytest.mark.emulators


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        workdir=tmp_path_factory.mktemp("stack"), function_env={"BOOTSTRAP_RETRY_DEADLINE": "3"}
    )
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def seeded(stack: Stack, inbox: Inbox, gcs: storage.Client) -> None:
    """The bundled schemas synced to the bucket, as a deployment seeds it: one event per file."""
    uploaded = sync_folder(gcs, SCHEMAS, f"gs://{BUCKET}/{PREFIX}")
    assert uploaded[0] == "bootstrap.yaml"  # the manifest first, so every table finds its settings
    for name in uploaded:
        event = inbox.wait(request_id(gcs, name))
        assert event.data["status"] == "succeeded", event.data
    client = stack.bigquery_client()
    assert sorted(t.table_id for t in client.list_tables("tenants")) == TABLES
    queue = client.get_table("tenants.pipeline_execution_queue")
    assert queue.time_partitioning.field == "scheduled_time"  # the manifest applied, not a plain table


def request_id(gcs: storage.Client, name: str, generation: int | None = None) -> str:
    generation = generation or gcs.bucket(BUCKET).get_blob(PREFIX + name).generation
    return f"{BUCKET}/{PREFIX}{name}#{generation}"


def upload(gcs: storage.Client, name: str, data: bytes | list[Any], prefix: str = PREFIX) -> int:
    payload = json.dumps(data).encode() if isinstance(data, list) else data
    blob = gcs.bucket(BUCKET).blob(prefix + name)
    blob.upload_from_string(payload)
    return blob.generation


def restore(gcs: storage.Client, inbox: Inbox, name: str, data: bytes) -> None:
    """Put a file back for the other tests, and let its run finish before they look."""
    generation = upload(gcs, name, data)
    assert inbox.wait(f"{BUCKET}/{PREFIX}{name}#{generation}").data["status"] == "succeeded"


def schema(table: str) -> list[dict[str, Any]]:
    return json.loads((SCHEMAS / f"{table}.json").read_text())


def tenant_ids(stack: Stack, table: str) -> list[str]:
    return sorted(r["tenant_id"] for r in stack.bigquery_client().list_rows(f"{PROJECT}.tenants.{table}"))


def test_uploading_a_new_tables_schema_creates_it(stack, inbox, gcs, seeded):
    columns = [{"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Owner."}]
    generation = upload(gcs, "tenant_audit_log.json", columns)

    event = inbox.wait(f"{BUCKET}/{PREFIX}tenant_audit_log.json#{generation}")

    assert event["type"] == "com.convergence.bootstrap.v1.completed"
    assert [(t["table"], t["action"]) for t in event.data["tables"]] == [("tenant_audit_log", "created")]
    trigger = event.data["trigger"]
    assert trigger["type"] == "storage"
    assert trigger["object"] == {
        "bucket": BUCKET,
        "name": f"{PREFIX}tenant_audit_log.json",
        "generation": str(generation),
    }
    assert stack.bigquery_client().get_table("tenants.tenant_audit_log").schema[0].name == "tenant_id"


def test_an_added_nullable_column_updates_the_table_and_keeps_its_rows(stack, inbox, gcs, seeded):
    table = "tenant_api_keys"
    client = stack.bigquery_client()
    assert client.insert_rows_json(f"tenants.{table}", [required_row(client, f"tenants.{table}", 1)]) == []
    columns = [
        *schema(table),
        {"name": "rotated_from", "type": "STRING", "mode": "NULLABLE", "description": "Key it replaced."},
    ]

    generation = upload(gcs, f"{table}.json", columns)
    event = inbox.wait(f"{BUCKET}/{PREFIX}{table}.json#{generation}")

    assert event.data["status"] == "succeeded"
    [outcome] = event.data["tables"]
    assert outcome["action"] == "updated"
    assert outcome["changes"] == ["add column rotated_from NULLABLE STRING"]
    assert client.get_table(f"tenants.{table}").schema[-1].name == "rotated_from"
    assert tenant_ids(stack, table) == ["tenant-1"]


def test_an_incompatible_schema_is_blocked_and_changes_nothing(stack, inbox, gcs, seeded):
    table = "tenant_subscriptions"
    before = bigquery_snapshot(stack)
    columns = [c for c in schema(table) if c["name"] != "auto_renew"]  # a removed column

    generation = upload(gcs, f"{table}.json", columns)
    event = inbox.wait(f"{BUCKET}/{PREFIX}{table}.json#{generation}")

    assert event["type"] == "com.convergence.bootstrap.v1.failed"
    [outcome] = event.data["tables"]
    assert outcome["action"] == "blocked"
    assert "column auto_renew is not declared" in outcome["error"]
    assert bigquery_snapshot(stack) == before
    restore(gcs, inbox, f"{table}.json", json.dumps(schema(table)).encode())


@pytest.mark.parametrize(
    ("days", "phrase"),
    [(400, "partition expiration: none -> 400 days"), (0.00001, None)],
    ids=["set where there was none", "a fraction of a day"],
)
def test_an_upload_that_would_expire_partitions_deletes_nothing(stack, inbox, gcs, seeded, days, phrase):
    """Setting (or shortening) a partition expiration makes BigQuery delete the older partitions
    at once: from an upload it is blocked (or, below a day, invalid), never applied."""
    table = "tenant_usage_quotas"
    client = stack.bigquery_client()
    ref = f"tenants.{table}"
    assert client.insert_rows_json(ref, [{**required_row(client, ref, 3), "usage_date": "2020-01-01"}]) == []
    rows = tenant_ids(stack, table)
    before = bigquery_snapshot(stack)
    original = (SCHEMAS / "bootstrap.yaml").read_bytes()
    manifest = original.replace(
        b"time_partitioning: {type: DAY, field: usage_date}",
        f"time_partitioning: {{type: DAY, field: usage_date, expiration_days: {days}}}".encode(),
    )
    assert manifest != original

    generation = upload(gcs, "bootstrap.yaml", manifest)
    event = inbox.wait(f"{BUCKET}/{PREFIX}bootstrap.yaml#{generation}")

    assert event["type"] == "com.convergence.bootstrap.v1.failed"
    if phrase is None:
        assert "expiration_days: must be a number of days from 1 to 36500" in event.data["error"]
    else:
        outcome = next(t for t in event.data["tables"] if t["table"] == table)
        assert outcome["action"] == "blocked"
        assert phrase in outcome["error"] and "delete every partition older than" in outcome["error"]
    assert client.get_table(ref).time_partitioning.expiration_ms is None
    assert bigquery_snapshot(stack) == before
    assert tenant_ids(stack, table) == rows
    restore(gcs, inbox, "bootstrap.yaml", original)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("tenant_profiles.json", b"{not json", "is not valid JSON"),
        ("tenant_profiles.json", b"", "the file is empty"),
        ("tenant_profiles.json", b'[{"name": "tenant id", "type": "STRING"}]', "invalid column name"),
        ("tenant_profiles.json", b'[{"name": "x", "type": "VARCHAR"}]', "unknown type 'VARCHAR'"),
        ("bootstrap.yaml", b"tables: [oops", "is not valid YAML"),
        ("bad-name.json", b'[{"name": "x", "type": "STRING"}]', "the file name must be <table>.json"),
    ],
    ids=["invalid-json", "empty", "bad-column-name", "bad-type", "bad-manifest", "bad-file-name"],
)
def test_an_invalid_upload_gives_a_failed_event_and_changes_nothing(
    stack, inbox, gcs, seeded, name, data, message
):
    original = gcs.bucket(BUCKET).get_blob(PREFIX + name)
    original_bytes = original.download_as_bytes() if original is not None else None
    before = bigquery_snapshot(stack)

    generation = upload(gcs, name, data)
    event = inbox.wait(f"{BUCKET}/{PREFIX}{name}#{generation}")

    assert event.data["status"] == "failed"
    assert message in event.data["error"]
    assert bigquery_snapshot(stack) == before
    if original_bytes is not None:
        restore(gcs, inbox, name, original_bytes)
    else:
        gcs.bucket(BUCKET).blob(PREFIX + name).delete()


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("tenant_profiles.json", "elsewhere/"),
        ("README.md", PREFIX),
        ("tenant_profiles.json", PREFIX + "old/"),
    ],
    ids=["wrong-prefix", "not-a-schema-file", "sub-folder"],
)
def test_uploads_outside_the_schema_prefix_are_ignored(stack, inbox, gcs, seeded, name, prefix):
    before = bigquery_snapshot(stack)
    generation = upload(gcs, name, b"[]", prefix=prefix)
    rid = f"{BUCKET}/{prefix}{name}#{generation}"

    line = wait_for_log(stack, lambda entry: entry.get("object") == prefix + name)

    assert line["severity"] == "INFO"
    assert "upload ignored" in line["message"]
    assert inbox.all(rid) == []
    assert bigquery_snapshot(stack) == before


def test_an_older_generations_event_is_not_applied(stack, inbox, gcs, seeded):
    table = "tenant_profiles"
    old = upload(gcs, f"{table}.json", [*schema(table), _column("legacy_note")])
    new = upload(gcs, f"{table}.json", [*schema(table), _column("region_note")])
    applied = inbox.wait(f"{BUCKET}/{PREFIX}{table}.json#{new}")
    assert applied.data["status"] == "succeeded", applied.data["error"]
    before = bigquery_snapshot(stack)

    response = _post_finalized(stack, f"{PREFIX}{table}.json", old)  # arrives late, after the newer one

    assert response.status_code in (200, 204)
    line = wait_for_log(stack, lambda e: e.get("generation") == old and "not applied" in e["message"])
    assert "no longer live" in line["message"]
    assert bigquery_snapshot(stack) == before
    names = [f.name for f in stack.bigquery_client().get_table(f"tenants.{table}").schema]
    assert "region_note" in names and "legacy_note" not in names


def test_an_eventarc_finalized_event_is_handled_like_a_notification(stack, inbox, gcs, seeded):
    columns = [{"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Owner."}]
    blob = gcs.bucket(BUCKET).blob(PREFIX + "tenant_notes.json")
    # Upload outside the notified bucket's reach is impossible here, so post the Eventarc form
    # for an object that the notification already announced: both must give one table.
    blob.upload_from_string(json.dumps(columns))
    inbox.wait(f"{BUCKET}/{PREFIX}tenant_notes.json#{blob.generation}")

    response = _post_finalized(stack, blob.name, blob.generation)

    assert response.status_code in (200, 204)
    events = inbox.all(f"{BUCKET}/{PREFIX}tenant_notes.json#{blob.generation}")
    assert len(events) == 2  # a redelivery is recognisable by its request_id ...
    assert events[1].data["tables"] == [
        {"table": "tenant_notes", "action": "unchanged", "changes": [], "error": None}
    ]  # ... and changes nothing


def test_eight_uploads_at_once_each_get_their_event(stack, inbox, gcs, seeded):
    names = [f"tenant_batch_{i}" for i in range(8)]

    def put(name: str) -> int:
        columns = [
            {"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Owner."},
            {"name": name, "type": "INT64", "description": "Its own column."},
        ]
        return upload(gcs, f"{name}.json", columns)

    with ThreadPoolExecutor(8) as pool:
        generations = dict(zip(names, pool.map(put, names), strict=True))

    for name, generation in generations.items():
        event = inbox.wait(f"{BUCKET}/{PREFIX}{name}.json#{generation}")
        assert event.data["status"] == "succeeded", event.data
        assert [t["action"] for t in event.data["tables"]] == ["created"]
    client = stack.bigquery_client()
    for name in names:
        assert [f.name for f in client.get_table(f"tenants.{name}").schema] == ["tenant_id", name]
    statuses = [
        e.get("status")
        for e in log_lines(stack)
        if str(e.get("request_id", "")).startswith(f"{BUCKET}/{PREFIX}tenant_batch_")
    ]
    assert statuses.count("succeeded") == 8


def test_upload_command_validates_against_the_buckets_other_files(stack, gcs, seeded, tmp_path):
    bad = tmp_path / "tenant_usage_quotas.json"
    bad.write_text(json.dumps([c for c in schema("tenant_usage_quotas") if c["name"] != "usage_date"]))
    before = gcs.bucket(BUCKET).get_blob(PREFIX + "tenant_usage_quotas.json").generation

    result = run_cli(stack, "upload", str(bad))

    assert result.returncode == 1
    assert "'usage_date' is not a top-level column" in result.stderr  # the manifest partitions on it
    assert gcs.bucket(BUCKET).get_blob(PREFIX + "tenant_usage_quotas.json").generation == before


def test_sync_says_what_the_upload_will_do_and_refuses_a_blocked_change(stack, inbox, gcs, seeded, tmp_path):
    folder = tmp_path / "schemas"  # what the bucket holds now (earlier tests changed it), edited
    folder.mkdir()
    for item in gcs.list_blobs(BUCKET, prefix=PREFIX, delimiter="/"):
        (folder / item.name.removeprefix(PREFIX)).write_bytes(item.download_as_bytes())
    blob = gcs.bucket(BUCKET).blob
    (folder / "tenant_pipeline_configs.json").write_text(
        json.dumps([c for c in schema("tenant_pipeline_configs") if c["name"] != "description"])
    )
    before = blob(PREFIX + "tenant_pipeline_configs.json")
    before.reload()

    refused = run_cli(stack, "sync", "--from", str(folder))

    assert refused.returncode == 1, refused.stderr
    assert "uploading tenant_pipeline_configs.json to gs://" in refused.stdout
    assert "tenant_pipeline_configs  blocked" in refused.stdout
    assert "column description is not declared" in refused.stdout
    assert "not uploaded: tenant_pipeline_configs would be left as they are" in refused.stderr
    assert "--allow-blocked" in refused.stderr
    after = blob(PREFIX + "tenant_pipeline_configs.json")
    after.reload()
    assert after.generation == before.generation  # nothing uploaded

    columns = [*schema("tenant_pipeline_configs"), _column("synced_note")]
    (folder / "tenant_pipeline_configs.json").write_text(json.dumps(columns))
    in_place = run_cli(stack, "sync", "--from", str(folder))

    assert in_place.returncode == 0, in_place.stderr
    assert "tenant_pipeline_configs  update in place" in in_place.stdout
    assert "add column synced_note NULLABLE STRING" in in_place.stdout
    assert "uploaded to gs://" in in_place.stdout and "tenant_pipeline_configs.json" in in_place.stdout
    event = inbox.wait(request_id(gcs, "tenant_pipeline_configs.json"))
    assert [t["action"] for t in event.data["tables"]] == ["updated"]  # (a column cannot be taken back)


def test_plan_names_what_it_compares_and_show_prints_what_bigquery_holds(stack, seeded):
    planned = run_cli(stack, "plan", "--tables", "tenant_usage_quotas")
    shown = run_cli(stack, "show", "tenant_usage_quotas")

    assert planned.returncode in (0, 2), planned.stderr
    assert planned.stdout.startswith(f"comparing gs://{BUCKET}/{PREFIX} with BigQuery {PROJECT}.tenants")
    assert shown.returncode == 0, shown.stderr
    assert "dataset tenants in US" in shown.stdout
    assert (
        "tenant_usage_quotas  (partitioned by DAY on usage_date; clustered by tenant_id, usage_date)"
        in shown.stdout
    )
    assert "tenant_id" in shown.stdout and "REQUIRED" in shown.stdout
    mistyped = run_cli(stack, "plan", "--tables", "tenant_usage_quota")
    assert mistyped.returncode == 1
    assert "unknown table(s) tenant_usage_quota (did you mean tenant_usage_quotas?)" in mistyped.stderr


# --- helpers ---------------------------------------------------------------------------------


def _column(name: str) -> dict[str, str]:
    return {"name": name, "type": "STRING", "mode": "NULLABLE", "description": "Added by a test."}


def _post_finalized(stack: Stack, name: str, generation: int) -> requests.Response:
    """The Eventarc Cloud Storage trigger's event, in binary content mode."""
    headers = {
        "ce-id": uuid.uuid4().hex,
        "ce-specversion": "1.0",
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-subject": f"objects/{name}",
        "content-type": "application/json",
    }
    data = {"bucket": BUCKET, "name": name, "generation": str(generation), "metageneration": "1"}
    return requests.post(stack.env["FUNCTION_URL"], json=data, headers=headers, timeout=120)


def test_events_follow_shows_the_run_an_upload_started(stack, inbox, gcs, seeded):
    """`python -m function events --follow`: a temporary subscription, each event as it comes
    (type, request id, status, per-table actions and changes), deleted on exit."""
    watcher = subprocess.Popen(
        [sys.executable, "-m", "function", "events", "--follow"],
        cwd=REPO,
        env={**os.environ, **stack.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        topic = f"projects/{PROJECT}/topics/{stack.config.completion_topic}"
        publisher = stack.publisher()

        def temporary() -> list[str]:
            subs = publisher.list_topic_subscriptions(request={"topic": topic})
            return [s for s in subs if "bootstrap-wait-" in s]

        printed: list[str] = []
        reader = threading.Thread(target=lambda: printed.extend(watcher.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        wait_until(temporary, what="the watcher's subscription")
        columns = [*schema("tenant_subscriptions"), _column("watched_note")]
        generation = upload(gcs, "tenant_subscriptions.json", columns)
        request_id = f"{BUCKET}/{PREFIX}tenant_subscriptions.json#{generation}"
        wait_until(lambda: any(request_id in line for line in printed), what="the event shown", timeout=120)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=60)
        reader.join(timeout=10)
        out = "".join(printed)
    finally:
        if watcher.poll() is None:
            watcher.kill()

    assert watcher.returncode == 0, err
    assert "com.convergence.bootstrap.v1.completed" in out
    assert f"request {request_id}: succeeded" in out
    assert "tenant_subscriptions  updated" in out and "add column watched_note NULLABLE STRING" in out
    assert temporary() == []  # deleted on exit
