"""Safety under at-least-once delivery: a forced recreation runs once per request id, backs up
what it drops, answers redeliveries with its recorded result; backups can be restored; stale
events are not acted on."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests

from deploy.local.stack import Stack, StackConfig
from tests.conftest import PROJECT, SCHEMAS
from tests.support.e2e import Inbox, bigquery_snapshot, publish, push, run_cli
from tests.support.rows import required_row

pytestmark = pytest.mark.emulators

TABLE = "tenant_profiles"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        workdir=tmp_path_factory.mktemp("stack"),
        function_env={
            "SCHEMA_SOURCE": str(SCHEMAS),
            "ALLOW_DESTRUCTIVE": "true",
            "BOOTSTRAP_RETRY_DEADLINE": "5",
        },
    )
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def inbox(stack: Stack) -> Inbox:
    inbox = Inbox(stack)
    publish(stack, {"request_id": "initial"})
    assert inbox.wait("initial").data["status"] == "succeeded"
    return inbox


def insert(stack: Stack, first: int, count: int) -> None:
    client = stack.bigquery_client()
    rows = [required_row(client, f"tenants.{TABLE}", i) for i in range(first, first + count)]
    assert client.insert_rows_json(f"tenants.{TABLE}", rows) == []


def rows(stack: Stack, table: str = TABLE, dataset: str = "tenants") -> list[str]:
    return sorted(r["tenant_id"] for r in stack.bigquery_client().list_rows(f"{PROJECT}.{dataset}.{table}"))


def backups(stack: Stack) -> list[str]:
    client = stack.bigquery_client()
    return sorted(t.table_id for t in client.list_tables("tenants_backups"))


def forced(request_id: str, rows: str = "keep") -> bytes:
    message = {
        "request_id": request_id,
        "tables": [TABLE],
        "force_recreate_tables": True,
        "confirm": "tenants",
        "rows": rows,
    }
    return json.dumps(message).encode()


def test_a_forced_request_delivered_five_times_recreates_once(stack, inbox):
    insert(stack, 0, 3)
    before = (
        backups(stack)
        if "tenants_backups" in [d.dataset_id for d in stack.bigquery_client().list_datasets()]
        else []
    )

    first = push(stack, forced("force-seq"), message_id="m-0")
    assert first.status_code in (200, 204)
    event = inbox.wait("force-seq")
    assert event.data["status"] == "succeeded"
    assert [(t["table"], t["action"]) for t in event.data["tables"]] == [(TABLE, "recreated")]
    [backup] = event.data["backups"]
    assert (backup["table"], backup["rows"]) == (TABLE, 3)
    insert(stack, 10, 2)  # written after the first execution: must survive every redelivery

    for attempt in range(1, 5):
        again = push(stack, forced("force-seq"), message_id=f"m-{attempt}")
        assert again.status_code in (200, 204)
    inbox.wait("force-seq", count=5)
    events = inbox.all("force-seq")

    assert len(events) == 5
    assert [e.data.get("duplicate", False) for e in events] == [False, True, True, True, True]
    assert all(e.data["backups"] == event.data["backups"] for e in events)
    kept = rows(stack)  # migrated once, then untouched by the redeliveries
    assert {"tenant-0", "tenant-1", "tenant-2", "tenant-10", "tenant-11"} <= set(kept)
    assert len(kept) == len(set(kept))  # no row twice
    new_backups = sorted(set(backups(stack)) - set(before))
    assert len(new_backups) == 1
    assert rows(stack, new_backups[0], "tenants_backups") == ["tenant-0", "tenant-1", "tenant-2"]
    client = stack.bigquery_client()
    assert client.get_dataset("tenants_backups").default_table_expiration_ms == 7 * 86_400_000
    # The backup expires on its own, 7 days (BOOTSTRAP_BACKUP_TTL_DAYS) after it was taken, and
    # the completion event says when.
    copy = client.get_table(f"tenants_backups.{new_backups[0]}")
    assert copy.expires is not None
    assert copy.expires.isoformat().replace("+00:00", "Z")[:19] == backup["expires_at"][:19]
    taken = datetime.fromisoformat(backup["created_at"])
    assert datetime.fromisoformat(backup["expires_at"]) - taken == timedelta(days=7)


def test_a_forced_request_delivered_five_times_at_once_recreates_once(stack, inbox):
    insert(stack, 20, 1)
    before = backups(stack)

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: push(stack, forced("force-par"), message_id=f"p-{i}"), range(5)))

    assert [a.status_code for a in answers] == [answers[0].status_code] * 5
    assert all(a.status_code in (200, 204) for a in answers)
    inbox.wait("force-par", count=5)
    events = inbox.all("force-par")
    originals = [e for e in events if not e.data.get("duplicate")]
    assert len(originals) == 1
    assert originals[0].data["tables"][0]["action"] == "recreated"
    assert len(set(backups(stack)) - set(before)) == 1


def test_backups_are_listed_and_restored_without_overwriting_rows(stack, inbox):
    insert(stack, 30, 2)
    held = rows(stack)  # with the rows migrated by the tests before this one
    push(stack, forced("force-restore", rows="discard"), message_id="r-0")
    [backup] = inbox.wait("force-restore").data["backups"]
    name = backup["backup"].split(".")[-1]
    insert(stack, 40, 1)

    listed = run_cli(stack, "backups")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout and f"of tenants.{TABLE}, {len(held)} rows" in listed.stdout

    refused = run_cli(stack, "restore", name)
    assert refused.returncode == 1
    assert "tenant_profiles holds rows; restoring would replace them" in refused.stderr
    assert rows(stack) == ["tenant-40"]

    elsewhere = run_cli(stack, "restore", name, "--to", "profiles_restored")
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert rows(stack, "profiles_restored") == held

    unconfirmed = run_cli(stack, "restore", name, "--force")
    assert unconfirmed.returncode == 1
    assert "pass --confirm tenants (the dataset id)" in unconfirmed.stderr  # the CLI's words, not JSON's
    not_allowed = run_cli(stack, "restore", name, "--force", "--confirm", "tenants")
    assert not_allowed.returncode == 1 and "pass --allow-destructive" in not_allowed.stderr
    assert rows(stack) == ["tenant-40"]
    before = backups(stack)

    forced_restore = run_cli(stack, "restore", name, "--force", "--confirm", "tenants", "--allow-destructive")

    assert forced_restore.returncode == 0, forced_restore.stderr
    assert rows(stack) == held
    [replaced] = sorted(set(backups(stack)) - set(before))  # what the restore overwrote, kept
    assert rows(stack, replaced, "tenants_backups") == ["tenant-40"]
    assert f"backed up {TABLE}" in forced_restore.stdout


def post_dated(stack: Stack, data: bytes, sent: str, message_id: str) -> requests.Response:
    """A request's messagePublished CloudEvent with the time attribute `sent`, as Eventarc posts it."""
    headers = {
        "ce-id": uuid.uuid4().hex,
        "ce-specversion": "1.0",
        "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/bootstrap-requests",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-time": sent,
        "content-type": "application/json",
    }
    message = {"data": base64.b64encode(data).decode(), "messageId": message_id, "attributes": {}}
    return requests.post(stack.env["FUNCTION_URL"], json={"message": message}, headers=headers, timeout=60)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_the_same_request_id_with_another_body_is_refused_and_touches_nothing(stack, inbox):
    insert(stack, 50, 1)
    push(stack, forced("reused-id"), message_id="u-0")
    first = inbox.wait("reused-id").data
    assert first["status"] == "succeeded", first["tables"]
    other = json.loads(forced("reused-id"))
    other["tables"] = ["tenant_api_keys"]
    keys = rows(stack, "tenant_api_keys")
    before = bigquery_snapshot(stack)

    response = push(stack, json.dumps(other).encode(), message_id="u-1")

    assert response.status_code in (200, 204)
    inbox.wait("reused-id", count=2)
    second = inbox.all("reused-id")[1]
    assert second.data["status"] == "failed"
    assert "request_id 'reused-id' was already used for a different request" in second.data["error"]
    assert not second.data.get("duplicate")
    assert bigquery_snapshot(stack) == before
    assert rows(stack, "tenant_api_keys") == keys


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        ("yesterday-ish", "the event carries no readable time"),
        (_iso(datetime.now(UTC) + timedelta(hours=3)), "in the future: not acted on"),
    ],
    ids=["unreadable time", "three hours ahead"],
)
def test_a_destructive_request_whose_time_cannot_be_trusted_is_refused(stack, inbox, sent, reason):
    request_id = f"untimed-{uuid.uuid4().hex[:6]}"
    insert(stack, 60, 1)
    before = bigquery_snapshot(stack)

    response = post_dated(stack, forced(request_id), sent, message_id=request_id)

    assert response.status_code in (200, 204)
    event = inbox.wait(request_id)
    assert event.data["status"] == "failed"
    assert reason in event.data["error"]
    assert bigquery_snapshot(stack) == before


def test_a_late_duplicate_of_a_finished_request_gets_its_recorded_answer(stack, inbox):
    insert(stack, 70, 1)
    push(stack, forced("late-dup"), message_id="l-0")
    first = inbox.wait("late-dup")
    assert first.data["status"] == "succeeded"
    before = bigquery_snapshot(stack)

    two_hours_ago = _iso(datetime.now(UTC) - timedelta(hours=2))
    response = post_dated(stack, forced("late-dup"), two_hours_ago, message_id="l-1")

    assert response.status_code in (200, 204)
    inbox.wait("late-dup", count=2)
    late = inbox.all("late-dup")[1]
    assert late.data["status"] == "succeeded" and late.data["duplicate"] is True
    assert late.data["tables"] == first.data["tables"]
    assert bigquery_snapshot(stack) == before


def test_rows_written_by_dml_keep_a_restore_from_overwriting_them(stack, inbox):
    """The metadata's row count lags behind DML; `restore` asks for the rows themselves."""
    push(stack, forced("dml-restore", rows="discard"), message_id="d-0")
    [backup] = inbox.wait("dml-restore").data["backups"]
    client = stack.bigquery_client()
    client.query(
        f"INSERT INTO `{PROJECT}.tenants.{TABLE}` (tenant_id, display_name, status, created_at, updated_at) "
        "VALUES ('tenant-dml', 'd', 'active', TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01')"
    ).result()

    refused = run_cli(stack, "restore", backup["backup"].split(".")[-1])

    assert refused.returncode == 1
    assert f"{TABLE} holds rows; restoring would replace them" in refused.stderr
    assert rows(stack) == ["tenant-dml"]


def test_a_stale_event_is_acknowledged_with_a_failed_event_and_not_acted_on(stack, inbox):
    before = bigquery_snapshot(stack)
    sent = (datetime.now(UTC) - timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    message = {
        "data": "eyJyZXF1ZXN0X2lkIjogInN0YWxlIn0=",
        "messageId": "stale-m",
        "attributes": {},
    }  # {"request_id": "stale"}
    headers = {
        "ce-id": uuid.uuid4().hex,
        "ce-specversion": "1.0",
        "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/bootstrap-requests",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-time": sent,
        "content-type": "application/json",
    }

    response = requests.post(
        stack.env["FUNCTION_URL"], json={"message": message}, headers=headers, timeout=60
    )

    assert response.status_code in (200, 204)
    event = inbox.wait("stale")
    assert event.data["status"] == "failed"
    assert "older than BOOTSTRAP_MAX_EVENT_AGE=3600 s" in event.data["error"]
    assert bigquery_snapshot(stack) == before
