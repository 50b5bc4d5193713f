"""The completion event: a CloudEvent published to Pub/Sub in binary content mode (README,
"Bootstrap requests and the completion event"), and read back by its consumers."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http
from google.api_core.retry import Retry

from .config import Settings
from .logs import clip

if TYPE_CHECKING:  # imported in the background (`prepare`): the largest of the function's imports
    from google.cloud import pubsub_v1

EVENT_TYPES = {
    "succeeded": "com.convergence.bootstrap.v1.completed",
    "failed": "com.convergence.bootstrap.v1.failed",
    "planned": "com.convergence.bootstrap.v1.planned",
}
SOURCE = "//bootstrap.convergence/projects/{project}/datasets/{dataset}"


CONNECT_TIMEOUT = 10.0  # seconds to wait for the channel before the first publish tries anyway
MAX_CHANGES = 200  # change lines per table in the event; the rest are counted
MAX_ERROR = 16_000  # characters of an error


def build_event(settings: Settings, data: dict[str, Any]) -> CloudEvent:
    data = bounded(data)
    attributes = {
        "id": uuid.uuid4().hex,
        "source": SOURCE.format(project=settings.project, dataset=settings.dataset),
        "type": EVENT_TYPES[data["status"]],
        "subject": settings.dataset,
        "time": data["finished_at"],
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data)


def bounded(data: dict[str, Any]) -> dict[str, Any]:
    """The event data with every list and message of unbounded size cut to a size that keeps the
    message far below Pub/Sub's 10 MB (a schema of 10,000 new columns has 10,000 changes)."""

    def table(t: dict[str, Any]) -> dict[str, Any]:
        error = t.get("error")
        cut = {
            **t,
            "changes": _first(t["changes"], "change"),
            "error": clip(error, MAX_ERROR) if error else error,
        }
        if "statements" in t:
            cut["statements"] = _first(t["statements"], "statement")
        return cut

    error = data.get("error")
    return {
        **data,
        "tables": [table(t) for t in data["tables"]],
        "error": clip(error, MAX_ERROR) if error else error,
    }


def to_message(event: CloudEvent) -> tuple[bytes, dict[str, str]]:
    """(message data, message attributes) in binary content mode. Google's Pub/Sub binding puts
    each context attribute in a message attribute prefixed `ce-` and the data content type in
    `content-type`; the message data is the event data. `to_binary` gives exactly those headers,
    and `from_http` parses them back (`parse_message`), so a consumer can use the same library."""
    headers, body = to_binary(event, data_marshaller=lambda d: json.dumps(d, sort_keys=True))
    body = body.encode() if isinstance(body, str) else body
    return body, {key.lower(): str(value) for key, value in headers.items()}


def parse_message(data: bytes, attributes: Mapping[str, str]) -> CloudEvent:
    """The consumer's side: a Pub/Sub message of this binding back into a CloudEvent."""
    return from_http(dict(attributes), data)


_publisher: Future[pubsub_v1.PublisherClient] | None = None
_publisher_lock = threading.Lock()


def prepare() -> None:
    """Import the Pub/Sub client, make it and open its channel in the background: a cold
    instance does it while its BigQuery requests are in flight, not after them. Idempotent."""
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = Future()
            threading.Thread(target=_connect, args=(_publisher,), name="pubsub-prepare", daemon=True).start()


def _connect(ready: Future[pubsub_v1.PublisherClient]) -> None:
    try:
        import grpc
        from google.cloud import pubsub_v1

        client = pubsub_v1.PublisherClient()
        with contextlib.suppress(grpc.FutureTimeoutError):  # unreachable now: the publish retries
            grpc.channel_ready_future(client.transport.grpc_channel).result(timeout=CONNECT_TIMEOUT)
    except BaseException as exc:  # reported where the client is needed (publish raises it)
        ready.set_exception(exc)
    else:
        ready.set_result(client)


def publisher() -> pubsub_v1.PublisherClient:
    prepare()
    assert _publisher is not None
    return _publisher.result()


def publish(settings: Settings, event: CloudEvent) -> str:
    """Publish and wait for the server's message id (a failure raises, so the trigger retries)."""
    client = publisher()
    data, attributes = to_message(event)
    topic = client.topic_path(settings.project, settings.completion_topic)
    retry = Retry(initial=0.25, maximum=8.0, multiplier=2.0, timeout=settings.retry_deadline)
    future = client.publish(topic, data, retry=retry, timeout=settings.retry_deadline, **attributes)
    return future.result(timeout=settings.retry_deadline + 5)


def _first(items: list[str], noun: str) -> list[str]:
    """At most MAX_CHANGES of `items`, and how many more there were."""
    if len(items) <= MAX_CHANGES:
        return list(items)
    return [*items[:MAX_CHANGES], f"... and {len(items) - MAX_CHANGES} more {noun}(s)"]
