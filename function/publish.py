"""The operator's side of the Pub/Sub contract: publish a bootstrap request and wait for its
completion event (matched by request_id)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from cloudevents.http import CloudEvent
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from .completion import parse_message


def publish_request(project: str, topic: str, request: dict[str, Any]) -> str:
    client = pubsub_v1.PublisherClient()
    data = json.dumps(request).encode()
    return client.publish(client.topic_path(project, topic), data).result(timeout=60)


class CompletionWatch:
    """A pull subscription on the completion topic, opened before publishing so the event
    cannot be missed. Without a named subscription a temporary one is created and deleted."""

    def __init__(self, project: str, topic: str, subscription: str | None = None) -> None:
        self.client = pubsub_v1.SubscriberClient()
        self.temporary = subscription is None
        name = subscription or f"bootstrap-wait-{uuid.uuid4().hex[:12]}"
        self.path = self.client.subscription_path(project, name)
        if self.temporary:
            self.client.create_subscription(
                request={
                    "name": self.path,
                    "topic": self.client.topic_path(project, topic),
                    "expiration_policy": {"ttl": {"seconds": 86400}},  # cleaned up even if we crash
                }
            )

    def wait(
        self, request_id: str, timeout: float, progress: Callable[[float], None] = lambda _: None
    ) -> CloudEvent | None:
        """The completion event for `request_id`, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            progress(timeout - left)
            try:
                response = self.client.pull(
                    request={"subscription": self.path, "max_messages": 50}, timeout=min(10.0, left)
                )
            except gexc.DeadlineExceeded:
                continue
            found = None
            others = []
            for received in response.received_messages:
                message = received.message
                event = parse_message(message.data, message.attributes)
                if isinstance(event.data, dict) and event.data.get("request_id") == request_id:
                    found = event
                    self.client.acknowledge(request={"subscription": self.path, "ack_ids": [received.ack_id]})
                else:
                    others.append(received.ack_id)
            if others and self.temporary:
                self.client.acknowledge(request={"subscription": self.path, "ack_ids": others})
            elif others:  # a shared subscription: hand other requests' events back at once
                self.client.modify_ack_deadline(
                    request={"subscription": self.path, "ack_ids": others, "ack_deadline_seconds": 0}
                )
            if found is not None:
                return found
        return None

    def follow(self, timeout: float | None) -> Iterator[CloudEvent]:
        """Every completion event, acknowledged as it is yielded, until `timeout` seconds pass
        without one (None: until interrupted)."""
        quiet_since = time.monotonic()
        while timeout is None or time.monotonic() - quiet_since < timeout:
            try:
                response = self.client.pull(
                    request={"subscription": self.path, "max_messages": 50}, timeout=10.0
                )
            except gexc.DeadlineExceeded:
                continue
            for received in response.received_messages:
                yield parse_message(received.message.data, received.message.attributes)
                self.client.acknowledge(request={"subscription": self.path, "ack_ids": [received.ack_id]})
                quiet_since = time.monotonic()

    def close(self) -> None:
        if self.temporary:
            self.client.delete_subscription(request={"subscription": self.path})
        self.client.close()
