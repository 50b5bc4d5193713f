"""Concurrency end to end: bootstrap requests and schema uploads racing each other (and their own
duplicates) must converge to the declared state, and no invocation may answer 5xx because it
lost a race: a 5xx makes Pub/Sub deliver again, so a conflict must be resolved, not raised.

Every invocation's HTTP answer is observed: the Pub/Sub emulator's push subscriptions are
re-pointed at a recording proxy in front of the function, and the duplicates the test posts
itself (Eventarc events, push bodies) are answered to the test directly."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from google.cloud import storage

from deploy.local.demo import upload_trigger_detached
from deploy.local.stack import Stack, StackConfig
from function.sync import sync_folder
from tests.conftest import BUCKET, PREFIX, SCHEMAS, TABLES
from tests.support.declared import differences
from tests.support.e2e import (
    STORAGE_FINALIZED,
    answers,
    post_event,
    publish,
    push,
)
from tests.support.proxy import FaultPlan, Proxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.emulators


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        workdir=tmp_path_factory.mktemp("stack"), function_env={"BOOTSTRAP_RETRY_DEADLINE": "5"}
    )
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def storage_proxy(proxies: dict[str, Proxy]) -> Proxy:
    return proxies["storage"]


@pytest.fixture(scope="module")
def seeded(stack, proxies, tap, inbox, gcs) -> None:
    """The bundled schemas in the bucket (each upload applied), then the dataset dropped: the
    bucket declares eight tables and BigQuery holds none, so every racer has to create."""
    for name in sync_folder(gcs, SCHEMAS, f"gs://{BUCKET}/{PREFIX}"):
        assert inbox.wait(upload_id(gcs, name)).data["status"] == "succeeded"
    stack.bigquery_client().delete_dataset("tenants", delete_contents=True)


def upload_id(gcs: storage.Client, name: str) -> str:
    return f"{BUCKET}/{PREFIX}{name}#{gcs.bucket(BUCKET).get_blob(PREFIX + name).generation}"


def bucket_files(gcs: storage.Client) -> dict[str, bytes]:
    return {
        b.name.removeprefix(PREFIX): b.download_as_bytes()
        for b in gcs.list_blobs(BUCKET, prefix=PREFIX, delimiter="/")
    }


def new_table(i: int) -> bytes:
    columns = [
        {"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Owner."},
        {"name": f"metric_{i}", "type": "INT64", "description": "Its own column."},
        {
            "name": "origin",
            "type": "RECORD",
            "mode": "REPEATED",
            "description": "Where it came from.",
            "fields": [{"name": "system", "type": "STRING", "description": "Source system."}],
        },
    ]
    return json.dumps(columns).encode()


@dataclass
class Race:
    names: list[str]  # the tables the uploads declare
    direct: list[int]  # answers to the duplicates the test posted itself
    pushed: list[int | None]  # answers to every delivery of the Pub/Sub emulator
    events: dict[str, list[Any]]  # completion events by request id
    conflicts: int  # creates BigQuery answered 409: lost races


@pytest.fixture(scope="module")
def race(stack, proxies, tap, inbox, gcs, seeded) -> Race:
    """Two bootstrap requests and eight uploads of new tables at the same time, each also
    delivered a second time (a push of the same request, the Eventarc form of the upload),
    into a project without the dataset: every run races the others to create it and the tables.
    Every create is held 1 s in the proxy, so that the racers all find the dataset and the
    tables missing before the first create lands: the conflicts are certain, not likely."""
    names = [f"tenant_race_{i}" for i in range(8)]
    start = threading.Barrier(len(names) + 2 + 1)  # every job and this thread
    tap.reset()
    bigquery = proxies["bigquery"]
    bigquery.reset()
    creates = r"/datasets(/[^/]+/tables)?$"
    bigquery.faults = FaultPlan(
        probability=1.0, kinds=("delay",), method="POST", path_regex=creates, delay=1.0
    )

    def request(rid: str) -> list[int]:
        start.wait()
        publish(stack, {"request_id": rid})  # delivered by the emulator, answered to the tap
        return [push(stack, json.dumps({"request_id": rid}).encode(), message_id=f"{rid}-direct").status_code]

    def upload(name: str) -> list[int]:
        blob = gcs.bucket(BUCKET).blob(f"{PREFIX}{name}.json")
        start.wait()
        blob.upload_from_string(new_table(names.index(name)))  # notified to the function
        # ... and the same upload as an Eventarc event, at the same time.
        data = {"bucket": BUCKET, "name": blob.name, "generation": str(blob.generation)}
        return [post_event(stack, STORAGE_FINALIZED, data, event_id=f"eventarc-{name}").status_code]

    jobs: list[Callable[[], list[int]]] = [lambda r=r: request(r) for r in ("race-1", "race-2")]
    jobs += [lambda n=n: upload(n) for n in names]
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = [pool.submit(job) for job in jobs]
            start.wait()
            direct = [status for f in futures for status in f.result()]
    finally:
        bigquery.faults = None
    conflicts = [r for r in bigquery.requests() if r.method == "POST" and r.status == 409]

    ids = ["race-1", "race-2"] + [upload_id(gcs, f"{n}.json") for n in names]
    for rid in ids:
        inbox.wait(rid, count=2, timeout=120)
    pushed = wait_until(lambda: (a := answers(tap)) and len(a) >= len(ids) and a, what="every push answered")
    return Race(names, direct, pushed, {rid: inbox.all(rid) for rid in ids}, len(conflicts))


def test_two_requests_and_eight_uploads_at_once_converge_without_a_5xx(stack, gcs, race):
    assert race.conflicts > 0  # the races did happen
    assert race.direct == [200] * len(race.direct), race.direct
    # No 5xx (nothing delivered again), and exactly one answer per delivery.
    assert all(s is not None and 200 <= s < 300 for s in race.pushed), race.pushed
    assert len(race.pushed) == len(race.events)
    for rid, got in race.events.items():
        assert [e.data["status"] for e in got] == ["succeeded", "succeeded"], (rid, [e.data for e in got])
    # Every table was created by exactly one of the racers; the others found it there.
    created: dict[str, int] = {}
    for got in race.events.values():
        for e in got:
            for t in e.data["tables"]:
                assert t["action"] in ("created", "unchanged"), (t, e.data["request_id"])
                created[t["table"]] = created.get(t["table"], 0) + (t["action"] == "created")
    assert created == dict.fromkeys(TABLES + race.names, 1)
    assert differences(stack.bigquery_client(), "tenants", bucket_files(gcs)) == []


def test_racing_creators_report_one_dataset_creation(race):
    """A run that lost the race to create the dataset (409) did not create it, and must not
    say so: consumers of the completion event count creations."""
    actions = [e.data["dataset_action"] for got in race.events.values() for e in got]
    assert actions.count("created") == 1, actions


def test_a_schema_file_deleted_while_a_request_reads_the_bucket(stack, storage_proxy, inbox, gcs, seeded):
    """The request lists the bucket, then reads each file at the generation listed. A file
    deleted in between is a conflict with another writer, not a broken schema source: the
    request must read the bucket again, not fail for good (nor answer 5xx). (Cloud Storage
    answers 412 for a file replaced in between; fake-gcs-server ignores ifGenerationMatch on
    downloads, so only the deletion can be raced here.)"""
    name = "tenant_short_lived.json"
    blob = gcs.bucket(BUCKET).blob(PREFIX + name)
    blob.upload_from_string(new_table(99))
    assert inbox.wait(f"{BUCKET}/{PREFIX}{name}#{blob.generation}").data["status"] == "succeeded"
    with upload_trigger_detached(stack):  # a generation the function has not read: it downloads it
        blob.upload_from_string(new_table(99) + b"\n")
    storage_proxy.reset()
    storage_proxy.fail_next(1, "delay", method="GET", path_regex=rf"^/download/.*{name}$", delay=2.0)
    result: dict[str, Any] = {}

    def deliver() -> None:
        result["response"] = push(stack, b'{"request_id": "read-race"}', message_id="read-race")

    thread = threading.Thread(target=deliver)
    thread.start()
    try:
        wait_until(
            lambda: any(r.path == f"/storage/v1/b/{BUCKET}/o" for r in storage_proxy.requests()),
            what="the request listing the bucket",
        )
        blob.delete()  # while the request's read of it is held back
    finally:
        thread.join(timeout=120)

    response = result["response"]
    assert storage_proxy.injected == 1
    assert response.status_code in (200, 204), response.text
    event = inbox.wait("read-race")
    assert event.data["status"] == "succeeded", event.data["error"]
    assert "tenant_short_lived" not in {t["table"] for t in event.data["tables"]}
    assert differences(stack.bigquery_client(), "tenants", bucket_files(gcs)) == []
