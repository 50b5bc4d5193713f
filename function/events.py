"""Incoming CloudEvents -> the work they ask for (pure): a bootstrap request, a schema upload, or
something acknowledged and ignored; a table from CloudEvent type to parser."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from .errors import RequestError
from .request import MAX_DATA_BYTES, REQUEST_ID, BootstrapRequest, parse_request

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
MAX_OBJECT_NAME = 1024  # Cloud Storage's limit, in bytes of UTF-8


@dataclass(frozen=True)
class Trigger:
    type: str  # pubsub | storage
    id: str
    source: str
    subject: str | None
    time: datetime | None
    object: dict[str, Any] | None = None  # an upload's bucket, name and generation

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "id": self.id,
            "source": self.source,
            "subject": self.subject,
        }
        if self.object is not None:
            out["object"] = self.object
        return out


@dataclass(frozen=True)
class Bootstrap:
    """A bootstrap request published to the requests topic."""

    trigger: Trigger
    request: BootstrapRequest


@dataclass(frozen=True)
class Upload:
    """A schema object finalized in a bucket (either event kind)."""

    trigger: Trigger
    bucket: str
    name: str
    generation: int

    @property
    def request_id(self) -> str:
        # bucket/name#generation: a redelivered notification is recognisable by it.
        return f"{self.bucket}/{self.name}#{self.generation}"


@dataclass(frozen=True)
class Ignored:
    """An event acknowledged and not acted on. `severity` of its log line: WARNING for an event
    type the function does not handle (the contract's), INFO for a storage notification that is
    not an upload (deletions, metadata updates), which a bucket sends routinely."""

    reason: str
    severity: str = "WARNING"


Work = Bootstrap | Upload | Ignored


class EventError(RequestError):
    """A malformed event or message; carries what is known, so the failure can be reported."""

    def __init__(self, message: str, trigger: Trigger, request_id: str) -> None:
        super().__init__(message)
        self.trigger = trigger
        self.request_id = request_id


def parse_event(event: Any) -> Work:
    """`event` is the CloudEvent functions-framework passes (subscriptable attributes, .data)."""
    parser = PARSERS.get(event["type"])
    if parser is None:
        return Ignored(f"event type {event['type']!r} is not one this function handles")
    return parser(event)


def _trigger(event: Any, kind: str, trigger_id: str) -> Trigger:
    return Trigger(kind, trigger_id, str(event["source"]), _get(event, "subject"), _time(_get(event, "time")))


def _pubsub(event: Any) -> Work:
    fallback = _trigger(event, "pubsub", str(event["id"]))
    data = event.data if isinstance(event.data, dict) else None
    message = data.get("message") if data else None
    if not isinstance(message, dict):
        raise EventError("the messagePublished event has no message object", fallback, fallback.id)
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise EventError("the message attributes are not a mapping", fallback, fallback.id)
    message_id = str(message.get("messageId") or event["id"])
    trigger = _trigger(event, "pubsub", message_id)
    if "eventType" in attributes:
        return _notification(event, attributes)
    raw = _decode(message.get("data"), trigger)
    try:
        return Bootstrap(trigger, parse_request(raw, default_id=message_id))
    except RequestError as exc:
        raise EventError(str(exc), trigger, _request_id_of(raw) or message_id) from None


def _notification(event: Any, attributes: Mapping[str, Any]) -> Work:
    """A Cloud Storage Pub/Sub notification (JSON_API_V1) carried by messagePublished."""
    if attributes.get("eventType") != "OBJECT_FINALIZE":
        return Ignored(f"storage notification {attributes.get('eventType')!r} is not an upload", "INFO")
    return _upload(
        event, attributes.get("bucketId"), attributes.get("objectId"), attributes.get("objectGeneration")
    )


def _storage(event: Any) -> Work:
    data = event.data if isinstance(event.data, dict) else {}
    return _upload(event, data.get("bucket"), data.get("name"), data.get("generation"))


def _upload(event: Any, bucket: Any, name: Any, generation: Any) -> Upload:
    trigger = _trigger(event, "storage", f"{bucket}/{name}#{generation}")
    problems = []
    if not isinstance(bucket, str) or not bucket:
        problems.append("no bucket")
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_OBJECT_NAME:
        problems.append("no valid object name")
    gen = _generation(generation)
    if gen is None:
        problems.append(f"generation {generation!r} is not a positive integer")
        gen = 0
    if problems:
        raise EventError(f"the upload event is malformed: {', '.join(problems)}", trigger, trigger.id)
    trigger = replace(trigger, object={"bucket": bucket, "name": name, "generation": str(gen)})
    return Upload(trigger, bucket, name, gen)


def _generation(value: Any) -> int | None:
    """An object generation: a positive integer, or its decimal digits as a string (as both
    event kinds carry it). Not a boolean, a float, or what int() also reads ("1_0", " 5")."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is int and value > 0:
        return value
    return None


def _decode(data: Any, trigger: Trigger) -> bytes:
    if data is None:
        return b""
    if not isinstance(data, str):
        raise EventError("message.data must be a base64 string", trigger, trigger.id)
    if len(data) > MAX_DATA_BYTES * 4 // 3 + 4:
        raise EventError(
            f"the message data is larger than {MAX_DATA_BYTES} bytes; a bootstrap request is small",
            trigger,
            trigger.id,
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("message.data is not valid base64", trigger, trigger.id) from None


def _request_id_of(raw: bytes) -> str | None:
    """The request_id of a request that is otherwise invalid, so its failure reaches the
    caller waiting for that id."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    rid = doc.get("request_id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) and REQUEST_ID.fullmatch(rid) else None


def _get(event: Any, name: str) -> Any:
    try:
        return event[name]
    except KeyError:
        return None


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


PARSERS: dict[str, Callable[[Any], Work]] = {
    PUBSUB_PUBLISHED: _pubsub,
    STORAGE_FINALIZED: _storage,
}
