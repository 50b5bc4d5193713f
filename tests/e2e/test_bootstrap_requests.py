"""Bootstrap requests end to end: Pub/Sub emulator -> push -> functions-framework -> the
function -> local-bigquery, and the completion event back on the completion topic."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from deploy.local.stack import Stack, StackConfig
from tests.conftest import SCHEMAS, TABLES
from tests.support.e2e import bigquery_snapshot, log_lines, publish, push, run_cli

pytestmark = pytest.mark.emulators


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        workdir=tmp_path_factory.mktemp("stack"),
        function_env={"SCHEMA_SOURCE": str(SCHEMAS), "BOOTSTRAP_RETRY_DEADLINE": "3"},
    )
    with Stack(config) as stack:
        yield stack


def test_dry_run_then_bootstrap_then_nothing_to_do(stack, inbox):
    publish(stack, {"request_id": "plan-1", "dry_run": True})
    planned = inbox.wait("plan-1")
    assert planned["type"] == "com.convergence.bootstrap.v1.planned"
    assert planned.data["status"] == "planned"
    assert {t["table"]: t["action"] for t in planned.data["tables"]} == dict.fromkeys(TABLES, "created")
    assert bigquery_snapshot(stack) == {}  # a plan creates nothing

    first = run_cli(stack, "publish", "--request-id", "boot-1", "--wait", "--timeout", "120")
    assert first.returncode == 0, first.stderr
    assert "com.convergence.bootstrap.v1.completed" in first.stdout
    assert first.stdout.count(" created") >= len(TABLES)
    event = inbox.wait("boot-1")
    assert event["subject"] == "tenants"
    assert event["datacontenttype"] == "application/json"
    data = event.data
    assert (data["status"], data["dataset_action"], data["dry_run"]) == ("succeeded", "created", False)
    assert {t["table"]: t["action"] for t in data["tables"]} == dict.fromkeys(TABLES, "created")
    assert data["trigger"]["type"] == "pubsub"
    assert (
        data["trigger"]["source"]
        == "//pubsub.googleapis.com/projects/local-project/topics/bootstrap-requests"
    )
    assert data["schema_digest"].startswith("sha256:")
    client = stack.bigquery_client()
    assert sorted(t.table_id for t in client.list_tables("tenants")) == TABLES

    second = run_cli(stack, "publish", "--request-id", "boot-2", "--wait", "--timeout", "120")
    assert second.returncode == 0, second.stderr
    again = inbox.wait("boot-2").data
    assert (again["status"], again["dataset_action"]) == ("succeeded", "unchanged")
    assert {t["action"] for t in again["tables"]} == {"unchanged"}

    wait = ("--wait", "--timeout", "120")
    nothing = run_cli(stack, "publish", "--request-id", "plan-2", "--dry-run", *wait)
    assert nothing.returncode == 0, nothing.stderr  # a plan with nothing to do
    forced = ("--force-recreate-tables", "--tables", "tenant_profiles", "--confirm", "tenants")
    would = run_cli(stack, "publish", "--request-id", "plan-3", "--dry-run", *forced, *wait)
    assert would.returncode == 2, would.stderr  # a plan with something to do, as `plan` exits
    assert "recreate" in would.stdout

    summaries = [line for line in log_lines(stack) if line.get("request_id") == "boot-2"]
    assert len(summaries) == 1
    assert summaries[0]["severity"] == "INFO"
    assert summaries[0]["counts"] == {"unchanged": len(TABLES)}
    assert summaries[0]["trigger"]["type"] == "pubsub"


BAD_MESSAGES = [
    ("not-json", b"tables: all", "is not JSON"),
    ("json-array", b'["tenant_profiles"]', "must be a JSON object"),
    ("json-string", b'"go"', "must be a JSON object"),
    (
        "unknown-field",
        b'{"request_id": "%s", "force_recreate_table": true}',
        "unknown field(s) force_recreate_table",
    ),
    ("dry-run-string", b'{"request_id": "%s", "dry_run": "true"}', "dry_run must be a boolean"),
    ("tables-string", b'{"request_id": "%s", "tables": "tenant_profiles"}', "tables must be a list"),
    ("tables-number", b'{"request_id": "%s", "tables": [1]}', "invalid table names"),
    ("tables-path", b'{"request_id": "%s", "tables": ["../x"]}', "invalid table names"),
    (
        "unknown-table",
        b'{"request_id": "%s", "tables": ["tenant_profile"]}',
        "unknown table(s) tenant_profile",
    ),
    ("force-no-confirm", b'{"request_id": "%s", "force_recreate_tables": true}', 'set "confirm": "tenants"'),
    (
        "force-wrong-confirm",
        b'{"request_id": "%s", "force_recreate_dataset": true, "confirm": "tenant"}',
        'set "confirm": "tenants"',
    ),
    (
        "force-not-allowed",
        b'{"request_id": "%s", "force_recreate_tables": true, "confirm": "tenants"}',
        "ALLOW_DESTRUCTIVE is not true",
    ),
    ("confirm-without-force", b'{"request_id": "%s", "confirm": "tenants"}', "no force flag is set"),
    (
        "dataset-recreation-of-some-tables",
        b'{"request_id": "%s", "force_recreate_dataset": true, "confirm": "tenants", "tables": ["tenant_profiles"]}',
        "force_recreate_dataset recreates every declared table, so it cannot take tables",
    ),
    (
        "destructive-without-its-own-id",
        b'{"force_recreate_tables": true, "confirm": "tenants"}',
        "a destructive request needs its own request_id",
    ),
    (
        "accept-losses-without-dataset-recreation",
        b'{"request_id": "%s", "force_recreate_tables": true, "confirm": "tenants", "accept_losses": ["v"]}',
        "accept_losses applies only to force_recreate_dataset",
    ),
    ("empty-tables", b'{"request_id": "%s", "tables": []}', "tables is empty"),
    ("oversized", b'{"request_id": "%s", "pad": "' + b"x" * 70_000 + b'"}', "larger than 65536 bytes"),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES])
def test_bad_messages_are_acknowledged_with_a_failed_event_and_change_nothing(
    stack, proxies, inbox, case, data, message
):
    request_id = f"bad-{case}"
    before = bigquery_snapshot(stack)
    proxies["bigquery"].reset()

    response = push(stack, data.replace(b"%s", request_id.encode()), message_id=request_id)

    assert 200 <= response.status_code < 300, response.text  # acknowledged: not delivered again
    event = inbox.wait(request_id)
    assert event["type"] == "com.convergence.bootstrap.v1.failed"
    assert event.data["status"] == "failed"
    assert message in event.data["error"]
    assert event.data["tables"] == []
    assert proxies["bigquery"].requests() == []  # refused before any request, reads included
    assert bigquery_snapshot(stack) == before
    errors = [line for line in log_lines(stack) if line.get("request_id") == request_id]
    assert [line["severity"] for line in errors] == ["ERROR"]
    assert message in errors[0]["message"]


def test_invalid_base64_is_a_failed_event(stack, inbox):
    response = _raw_push(stack, "not base64!", "bad-base64")
    assert response.status_code in (200, 204)
    assert "not valid base64" in inbox.wait("bad-base64").data["error"]


def test_other_event_types_are_acknowledged_and_ignored(stack):
    url = stack.env["FUNCTION_URL"]
    headers = {
        "ce-id": "other-1",
        "ce-source": "//example/other",
        "ce-type": "com.example.something.v1",
        "ce-specversion": "1.0",
        "content-type": "application/json",
    }
    response = requests.post(url, data=b"{}", headers=headers, timeout=30)
    assert response.status_code in (200, 204)
    ignored = [line for line in log_lines(stack) if line.get("event_id") == "other-1"]
    assert ignored[0]["severity"] == "WARNING"
    assert "com.example.something.v1" in ignored[0]["message"]


def test_bigquery_outage_answers_5xx_and_the_redelivery_completes(stack, inbox):
    stack.kill("bigquery")
    try:
        response = push(stack, json.dumps({"request_id": "outage-direct"}).encode())
        assert response.status_code >= 500  # raised: Pub/Sub would deliver it again
        publish(stack, {"request_id": "outage-1"})  # the emulator redelivers it until it succeeds
        assert inbox.all("outage-1") == []
    finally:
        stack.restart("bigquery")  # an empty emulator: the redelivery must create everything again

    event = inbox.wait("outage-1", timeout=120)
    assert event.data["status"] == "succeeded"
    # An attempt cut short while the emulator came back may have created some tables already.
    assert {t["action"] for t in event.data["tables"]} <= {"created", "unchanged"}
    assert sorted(t.table_id for t in stack.bigquery_client().list_tables("tenants")) == TABLES
    assert len(inbox.all("outage-1")) == 1
    raised = [
        line
        for line in log_lines(stack)
        if line.get("request_id") in ("outage-direct", "outage-1") and line["severity"] == "WARNING"
    ]
    assert raised and all(
        "transient failure, raising so the event is delivered again" in line["message"] for line in raised
    )


def _raw_push(stack: Stack, data: str, message_id: str) -> requests.Response:
    project, topic = stack.config.project, stack.config.requests_topic
    body = {"message": {"data": data, "messageId": message_id, "attributes": {}}, "subscription": "s"}
    return requests.post(
        f"{stack.env['FUNCTION_URL']}projects/{project}/topics/{topic}", json=body, timeout=60
    )
