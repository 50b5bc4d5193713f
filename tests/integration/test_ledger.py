"""The request ledger against fake-gcs-server: one owner at a time, every step kept, and an
entry it cannot read is an error, never a reason to take over."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import storage

from deploy.local.stack import Stack, StackConfig
from function.config import Settings
from function.ledger import Claim, Entry, InProgress, Ledger, LedgerCorrupt, LostLease, RequestConflict
from function.request import BootstrapRequest
from function.storage_adapter import Bucket
from tests.conftest import PROJECT

pytestmark = pytest.mark.emulators

STATE_BUCKET = StackConfig.state_bucket


@pytest.fixture
def gcs(storage_stack: Stack) -> Iterator[storage.Client]:
    client = storage_stack.storage_client()
    yield client
    client.close()


def ledger(client: storage.Client, timeout: float = 540) -> Ledger:
    settings = Settings.from_env(
        {"GOOGLE_CLOUD_PROJECT": PROJECT, "BOOTSTRAP_TIMEOUT": str(timeout), "BOOTSTRAP_RETRY_DEADLINE": "5"}
    )
    return Ledger(Bucket(client, STATE_BUCKET, 5), settings)


def forced(request_id: str | None = None, **fields: Any) -> BootstrapRequest:
    return BootstrapRequest(
        request_id=request_id or f"r-{uuid.uuid4().hex[:8]}",
        force_recreate_tables=True,
        confirm="tenants",
        **fields,
    )


def claimed(result: Claim | Entry) -> Claim:
    assert isinstance(result, Claim), result
    return result


def test_sixteen_threads_recording_at_once_lose_no_step(gcs):
    """The engine records each recreation from its worker thread: every write must land, and
    none may make the owner believe it lost the entry."""
    request = forced()
    claim = claimed(ledger(gcs).claim(request))
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def step(i: int) -> None:
        barrier.wait()
        try:
            claim.record_backup({"table": f"t{i:02}"})
            claim.renew()
            claim.record(f"t{i:02}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=step, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    entry = ledger(gcs).lookup(request)
    assert entry is not None
    assert entry.data["recreated"] == [f"t{i:02}" for i in range(16)]
    assert sorted(b["table"] for b in entry.data["backups"]) == [f"t{i:02}" for i in range(16)]


def test_a_finished_request_is_answered_with_its_result(gcs):
    request = forced()
    claimed(ledger(gcs).claim(request)).finish({"status": "succeeded"})

    again = ledger(gcs).claim(request)

    assert isinstance(again, Entry)
    assert (again.state, again.result) == ("done", {"status": "succeeded"})


def test_the_same_request_id_with_another_body_is_a_conflict(gcs):
    first = forced(tables=("a",))
    claimed(ledger(gcs).claim(first)).finish({"status": "succeeded"})
    other = forced(first.request_id, tables=("b",))

    with pytest.raises(RequestConflict, match=f"request_id {first.request_id!r} was already used"):
        ledger(gcs).lookup(other)
    with pytest.raises(RequestConflict):
        ledger(gcs).claim(other)


def test_an_owner_within_its_lease_keeps_the_request(gcs):
    request = forced()
    claimed(ledger(gcs).claim(request))

    with pytest.raises(InProgress, match="is being executed by"):
        ledger(gcs).claim(request)


def test_the_lease_outlives_the_function_timeout(gcs):
    assert ledger(gcs, timeout=300).lease == timedelta(seconds=310)


def test_an_owner_past_its_lease_is_fenced_out_by_the_delivery_that_took_over(gcs):
    request = forced()
    late = ledger(gcs)
    late.lease = timedelta(seconds=-1)  # as if it had hung past its lease
    stale = claimed(late.claim(request))
    stale.record("t1")

    taker = claimed(ledger(gcs).claim(request))

    assert taker.done == {"t1"}  # the steps done before are kept
    with pytest.raises(LostLease, match="another delivery took request"):
        stale.renew()  # what the old owner does right before its next backup or drop
    with pytest.raises(LostLease):
        stale.record("t2")
    taker.renew()
    entry = ledger(gcs).lookup(request)
    assert entry is not None and entry.data["owner"] == taker.ledger.owner


def test_an_interrupted_request_is_taken_over_at_once(gcs):
    request = forced()
    first = claimed(ledger(gcs).claim(request))
    first.record("t1")
    first.release()

    second = claimed(ledger(gcs).claim(request))

    assert second.done == {"t1"}
    assert second.entry["taken_over_from"] == first.ledger.owner


def _corrupt(gcs: storage.Client, request: BootstrapRequest, payload: Any) -> None:
    claimed(ledger(gcs).claim(request))  # the object exists, then someone breaks it
    name = Ledger._name(request.request_id)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    gcs.bucket(STATE_BUCKET).blob(name).upload_from_string(data)


def _valid(request: BootstrapRequest, **changes: Any) -> dict[str, Any]:
    entry = {
        "version": 1,
        "request_id": request.request_id,
        "digest": request.digest,
        "state": "running",
        "owner": "host/1",
        "recreated": [],
        "backups": [],
        "lease_until": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    }
    return {k: v for k, v in {**entry, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        pytest.param(b"{not json", "is not JSON", id="not JSON"),
        pytest.param(b"[1, 2]", "is not a JSON object", id="not an object"),
        pytest.param(lambda r: _valid(r, version=2), "has version 2", id="unknown version"),
        pytest.param(lambda r: _valid(r, version=None), "has version None", id="no version"),
        pytest.param(lambda r: _valid(r, state="paused"), "unknown state 'paused'", id="unknown state"),
        pytest.param(lambda r: _valid(r, owner=None), "has no valid 'owner'", id="no owner"),
        pytest.param(
            lambda r: _valid(r, recreated="t1"), "has no valid 'recreated'", id="recreated not a list"
        ),
        pytest.param(
            lambda r: _valid(r, lease_until="soon"), "has no valid 'lease_until'", id="bad lease time"
        ),
        pytest.param(
            lambda r: _valid(r, lease_until="2026-01-01T00:00:00"),
            "'lease_until' without a time zone",
            id="naive lease time",
        ),
        pytest.param(
            lambda r: _valid(r, state="done"), "is done but holds no result", id="done without result"
        ),
        pytest.param(
            lambda r: _valid(r, request_id="other"), "belongs to request 'other'", id="another request"
        ),
    ],
)
def test_an_entry_that_cannot_be_read_is_an_error_never_a_takeover(gcs, payload, problem):
    request = forced()
    _corrupt(gcs, request, payload(request) if callable(payload) else payload)

    for attempt in (ledger(gcs).lookup, ledger(gcs).claim):
        with pytest.raises(LedgerCorrupt) as info:
            attempt(request)
        assert problem in str(info.value)
        assert "delete the object and send the request again" in str(info.value)
