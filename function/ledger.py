"""The request ledger: one object per request id in the state bucket, written only conditionally,
so that the destructive part of a request runs at most once, by one owner at a time."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Settings
from .errors import PermanentError, TransientError
from .request import BootstrapRequest
from .storage_adapter import Bucket

PREFIX = "ledger/"
VERSION = 1
STATES = ("running", "interrupted", "done")
LEASE_MARGIN = timedelta(seconds=10)  # a lease outlives the invocation holding it (clock skew)


class InProgress(TransientError):
    """Another delivery of the same request is running: deliver this one again later."""


class LostLease(TransientError):
    """Another delivery took the request over: this one must stop at once."""


class RequestConflict(PermanentError):
    """The request id was used before for a request with another body."""


class LedgerCorrupt(PermanentError):
    """The ledger object cannot be read as an entry of this version."""


@dataclass(frozen=True)
class Entry:
    """A ledger entry as read (validated), with the generation it was read at."""

    generation: int
    data: dict[str, Any]

    @property
    def state(self) -> str:
        return self.data["state"]

    @property
    def result(self) -> dict[str, Any] | None:
        return self.data.get("result")


@dataclass
class Claim:
    """Ownership of one request's entry. Shared by the engine's worker threads: every write is
    serialised, and each is conditioned on the generation of the previous one."""

    ledger: Ledger
    request_id: str
    generation: int
    entry: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> frozenset[str]:
        """The recreations already made (by this delivery or an earlier one)."""
        with self.lock:
            return frozenset(self.entry["recreated"])

    @property
    def backups(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.entry["backups"])

    def renew(self) -> int:
        """Prove ownership with a conditional write that extends the lease; the generation
        written. Raises LostLease when another delivery took the request over."""
        return self._write(lambda entry: {"lease_until": _iso(_now() + self.ledger.lease)})

    def record_backup(self, backup: dict[str, Any]) -> None:
        self._write(lambda entry: {"backups": [*entry["backups"], backup]})

    def record(self, step: str) -> None:
        """Called right after `step` (a table name, or the dataset) was recreated."""
        self._write(lambda entry: {"recreated": sorted({*entry["recreated"], step})})

    def finish(self, data: dict[str, Any]) -> None:
        self._write(lambda entry: {"state": "done", "result": data, "finished_at": _iso(_now())})

    def release(self) -> None:
        """Give the request up after a transient failure, keeping the steps already done."""
        self._write(lambda entry: {"state": "interrupted"})

    def _write(self, changes: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """Read, change and write the entry as one step: threads never lose each other's writes."""
        with self.lock:
            entry = {**self.entry, **changes(self.entry)}
            self.generation = self.ledger.write(self.request_id, entry, self.generation)
            self.entry = entry
            return self.generation


class Ledger:
    """The request ledger in the state bucket.

    One object per request id, claimed atomically with `if_generation_match=0` (Cloud Storage
    answers 412 to every writer but the first). Every later write is conditioned on the
    generation the writer last saw, so two deliveries can never both believe they own the
    request, and the owner proves it still owns it (renewing its lease) right before every backup
    and every drop. The entry records the request's digest (the same id with another body is
    refused), each backup and each recreation as it is done, and at the end the completion
    event's data, which answers every later delivery of the same request id.

    States: running (owned until `lease_until`), interrupted (the owner failed transiently: the
    next delivery takes over at once, skipping the recreations already done), done. Anything else
    in the object (unreadable, another version, missing fields) is an error to be looked at, never
    a reason to take over.
    """

    def __init__(self, bucket: Bucket, settings: Settings) -> None:
        self.bucket = bucket
        self.owner = f"{socket.gethostname()}/{uuid.uuid4().hex[:8]}"
        # Longer than the invocation can run: the platform stops it at its timeout.
        self.lease = timedelta(seconds=settings.timeout) + LEASE_MARGIN
        # How long a concurrent delivery waits for the owner to finish before it raises.
        self.wait = min(30.0, settings.retry_deadline)

    def lookup(self, request: BootstrapRequest) -> Entry | None:
        """The request's entry, if any; RequestConflict when it belongs to another body."""
        entry = self._read(request.request_id)
        if entry is not None:
            _check_digest(request, entry)
        return entry

    def claim(self, request: BootstrapRequest) -> Claim | Entry:
        """Own the request (a Claim), or learn that it finished (its done Entry), or raise
        InProgress (another delivery owns it) or RequestConflict."""
        fresh = {
            "version": VERSION,
            "request_id": request.request_id,
            "digest": request.digest,
            "state": "running",
            "recreated": [],
            "backups": [],
            "claimed_at": _iso(_now()),
        }
        claimed = self._take(request.request_id, fresh, 0)
        if claimed is not None:
            return claimed
        current = self.lookup(request)
        if current is None:  # deleted between our claim and our read: try again later
            raise InProgress(f"the ledger entry of {request.request_id} changed while being claimed")
        if current.state == "done":
            return current
        until = datetime.fromisoformat(current.data["lease_until"])
        # (A write of ours whose answer was lost never gets here: the adapter recognises it.)
        if current.state == "running" and until > _now():
            raise InProgress(
                f"request {request.request_id} is being executed by {current.data['owner']} until "
                f"{current.data['lease_until']}; this delivery will be retried"
            )
        # An interrupted owner, or one whose lease ran out (it crashed or hung): take over.
        taken = {**current.data, "state": "running", "taken_over_from": current.data["owner"]}
        claimed = self._take(request.request_id, taken, current.generation)
        if claimed is None:
            raise InProgress(f"request {request.request_id} was just taken over by another delivery")
        return claimed

    def claim_when_free(self, request: BootstrapRequest) -> Claim | Entry:
        """`claim`, waiting a while (the retry deadline, at most 30 s) for a concurrent delivery
        of the same request to finish, so that a duplicate is answered with its result instead
        of a retry."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                return self.claim(request)
            except InProgress:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def write(self, request_id: str, entry: dict[str, Any], generation: int) -> int:
        """Replace the entry if it is still at `generation`; the new generation."""
        written = self._write(request_id, {**entry, "owner": self.owner}, generation)
        if written is None:
            raise LostLease(
                f"another delivery took request {request_id} over: this one stops without "
                "touching anything more"
            )
        return written

    def _take(self, request_id: str, entry: dict[str, Any], generation: int) -> Claim | None:
        entry = {**entry, "owner": self.owner, "lease_until": _iso(_now() + self.lease)}
        written = self._write(request_id, entry, generation)
        return None if written is None else Claim(self, request_id, written, entry)

    def _write(self, request_id: str, entry: dict[str, Any], generation: int) -> int | None:
        # The time of the write makes each payload unique: a retried write whose first answer
        # was lost is recognised as ours by its content (see Bucket.write).
        payload = json.dumps({**entry, "written_at": _iso(_now())}, sort_keys=True).encode()
        return self.bucket.write(self._name(request_id), payload, "application/json", generation)

    def _read(self, request_id: str) -> Entry | None:
        name = self._name(request_id)
        current = self.bucket.current(name)
        if current is None:
            return None
        generation, raw = current
        return Entry(generation, _parse(raw, f"gs://{self.bucket.name}/{name}", request_id))

    @staticmethod
    def _name(request_id: str) -> str:
        # Hashed: a request id is free text, an object name should not be.
        return PREFIX + hashlib.sha256(request_id.encode()).hexdigest() + ".json"


def _parse(raw: bytes, where: str, request_id: str) -> dict[str, Any]:
    """Validate an entry read back; anything unexpected is LedgerCorrupt, naming the object."""

    def corrupt(problem: str) -> LedgerCorrupt:
        return LedgerCorrupt(
            f"the ledger entry of request {request_id} ({where}) {problem}. It is not acted on: "
            "check in BigQuery and the backups what that request did, then delete the object "
            "and send the request again"
        )

    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise corrupt("is not JSON") from None
    if not isinstance(data, dict):
        raise corrupt("is not a JSON object")
    if data.get("version") != VERSION:
        raise corrupt(f"has version {data.get('version')!r}; this function reads version {VERSION}")
    if data.get("state") not in STATES:
        raise corrupt(f"has an unknown state {data.get('state')!r}")
    kinds = {"request_id": str, "digest": str, "owner": str, "recreated": list, "backups": list}
    for key, kind in kinds.items():
        if not isinstance(data.get(key), kind):
            raise corrupt(f"has no valid {key!r}")
    if data["request_id"] != request_id:
        raise corrupt(f"belongs to request {data['request_id']!r}")
    if data["state"] == "done" and not isinstance(data.get("result"), dict):
        raise corrupt("is done but holds no result")
    try:
        until = datetime.fromisoformat(data.get("lease_until", ""))
    except (TypeError, ValueError):
        raise corrupt("has no valid 'lease_until'") from None
    if until.tzinfo is None:
        raise corrupt("has a 'lease_until' without a time zone")
    return data


def _check_digest(request: BootstrapRequest, entry: Entry) -> None:
    if entry.data["digest"] != request.digest:
        raise RequestConflict(
            f"request_id {request.request_id!r} was already used for a different request "
            f"(state {entry.state}); it is not acted on. Give a new request its own request_id"
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat()
