"""Driving the real function end to end: publish to the emulator, post Pub/Sub push bodies
over HTTP to functions-framework, and collect completion events from the completion topic."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import requests
from cloudevents.http import CloudEvent
from google.api_core import exceptions as gexc

from deploy.local.stack import Stack
from function.completion import parse_message


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
