"""Incoming CloudEvents -> work, without an emulator: the dispatch table of the contract."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.http import CloudEvent

from function.events import Bootstrap, EventError, Ignored, Upload, parse_event

TOPIC = "//pubsub.googleapis.com/projects/p/topics/bootstrap-requests"


def published(data: bytes | None, message_id: str = "m-1", **attributes: str) -> CloudEvent:
    message = {"messageId": message_id, "attributes": attributes}
    if data is not None:
        message["data"] = base64.b64encode(data).decode()
    attrs = {"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": TOPIC, "id": message_id}
    return CloudEvent(attrs, {"message": message, "subscription": "projects/p/subscriptions/s"})


def finalized(**data: object) -> CloudEvent:
    attrs = {
        "type": "google.cloud.storage.object.v1.finalized",
        "source": "//storage.googleapis.com/projects/_/buckets/b",
        "id": "e-1",
        "subject": f"objects/{data.get('name')}",
    }
    return CloudEvent(attrs, data)


def test_a_message_without_event_type_is_a_bootstrap_request_keyed_by_its_message_id():
    work = parse_event(published(b""))
    assert isinstance(work, Bootstrap)
    assert work.request.request_id == "m-1"
    assert work.request.tables is None
    assert work.trigger.to_json() == {"type": "pubsub", "id": "m-1", "source": TOPIC, "subject": None}


def test_the_request_id_of_the_message_wins():
    work = parse_event(published(json.dumps({"request_id": "r-9", "tables": ["a"]}).encode()))
    assert isinstance(work, Bootstrap)
    assert (work.request.request_id, work.request.tables) == ("r-9", ("a",))


def test_an_invalid_request_keeps_its_request_id_so_the_caller_hears_of_it():
    with pytest.raises(EventError, match="unknown field") as caught:
        parse_event(published(json.dumps({"request_id": "r-7", "force": True}).encode()))
    assert caught.value.request_id == "r-7"


@pytest.mark.parametrize(
    "event",
    [
        published(
            None, "m-5", eventType="OBJECT_FINALIZE", bucketId="b", objectId="s/t.json", objectGeneration="5"
        ),
        finalized(bucket="b", name="s/t.json", generation="5"),
    ],
    ids=["pubsub-notification", "eventarc-finalized"],
)
def test_both_upload_event_kinds_become_the_same_upload(event):
    work = parse_event(event)
    assert isinstance(work, Upload)
    assert (work.bucket, work.name, work.generation) == ("b", "s/t.json", 5)
    assert work.request_id == "b/s/t.json#5"
    assert work.trigger.object == {"bucket": "b", "name": "s/t.json", "generation": "5"}


@pytest.mark.parametrize(
    ("event", "reason", "severity"),
    [
        (
            published(None, eventType="OBJECT_DELETE", bucketId="b", objectId="x", objectGeneration="1"),
            "OBJECT_DELETE",
            "INFO",  # a bucket sends these routinely
        ),
        (
            CloudEvent({"type": "com.example.other", "source": "//x", "id": "1"}, {}),
            "com.example.other",
            "WARNING",  # the contract: anything else is acknowledged with a warning
        ),
    ],
    ids=["deletion", "other-type"],
)
def test_other_events_are_ignored_with_the_reason(event, reason, severity):
    work = parse_event(event)
    assert isinstance(work, Ignored)
    assert reason in work.reason
    assert work.severity == severity


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bucket": "b", "name": "t.json", "generation": "0"}, "generation '0' is not a positive integer"),
        ({"bucket": "b", "name": "t.json", "generation": "1_0"}, "is not a positive integer"),
        ({"name": "t.json", "generation": "3"}, "no bucket"),
        ({"bucket": "b", "name": "x" * 1025, "generation": "3"}, "no valid object name"),
    ],
    ids=["zero", "underscore", "no-bucket", "long-name"],
)
def test_malformed_uploads_are_errors(data, message):
    with pytest.raises(EventError, match=message):
        parse_event(finalized(**data))


def test_data_that_is_not_base64_is_an_error():
    event = published(None)
    event.data["message"]["data"] = "not base64!"
    with pytest.raises(EventError, match="not valid base64"):
        parse_event(event)
