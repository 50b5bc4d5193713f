"""`make demo`: the whole product on the local stack, start to finish (the steps: `main`), and the
seeding of the schema bucket that `make stack` and the tests share."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.local.pieces import admin_call, push_subscription
from deploy.local.stack import Stack, StackConfig
from function.commands import current_state
from function.config import BUNDLED_SCHEMAS, Settings
from function.publish import CompletionWatch, publish_request
from function.render import render_event, render_tables
from function.sync import sync_folder

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

log = logging.getLogger("deploy.local.demo")
CHANGED_TABLE = "tenant_profiles"
NEW_COLUMN = {
    "name": "preferred_language",
    "type": "STRING",
    "mode": "NULLABLE",
    "description": "BCP 47 language tag the tenant's notifications are written in.",
}


def main() -> int:
    """1. start the emulators and the function (deploy/local/stack.py);
    2. seed the schema bucket with the bundled schemas, as deploy.sh does before it attaches the
       upload trigger (so seeding does not itself run the function);
    3. publish a bootstrap request and wait for its completion event: every table created;
    4. show the tables as BigQuery now holds them;
    5. publish the same request again: every table unchanged, nothing written;
    6. upload a changed schema (a new NULLABLE column): the upload runs the function on its own,
       and the table is updated in place;
    7. stop everything."""
    workdir = Path(tempfile.mkdtemp(prefix="bootstrap-demo-"))
    step(
        "Starting the local stack (Pub/Sub emulator, local-bigquery, fake-gcs-server, functions-framework); "
        f"logs in {workdir}"
    )
    with Stack(StackConfig(workdir=workdir)) as stack:
        os.environ.update(stack.env)  # the operator's tools below read the standard variables
        config = stack.config
        source = stack.env["SCHEMA_SOURCE"]

        step(f"Seeding {source} with the bundled schemas, before the upload trigger is attached")
        _, uploaded = seed(stack)
        print(f"  uploaded {len(uploaded)} files: {', '.join(uploaded)}")

        watch = CompletionWatch(config.project, config.completion_topic)
        try:
            step("Publishing a bootstrap request ({}) to the requests topic")
            show(bootstrap(config.project, config.requests_topic, watch, "demo-first"))
            step("The tables as BigQuery now holds them")
            show_tables()
            step("Publishing the same request again: the declared state already holds")
            show(bootstrap(config.project, config.requests_topic, watch, "demo-second"))

            step(f"Uploading {CHANGED_TABLE}.json with a new NULLABLE column {NEW_COLUMN['name']}")
            schema = json.loads((BUNDLED_SCHEMAS / f"{CHANGED_TABLE}.json").read_text())
            blob = (
                stack.storage_client()
                .bucket(config.schema_bucket)
                .blob(f"{config.schema_prefix}{CHANGED_TABLE}.json")
            )
            blob.upload_from_string(
                json.dumps([*schema, NEW_COLUMN], indent=2), content_type="application/json"
            )
            request_id = f"{config.schema_bucket}/{blob.name}#{blob.generation}"
            print(f"  the upload notification runs the function on its own; waiting for {request_id}")
            show(wait(watch, request_id))
            show_tables(CHANGED_TABLE)
        finally:
            watch.close()
        step("Stopping the stack")
    shutil.rmtree(workdir)  # its logs are kept only when something failed (see below)
    print('\nDone. `make stack` keeps the stack running for your own runs (README: "Your own runs").')
    return 0


def seed(stack: Stack, folder: Path = BUNDLED_SCHEMAS) -> tuple[str, list[str]]:
    """The schema bucket holding `folder`'s files, as deploy.sh seeds it: before the upload
    trigger runs the function on them. The stack's SCHEMA_SOURCE and the files uploaded (none
    without storage)."""
    source = stack.env.get("SCHEMA_SOURCE")
    if source is None:
        return "", []
    with upload_trigger_detached(stack):
        return source, sync_folder(stack.storage_client(), folder, source)


@contextlib.contextmanager
def upload_trigger_detached(stack: Stack) -> Iterator[None]:
    """Uploads to the stack's schema bucket inside this block do not reach the function.

    Like seeding the bucket before deploy.sh attaches the upload trigger. The push subscription
    from the notification topic to the function is replaced by a pull subscription; on exit,
    the notifications of the objects finalized in the block (which fake-gcs-server publishes
    asynchronously) are pulled and dropped, and the push subscription is attached again.
    Without pubsub, storage and function: does nothing.
    """
    cfg = stack.config
    if not {"pubsub", "storage", "function"} <= cfg.components:
        yield
        return
    project = f"projects/{cfg.project}"
    push = push_subscription(stack, cfg.notification_topic)
    drain = f"{project}/subscriptions/{cfg.notification_topic}-detached"
    subscriber, storage_client = stack.subscriber(), stack.storage_client()

    def generations() -> set[tuple[str, str]]:
        blobs = storage_client.list_blobs(cfg.schema_bucket, **admin_call())
        return {(blob.name, str(blob.generation)) for blob in blobs}

    try:
        before = generations()
        subscriber.create_subscription(name=drain, topic=push["topic"], **admin_call())
        subscriber.delete_subscription(subscription=push["name"], **admin_call())
        try:
            yield
        finally:
            try:
                deadline = time.monotonic() + cfg.start_timeout
                missing = _drain_notifications(subscriber, drain, generations() - before, deadline)
            finally:
                subscriber.create_subscription(request=push, **admin_call())
                subscriber.delete_subscription(subscription=drain, **admin_call())
            if missing:
                log.warning("upload notifications not seen: %s", sorted(missing))
    finally:
        subscriber.close()
        storage_client.close()


def _drain_notifications(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    expected: set[tuple[str, str]],
    deadline: float,
) -> set[tuple[str, str]]:
    """Pull and ack until a notification for every (objectId, objectGeneration) was seen."""
    from google.api_core.exceptions import DeadlineExceeded

    missing = set(expected)
    while missing and time.monotonic() < deadline:
        try:  # the emulator holds a pull open until a message comes or the call times out
            response = subscriber.pull(subscription=subscription, max_messages=100, timeout=2.0, retry=None)
        except DeadlineExceeded:
            continue
        for received in response.received_messages:
            attributes = received.message.attributes
            missing.discard((attributes.get("objectId"), attributes.get("objectGeneration")))
        if response.received_messages:
            ack_ids = [m.ack_id for m in response.received_messages]
            subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids, **admin_call())
    return missing


def bootstrap(project: str, topic: str, watch: CompletionWatch, prefix: str) -> dict[str, Any]:
    request_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    publish_request(project, topic, {"request_id": request_id})
    print(f"  published request {request_id}")
    return wait(watch, request_id)


def wait(watch: CompletionWatch, request_id: str) -> dict[str, Any]:
    event = watch.wait(request_id, timeout=180, progress=_progress)
    print()
    if event is None:
        raise SystemExit(
            f"no completion event for {request_id} within 180 s; the stack's logs are kept in the "
            "folder named when it started"
        )
    print(f"  received {event['type']}")
    return event.data


def show(data: dict[str, Any]) -> None:
    print("  " + render_event(data).replace("\n", "\n  "))


def show_tables(*only: str) -> None:
    """The tables as BigQuery holds them, as `python -m function show` prints them."""
    state = current_state(Settings.from_env(), list(only) or None)
    assert state is not None, "the dataset was just created"
    print("  " + render_tables(*state).replace("\n", "\n  "))


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _progress(elapsed: float) -> None:
    print(f"\r  waiting for the completion event... {elapsed:3.0f} s", end="", flush=True)


if __name__ == "__main__":
    sys.exit(main())
