"""The local stack (deploy/local/stack.py) for real: every emulator, the push and notification
loops into a throwaway function, restarts, a clean stop, and failed starts that leave nothing.

Over 400 lines: every piece of the stack and every correction of the emulator, with real processes.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from deploy.local import supervisor
from deploy.local.demo import upload_trigger_detached
from deploy.local.stack import HOST, REPO_ROOT, Stack, StackConfig, StackError
from tests.support.waiting import wait_until

pytestmark = pytest.mark.emulators

DEADLINE_S = 30.0

# Records every CloudEvent it receives, one JSON line each, in $EVENTS_FILE.
RECORDER = """
import json, os

def bootstrap(cloud_event):
    record = {
        "type": cloud_event["type"],
        "source": cloud_event["source"],
        "subject": cloud_event.get("subject"),
        "data": cloud_event.data,
    }
    with open(os.environ["EVENTS_FILE"], "a") as f:
        f.write(json.dumps(record) + "\\n")
"""


def http_status(port: int, path: str = "/") -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def processes_with_env(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds marker (children, grandchildren...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
    return found


@pytest.fixture
def process_marker(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every process the stack starts inherits this variable: a way to find leftovers."""
    marker = f"STACK_TEST_MARKER={uuid.uuid4().hex}"
    name, value = marker.split("=")
    monkeypatch.setenv(name, value)
    return marker


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("function")
    (folder / "main.py").write_text(RECORDER)
    return folder / "main.py", folder / "events.jsonl"


@pytest.fixture(scope="module")
def stack(recorder: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    source, events = recorder
    config = StackConfig(
        function_source=source,
        function_env={"EVENTS_FILE": str(events)},
        workdir=tmp_path_factory.mktemp("stack"),
    )
    with Stack(config) as running:
        yield running


@pytest.fixture
def events(recorder: tuple[Path, Path]) -> Path:
    return recorder[1]


def test_every_piece_answers(stack: Stack) -> None:
    cfg, env, ports = stack.config, stack.env, stack.ports
    project = f"projects/{cfg.project}"

    assert env["PUBSUB_EMULATOR_HOST"] == f"{HOST}:{ports['pubsub']}"
    assert env["STORAGE_EMULATOR_HOST"] == f"http://{HOST}:{ports['storage']}"
    assert env["BIGQUERY_EMULATOR_HOST"] == f"http://{HOST}:{ports['bigquery']}"
    assert env["FUNCTION_URL"] == f"http://{HOST}:{ports['function']}/"
    assert env["SCHEMA_SOURCE"] == "gs://tenant-schemas/schemas/"
    assert env["COMPLETION_TOPIC"] == "bootstrap-completed"
    assert env["GOOGLE_CLOUD_PROJECT"] == cfg.project
    assert len(set(ports.values())) == len(ports)
    env_file = (cfg.workdir / "env").read_text().splitlines()
    assert f"export PUBSUB_EMULATOR_HOST={env['PUBSUB_EMULATOR_HOST']}" in env_file

    publisher, subscriber = stack.publisher(), stack.subscriber()
    try:
        topics = {t.name for t in publisher.list_topics(project=project, timeout=10)}
        assert topics == {
            f"{project}/topics/{t}"
            for t in (cfg.requests_topic, cfg.completion_topic, cfg.notification_topic)
        }
        subscriptions = {
            s.name.rsplit("/", 1)[1]: s for s in subscriber.list_subscriptions(project=project, timeout=10)
        }
        assert subscriptions[cfg.completion_subscription].push_config.push_endpoint == ""
        push = subscriptions[f"{cfg.requests_topic}-push"].push_config.push_endpoint
        assert push == f"http://{HOST}:{ports['function']}/{project}/topics/{cfg.requests_topic}"
        assert f"{cfg.notification_topic}-push" in subscriptions

        # The completion topic's pull subscription delivers.
        completion = f"{project}/topics/{cfg.completion_topic}"
        publisher.publish(completion, b"done", kind="test").result(timeout=10)
        subscription = f"{project}/subscriptions/{cfg.completion_subscription}"
        response = wait_until(
            lambda: subscriber.pull(subscription=subscription, max_messages=10, timeout=10),
            "a message on the completion subscription",
        )
        assert response.received_messages[0].message.data == b"done"
        ack_ids = [m.ack_id for m in response.received_messages]
        subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids, timeout=10)
    finally:
        publisher.transport.close()
        subscriber.close()

    storage = stack.storage_client()
    try:
        buckets = {b.name for b in storage.list_buckets(timeout=10)}
        assert buckets == {cfg.schema_bucket, cfg.state_bucket}
    finally:
        storage.close()

    bigquery = stack.bigquery_client()
    try:
        assert list(bigquery.list_datasets(timeout=10)) == []  # empty, like a new project
        dataset = bigquery.create_dataset(f"{cfg.project}.stack_probe", timeout=10)
        assert dataset.dataset_id == "stack_probe"
    finally:
        bigquery.close()
    assert (cfg.workdir / "bigquery-data").is_dir()  # the emulator's data: inside the workdir

    assert http_status(ports["function"]) == 405  # a CloudEvent function wants a POST


def test_request_reaches_function_through_push(stack: Stack, events: Path) -> None:
    cfg = stack.config
    request = json.dumps({"request_id": uuid.uuid4().hex}).encode()
    publisher = stack.publisher()
    try:
        topic = f"projects/{cfg.project}/topics/{cfg.requests_topic}"
        publisher.publish(topic, request).result(timeout=10)
    finally:
        publisher.transport.close()

    def delivered() -> dict[str, Any] | None:
        for event in read_events(events):
            message = event["data"]["message"]
            if base64.b64decode(message.get("data", "")) == request:
                return event
        return None

    event = wait_until(delivered, "the request to reach the function")
    assert event["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert event["source"] == (f"//pubsub.googleapis.com/projects/{cfg.project}/topics/{cfg.requests_topic}")


def upload_and_wait(stack: Stack, events: Path) -> dict[str, Any]:
    cfg = stack.config
    name = f"{cfg.schema_prefix}t{uuid.uuid4().hex[:8]}.json"
    storage = stack.storage_client()
    try:
        blob = storage.bucket(cfg.schema_bucket).blob(name)
        blob.upload_from_string('[{"name": "id", "type": "STRING"}]', timeout=10)
    finally:
        storage.close()

    def notified() -> dict[str, Any] | None:
        for event in read_events(events):
            if event["data"]["message"].get("attributes", {}).get("objectId") == name:
                return event
        return None

    event = wait_until(notified, f"the notification for gs://{cfg.schema_bucket}/{name}")
    attributes = event["data"]["message"]["attributes"]
    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["bucketId"] == cfg.schema_bucket
    assert attributes["objectGeneration"] == str(blob.generation)
    assert event["source"] == (
        f"//pubsub.googleapis.com/projects/{cfg.project}/topics/{cfg.notification_topic}"
    )
    resource = json.loads(base64.b64decode(event["data"]["message"]["data"]))
    assert resource["name"] == name
    return event


def test_upload_notification_reaches_function(stack: Stack, events: Path) -> None:
    upload_and_wait(stack, events)


def test_uploads_while_the_trigger_is_detached_do_not_reach_the_function(stack: Stack, events: Path) -> None:
    cfg = stack.config
    seeded = f"{cfg.schema_prefix}seed{uuid.uuid4().hex[:8]}.json"
    with upload_trigger_detached(stack):
        storage = stack.storage_client()
        try:
            storage.bucket(cfg.schema_bucket).blob(seeded).upload_from_string("[]", timeout=10)
        finally:
            storage.close()

    upload_and_wait(stack, events)  # attached again; and by then the seed would have arrived
    object_ids = {e["data"]["message"].get("attributes", {}).get("objectId") for e in read_events(events)}
    assert seeded not in object_ids
    subscriber = stack.subscriber()
    try:
        names = {
            s.name.rsplit("/", 1)[1]
            for s in subscriber.list_subscriptions(project=f"projects/{cfg.project}", timeout=10)
        }
    finally:
        subscriber.close()
    assert f"{cfg.notification_topic}-push" in names
    assert f"{cfg.notification_topic}-detached" not in names


def bigquery_datasets(stack: Stack) -> list[str]:
    client = stack.bigquery_client()
    try:
        return sorted(d.dataset_id for d in client.list_datasets(timeout=10))
    finally:
        client.close()


def test_kill_and_restart_bigquery_on_the_same_port(stack: Stack) -> None:
    port = stack.ports["bigquery"]
    datasets_path = f"/bigquery/v2/projects/{stack.config.project}/datasets"
    client = stack.bigquery_client()
    try:
        client.create_dataset("before_restart", timeout=10)
    finally:
        client.close()
    pids_before = set(stack.pids)
    stack.kill("bigquery")
    assert http_status(port, datasets_path) is None
    assert len(stack.pids) == len(pids_before) - 1

    stack.restart("bigquery")
    assert stack.ports["bigquery"] == port
    assert stack.env["BIGQUERY_EMULATOR_HOST"] == f"http://{HOST}:{port}"
    assert http_status(port, datasets_path) == 200
    assert bigquery_datasets(stack) == []  # restarted empty (bigquery_keeps_data is False)


def all_at_once(calls: list[Callable[[], Any]]) -> list[str]:
    """Run the calls at the same instant; the status each got ("200", "409", "412", ...)."""
    from google.api_core.exceptions import GoogleAPICallError

    barrier = threading.Barrier(len(calls))

    def one(call: Callable[[], Any]) -> str:
        barrier.wait()
        try:
            call()
        except GoogleAPICallError as exc:
            return str(exc.code)
        return "200"

    with ThreadPoolExecutor(len(calls)) as pool:
        return sorted(pool.map(one, calls))


def test_concurrent_creates_of_one_dataset_or_table_answer_one_200_and_409s(stack: Stack) -> None:
    """As BigQuery answers them (deploy/local/bigquery_emulator.py corrects local-bigquery's 400
    "Failed to commit DuckLake transaction" for a lost race): the losers learn that it exists."""
    from google.cloud import bigquery

    client = stack.bigquery_client()
    project = stack.config.project
    try:
        for round_ in range(3):
            dataset = f"race_{round_}_{uuid.uuid4().hex[:6]}"
            create = [lambda d=dataset: client.create_dataset(d, retry=None, timeout=30)] * 8
            assert all_at_once(create) == ["200"] + ["409"] * 7
            table = bigquery.Table(f"{project}.{dataset}.t", schema=[bigquery.SchemaField("a", "STRING")])
            create = [lambda t=table: client.create_table(t, retry=None, timeout=30)] * 8
            assert all_at_once(create) == ["200"] + ["409"] * 7
    finally:
        client.close()


def test_a_dataset_or_table_being_created_is_read_whole_or_not_at_all(stack: Stack) -> None:
    """As BigQuery creates them, in one step (deploy/local/bigquery_emulator.py: local-bigquery
    creates the schema or table, then records its labels and description): a reader racing the
    create sees 404 or everything the create said, never a resource without its labels."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    client = stack.bigquery_client()
    project = stack.config.project

    def seen_while_created(create: Callable[[], Any], read: Callable[[], Any]) -> list[Any]:
        created = threading.Event()

        def poll() -> Any:
            while True:
                done = created.is_set()
                try:
                    return read()
                except NotFound:
                    if done:
                        raise

        with ThreadPoolExecutor(7) as pool:
            readers = [pool.submit(poll) for _ in range(6)]
            create()
            created.set()
            return [r.result() for r in readers]

    datasets = []
    try:
        for round_ in range(5):
            name = f"whole_{round_}_{uuid.uuid4().hex[:6]}"
            datasets.append(name)
            ds = bigquery.Dataset(f"{project}.{name}")
            ds.labels, ds.description = {"domain": "tenants"}, "declared"
            seen = seen_while_created(
                lambda ds=ds: client.create_dataset(ds, timeout=30), lambda n=name: client.get_dataset(n)
            )
            assert {(tuple(d.labels.items()), d.description) for d in seen} == {
                ((("domain", "tenants"),), "declared")
            }

            table = bigquery.Table(
                f"{project}.{name}.t", schema=[bigquery.SchemaField("a", "STRING", "REQUIRED")]
            )
            table.labels, table.description = {"domain": "tenants"}, "declared"
            seen = seen_while_created(
                lambda t=table: client.create_table(t, timeout=30), lambda t=table: client.get_table(t)
            )
            assert {(tuple(t.labels.items()), t.description, tuple(t.schema)) for t in seen} == {
                ((("domain", "tenants"),), "declared", tuple(table.schema))
            }
    finally:
        for name in datasets:
            client.delete_dataset(name, delete_contents=True, not_found_ok=True)
        client.close()


def test_concurrent_patches_read_at_one_etag_answer_one_200_and_412s(stack: Stack) -> None:
    """As BigQuery answers them (deploy/local/bigquery_emulator.py makes local-bigquery's etag
    check and write one step): of the patches made from one read, one is applied."""
    from google.cloud import bigquery

    client = stack.bigquery_client()
    project = stack.config.project
    dataset = f"patches_{uuid.uuid4().hex[:6]}"
    try:
        client.create_dataset(dataset, timeout=30)
        client.create_table(
            bigquery.Table(f"{project}.{dataset}.t", schema=[bigquery.SchemaField("a", "STRING")]), timeout=30
        )
        for round_ in range(3):
            read = [client.get_table(f"{dataset}.t") for _ in range(4)]  # four writers, one etag
            for i, table in enumerate(read):
                table.schema = [*table.schema, bigquery.SchemaField(f"c{round_}_{i}", "STRING")]
                table.labels = {"writer": str(i)}
            patches = [
                lambda t=t: client.update_table(t, ["schema", "labels"], retry=None, timeout=30) for t in read
            ]
            assert all_at_once(patches) == ["200", "412", "412", "412"]
            after = client.get_table(f"{dataset}.t")
            winner = after.labels["writer"]
            assert [f.name for f in after.schema][-1] == f"c{round_}_{winner}"  # the winner's, whole

            datasets = [client.get_dataset(dataset) for _ in range(4)]
            for i, ds in enumerate(datasets):
                ds.description = f"writer {i}"
            patches = [
                lambda d=d: client.update_dataset(d, ["description"], retry=None, timeout=30)
                for d in datasets
            ]
            assert all_at_once(patches) == ["200", "412", "412", "412"]
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        client.close()


def test_a_table_a_copy_job_creates_keeps_its_metadata_between_reads(stack: Stack) -> None:
    """As in BigQuery (deploy/local/bigquery_emulator.py records it when the job creates the
    table): creation and modification times, etag, and the dataset's default expiration."""
    from google.cloud import bigquery

    client = stack.bigquery_client()
    project = stack.config.project
    dataset = bigquery.Dataset(f"{project}.copies_{uuid.uuid4().hex[:6]}")
    dataset.default_table_expiration_ms = 86_400_000
    try:
        client.create_dataset(dataset, timeout=30)
        source = f"{dataset.dataset_id}.source"
        client.create_table(
            bigquery.Table(f"{project}.{source}", schema=[bigquery.SchemaField("a", "STRING")]), timeout=30
        )
        assert client.insert_rows_json(source, [{"a": "x"}, {"a": "y"}]) == []
        client.copy_table(source, f"{dataset.dataset_id}.copy", timeout=30).result(timeout=30)

        first = client.get_table(f"{dataset.dataset_id}.copy")
        time.sleep(0.05)  # later reads must not move any of it
        second = client.get_table(f"{dataset.dataset_id}.copy")

        assert first.num_rows == 2
        assert first.etag is not None
        assert (first.created, first.modified, first.etag, first.expires) == (
            second.created,
            second.modified,
            second.etag,
            second.expires,
        )
        assert first.expires - first.created == timedelta(days=1)
    finally:
        client.delete_dataset(dataset.dataset_id, delete_contents=True, not_found_ok=True)
        client.close()


def test_a_copy_job_keeps_the_source_schema_as_in_bigquery(stack: Stack) -> None:
    """A backup and a restore are copy jobs: BigQuery gives the table it writes the source's
    schema, modes, descriptions and type parameters included, whether it creates the table or
    writes over one (deploy/local/bigquery_emulator.py: local-bigquery made every column NULLABLE
    and dropped the descriptions)."""
    from google.cloud import bigquery

    client = stack.bigquery_client()
    project = stack.config.project
    dataset = f"copyschema_{uuid.uuid4().hex[:6]}"
    schema = [
        bigquery.SchemaField("a", "STRING", "REQUIRED", description="the key", max_length=8),
        bigquery.SchemaField("b", "INT64", description="a number"),
    ]
    try:
        client.create_dataset(dataset, timeout=30)
        client.create_table(bigquery.Table(f"{project}.{dataset}.source", schema=schema), timeout=30)
        assert client.insert_rows_json(f"{dataset}.source", [{"a": "x", "b": 1}]) == []
        client.create_table(
            bigquery.Table(f"{project}.{dataset}.over", schema=[bigquery.SchemaField("a", "STRING")]),
            timeout=30,
        )

        client.copy_table(f"{dataset}.source", f"{dataset}.new", timeout=30).result(timeout=30)
        truncate = bigquery.CopyJobConfig(write_disposition="WRITE_TRUNCATE")
        client.copy_table(f"{dataset}.source", f"{dataset}.over", job_config=truncate).result(timeout=30)

        for table in ("new", "over"):
            assert [f.to_api_repr() for f in client.get_table(f"{dataset}.{table}").schema] == [
                f.to_api_repr() for f in client.get_table(f"{dataset}.source").schema
            ], table
            assert [r["a"] for r in client.list_rows(f"{dataset}.{table}")] == ["x"]
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        client.close()


def test_a_column_altered_by_ddl_keeps_its_metadata_as_in_bigquery(stack: Stack) -> None:
    """As in BigQuery (deploy/local/bigquery_emulator.py makes the stored column metadata follow
    the statement): a renamed column keeps its description and length, a widened one gets the
    new length, a dropped default is gone, and a dropped column's metadata is forgotten."""
    from google.cloud import bigquery

    client = stack.bigquery_client()
    project = stack.config.project
    dataset = f"ddl_{uuid.uuid4().hex[:6]}"
    table = f"{project}.{dataset}.t"
    schema = [
        bigquery.SchemaField("a", "STRING", description="the a", max_length=10),
        bigquery.SchemaField("d", "STRING", default_value_expression="'x'"),
        bigquery.SchemaField("gone", "STRING", description="old"),
    ]
    try:
        client.create_dataset(dataset, timeout=30)
        client.create_table(bigquery.Table(table, schema=schema), timeout=30)
        for statement in (
            f"ALTER TABLE `{table}` RENAME COLUMN a TO b",
            f"ALTER TABLE `{table}` ALTER COLUMN b SET DATA TYPE STRING(20)",
            f"ALTER TABLE `{table}` ALTER COLUMN d DROP DEFAULT",
            f"ALTER TABLE `{table}` DROP COLUMN gone",
            f"ALTER TABLE `{table}` ADD COLUMN gone STRING",
        ):
            client.query(statement).result(timeout=30)

        fields = {f.name: f for f in client.get_table(table).schema}
        assert list(fields) == ["b", "d", "gone"]
        assert (fields["b"].description, fields["b"].max_length) == ("the a", 20)
        assert fields["d"].default_value_expression is None
        assert fields["gone"].description is None
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        client.close()


def test_bigquery_keeps_its_data_across_a_restart_when_asked_and_stop_removes_it(tmp_path: Path) -> None:
    config = StackConfig(components=frozenset({"bigquery"}), workdir=tmp_path, bigquery_keeps_data=True)
    data = tmp_path / "bigquery-data"
    data.mkdir()
    (data / "left-by-a-killed-stack").write_text("")
    with Stack(config) as stack:
        assert not (data / "left-by-a-killed-stack").exists()  # a new stack starts empty
        client = stack.bigquery_client()
        try:
            client.create_dataset("kept", timeout=10)
            client.create_table(f"{config.project}.kept.t", timeout=10)
        finally:
            client.close()
        stack.restart("bigquery")
        assert bigquery_datasets(stack) == ["kept"]
    assert not data.exists()


def test_bigquery_without_duckdbs_extensions_fails_start_and_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_marker: str
) -> None:
    """DuckDB finds its extensions under $HOME and cannot download them offline."""
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    stack = Stack(StackConfig(components=frozenset({"bigquery"}), workdir=tmp_path / "work"))
    with pytest.raises(StackError, match=r"(?s)DuckDB's extensions are not in.*make venv.*icu"):
        stack.start()
    assert stack.pids == []
    assert processes_with_env(process_marker) == []


def test_restart_pubsub_provisions_it_again(stack: Stack, events: Path) -> None:
    """A restarted emulator is empty: topics and subscriptions are created again, and
    fake-gcs-server's notifications reach the new emulator."""
    stack.restart("pubsub")
    upload_and_wait(stack, events)


def test_stop_ends_every_process_and_frees_the_ports(stack: Stack) -> None:
    pids, ports = stack.pids, stack.ports
    assert len(pids) == 4
    stack.stop()
    stack.stop()  # idempotent

    assert stack.pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # no child left in its process group either
    for port in ports.values():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((HOST, port))  # a new server could listen there
    assert not (stack.config.workdir / "env").exists()
    assert not (stack.config.workdir / "bigquery-data").exists()


# ---- failed starts leave nothing behind ---------------------------------------------------


def test_bad_bigquery_flag_fails_start_and_stops_the_others(
    tmp_path: Path, recorder: tuple[Path, Path], process_marker: str
) -> None:
    config = StackConfig(
        function_source=recorder[0],
        workdir=tmp_path,
        extra_args={"bigquery": ["--no-such-flag"]},
    )
    stack = Stack(config)
    with pytest.raises(StackError, match=r"(?s)bigquery exited with code 2.*no-such-flag"):
        stack.start()
    assert stack.pids == []
    assert processes_with_env(process_marker) == []
    # The workdir is free again: a corrected stack can use it.
    with Stack(StackConfig(components=frozenset({"storage"}), workdir=tmp_path)) as ok:
        assert http_status(ok.ports["storage"], "/storage/v1/b") == 200


def test_function_that_cannot_import_fails_start(tmp_path: Path, process_marker: str) -> None:
    source = tmp_path / "main.py"
    source.write_text("raise RuntimeError('broken on purpose')\n")
    config = StackConfig(components=frozenset({"function"}), function_source=source, workdir=tmp_path)
    stack = Stack(config)
    with pytest.raises(StackError, match=r"(?s)function exited with code.*broken on purpose"):
        stack.start()
    assert processes_with_env(process_marker) == []


def test_missing_function_source_fails_before_starting_anything(tmp_path: Path, process_marker: str) -> None:
    config = StackConfig(function_source=tmp_path / "nope.py", workdir=tmp_path)
    with pytest.raises(StackError, match=r"nope\.py does not exist"):
        Stack(config).start()
    assert processes_with_env(process_marker) == []


def test_a_taken_port_is_detected_and_start_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_marker: str
) -> None:
    """The Pub/Sub emulator does not exit when its port is taken (it logs a BindException and
    hangs): the stack must notice, and start again on other ports."""
    squatter = socket.socket()
    squatter.bind((HOST, 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_reserve = supervisor.reserve_port
    handed_out: list[int] = []

    def reserve() -> int:
        port = taken if not handed_out else real_reserve()
        handed_out.append(port)
        return port

    monkeypatch.setattr(supervisor, "reserve_port", reserve)
    try:
        config = StackConfig(components=frozenset({"pubsub"}), workdir=tmp_path)
        with Stack(config) as stack:
            assert stack.ports["pubsub"] != taken
            assert http_status(stack.ports["pubsub"]) == 200
        assert "Address already in use" in (tmp_path / "pubsub.log").read_text()
    finally:
        squatter.close()
    assert processes_with_env(process_marker) == []


def test_workdir_is_not_shared_by_two_stacks(tmp_path: Path) -> None:
    config = StackConfig(components=frozenset({"storage"}), workdir=tmp_path)
    with Stack(config), pytest.raises(StackError, match="used by another running stack"):
        Stack(StackConfig(components=frozenset({"storage"}), workdir=tmp_path)).start()


# ---- python -m deploy.local.stack ---------------------------------------------------------


@contextlib.contextmanager
def stack_command(workdir: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], list[str]]]:
    """`python -m deploy.local.stack --no-function` running, once its env file is written: the
    process, what the file exports and its lines; killed on the way out if it still runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.local.stack", "--no-function", "--workdir", str(workdir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        env_file = workdir / "env"
        wait_until(lambda: env_file.exists() or process.poll() is not None, "the env file")
        assert process.poll() is None, process.communicate()
        lines = env_file.read_text().splitlines()
        exported = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        yield process, exported, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_line_runs_until_sigterm(tmp_path: Path, process_marker: str) -> None:
    workdir = tmp_path / "work"
    with stack_command(workdir) as (process, exported, _):
        assert "FUNCTION_URL" not in exported
        assert http_status(int(exported["PUBSUB_EMULATOR_HOST"].rsplit(":", 1)[1])) == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, stderr
    assert "export BIGQUERY_EMULATOR_HOST=" in stdout
    assert "bigquery ready on 127.0.0.1:" in stderr
    assert not (workdir / "env").exists()
    assert processes_with_env(process_marker) == []


def test_make_stack_seeds_the_bucket_and_says_how_to_use_it(tmp_path: Path, process_marker: str) -> None:
    """What `make stack` gives a new user: a schema bucket holding the bundled schemas (so the
    first `plan` has something to compare), an env file that also puts this environment's tools
    on PATH, and a guide to the next commands."""
    workdir = tmp_path / "work"
    with stack_command(workdir) as (process, exported, lines):
        client = storage.Client(
            project="local-project",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": exported["STORAGE_EMULATOR_HOST"]},
        )
        bundled = sorted(p.name for p in (REPO_ROOT / "schemas").iterdir())

        def seeded() -> bool:
            return (
                sorted(b.name.removeprefix("schemas/") for b in client.list_blobs("tenant-schemas"))
                == bundled
            )

        wait_until(seeded, "the bundled schemas in the bucket")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=DEADLINE_S)
    assert f'export PATH={Path(sys.executable).parent}:"$PATH"' in lines
    assert exported["BOOTSTRAP_REQUESTS_TOPIC"] == "bootstrap-requests"
    assert f"seeded gs://tenant-schemas/schemas/ with {len(bundled)} bundled schema files" in stderr
    assert "python -m function events --follow" in stderr and f"{workdir}/function.log" in stderr
    assert processes_with_env(process_marker) == []
