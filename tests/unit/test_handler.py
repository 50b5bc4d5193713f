"""The handler's error contract, row by row of the README's "Errors: what gets retried" table.

Each row's failure is sent to `handler.handle` in process: the real clients and adapters talk to
local servers that answer as BigQuery or Cloud Storage would in that state (tests/support/
canned.py); only the completion event's publishing is captured instead of sent. For each row the
test asserts what the README says: whether the event is acknowledged or raised, the log line's
severity and words, and the completion event.

Over 400 lines: a failure for each row of the README's table, each with the servers' answers it needs.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from function import completion, handler, runner
from function.errors import DeploymentError, TransientError
from function.ledger import Ledger
from function.request import parse_request
from tests.conftest import REPO
from tests.support.canned import Answer, Canned, Request, error

PROJECT = "local-project"
TABLE = [{"name": "tenant_id", "type": "STRING", "mode": "REQUIRED"}]
MANIFEST = "dataset: {description: Registry.}\ntables: {t: {description: Tenants.}}\n"
FORCED = {"request_id": "force-1", "force_recreate_tables": True, "confirm": "tenants"}


@dataclass
class World:
    """One function instance's surroundings: its settings, schema folder, and the two APIs."""

    patch: pytest.MonkeyPatch  # settings are environment variables: `patch.setenv`
    schemas: Path
    bigquery: Canned
    storage: Canned
    events: list[CloudEvent] = field(default_factory=list)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "t.json").write_text(json.dumps(TABLE))
    (schemas / "bootstrap.yaml").write_text(MANIFEST)
    with Canned() as bigquery, Canned() as storage:
        env = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "BIGQUERY_EMULATOR_HOST": bigquery.url,
            "STORAGE_EMULATOR_HOST": storage.url,
            "SCHEMA_SOURCE": str(schemas),
            "BOOTSTRAP_STATE_BUCKET": "state",
            "BOOTSTRAP_RETRY_DEADLINE": "1",
            "ALLOW_DESTRUCTIVE": "true",
        }
        for name in list(os.environ):
            if name.startswith(("BOOTSTRAP_", "GOOGLE_CLOUD_", "GCP_")) or name.endswith("_EMULATOR_HOST"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        found = World(monkeypatch, schemas, bigquery, storage)
        monkeypatch.setattr(completion, "publish", lambda settings, event: found.events.append(event))
        yield found


# --- the events ----------------------------------------------------------------------------------


def published(data: bytes, time: str | None = None, **attributes: str) -> CloudEvent:
    sent = time or datetime.now(UTC).isoformat()
    message = {"data": base64.b64encode(data).decode(), "messageId": "m-1", "attributes": attributes}
    return CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/bootstrap-requests",
            "id": "e-1",
            "time": sent,
        },
        {"message": message},
    )


def request(time: str | None = None, **fields: Any) -> CloudEvent:
    return published(json.dumps(fields).encode(), time)


def finalized(bucket: str, name: str, generation: int) -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.storage.object.v1.finalized",
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "id": "e-2",
        },
        {"bucket": bucket, "name": name, "generation": str(generation)},
    )


# --- BigQuery and Cloud Storage in the states the rows need ----------------------------------------


def dataset_exists(w: World) -> None:
    resource = {
        "datasetReference": {"projectId": PROJECT, "datasetId": "tenants"},
        "location": "US",
        "description": "Registry.",
        "etag": "e",
    }
    w.bigquery.on("GET", r"/datasets/tenants$", Answer(200, resource))
    backups = {**resource, "datasetReference": {"projectId": PROJECT, "datasetId": "tenants_backups"}}
    w.bigquery.on("GET", r"/datasets/tenants_backups$", Answer(200, backups))


def table_exists(w: World, fields: list[dict[str, Any]]) -> None:
    resource = {
        "tableReference": {"projectId": PROJECT, "datasetId": "tenants", "tableId": "t"},
        "schema": {"fields": fields},
        "description": "Tenants.",
        "etag": "e",
    }
    w.bigquery.on("GET", r"/datasets/tenants/tables/t$", Answer(200, resource))


def ledger_entry(w: World, entry: dict[str, Any] | bytes) -> None:
    """The request's ledger object, as Cloud Storage answers a read of it."""
    name = Ledger._name(FORCED["request_id"])
    meta = {"bucket": "state", "name": name, "generation": "4", "metageneration": "1", "size": "1"}
    w.storage.on(
        "GET", "^" + re.escape(f"/storage/v1/b/state/o/{name.replace('/', '%2F')}") + "$", Answer(200, meta)
    )
    body = entry if isinstance(entry, bytes) else json.dumps(entry).encode()
    w.storage.on("GET", r"/download/storage/v1/b/state/o/", Answer(200, body))


def entry(state: str, **changes: Any) -> dict[str, Any]:
    forced = parse_request(json.dumps(FORCED).encode(), "m")
    return {
        "version": 1,
        "request_id": forced.request_id,
        "digest": forced.digest,
        "state": state,
        "owner": "other-host/1",
        "recreated": [],
        "backups": [],
        "lease_until": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
        **changes,
    }


def ledger_writes(w: World, *statuses: int) -> None:
    """Conditional writes of the ledger object answered in turn (200: written, 412: not)."""
    generation = iter(range(1, 100))

    def write(status: int) -> Callable[[Request], Answer]:
        def answer(request: Request) -> Answer:
            if status != 200:
                return Answer(status, error(status, "conditionNotMet", "precondition failed"))
            return Answer(
                200, {"bucket": "state", "name": "ledger/x.json", "generation": str(next(generation))}
            )

        return answer

    w.storage.on("POST", r"/upload/storage/v1/b/state/o$", *[write(s) for s in statuses])


def copy_job_fails(w: World, reason: str) -> None:
    def job(request: Request) -> Answer:
        job_id = json.loads(request.body)["jobReference"]["jobId"] if request.body else "j"
        failure = {"reason": reason, "message": "the job failed"}
        return Answer(
            200,
            {
                "jobReference": {"projectId": PROJECT, "jobId": job_id, "location": "US"},
                "configuration": {"copy": {}},
                "status": {"state": "DONE", "errorResult": failure, "errors": [failure]},
            },
        )

    w.bigquery.on("POST", r"/projects/local-project/jobs$", job)
    w.bigquery.on("GET", r"/projects/local-project/jobs/", job)


# --- one scenario per row of the README's table ------------------------------------------------------


def _malformed(w: World) -> CloudEvent:
    return published(b"tables: all")


def _invalid_schema(w: World) -> CloudEvent:
    (w.schemas / "t.json").write_text('[{"name": "tenant id", "type": "STRING"}]')
    return request()


def _blocked(w: World) -> CloudEvent:
    dataset_exists(w)
    table_exists(w, [{"name": "tenant_id", "type": "INTEGER", "mode": "REQUIRED"}])
    return request()


def _refused_by_bigquery(w: World) -> CloudEvent:
    w.bigquery.on("GET", r"/datasets/tenants", Answer(403, error(403, "accessDenied", "Access Denied")))
    return request()


def _without_consents(w: World) -> CloudEvent:
    return request(**{**FORCED, "confirm": "other"})


def _reused_id(w: World) -> CloudEvent:
    ledger_entry(w, entry("done", digest="sha256:another", result={"status": "succeeded"}))
    return request(**FORCED)


def _unreadable_ledger(w: World) -> CloudEvent:
    ledger_entry(w, b"{not json")
    return request(**FORCED)


def _too_old(w: World) -> CloudEvent:
    return request(time=(datetime.now(UTC) - timedelta(hours=2)).isoformat())


def _no_time(w: World) -> CloudEvent:
    return request(time="yesterday-ish", **FORCED)


def _transient(w: World) -> CloudEvent:
    w.bigquery.on("GET", r"/datasets/", Answer(503, error(503, "backendError", "try again")))
    return request()


def _copy_job_fails(w: World) -> CloudEvent:
    dataset_exists(w)
    table_exists(w, TABLE)
    ledger_writes(w, 200)
    copy_job_fails(w, "backendError")
    return request(**FORCED, rows="discard")  # straight to the backup (no migration's check query)


def _running_elsewhere(w: World) -> CloudEvent:
    ledger_writes(w, 412)
    ledger_entry(w, entry("running"))
    return request(**FORCED)


def _taken_over(w: World) -> CloudEvent:
    dataset_exists(w)
    table_exists(w, TABLE)
    discard = {**FORCED, "rows": "discard"}  # straight to the backup (no migration's check query)
    ledger_writes(w, 200, 412)  # the claim, then the fence before the backup: another wrote first
    ledger_entry(w, entry("running", digest=parse_request(json.dumps(discard).encode(), "m").digest))
    return request(**discard)


def _bad_setting(w: World) -> CloudEvent:
    w.patch.setenv("BOOTSTRAP_CONCURRENCY", "999")
    return request()


def _unreadable_bucket(w: World) -> CloudEvent:
    w.patch.setenv("SCHEMA_SOURCE", "gs://schemas/s/")
    w.storage.on("GET", r"/b/schemas/o$", Answer(403, error(403, "forbidden", "no storage.objects.list")))
    return request()


def _bug(w: World) -> CloudEvent:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a bug")

    w.patch.setattr(runner, "run", broken)
    return request()


def _other_type(w: World) -> CloudEvent:
    return CloudEvent({"type": "com.example.other", "source": "//x", "id": "e-3"}, {})


def _not_an_upload(w: World) -> CloudEvent:
    return published(
        b"{}", eventType="OBJECT_DELETE", bucketId="schemas", objectId="s/t.json", objectGeneration="1"
    )


def _outside_prefix(w: World) -> CloudEvent:
    w.patch.setenv("SCHEMA_SOURCE", "gs://schemas/s/")
    return finalized("schemas", "elsewhere/t.json", 1)


def _superseded(w: World) -> CloudEvent:
    w.patch.setenv("SCHEMA_SOURCE", "gs://schemas/s/")
    listing = {"items": [{"bucket": "schemas", "name": "s/t.json", "generation": "2", "size": "10"}]}
    w.storage.on("GET", r"/b/schemas/o$", Answer(200, listing))
    return finalized("schemas", "s/t.json", 1)


def _already_ran(w: World) -> CloudEvent:
    recorded = {  # what the first delivery's completion event said
        "request_id": FORCED["request_id"],
        "status": "succeeded",
        "dry_run": False,
        "project": PROJECT,
        "dataset": "tenants",
        "location": "US",
        "trigger": {"type": "pubsub", "id": "m-0", "source": "//pubsub", "subject": None},
        "dataset_action": "unchanged",
        "tables": [{"table": "t", "action": "recreated", "changes": [], "error": None}],
        "backups": [],
        "schema_digest": "sha256:0",
        "error": None,
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.000Z",
        "duration_ms": 1000,
    }
    ledger_entry(w, entry("done", result=recorded))
    return request(**FORCED)


SCENARIOS: dict[str, Callable[[World], CloudEvent]] = {
    "a malformed message or CloudEvent": _malformed,
    "an invalid schema file or manifest": _invalid_schema,
    "a change BigQuery cannot make in place": _blocked,
    "BigQuery refuses a read or a change (403, 400)": _refused_by_bigquery,
    "a destructive request without its consents, or without a request ledger": _without_consents,
    "a request_id used again with another body": _reused_id,
    "a ledger entry that cannot be read": _unreadable_ledger,
    "an event older than BOOTSTRAP_MAX_EVENT_AGE, or dated in the future": _too_old,
    "a destructive request whose event has no readable time": _no_time,
    "BigQuery or Cloud Storage failing transiently (5xx, 429, rateLimitExceeded, timeouts, lost connections) past the retries": _transient,
    "a backup's copy job failing with backendError, or outlasting the retry deadline": _copy_job_fails,
    "another delivery of the same destructive request is running": _running_elsewhere,
    "another delivery took the destructive request over, or the invocation's deadline passed before a destructive step": _taken_over,
    "a setting is missing or invalid": _bad_setting,
    "the schema bucket or SCHEMA_SOURCE cannot be read (missing, 403, 404)": _unreadable_bucket,
    "an unexpected error (a bug)": _bug,
    "an event type the function does not handle": _other_type,
    "a storage notification that is not an upload": _not_an_upload,
    "an upload outside the schema prefix": _outside_prefix,
    "an upload whose generation is no longer the live one": _superseded,
    "a delivery of a destructive request that already ran": _already_ran,
}


# --- the README's table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    failure: str
    kind: str
    severity: str
    words: str
    event: str


def readme_rows() -> list[Row]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Errors: what gets retried", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("failure", "---") or set(cells[0]) <= {"-"}:
            continue
        severity, words = re.fullmatch(r"(INFO|WARNING|ERROR) `([^`]+)`.*", cells[2]).groups()  # type: ignore[union-attr]
        rows.append(Row(cells[0], cells[1], severity, words, cells[3]))
    return rows


ROWS = readme_rows()


def test_every_row_has_a_scenario_and_every_scenario_a_row() -> None:
    assert [r.failure for r in ROWS] == list(SCENARIOS)


@pytest.mark.parametrize("row", ROWS, ids=[r.failure for r in ROWS])
def test_each_failure_is_handled_as_the_readme_says(
    row: Row, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    event = SCENARIOS[row.failure](world)
    raised: BaseException | None = None
    try:
        handler.handle(event)
    except Exception as exc:
        raised = exc
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    # The kind: acknowledged (returned) or raised, and as which error.
    expected_raise = {"transient": TransientError, "deployment": DeploymentError, "unexpected": ValueError}
    if row.kind in expected_raise:
        assert isinstance(raised, expected_raise[row.kind]), raised
    else:
        assert raised is None, raised
    # The log line.
    assert [
        (line["severity"], row.words in line["message"]) for line in lines if row.words in line["message"]
    ] == [(row.severity, True)], lines
    # The completion event.
    if row.event.startswith("none"):
        assert world.events == []
    else:
        [sent] = world.events
        data = sent.data
        if row.event.startswith("`failed`"):
            assert sent["type"] == "com.convergence.bootstrap.v1.failed"
            assert data["status"] == "failed"
            if "the table `blocked`" in row.event:
                assert [t["action"] for t in data["tables"]] == ["blocked"]
            if "the table or dataset `failed`" in row.event:
                assert data["dataset_action"] == "failed" or "failed" in [t["action"] for t in data["tables"]]
        else:
            assert data["duplicate"] is True
