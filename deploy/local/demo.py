"""`make demo`: the whole product on the local stack, start to finish, in about a minute.

1. start the emulators and the function (deploy/local/stack.py);
2. seed the schema bucket with the bundled schemas, as deploy.sh does before it attaches the
   upload trigger (so seeding does not itself run the function);
3. publish a bootstrap request and wait for its completion event: every table created;
4. show the tables as BigQuery now holds them;
5. publish the same request again: every table unchanged, nothing written;
6. upload a changed schema (a new NULLABLE column): the upload runs the function on its own,
   and the table is updated in place;
7. stop everything.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from deploy.local.stack import Stack, StackConfig
from function.commands import current_state
from function.config import BUNDLED_SCHEMAS, Settings
from function.publish import CompletionWatch, publish_request
from function.render import render_event, render_tables
from function.sync import sync_folder

CHANGED_TABLE = "tenant_profiles"
NEW_COLUMN = {
    "name": "preferred_language",
    "type": "STRING",
    "mode": "NULLABLE",
    "description": "BCP 47 language tag the tenant's notifications are written in.",
}


def main() -> int:
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
        with stack.upload_trigger_detached():
            uploaded = sync_folder(stack.storage_client(), BUNDLED_SCHEMAS, source)
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
