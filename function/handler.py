"""The CloudEvent function: event in, run, completion event out, with the error semantics of the
contract (README, "Errors: what gets retried")."""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import completion, gate, logs, runner
from .config import Settings
from .errors import DeploymentError, PermanentError, TransientError
from .events import Bootstrap, EventError, Ignored, Trigger, Upload, parse_event
from .manifest import MANIFEST_NAME
from .model import BIGQUERY_NAME
from .request import BootstrapRequest
from .results import EnsureResult
from .sources import Superseded, parse_gcs_uri

if TYPE_CHECKING:
    from .ledger import Entry

CLOCK_SKEW = timedelta(minutes=5)  # an event dated later than now + this is not believed


@dataclass(frozen=True)
class Report:
    """The frame of one invocation's completion event: what it answers and when it started."""

    settings: Settings
    trigger: Trigger
    request_id: str
    dry_run: bool = False
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def data(
        self, result: EnsureResult | None = None, *, error: str | None = None, digest: str | None = None
    ) -> dict[str, Any]:
        """The completion event's data, for a run that gave `result` or failed with `error`."""
        finished = datetime.now(UTC)
        return {
            "request_id": self.request_id,
            "status": result.status if result and not error else "failed",
            "dry_run": self.dry_run,
            "project": self.settings.project,
            "dataset": self.settings.dataset,
            "location": self.settings.location,
            "trigger": self.trigger.to_json(),
            "dataset_action": result.dataset_action if result else None,
            "tables": [t.to_json() for t in result.tables] if result else [],
            "backups": result.backups if result else [],
            "schema_digest": digest,
            "error": error or (result.dataset_error if result else None),
            "started_at": _iso(self.started),
            "finished_at": _iso(finished),
            "duration_ms": int((finished - self.started).total_seconds() * 1000),
        }


def handle(cloud_event: Any) -> None:
    started = time.monotonic()
    completion.prepare()  # the completion event's client, made while this run works
    try:
        settings = Settings.from_env()
    except DeploymentError as exc:
        # Without a valid configuration no completion event can be sent; raising keeps the
        # event for redelivery (and the dead-letter topic) once the deployment is fixed.
        logs.error(
            f"the function is misconfigured, raising so the event waits for the fix: {exc}",
            event_id=cloud_event["id"],
        )
        raise
    try:
        work = parse_event(cloud_event)
    except EventError as exc:
        _finish(settings, Report(settings, exc.trigger, exc.request_id).data(error=str(exc)), started)
        return
    if isinstance(work, Ignored):
        logs.log(work.severity, f"event acknowledged and ignored: {work.reason}", event_id=cloud_event["id"])
        return
    if isinstance(work, Upload):
        _handle_upload(work, settings, started)
        return
    _handle_request(work, settings, started)


def _handle_request(work: Bootstrap, settings: Settings, started: float) -> None:
    request = work.request
    report = Report(settings, work.trigger, request.request_id, request.dry_run)
    if not (request.destructive and not request.dry_run):
        _converge(report, request, started)
        return
    claim: Any = None
    digest = None
    try:
        ledger = runner.ledger(settings)
        # First the ledger, then the age: a late duplicate of a finished request still gets its
        # recorded answer.
        entry = ledger.lookup(request)
        if entry is not None and entry.state == "done":
            _answer_recorded(settings, entry, started)
            return
        _check_time(work.trigger, settings, destructive=True)
        declared = runner.load_declared(settings)
        digest = declared.digest
        granted = gate.authorize(request, declared, settings, ledger, started=started)
        if not isinstance(granted, gate.Authorization):
            _answer_recorded(settings, granted, started)
            return
        claim = granted.progress
        data = report.data(runner.run(request, settings, declared, authorization=granted), digest=digest)
    except PermanentError as exc:
        data = report.data(error=str(exc), digest=digest)
    except Exception as exc:
        _raise_for_redelivery(report, exc, claim)
    if claim is not None:
        claim.finish(data)  # a redelivery is answered with this from now on
    _finish(settings, data, started)


def _handle_upload(work: Upload, settings: Settings, started: float) -> None:
    where = _object_fields(work.trigger)
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
    _converge(
        Report(settings, work.trigger, work.request_id), request, started, upload=(name, work.generation)
    )


def _converge(
    report: Report, request: BootstrapRequest, started: float, *, upload: tuple[str, int] | None = None
) -> None:
    """A run that destroys nothing: validate, ensure, report. A permanent failure becomes a
    `failed` event; anything else raises for redelivery."""
    try:
        _check_time(report.trigger, report.settings, destructive=False)
        done = runner.converge(request, report.settings, upload=upload)
        if isinstance(done, Superseded):
            logs.info(
                f"upload not applied: {done.reason}; the newer generation has its own event",
                **_object_fields(report.trigger),
            )
            return
        data = report.data(done.result, digest=done.digest)
    except PermanentError as exc:
        data = report.data(error=str(exc))
    except Exception as exc:
        _raise_for_redelivery(report, exc, None)
    _finish(report.settings, data, started)


def _object_fields(trigger: Trigger) -> dict[str, Any]:
    """An upload's object, as its log lines name it."""
    uploaded = trigger.object or {}
    return {
        "bucket": uploaded.get("bucket"),
        "object": uploaded.get("name"),
        "generation": int(uploaded.get("generation") or 0),
    }


def _raise_for_redelivery(report: Report, exc: Exception, claim: Any) -> None:
    """Transient (past the retries) or unforeseen: give the ledger entry up, log, and raise, so
    the event is delivered again."""
    if claim is not None:
        with contextlib.suppress(Exception):  # best effort: the lease expires anyway
            claim.release()
    where = {"request_id": report.request_id, "trigger": report.trigger.to_json()}
    if isinstance(exc, DeploymentError):
        logs.error(f"the deployment is broken, raising so the event waits for the fix: {exc}", **where)
    elif isinstance(exc, TransientError):
        logs.warning(f"transient failure, raising so the event is delivered again: {exc}", **where)
    else:
        logs.error(
            f"unexpected failure ({type(exc).__name__}), raising so the event is delivered again: {exc}",
            traceback=traceback.format_exc()[-4000:],
            **where,
        )
    raise exc


def _check_time(trigger: Trigger, settings: Settings, *, destructive: bool) -> None:
    """Late events do nothing; an event from the future is not believed. A destructive request
    without a readable time is refused: it fails closed."""
    sent = trigger.time
    if sent is None:
        if destructive:
            raise PermanentError(
                "the event carries no readable time (the CloudEvent's time attribute), so its age "
                "cannot be checked: a destructive request is not acted on. Publish it again"
            )
        return
    now = datetime.now(UTC)
    sent = sent if sent.tzinfo else sent.replace(tzinfo=UTC)
    if sent > now + CLOCK_SKEW:
        raise PermanentError(
            f"the event is dated {_iso(sent)}, more than {CLOCK_SKEW.total_seconds() / 60:g} minutes "
            "in the future: not acted on (check the sender's clock), then publish it again"
        )
    age = (now - sent).total_seconds()
    if age > settings.max_event_age:
        raise PermanentError(
            f"the event is {age:.0f} s old, older than BOOTSTRAP_MAX_EVENT_AGE={settings.max_event_age:g} s: "
            "not acted on, so a retried request never runs late. Publish a new request if it is still wanted."
        )


def _answer_recorded(settings: Settings, entry: Entry, started: float) -> None:
    """A redelivery of a destructive request that already ran: answer with what it did."""
    _finish(settings, {**entry.result, "duplicate": True}, started)  # type: ignore[dict-item]


def _finish(settings: Settings, data: dict[str, Any], started: float) -> None:
    event = completion.build_event(settings, data)
    completion.publish(settings, event)
    fields = {
        "request_id": data["request_id"],
        "trigger": data["trigger"],
        "status": data["status"],
        "dataset_action": data["dataset_action"],
        "counts": _counts(data["tables"]),
        "duration_ms": int((time.monotonic() - started) * 1000),
        "completion_event_id": event["id"],
        "duplicate": data.get("duplicate", False),
    }
    if data["status"] == "failed":
        problems = [f"{t['table']}: {t['error']}" for t in data["tables"] if t["error"]]
        reason = "; ".join(filter(None, [data["error"], *problems]))
        logs.error(f"bootstrap failed: {reason}", **fields)
    else:
        logs.info(f"bootstrap {data['status']}", **fields)


def _counts(tables: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tables:
        out[t["action"]] = out.get(t["action"], 0) + 1
    return out


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
