"""A corpus of bad input, end to end: malformed CloudEvents (binary and structured), Pub/Sub
push bodies, bootstrap requests, storage events and notifications, and schema files and
manifests uploaded through the bucket, each sent to the real function over HTTP.

For every case, the contract's answer: the invocation is acknowledged (2xx: Pub/Sub and
Eventarc do not deliver it again), and either a `failed` completion event plus one ERROR log
line name the problem, or (an event that is not for this function) a WARNING/INFO log line
says why it was ignored and no event is published. Neither BigQuery nor the buckets change
(an upload case's own object aside). Where functions-framework (or gunicorn) refuses the
request before the function is called, the case asserts that answer and that the function
never saw it. Names that could reach an API path (tables, datasets, object names) must be
refused before any API call.

Complements BAD_MESSAGES (test_bootstrap_requests.py), the invalid uploads of
test_schema_uploads.py and the pure corpus of tests/unit/test_schema_files.py: the cases here
are new, or reach the function by another route.

Over 400 lines: a corpus, one case per bad input, on one stack.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from google.cloud import storage

from deploy.local.stack import Stack, StackConfig
from function.sync import sync_folder
from tests.conftest import BUCKET, PREFIX, SCHEMAS
from tests.support.e2e import (
    PUBSUB_PUBLISHED,
    STORAGE_FINALIZED,
    Inbox,
    answers,
    bigquery_snapshot,
    bucket_snapshot,
    log_lines,
    post_event,
    push_body,
    wait_for_log,
)
from tests.support.proxy import Proxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.emulators

NOTIFICATIONS = "schema-notifications"
KEY = "KEY"  # replaced, wherever it appears in a case's data, by the case's own key
MB = 1024 * 1024
MANIFEST = (SCHEMAS / "bootstrap.yaml").read_text()
TENANT_ID = {"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Owner."}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        workdir=tmp_path_factory.mktemp("stack"),
        # Destructive requests allowed: a forced request that slipped through validation would
        # drop tables (and write the ledger), and the snapshots would show it.
        function_env={"BOOTSTRAP_RETRY_DEADLINE": "3", "ALLOW_DESTRUCTIVE": "true"},
    )
    with Stack(config) as stack:
        yield stack


@dataclass
class Ctx:
    stack: Stack
    tap: Proxy
    inbox: Inbox
    gcs: storage.Client
    bigquery: Proxy  # every request the function sends to BigQuery


@pytest.fixture(scope="module")
def ctx(stack: Stack, proxies: dict[str, Proxy], tap: Proxy, inbox: Inbox) -> Ctx:
    """The bundled schemas uploaded and applied: a dataset of eight tables to leave untouched."""
    gcs = stack.storage_client()
    for name in sync_folder(gcs, SCHEMAS, f"gs://{BUCKET}/{PREFIX}"):
        generation = gcs.bucket(BUCKET).get_blob(PREFIX + name).generation
        assert inbox.wait(f"{BUCKET}/{PREFIX}{name}#{generation}").data["status"] == "succeeded"
    return Ctx(stack, tap, inbox, gcs, proxies["bigquery"])


# --- how a case reaches the function -------------------------------------------------------


@dataclass
class Sent:
    status: int  # the HTTP answer to the invocation
    request_id: str  # of the failed completion event, if one is due
    match: Callable[[dict[str, Any]], bool]  # finds the function's log line for this case
    written: str | None = None  # "bucket/object" the case uploaded (left out of the comparison)
    undo: Callable[[], None] | None = None


Send = Callable[[Ctx, str], Sent]


def fill(value: Any, key: str) -> Any:
    if isinstance(value, str):
        return value.replace(KEY, key)
    if isinstance(value, bytes):
        return value.replace(KEY.encode(), key.encode())
    if isinstance(value, dict):
        return {fill(k, key): fill(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, key) for v in value]
    return value


def by_id(key: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: key in (line.get("event_id"), line.get("request_id"))


def cloudevent(
    data: Any, *, event_type: str = PUBSUB_PUBLISHED, mode: str = "binary", **headers: str
) -> Send:
    """A CloudEvent posted as it is; its id (the key) is the fallback request id."""

    def send(ctx: Ctx, key: str) -> Sent:
        response = post_event(
            ctx.stack, event_type, fill(data, key), event_id=key, mode=mode, headers=headers or None
        )
        return Sent(response.status_code, key, by_id(key))

    return send


def storage_event(data: dict[str, Any], *, mode: str = "binary") -> Send:
    """An Eventarc `object.v1.finalized` event; an upload's request id is bucket/name#generation."""

    def send(ctx: Ctx, key: str) -> Sent:
        filled = fill(data, key)
        source = f"//storage.googleapis.com/projects/_/buckets/{filled.get('bucket')}"
        response = post_event(ctx.stack, STORAGE_FINALIZED, filled, event_id=key, source=source, mode=mode)
        rid = f"{filled.get('bucket')}/{filled.get('name')}#{filled.get('generation')}"
        name = filled.get("name")
        return Sent(response.status_code, rid, lambda line: by_id(key)(line) or line.get("object") == name)

    return send


def request(data: bytes | dict[str, Any]) -> Send:
    """A bootstrap request as the Pub/Sub emulator pushes it (message id: the key)."""

    def send(ctx: Ctx, key: str) -> Sent:
        filled = fill(data, key)
        payload = filled if isinstance(filled, bytes) else json.dumps(filled).encode()
        return message({"data": base64.b64encode(payload).decode(), "attributes": {}})(ctx, key)

    return send


def message(message: Any, topic: str | None = None) -> Send:
    """A Pub/Sub push body around `message` (a dict gets messageId: the key)."""

    def send(ctx: Ctx, key: str) -> Sent:
        filled = fill(message, key)
        if isinstance(filled, dict):
            filled = {"messageId": key, **filled}
        response = push_body(ctx.stack, {"subscription": "s", "message": filled}, topic)
        return Sent(response.status_code, key, by_id(key))

    return send


def notification(**attributes: str) -> Send:
    """A Cloud Storage Pub/Sub notification pushed from the notification topic."""
    send_message = message({"data": "e30=", "attributes": attributes}, NOTIFICATIONS)

    def send(ctx: Ctx, key: str) -> Sent:
        sent = send_message(ctx, key)
        a = fill(attributes, key)
        sent.request_id = f"{a.get('bucketId')}/{a.get('objectId')}#{a.get('objectGeneration')}"
        name = a.get("objectId")
        sent.match = lambda line: by_id(key)(line) or (name is not None and line.get("object") == name)
        return sent

    return send


def raw(body: bytes, headers: dict[str, str], path: str = "") -> Send:
    """Bytes and headers posted as they are (for what functions-framework itself refuses)."""

    def send(ctx: Ctx, key: str) -> Sent:
        url = ctx.stack.env["FUNCTION_URL"] + path
        response = requests.post(url, data=fill(body, key), headers=fill(headers, key), timeout=60)
        return Sent(response.status_code, key, by_id(key))

    return send


def upload(name: str, data: bytes | str | list[Any]) -> Send:
    """An object written to the schema bucket: fake-gcs-server notifies it, the emulator pushes
    it (through the tap, which sees the function's answer). A new object is deleted afterwards;
    a replaced one is put back (and that upload applied) before the next case."""
    payload = json.dumps(data).encode() if isinstance(data, list) else data

    def send(ctx: Ctx, key: str) -> Sent:
        bucket = ctx.gcs.bucket(BUCKET)
        object_name = PREFIX + fill(name, key)
        original = bucket.get_blob(object_name)
        original_bytes = original.download_as_bytes() if original is not None else None
        ctx.tap.reset()
        blob = bucket.blob(object_name)
        blob.upload_from_string(fill(payload if isinstance(payload, bytes) else payload.encode(), key))
        [status] = wait_until(lambda: answers(ctx.tap, NOTIFICATIONS), what="the function answering the push")

        def undo() -> None:
            if original_bytes is None:
                blob.delete()
                return
            ctx.tap.reset()
            blob.upload_from_string(original_bytes)
            restored = ctx.inbox.wait(f"{BUCKET}/{object_name}#{blob.generation}")
            assert restored.data["status"] == "succeeded", restored.data
            wait_until(lambda: answers(ctx.tap, NOTIFICATIONS), what="the restore answered")

        rid = f"{BUCKET}/{object_name}#{blob.generation}"
        return Sent(
            status, rid, lambda line: line.get("object") == object_name, f"{BUCKET}/{object_name}", undo
        )

    return send


def manifest(text: str | bytes) -> Send:
    return upload("bootstrap.yaml", text.encode() if isinstance(text, str) else text)


# --- the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    error: str | None = None  # in the failed event's error and the ERROR log line
    ignored: tuple[str, str] | None = None  # (severity, words) of the log line; no event
    rejected: int | None = None  # the status functions-framework/gunicorn answers, unseen by us


NO_MESSAGE = "the messagePublished event has no message object"
NOT_A_MAPPING = "the message attributes are not a mapping"
NOT_BASE64_STRING = "message.data must be a base64 string"
TOO_BIG = "larger than 65536 bytes"
BAD_RID = "request_id must be 1-256 characters"
BAD_TABLES = "invalid table names"
BAD_NAME = "no valid object name"
NOT_FOR_US = ("WARNING", "is not one this function handles")
NOT_AN_UPLOAD = ("INFO", "is not an upload")  # a bucket sends these routinely
NOT_A_SCHEMA_FILE = ("INFO", "upload ignored: not a schema file")
FILE_NAME = "the file name must be <table>.json"
OUR_FILE = {"bucket": BUCKET, "name": f"{PREFIX}KEY.json"}
BINARY = {"ce-id": KEY, "ce-source": "//test", "ce-type": PUBSUB_PUBLISHED, "ce-specversion": "1.0"}
JSON = {"content-type": "application/json"}
HUGE = base64.b64encode(b"{" + b" " * MB + b"}").decode()  # 1 MiB of (valid) JSON
FORCED = {"request_id": KEY, "force_recreate_tables": True, "confirm": "tenants"}


def nested(depth: int) -> list[dict[str, Any]]:
    column: dict[str, Any] = {"name": "leaf", "type": "STRING"}
    for level in range(depth):
        column = {"name": f"level_{level}", "type": "RECORD", "fields": [column]}
    return [TENANT_ID, column]


CASES = [
    # The messagePublished envelope, as a CloudEvent (binary unless said otherwise).
    Case("ce-no-message", cloudevent({"subscription": "s"}), NO_MESSAGE),
    Case("ce-message-string", cloudevent({"message": "hello"}), NO_MESSAGE),
    Case("ce-message-array", cloudevent({"message": [{"data": ""}]}), NO_MESSAGE),
    Case("ce-message-null", cloudevent({"message": None}), NO_MESSAGE),
    Case("ce-data-array", cloudevent([{"message": {}}]), NO_MESSAGE),
    Case("ce-data-text", cloudevent(b"hello", **{"content-type": "text/plain"}), NO_MESSAGE),
    Case("ce-data-invalid-json", cloudevent(b'{"message": {'), NO_MESSAGE),
    Case("ce-structured-message-number", cloudevent({"message": 5}, mode="structured"), NO_MESSAGE),
    Case(
        "ce-attributes-list",
        cloudevent({"message": {"data": "", "attributes": ["eventType"]}}),
        NOT_A_MAPPING,
    ),
    Case(
        "ce-attributes-string",
        cloudevent({"message": {"data": "", "attributes": "eventType=OBJECT_FINALIZE"}}),
        NOT_A_MAPPING,
    ),
    Case(
        "ce-attributes-number",
        cloudevent({"message": {"data": "", "attributes": 7}}, mode="structured"),
        NOT_A_MAPPING,
    ),
    Case("ce-data-number", cloudevent({"message": {"data": 5, "messageId": KEY}}), NOT_BASE64_STRING),
    Case("ce-data-object", cloudevent({"message": {"data": {"request_id": KEY}}}), NOT_BASE64_STRING),
    Case("ce-data-boolean", cloudevent({"message": {"data": True}}), NOT_BASE64_STRING),
    Case("ce-data-1mb", cloudevent({"message": {"data": HUGE}}), TOO_BIG),
    Case("ce-data-1mb-structured", cloudevent({"message": {"data": HUGE}}, mode="structured"), TOO_BIG),
    Case("ce-base64-bad-padding", cloudevent({"message": {"data": "e30"}}), "not valid base64"),
    Case("ce-base64-urlsafe", cloudevent({"message": {"data": "-_8="}}), "not valid base64"),
    # Bootstrap requests, as pushed by the Pub/Sub emulator.
    Case("msg-not-utf8", request(b"\xff\xfe{}"), "is not JSON"),
    Case("msg-null", request(b"null"), "must be a JSON object, not a JSON null"),
    Case("msg-number", request(b"42"), "must be a JSON object, not a JSON number"),
    Case("msg-nested-too-deep", request(b"[" * 30_000 + b"]" * 30_000), "is not JSON"),
    Case("msg-1mb", request(b'{"pad": "' + b"x" * MB + b'"}'), TOO_BIG),
    Case("rid-spaces", request({"request_id": "has spaces"}), BAD_RID),
    Case("rid-too-long", request({"request_id": "r" * 257}), BAD_RID),
    Case("rid-empty", request({"request_id": ""}), BAD_RID),
    Case("rid-newline", request({"request_id": "a\nb"}), BAD_RID),
    Case("rid-trailing-newline", request({"request_id": "ab\n"}), BAD_RID),
    Case("rid-number", request({"request_id": 42}), "request_id must be a string"),
    Case("tables-dot", request({"request_id": KEY, "tables": ["a.b"]}), BAD_TABLES),
    Case("tables-slash", request({"request_id": KEY, "tables": ["a/b"]}), BAD_TABLES),
    Case("tables-empty-name", request({"request_id": KEY, "tables": [""]}), BAD_TABLES),
    Case("tables-traversal", request({"request_id": KEY, "tables": ["tenant_profiles/../x"]}), BAD_TABLES),
    Case("tables-too-long", request({"request_id": KEY, "tables": ["t" * 1025]}), BAD_TABLES),
    Case("tables-unicode", request({"request_id": KEY, "tables": ["tenant_prófiles"]}), BAD_TABLES),
    Case("tables-percent-encoded", request({"request_id": KEY, "tables": ["a%2Fb"]}), BAD_TABLES),
    Case(
        "tables-trailing-newline", request({"request_id": KEY, "tables": ["tenant_profiles\n"]}), BAD_TABLES
    ),
    Case("tables-null-name", request({"request_id": KEY, "tables": [None]}), BAD_TABLES),
    Case("tables-nested-list", request({"request_id": KEY, "tables": [["tenant_profiles"]]}), BAD_TABLES),
    Case(
        "tables-object",
        request({"request_id": KEY, "tables": {"tenant_profiles": True}}),
        "tables must be a list",
    ),
    Case(
        "tables-twice",
        request({"request_id": KEY, "tables": ["tenant_profiles", "tenant_profiles"]}),
        "names a table twice",
    ),
    Case("field-dataset", request({"request_id": KEY, "dataset": "../other"}), "unknown field(s) dataset"),
    Case(
        "field-project", request({"request_id": KEY, "project": "other-project"}), "unknown field(s) project"
    ),
    Case("dry-run-number", request({"request_id": KEY, "dry_run": 1}), "dry_run must be a boolean"),
    Case(
        "force-string",
        request({**FORCED, "force_recreate_tables": "true"}),
        "force_recreate_tables must be a boolean",
    ),
    Case("forced-bad-names", request({**FORCED, "tables": ["a.b"]}), BAD_TABLES),
    Case(
        "forced-unknown-table",
        request({**FORCED, "tables": ["tenant_profile"]}),
        "unknown table(s) tenant_profile",
    ),
    Case(
        "forced-dataset-confirm-case",
        request({"request_id": KEY, "force_recreate_dataset": True, "confirm": "TENANTS"}),
        'set "confirm": "tenants"',
    ),
    Case(
        "forced-dataset-typo",
        request({"request_id": KEY, "force_recreate_dataset": True, "confirm": "tenants", "dryrun": True}),
        "unknown field(s) dryrun",
    ),
    # Eventarc storage events.
    Case("st-no-bucket", storage_event({"name": f"{PREFIX}KEY.json", "generation": "1"}), "no bucket"),
    Case("st-bucket-number", storage_event({**OUR_FILE, "bucket": 5, "generation": "1"}), "no bucket"),
    Case("st-no-name", storage_event({"bucket": "KEY", "generation": "1"}), BAD_NAME),
    Case("st-name-number", storage_event({"bucket": "KEY", "name": 7, "generation": "1"}), BAD_NAME),
    Case("st-name-empty", storage_event({"bucket": "KEY", "name": "", "generation": "1"}), BAD_NAME),
    Case(
        "st-name-2000-bytes",
        storage_event({"bucket": BUCKET, "name": f"{PREFIX}KEY" + "n" * 2000 + ".json", "generation": "1"}),
        BAD_NAME,
    ),
    Case(
        "st-name-1025-bytes-of-600-chars",
        storage_event({"bucket": BUCKET, "name": f"{PREFIX}KEY" + "é" * 600 + ".json", "generation": "1"}),
        BAD_NAME,
    ),
    Case("st-no-generation", storage_event(OUR_FILE), "generation None is not a positive integer"),
    Case("st-generation-abc", storage_event({**OUR_FILE, "generation": "abc"}), "generation 'abc'"),
    Case("st-generation-minus-1", storage_event({**OUR_FILE, "generation": "-1"}), "generation '-1'"),
    Case("st-generation-0", storage_event({**OUR_FILE, "generation": "0"}), "generation '0'"),
    Case("st-generation-decimal", storage_event({**OUR_FILE, "generation": "1.5"}), "generation '1.5'"),
    Case("st-generation-boolean", storage_event({**OUR_FILE, "generation": True}), "generation True"),
    Case("st-generation-float", storage_event({**OUR_FILE, "generation": 12.0}), "generation 12.0"),
    Case(
        "st-generation-underscore", storage_event({**OUR_FILE, "generation": "1_000"}), "generation '1_000'"
    ),
    Case("st-structured-empty", storage_event({"bucket": "KEY"}, mode="structured"), BAD_NAME),
    Case(
        "st-dot-dot",
        storage_event({**OUR_FILE, "name": f"{PREFIX}../KEY.json", "generation": "1"}),
        ignored=NOT_A_SCHEMA_FILE,
    ),
    Case(
        "st-leading-dot-dot",
        storage_event({**OUR_FILE, "name": f"../{PREFIX}KEY.json", "generation": "1"}),
        ignored=("INFO", "upload ignored"),
    ),
    Case(
        "st-other-bucket",
        storage_event({**OUR_FILE, "bucket": "other-bucket", "generation": "1"}),
        ignored=("INFO", "upload ignored"),
    ),
    # Cloud Storage Pub/Sub notifications.
    Case(
        "nt-delete",
        notification(eventType="OBJECT_DELETE", bucketId=BUCKET, objectId="x"),
        ignored=NOT_AN_UPLOAD,
    ),
    Case("nt-metadata-update", notification(eventType="OBJECT_METADATA_UPDATE"), ignored=NOT_AN_UPLOAD),
    Case("nt-archive", notification(eventType="OBJECT_ARCHIVE"), ignored=NOT_AN_UPLOAD),
    Case("nt-empty-event-type", notification(eventType=""), ignored=NOT_AN_UPLOAD),
    Case(
        "nt-no-generation",
        notification(eventType="OBJECT_FINALIZE", bucketId=BUCKET, objectId=f"{PREFIX}KEY.json"),
        "generation None",
    ),
    Case(
        "nt-no-bucket",
        notification(eventType="OBJECT_FINALIZE", objectId=f"{PREFIX}KEY.json", objectGeneration="1"),
        "no bucket",
    ),
    Case(
        "nt-generation-abc",
        notification(
            eventType="OBJECT_FINALIZE", bucketId=BUCKET, objectId=f"{PREFIX}KEY.json", objectGeneration="abc"
        ),
        "generation 'abc'",
    ),
    Case(
        "nt-name-2000-bytes",
        notification(
            eventType="OBJECT_FINALIZE", bucketId=BUCKET, objectId="KEY" + "n" * 2000, objectGeneration="1"
        ),
        BAD_NAME,
    ),
    Case(
        "nt-dot-dot",
        notification(
            eventType="OBJECT_FINALIZE",
            bucketId=BUCKET,
            objectId=f"{PREFIX}../KEY.json",
            objectGeneration="1",
        ),
        ignored=NOT_A_SCHEMA_FILE,
    ),
    # Event types that are not this function's.
    Case(
        "type-storage-deleted",
        cloudevent(OUR_FILE, event_type="google.cloud.storage.object.v1.deleted"),
        ignored=NOT_FOR_US,
    ),
    Case(
        "type-storage-metadata",
        cloudevent(OUR_FILE, event_type="google.cloud.storage.object.v1.metadataUpdated"),
        ignored=NOT_FOR_US,
    ),
    Case(
        "type-pubsub-v2",
        cloudevent({"message": {"data": ""}}, event_type="google.cloud.pubsub.topic.v2.messagePublished"),
        ignored=NOT_FOR_US,
    ),
    Case("type-empty", cloudevent({"message": {"data": ""}}, event_type=""), ignored=NOT_FOR_US),
    Case("type-1000-chars", cloudevent({}, event_type="t" * 1000), ignored=NOT_FOR_US),
    # Refused by functions-framework (or gunicorn) before the function is called: 4xx.
    Case("ff-no-id", raw(b"{}", {**JSON, **{k: v for k, v in BINARY.items() if k != "ce-id"}}), rejected=400),
    Case(
        "ff-no-source",
        raw(b"{}", {**JSON, **{k: v for k, v in BINARY.items() if k != "ce-source"}}),
        rejected=400,
    ),
    Case(
        "ff-no-type",
        raw(b"{}", {**JSON, **{k: v for k, v in BINARY.items() if k != "ce-type"}}),
        rejected=400,
    ),
    Case("ff-specversion-2", raw(b"{}", {**JSON, **BINARY, "ce-specversion": "2.0"}), rejected=400),
    Case(
        "ff-structured-bad-json",
        raw(b'{"id": "KEY",', {"content-type": "application/cloudevents+json"}),
        rejected=400,
    ),
    Case(
        "ff-structured-no-type",
        raw(
            json.dumps({"id": KEY, "source": "//t", "specversion": "1.0"}).encode(),
            {"content-type": "application/cloudevents+json"},
        ),
        rejected=400,
    ),
    Case(
        "ff-push-without-data",
        raw(b'{"subscription": "s", "message": {"messageId": "KEY"}}', JSON, "projects/p/topics/t"),
        rejected=400,
    ),
    Case(
        "ff-push-message-string",
        raw(b'{"subscription": "s", "message": "KEY"}', JSON, "projects/p/topics/t"),
        rejected=400,
    ),
    Case("ff-header-10kb", raw(b"{}", {**JSON, **BINARY, "ce-subject": "s" * 10_000}), rejected=431),
    # Schema files uploaded to the bucket.
    Case("up-name-space", upload("KEY a.json", [TENANT_ID]), FILE_NAME),
    Case("up-name-dot", upload("KEY.b.json", [TENANT_ID]), FILE_NAME),
    Case("up-name-unicode", upload("KEY_é.json", [TENANT_ID]), FILE_NAME),
    Case("up-name-only-suffix", upload(".json", [TENANT_ID]), FILE_NAME),
    Case("up-name-dot-dot", upload("../KEY.json", [TENANT_ID]), ignored=NOT_A_SCHEMA_FILE),
    Case("up-name-dot-segment", upload("./KEY.json", [TENANT_ID]), ignored=NOT_A_SCHEMA_FILE),
    Case(
        "up-schema-object",
        upload("KEY.json", b'{"name": "tenant_id", "type": "STRING"}'),
        "must be a JSON array",
    ),
    Case("up-schema-empty-array", upload("KEY.json", []), "declares no column"),
    Case("up-schema-not-utf8", upload("KEY.json", b"\xff\xfe[]"), "is not valid JSON"),
    Case(
        "up-schema-record-no-fields",
        upload("KEY.json", [TENANT_ID, {"name": "r", "type": "RECORD"}]),
        "a RECORD needs",
    ),
    Case(
        "up-schema-duplicate-column",
        upload("KEY.json", [TENANT_ID, {**TENANT_ID, "name": "Tenant_ID"}]),
        "duplicates column",
    ),
    Case("up-schema-bad-mode", upload("KEY.json", [{**TENANT_ID, "mode": "REQ"}]), "unknown mode 'REQ'"),
    Case(
        "up-schema-unknown-key", upload("KEY.json", [{"nmae": "x", "type": "STRING"}]), "unknown key(s) nmae"
    ),
    Case(
        "up-schema-column-path",
        upload("KEY.json", [TENANT_ID, {"name": "a.b", "type": "STRING"}]),
        "invalid column name",
    ),
    Case(
        "up-schema-column-newline",
        upload("KEY.json", [TENANT_ID, {"name": "note\n", "type": "STRING"}]),
        "invalid column name",
    ),
    Case(
        "up-schema-reserved-name",
        upload("KEY.json", [TENANT_ID, {"name": "_TABLE_x", "type": "STRING"}]),
        "reserved",
    ),
    Case("up-schema-too-deep", upload("KEY.json", nested(16)), "nested at most 15 levels"),
    Case(
        "up-schema-huge-description",  # BigQuery: "The maximum length is 1,024 characters."
        upload("KEY.json", [{**TENANT_ID, "description": "d" * (MB // 2)}]),
        "description",
    ),
    # Manifests uploaded to the bucket (the bundled one is put back after each).
    Case("mf-list", manifest("- dataset\n- tables\n"), "must be a mapping with keys dataset and tables"),
    Case("mf-not-utf8", manifest(b"dataset: {description: \xff}\n"), "is not valid YAML"),
    Case("mf-unknown-key", manifest(MANIFEST + "datasets: {}\n"), "unknown key(s) datasets"),
    Case(
        "mf-label-key-upper",
        manifest(MANIFEST.replace("{domain: tenants}", "{Domain: tenants}", 1)),
        "invalid label key",
    ),
    Case(
        "mf-partition-field-unknown",
        manifest(MANIFEST.replace("field: usage_date", "field: usage_day", 1)),
        "'usage_day' is not a top-level column",
    ),
    Case(
        "mf-five-clustering-columns",
        manifest(
            MANIFEST.replace("[tenant_id, usage_date]", "[tenant_id, usage_date, metric, plan, tier]", 1)
        ),
        "at most 4 clustering columns",
    ),
    Case(
        "mf-table-name-path",  # can never match a file; must not pass as "a file still to come"
        manifest(MANIFEST + "  ../KEY:\n    description: A path, not a table.\n"),
        "../KEY",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_acknowledged_reported_and_changes_nothing(ctx, case):
    key = "bad_" + case.id.replace("-", "_")
    before_bq, before_gcs = bigquery_snapshot(ctx.stack), bucket_snapshot(ctx.stack)
    events_before = _event_count(ctx.inbox)
    ctx.bigquery.reset()

    sent = case.send(ctx, key)
    try:
        if case.rejected is not None:
            assert sent.status == case.rejected
            assert not [line for line in log_lines(ctx.stack) if sent.match(line)]  # never reached us
        else:
            assert 200 <= sent.status < 300, sent.status  # acknowledged: not delivered again
        if case.error is not None:
            error = fill(case.error, key)
            event = ctx.inbox.wait(sent.request_id)
            assert event["type"] == "com.convergence.bootstrap.v1.failed", event.data
            assert (event.data["status"], event.data["tables"]) == ("failed", [])
            assert error in event.data["error"], event.data["error"]
            lines = [line for line in log_lines(ctx.stack) if line.get("request_id") == sent.request_id]
            assert [line["severity"] for line in lines] == ["ERROR"]
            assert error in lines[0]["message"]
        if case.ignored is not None:
            severity, words = case.ignored
            line = wait_for_log(ctx.stack, sent.match, timeout=30)
            assert line["severity"] == severity and words in line["message"], line
        assert _event_count(ctx.inbox) == events_before + (case.error is not None)
        # Refused before any request to BigQuery, reads included (with destructive requests
        # allowed, a request wrongly accepted would have sent some, even to a converged
        # dataset); an upload's run may only have read the dataset and tables while it listed
        # and downloaded the bucket's files, and written nothing.
        sent_to_bigquery = ctx.bigquery.requests()
        if sent.written is None:
            assert sent_to_bigquery == []
        else:
            assert {r.method for r in sent_to_bigquery} <= {"GET"}, sent_to_bigquery
            assert all("/datasets/tenants" in r.path for r in sent_to_bigquery), sent_to_bigquery
        assert bigquery_snapshot(ctx.stack) == before_bq
        after_gcs = bucket_snapshot(ctx.stack)
        for snapshot in (before_gcs, after_gcs):
            snapshot.pop(sent.written, None)
        assert after_gcs == before_gcs
    finally:
        if sent.undo is not None:
            sent.undo()


def test_each_case_is_named_once_and_expects_one_answer():
    assert len({c.id for c in CASES}) == len(CASES)
    assert all((c.error is None) + (c.ignored is None) + (c.rejected is None) == 2 for c in CASES)


def _event_count(inbox: Inbox) -> int:
    inbox.all("")  # pulls whatever has arrived
    with inbox.lock:
        return sum(len(events) for events in inbox.events.values())
