"""Driving the real function end to end: publish to the emulator, post Pub/Sub push bodies
over HTTP to functions-framework, and collect completion events from the completion topic."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import requests
from cloudevents.http import CloudEvent
from google.api_core import exceptions as gexc

from deploy.local.stack import Stack
from function.completion import parse_message
from tests.conftest import REPO
from tests.support.proxy import Proxy
from tests.support.waiting import wait_until


def publish(stack: Stack, data: bytes | dict[str, Any], topic: str | None = None, **attributes: str) -> str:
    payload = json.dumps(data).encode() if isinstance(data, dict) else data
    publisher = stack.publisher()
    path = publisher.topic_path(stack.config.project, topic or stack.config.requests_topic)
    return publisher.publish(path, payload, **attributes).result(timeout=30)


def push(stack: Stack, data: bytes, message_id: str | None = None, **attributes: str) -> requests.Response:
    """POST what the Pub/Sub emulator would push for a message on the requests topic."""
    project, topic = stack.config.project, stack.config.requests_topic
    body = {
        "subscription": f"projects/{project}/subscriptions/{topic}-push",
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": message_id or uuid.uuid4().hex,
            "publishTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        },
    }
    url = f"{stack.env['FUNCTION_URL']}projects/{project}/topics/{topic}"
    return requests.post(url, json=body, timeout=120)


class Inbox:
    """Every completion event published during a test module, by request_id."""

    def __init__(self, stack: Stack) -> None:
        self.subscriber = stack.subscriber()
        self.path = self.subscriber.subscription_path(
            stack.config.project, stack.config.completion_subscription
        )
        self.events: dict[str, list[CloudEvent]] = {}
        self.lock = threading.Lock()

    def wait(self, request_id: str, timeout: float = 90.0, count: int = 1) -> CloudEvent:
        """The first completion event of `request_id`, once `count` of them have arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = self.events.get(request_id, [])
                if len(found) >= count:
                    return found[0]
            self._pull(min(5.0, max(0.1, deadline - time.monotonic())))
        raise AssertionError(
            f"no completion event for {request_id!r} within {timeout:g} s; got {list(self.events)}"
        )

    def all(self, request_id: str) -> list[CloudEvent]:
        self._pull(1.0)
        with self.lock:
            return list(self.events.get(request_id, []))

    def _pull(self, timeout: float) -> None:
        try:
            response = self.subscriber.pull(
                request={"subscription": self.path, "max_messages": 100}, timeout=timeout
            )
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable):
            return
        if not response.received_messages:
            return
        with self.lock:
            for received in response.received_messages:
                event = parse_message(received.message.data, received.message.attributes)
                self.events.setdefault(event.data["request_id"], []).append(event)
        self.subscriber.acknowledge(
            request={"subscription": self.path, "ack_ids": [r.ack_id for r in response.received_messages]}
        )


def bigquery_snapshot(stack: Stack) -> dict[str, Any]:
    """Every dataset and table with its last-modified time: equal snapshots mean nothing changed."""
    client = stack.bigquery_client()
    snapshot: dict[str, Any] = {}
    for dataset in client.list_datasets():
        for item in client.list_tables(dataset.dataset_id):
            table = client.get_table(item)
            snapshot[f"{dataset.dataset_id}.{table.table_id}"] = (table.modified, table.num_rows, table.etag)
        snapshot[dataset.dataset_id] = client.get_dataset(dataset.dataset_id).modified
    return snapshot


def log_lines(stack: Stack, piece: str = "function") -> list[dict[str, Any]]:
    """The structured (JSON) lines the function wrote to its log."""
    lines = []
    for line in (stack.config.workdir / f"{piece}.log").read_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


# --- more drivers: raw CloudEvents, buckets, proxies around the function ---------------------

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
EMULATOR_VARIABLES = {"bigquery": "BIGQUERY_EMULATOR_HOST", "storage": "STORAGE_EMULATOR_HOST"}


def post_event(
    stack: Stack,
    event_type: str,
    data: Any,
    *,
    event_id: str,
    source: str = "//test/bad-input",
    mode: str = "binary",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST a CloudEvent to the function, in binary (ce-* headers, `data` the body: bytes as
    they are, anything else as JSON) or structured content mode (application/cloudevents+json)."""
    attributes = {"id": event_id, "source": source, "type": event_type, "specversion": "1.0"}
    if mode == "structured":
        body = json.dumps({**attributes, "datacontenttype": "application/json", "data": data}).encode()
        all_headers = {"content-type": "application/cloudevents+json", **(headers or {})}
    else:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        all_headers = {f"ce-{k}": v for k, v in attributes.items()}
        all_headers = {**all_headers, "content-type": "application/json", **(headers or {})}
    return requests.post(stack.env["FUNCTION_URL"], data=body, headers=all_headers, timeout=120)


def push_body(stack: Stack, body: dict[str, Any], topic: str | None = None) -> requests.Response:
    """POST any Pub/Sub push body (well-formed or not) to the function, for `topic`."""
    project = stack.config.project
    url = f"{stack.env['FUNCTION_URL']}projects/{project}/topics/{topic or stack.config.requests_topic}"
    return requests.post(url, json=body, timeout=120)


def bucket_snapshot(stack: Stack, buckets: tuple[str, ...] | None = None) -> dict[str, int]:
    """Every object of the schema and state buckets with its generation: "bucket/name" -> gen."""
    client = stack.storage_client()
    names = buckets or (stack.config.schema_bucket, stack.config.state_bucket)
    return {f"{b.bucket.name}/{b.name}": b.generation for name in names for b in client.list_blobs(name)}


def count_rows(stack: Stack, table: str, dataset: str = "tenants") -> int:
    """Rows of a table, as tabledata.list reads them."""
    return len(list(stack.bigquery_client().list_rows(f"{stack.config.project}.{dataset}.{table}")))


def wait_for_log(stack: Stack, match: Any, timeout: float = 60.0) -> dict[str, Any]:
    """The first structured log line of the function for which `match(line)` is true."""

    def find() -> dict[str, Any] | None:
        return next((line for line in log_lines(stack) if match(line)), None)

    return wait_until(find, "a matching log line", timeout=timeout)


@contextlib.contextmanager
def function_behind_proxies(stack: Stack, *emulators: str, **options: Any) -> Iterator[dict[str, Proxy]]:
    """A `Proxy` in front of each named emulator ("bigquery", "storage"), and the function
    restarted to talk to them through the proxies (the test's own clients still go straight to
    the emulators). The storage proxy rewrites fake-gcs-server's mediaLinks, so downloads also
    pass through it. Left pointed at the proxies afterwards: one stack per module."""
    with contextlib.ExitStack() as exits:
        proxies = {}
        for name in emulators:
            variable = EMULATOR_VARIABLES[name]
            proxy = Proxy(stack.env[variable], rewrite_urls=name == "storage", **options)
            proxies[name] = exits.enter_context(proxy)
            stack.config.function_env[variable] = proxy.url
        stack.restart("function")
        yield proxies


@contextlib.contextmanager
def pushes_through_proxy(stack: Stack) -> Iterator[Proxy]:
    """Every push subscription of the stack re-pointed at a proxy in front of the function: its
    records are the HTTP answers to every Pub/Sub delivery (path /projects/P/topics/TOPIC), the
    statuses functions-framework does not log."""
    from google.cloud import pubsub_v1

    project = stack.config.project
    with Proxy(stack.env["FUNCTION_URL"].rstrip("/")) as proxy:
        subscriber = stack.subscriber()
        try:
            for topic in (stack.config.requests_topic, stack.config.notification_topic):
                endpoint = f"{proxy.url}/projects/{project}/topics/{topic}"
                subscriber.modify_push_config(
                    request={
                        "subscription": subscriber.subscription_path(project, f"{topic}-push"),
                        "push_config": pubsub_v1.types.PushConfig(push_endpoint=endpoint),
                    }
                )
        finally:
            subscriber.close()
        yield proxy


def answers(proxy: Proxy, topic: str | None = None) -> list[int | None]:
    """The statuses a push proxy answered, optionally only those for `topic`."""
    return [r.status for r in proxy.requests() if topic is None or r.path.endswith(f"/topics/{topic}")]


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m function ARGS` as an operator runs it, pointed at the stack."""
    return subprocess.run(
        [sys.executable, "-m", "function", *args],
        cwd=REPO,
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=180,
    )
