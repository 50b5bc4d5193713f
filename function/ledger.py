"""The request ledger: a destructive request runs its destructive part at most once.

One object per request id in the state bucket, claimed atomically with `if_generation_match=0`
(Cloud Storage answers 412 to every writer but the first). Every later write is conditioned
on the generation the writer last saw, so two deliveries can never both believe they own the
request. The entry records each recreation as it is done, and at the end the completion
event's data, which answers every later delivery of the same request id.

States: running (owned, lease until `lease_until`), interrupted (the owner failed
transiently: the next delivery takes over at once, skipping the steps already done), done.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage

from .config import REQUEST_TIMEOUT
from .engine import Progress
from .errors import TransientError
from .sources import storage_retry

PREFIX = "ledger/"
LEASE = timedelta(minutes=15)  # longer than a run can take (the function's own timeout is shorter)


class InProgress(TransientError):
    """Another delivery of the same request is running: deliver this one again later."""


@dataclass
class Claim(Progress):
    """Ownership of one request's entry; `done` lists the recreations already made."""

    ledger: Ledger
    request_id: str
    generation: int
    entry: dict[str, Any]
    done: frozenset[str] = field(default_factory=frozenset)
    recorded: dict[str, Any] | None = None  # set when the request had already finished

    def record(self, step: str) -> None:
        self.done = self.done | {step}
        self.entry["recreated"] = sorted(self.done)
        self.ledger.write(self, self.entry)

    def finish(self, data: dict[str, Any]) -> None:
        self.entry.update(state="done", result=data, finished_at=_now().isoformat())
        self.ledger.write(self, self.entry)

    def release(self) -> None:
        """Give the request up after a transient failure, keeping the steps already done."""
        self.entry.update(state="interrupted")
        self.ledger.write(self, self.entry)


class Ledger:
    def __init__(self, client: storage.Client, bucket: str, deadline: float) -> None:
        self.bucket = client.bucket(bucket)
        self.retry = storage_retry(deadline)
        self.owner = f"{socket.gethostname()}/{uuid.uuid4().hex[:8]}"

    def claim(self, request_id: str) -> Claim:
        """Own the request, or learn that it finished (`Claim.recorded`), or raise InProgress."""
        blob = self._blob(request_id)
        entry = {
            "request_id": request_id,
            "state": "running",
            "recreated": [],
            "claimed_at": _now().isoformat(),
        }
        try:
            return self._write_claim(request_id, blob, entry, if_generation_match=0)
        except gexc.PreconditionFailed:
            pass  # someone claimed it before: read what they left
        blob.reload(retry=self.retry, timeout=REQUEST_TIMEOUT)
        current = json.loads(blob.download_as_bytes(if_generation_match=blob.generation, retry=self.retry))
        if current["state"] == "done":
            return Claim(self, request_id, blob.generation, current, recorded=current["result"])
        lease_until = datetime.fromisoformat(current["lease_until"])
        # (A write of ours whose answer was lost never gets here: `_upload` recognises it.)
        if current["state"] == "running" and lease_until > _now():
            raise InProgress(
                f"request {request_id} is being executed by {current.get('owner')} until "
                f"{current['lease_until']}; this delivery will be retried"
            )
        # An interrupted owner, or one whose lease ran out (it crashed): take over.
        current.update(state="running", taken_over_from=current.get("owner"))
        try:
            return self._write_claim(request_id, blob, current, if_generation_match=blob.generation)
        except gexc.PreconditionFailed:
            raise InProgress(f"request {request_id} was just taken over by another delivery") from None

    def claim_when_free(self, request_id: str, wait: float = 30.0) -> Claim:
        """`claim`, waiting a while for a concurrent delivery of the same request to finish,
        so that a duplicate is answered with its result instead of a retry."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self.claim(request_id)
            except InProgress:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def write(self, claim: Claim, entry: dict[str, Any]) -> None:
        blob = self._blob(claim.request_id)
        if not self._upload(blob, json.dumps(entry), if_generation_match=claim.generation):
            raise InProgress(f"lost the ledger entry of {claim.request_id} to another delivery")
        claim.generation = blob.generation

    def _write_claim(self, request_id: str, blob: storage.Blob, entry: dict[str, Any], **match: int) -> Claim:
        entry = {**entry, "owner": self.owner, "lease_until": (_now() + LEASE).isoformat()}
        if not self._upload(blob, json.dumps(entry), **match):
            raise gexc.PreconditionFailed(f"the ledger entry of {request_id} changed meanwhile")
        return Claim(self, request_id, blob.generation, entry, done=frozenset(entry.get("recreated", [])))

    def _upload(self, blob: storage.Blob, payload: str, **match: int) -> bool:
        """A conditional write; False when another writer's write came first (412). When the
        answer to an attempt that Cloud Storage applied is lost, the client's retry is answered
        412 too: that write is still ours if the live entry is byte for byte what we wrote (it
        names this ledger's owner and lease)."""
        try:
            blob.upload_from_string(
                payload, content_type="application/json", retry=self.retry, timeout=REQUEST_TIMEOUT, **match
            )
        except gexc.PreconditionFailed:
            return self._holds(blob, payload)
        return True

    def _holds(self, blob: storage.Blob, payload: str) -> bool:
        """Is `payload` the live content of `blob` (whose generation this then loads)?"""
        try:
            blob.reload(retry=self.retry, timeout=REQUEST_TIMEOUT)
            live = blob.download_as_bytes(if_generation_match=blob.generation, retry=self.retry)
        except (gexc.NotFound, gexc.PreconditionFailed):
            return False
        return live == payload.encode()

    def _blob(self, request_id: str) -> storage.Blob:
        # Hashed: a request id is free text, an object name should not be.
        return self.bucket.blob(PREFIX + hashlib.sha256(request_id.encode()).hexdigest() + ".json")


def _now() -> datetime:
    return datetime.now(UTC)
