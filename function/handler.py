"""The CloudEvent function: event in, ensure run, completion event out.

Error semantics (the contract): a permanent failure (bad message or schema, blocked change,
refused destructive request, stale event) is acknowledged with a `failed` completion event and
an ERROR log line saying how to fix it; a transient failure that outlasts the bounded retries
raises, so Pub/Sub or Eventarc delivers the event again.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import completion, logs, runner
from .config import ConfigError, Settings
from .engine import EnsureResult, authorize, select_tables
from .errors import PermanentError, TransientError
from .events import Bootstrap, EventError, Ignored, Trigger, Upload, parse_event
from .model import BIGQUERY_NAME
from .request import BootstrapRequest
from .schema_files import MANIFEST_NAME, load_declared_state
from .sources import Superseded, parse_gcs_uri, read_prefix

if TYPE_CHECKING:
    from .ledger import Claim


@dataclass
class Outcome:
    """What one invocation reports: the completion event's data, built up as it runs."""

    settings: Settings
    trigger: Trigger
    request_id: str
    dry_run: bool = False
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    result: EnsureResult | None = None
    schema_digest: str | None = None
    error: str | None = None
    claim: Claim | None = None  # the ledger entry of a destructive request

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return self.result.status if self.result else "failed"

    def data(self) -> dict[str, Any]:
        finished = datetime.now(UTC)
        result = self.result
        return {
            "request_id": self.request_id,
            "status": self.status,
            "dry_run": self.dry_run,
            "project": self.settings.project,
            "dataset": self.settings.dataset,
            "location": self.settings.location,
            "trigger": self.trigger.to_json(),
            "dataset_action": result.dataset_action if result else None,
            "tables": [t.to_json() for t in result.tables] if result else [],
            "backups": [b.to_json() for b in result.backups] if result else [],
            "schema_digest": self.schema_digest,
            "error": self.error or (result.dataset_error if result else None),
            "started_at": _iso(self.started),
            "finished_at": _iso(finished),
            "duration_ms": int((finished - self.started).total_seconds() * 1000),
        }


def handle(cloud_event: Any) -> None:
    clock = time.monotonic()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        # Without a valid configuration no completion event can be sent; raising keeps the
        # event for redelivery (and the dead-letter topic) once the deployment is fixed.
        logs.error(f"the function is misconfigured: {exc}", event_id=cloud_event["id"])
        raise
    try:
        work = parse_event(cloud_event)
    except EventError as exc:
        outcome = Outcome(settings, exc.trigger, exc.request_id, error=str(exc))
        _finish(outcome, clock)
        return
    if isinstance(work, Ignored):
        logs.warning(f"event acknowledged and ignored: {work.reason}", event_id=cloud_event["id"])
        return
    if isinstance(work, Upload):
        _handle_upload(work, settings, clock)
        return
    _handle_request(work, settings, clock)


def _handle_request(work: Bootstrap, settings: Settings, clock: float) -> None:
    outcome = Outcome(settings, work.trigger, work.request.request_id, work.request.dry_run)
    _run(outcome, work.request, lambda: runner.load_declared(settings))
    _finish(outcome, clock)


def _handle_upload(work: Upload, settings: Settings, clock: float) -> None:
    where = {"bucket": work.bucket, "object": work.name, "generation": work.generation}
    if not settings.schema_source.startswith("gs://"):
        logs.info("upload ignored: SCHEMA_SOURCE is not a Cloud Storage prefix", **where)
        return
    bucket, prefix = parse_gcs_uri(settings.schema_source)
    name = work.name[len(prefix) :] if work.name.startswith(prefix) else ""
    table = name.removesuffix(".json") if name.endswith(".json") else None
    if work.bucket != bucket or "/" in name or not (name == MANIFEST_NAME or table is not None):
        logs.info(f"upload ignored: not a schema file under {settings.schema_source}", **where)
        return
    if table is not None and not BIGQUERY_NAME.fullmatch(table):
        table = None  # validation below reports the bad file name
    request = BootstrapRequest(request_id=work.request_id, tables=(table,) if table else None)
    outcome = Outcome(settings, work.trigger, work.request_id)

    def declared() -> Any:
        client = runner.storage_client(settings)
        files = read_prefix(client, bucket, prefix, settings.retry_deadline, pinned=(name, work.generation))
        return load_declared_state(files, complete=False)

    try:
        _run(outcome, request, declared, dataset_updates=table is None)
    except Superseded as exc:
        logs.info(f"upload not applied: {exc}; the newer generation has its own event", **where)
        return
    _finish(outcome, clock)


def _run(outcome: Outcome, request: BootstrapRequest, declared: Any, *, dataset_updates: bool = True) -> None:
    """Validate and ensure; a permanent failure becomes the outcome's error, anything else raises."""
    if _too_old(outcome):
        return
    settings = outcome.settings
    try:
        state = declared()
        outcome.schema_digest = state.digest
        if request.destructive and not request.dry_run:
            # A refused request, or one naming a table that is not declared, claims nothing.
            select_tables(state, request.tables)
            authorize(request, settings)
            outcome.claim = runner.ledger(settings).claim_when_free(request.request_id)
            if outcome.claim.recorded is not None:
                return  # already done: _finish answers with the recorded result
        outcome.result = runner.run(
            request, settings, state, dataset_updates=dataset_updates, progress=outcome.claim
        )
    except PermanentError as exc:
        outcome.error = str(exc)
    except Exception as exc:
        # Transient (past the retries) or unforeseen: raise, so the event is delivered again.
        if outcome.claim is not None:
            with contextlib.suppress(Exception):  # best effort: the lease expires anyway
                outcome.claim.release()
        kind = "transient failure" if isinstance(exc, TransientError) else f"failure ({type(exc).__name__})"
        logs.warning(
            f"{kind}, raising so the event is delivered again: {exc}",
            request_id=outcome.request_id,
            trigger=outcome.trigger.to_json(),
        )
        raise


def _too_old(outcome: Outcome) -> bool:
    sent = outcome.trigger.time
    if sent is None:
        return False
    age = (datetime.now(UTC) - (sent if sent.tzinfo else sent.replace(tzinfo=UTC))).total_seconds()
    if age <= outcome.settings.max_event_age:
        return False
    outcome.error = (
        f"the event is {age:.0f} s old, older than BOOTSTRAP_MAX_EVENT_AGE={outcome.settings.max_event_age:g} s: "
        "not acted on, so a retried request never runs late. Publish a new request if it is still wanted."
    )
    return True


def _finish(outcome: Outcome, clock: float) -> None:
    claim = outcome.claim
    if claim is not None and claim.recorded is not None:
        # A redelivery of a destructive request that already ran: answer with what it did.
        data = {**claim.recorded, "duplicate": True}
    else:
        data = outcome.data()
        if claim is not None:
            claim.finish(data)
    event = completion.build_event(outcome.settings, data)
    completion.publish(outcome.settings, event)
    result = outcome.result
    fields = {
        "request_id": outcome.request_id,
        "trigger": outcome.trigger.to_json(),
        "status": data["status"],
        "dataset_action": data["dataset_action"],
        "counts": result.counts() if result else {},
        "duration_ms": int((time.monotonic() - clock) * 1000),
        "completion_event_id": event["id"],
        "duplicate": data.get("duplicate", False),
    }
    if data["status"] == "failed":
        problems = [f"{t['table']}: {t['error']}" for t in data["tables"] if t["error"]]
        reason = "; ".join(filter(None, [data["error"], *problems]))
        logs.error(f"bootstrap failed: {reason}", **fields)
    else:
        logs.info(f"bootstrap {data['status']}", **fields)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
