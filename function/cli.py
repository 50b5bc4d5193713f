"""`python -m function ...`: the operator's commands, on the same engine as the function.

plan     exit 0 when nothing would change, 2 when something would (a drift check for cron/CI)
apply    exit 0 when the declared state holds, 1 when it does not
publish  send a bootstrap request to the function; with --wait, exit 0 completed/planned, 1 failed
sync     validate a schema folder and upload the changed files to the schema bucket
upload   validate one file (with the bucket's others) and upload it
backups  list the backups taken before forced recreations; restore copies one back
settings every setting, its value and where it came from; --check exits 1 listing every problem
Bad input or configuration exits 1 with the reason; nothing is sent to BigQuery then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from . import gate, runner
from .backups import Backups
from .config import BUNDLED_SCHEMAS, SETTINGS, Settings, emulators, read_settings
from .engine import EnsureResult, TableResult
from .errors import DeploymentError, PermanentError, TransientError
from .events import Trigger
from .handler import Report
from .model import DeclaredState
from .publish import CompletionWatch, publish_request
from .request import BootstrapRequest, request_from_fields
from .sync import sync_folder, upload_file

SYMBOLS = {
    "created": "+",
    "recreated": "-/+",
    "updated": "~",
    "unchanged": "=",
    "blocked": "!",
    "failed": "x",
}
PLAN_WORDS = {
    "created": "create",
    "recreated": "recreate",
    "updated": "update in place",
    "unchanged": "unchanged",
    "blocked": "blocked",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (PermanentError, DeploymentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TransientError as exc:
        print(f"error (transient, try again): {exc}", file=sys.stderr)
        return 1


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        **_setting_overrides(args),
        allow_destructive=True if getattr(args, "allow_destructive", False) else None,
    )


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """The common flags: one for each row of the settings table that has one."""
    for row in SETTINGS:
        if row.flag:
            default = " or ".join(row.variables if row.required else (*row.variables, row.documented_default))
            help_text = f"{row.meaning} (default: {default})".replace("%", "%%")  # argparse formats help
            parser.add_argument(row.flag, dest=row.name, help=help_text)


def _setting_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    """The common flags' values, None where not given (the environment's value stands)."""
    return {row.name: getattr(args, row.name) for row in SETTINGS if row.flag}


def _show_settings(args: argparse.Namespace) -> int:
    """Every setting, where it came from and its value; reads the environment, sends nothing."""
    readings = read_settings(os.environ, _setting_overrides(args))
    lines = [(r.setting.variable, r.source, r.shown) for r in readings]
    lines += [(variable, "env", value) for variable, value in emulators(os.environ)]
    width = max(len(variable) for variable, _, _ in lines)
    source_width = max(len(source) for _, source, _ in lines)
    for variable, source, shown in lines:
        print(f"{variable:<{width}}  {source:<{source_width}}  {shown}")
    problems = [r.problem for r in readings if r.problem]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if args.check and problems else 0


def _plan(args: argparse.Namespace) -> int:
    settings = _settings(args)
    request = request_from_fields({"tables": args.tables, "dry_run": True}, _local_id())
    result = runner.run(request, settings, runner.load_declared(settings))
    print(render(result, planning=True))
    return exit_code(result.status, result.dataset_action, [t.action for t in result.tables])


def _apply(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = _settings(args)
    fields = {
        "request_id": args.request_id or _local_id(),
        "tables": args.tables,
        "dry_run": args.dry_run or None,
        "force_recreate_tables": args.force_recreate_tables or None,
        "force_recreate_dataset": args.force_recreate_dataset or None,
        "confirm": args.confirm,
        "accept_losses": args.accept_losses,
    }
    request = request_from_fields({k: v for k, v in fields.items() if v is not None}, _local_id())
    declared = runner.load_declared(settings)
    if not request.destructive or request.dry_run:
        result = runner.run(request, settings, declared)
        print(render(result, planning=request.dry_run))
        return exit_code(result.status, result.dataset_action, [t.action for t in result.tables])
    granted = _authorize(request, declared, settings, started)
    if not isinstance(granted, gate.Authorization):
        print(render_event({**granted.result, "duplicate": True}))  # type: ignore[dict-item]
        return _event_exit_code(granted.result)  # type: ignore[arg-type]
    result = runner.run(request, settings, declared, authorization=granted)
    if settings.state_bucket:
        trigger = Trigger("cli", request.request_id, "python -m function apply", None, None)
        granted.progress.finish(
            Report(settings, trigger, request.request_id).data(result, digest=declared.digest)
        )  # type: ignore[attr-defined]
    print(render(result, planning=False))
    return exit_code(result.status, result.dataset_action, [t.action for t in result.tables])


def _authorize(
    request: BootstrapRequest, declared: DeclaredState | None, settings: Settings, started: float
) -> gate.Authorization | Any:
    """The gate, with the request ledger when BOOTSTRAP_STATE_BUCKET is set."""
    ledger = runner.ledger(settings) if settings.state_bucket else None
    if ledger is None:
        print(
            "warning: BOOTSTRAP_STATE_BUCKET is not set, so this run is not recorded in the request "
            "ledger: running the same command again will recreate again",
            file=sys.stderr,
        )
    return gate.authorize(request, declared, settings, ledger, started=started)


def _publish(args: argparse.Namespace) -> int:
    settings = _settings(args)
    fields = {
        "request_id": args.request_id or _local_id(),
        "tables": args.tables,
        "dry_run": args.dry_run or None,
        "force_recreate_tables": args.force_recreate_tables or None,
        "force_recreate_dataset": args.force_recreate_dataset or None,
        "confirm": args.confirm,
    }
    request = {k: v for k, v in fields.items() if v is not None}
    request_from_fields(request, "")  # refuse a malformed request here, not in the function
    topic = args.topic or settings.requests_topic
    watch = (
        CompletionWatch(settings.project, settings.completion_topic, args.subscription) if args.wait else None
    )
    try:
        message_id = publish_request(settings.project, topic, request)
        print(f"published request {request['request_id']} (message {message_id}) to {topic}")
        if watch is None:
            return 0
        event = watch.wait(request["request_id"], args.timeout, _progress)
    finally:
        if watch is not None:
            watch.close()
    if event is None:
        print(f"\nno completion event for {request['request_id']} within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(f"\n{event['type']}")
    print(render_event(event.data))
    return _event_exit_code(event.data)


def _events(args: argparse.Namespace) -> int:
    """Completion events as they are published: the function's runs, watched."""
    settings = _settings(args)
    watch = CompletionWatch(settings.project, settings.completion_topic, args.subscription)
    where = args.subscription or f"a temporary subscription on {settings.completion_topic} (deleted on exit)"
    print(f"watching completion events through {where}; Ctrl-C stops", file=sys.stderr, flush=True)
    seen = 0
    try:
        for event in watch.follow(None if args.follow else args.timeout):
            seen += 1
            print(f"\n{event['time']}  {event['type']}")
            print(render_event(event.data), flush=True)
            if not args.follow:
                break
    except KeyboardInterrupt:
        pass
    finally:
        watch.close()
    if not seen and not args.follow:
        print(f"no completion event within {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0


def _sync(args: argparse.Namespace) -> int:
    settings = _settings(args)
    target = _target(args, settings)
    uploaded = sync_folder(runner.storage_client(settings), args.source, target, settings.retry_deadline)
    print(f"uploaded to {target}: {', '.join(uploaded) if uploaded else 'nothing (all files unchanged)'}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    settings = _settings(args)
    target = _target(args, settings)
    uploaded = upload_file(runner.storage_client(settings), args.file, target, settings.retry_deadline)
    print(f"uploaded to {target}: {', '.join(uploaded) if uploaded else 'nothing (the file is unchanged)'}")
    return 0


def _backups(args: argparse.Namespace) -> int:
    settings = _settings(args)
    backups = Backups(runner.bigquery_adapter(settings), settings).list()
    if not backups:
        print(f"no backups in {settings.backups}")
    for b in backups:
        print(
            f"{b['backup']}\n    of {b['backup_of']}, {b['rows']} rows, request {b['request_id']}, ", end=""
        )
        print(
            f"made {b['created']}, expires {b['expires'] or f'with the dataset default ({settings.backup_ttl_days:g} days)'}"
        )
    return 0


def _restore(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = _settings(args)
    store = Backups(runner.bigquery_adapter(settings), settings)
    source, backed_up = store.find(args.backup)
    target = args.to or backed_up
    fence = None
    if store.bq.get_table(target)[1] is not None and store.bq.has_rows(target):
        if not args.force:
            raise PermanentError(
                f"{target} holds rows; restoring would replace them. Pass --force --confirm "
                f"{settings.dataset} --allow-destructive to overwrite (it is backed up first), or "
                "--to ANOTHER_TABLE"
            )
        # Replacing rows is destructive work like any other: the same gate, and a backup first.
        request = request_from_fields(
            {
                "request_id": args.request_id or _local_id(),
                "force_recreate_tables": True,
                "confirm": args.confirm or "",
            },
            "",
        )
        granted = _authorize(request, None, settings, started)
        if not isinstance(granted, gate.Authorization):
            raise PermanentError(
                f"request {request.request_id} already ran; give this restore a new --request-id"
            )
        backup = store.backup(target, granted)
        print(f"backed up {target} ({backup.rows} rows) to {backup.backup}")
        fence = granted.fence(f"the restore over {target}")
    done = store.restore(source, target, fence)
    print(f"restored {done['backup']} ({done['rows']} rows) to {done['restored_to']}")
    return 0


def _target(args: argparse.Namespace, settings: Settings) -> str:
    target = args.to or settings.schema_source
    if not target.startswith("gs://"):
        raise PermanentError(f"upload target {target!r}: set SCHEMA_SOURCE=gs://BUCKET/PREFIX/ or pass --to")
    return target


def exit_code(status: str, dataset_action: str | None, actions: list[str]) -> int:
    """1 when the run failed; for a plan (a dry run), 2 when something would change and 0 when
    nothing would, like `terraform plan -detailed-exitcode`; 0 when the state holds."""
    if status == "failed":
        return 1
    if status == "planned":
        return 2 if dataset_action != "unchanged" or any(a != "unchanged" for a in actions) else 0
    return 0


def _event_exit_code(data: dict[str, Any]) -> int:
    return exit_code(data["status"], data.get("dataset_action"), [t["action"] for t in data["tables"]])


def _progress(elapsed: float) -> None:
    print(f"\rwaiting for the completion event... {elapsed:4.0f} s", end="", file=sys.stderr, flush=True)


def render_event(data: dict[str, Any]) -> str:
    """A completion event's data, rendered like an apply result."""
    result = EnsureResult(
        dataset=data["dataset"],
        dataset_action=data.get("dataset_action") or "not reached",
        dry_run=data["dry_run"],
        dataset_error=data.get("error"),
        tables=[
            TableResult(t["table"], t["action"], tuple(t["changes"]), t["error"]) for t in data["tables"]
        ],
        backups=list(data.get("backups") or []),
    )
    header = f"request {data['request_id']}: {data['status']} in {data['duration_ms']} ms"
    if data.get("duplicate"):
        header += " (duplicate: this request had already run; this is its recorded result)"
    return header + "\n" + render(result, planning=data["dry_run"])


def render(result: EnsureResult, *, planning: bool) -> str:
    """A Terraform-like listing: one line per table, its changes (or why it is blocked) below."""
    words = PLAN_WORDS if planning else {}
    action = result.dataset_action
    lines = [f"dataset {result.dataset}: {words.get(action, action)}"]
    lines += [f"    {c}" for c in result.dataset_changes]
    if result.dataset_error:
        lines.append(f"    error: {result.dataset_error}")
    width = max((len(t.table) for t in result.tables), default=0)
    for t in result.tables:
        lines.append(f"  {SYMBOLS.get(t.action, '?'):>3} {t.table:<{width}}  {words.get(t.action, t.action)}")
        lines += [f"        {c}" for c in t.changes]
        if t.error:
            lines.append(f"        error: {t.error}")
    if result.backups:
        lines.append("\nBackups taken (`python -m function restore BACKUP` copies one back):")
        lines += [
            f"  {b['backup'].split('.')[-1]}  of {b['table']}, {b['rows']} rows, expires {b['expires_at']}"
            for b in result.backups
        ]
    counts = result.counts()
    summary = ", ".join(f"{n} {words.get(a, a)}" for a, n in sorted(counts.items()))
    lines.append(f"\n{'Plan' if planning else 'Result'}: {summary or 'no tables'}.")
    return "\n".join(lines)


def _local_id() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m function", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, tables: bool = True) -> None:
        _add_setting_flags(p)
        if tables:
            p.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables")

    plan = sub.add_parser("plan", help="show what apply would change; exit 2 if anything would")
    common(plan)
    plan.set_defaults(handler=_plan)

    apply = sub.add_parser("apply", help="bring BigQuery to the declared state")
    common(apply)
    apply.add_argument("--dry-run", action="store_true", help="plan only, change nothing")
    force = apply.add_mutually_exclusive_group()
    force.add_argument("--force-recreate-tables", action="store_true", help="drop and recreate the tables")
    force.add_argument("--force-recreate-dataset", action="store_true", help="drop and recreate the dataset")
    apply.add_argument("--confirm", metavar="DATASET", help="the dataset id, required with a force flag")
    apply.add_argument(
        "--accept-losses",
        nargs="+",
        metavar="OBJECT",
        help="with --force-recreate-dataset: views, routines, models... that may be lost unbacked",
    )
    apply.add_argument("--request-id", help="idempotency key of a forced run (default: a new id)")
    apply.add_argument(
        "--allow-destructive",
        action="store_true",
        help="give this run the deployment's consent (ALLOW_DESTRUCTIVE) to recreate",
    )
    apply.set_defaults(handler=_apply)

    publish = sub.add_parser("publish", help="publish a bootstrap request to the requests topic")
    common(publish)
    publish.add_argument("--request-id", help="idempotency key (default: a new id)")
    publish.add_argument("--dry-run", action="store_true", help="plan only")
    force = publish.add_mutually_exclusive_group()
    force.add_argument("--force-recreate-tables", action="store_true")
    force.add_argument("--force-recreate-dataset", action="store_true")
    publish.add_argument("--confirm", metavar="DATASET")
    publish.add_argument(
        "--topic", help="requests topic (default: BOOTSTRAP_REQUESTS_TOPIC or bootstrap-requests)"
    )
    publish.add_argument(
        "--wait", action="store_true", help="wait for the completion event; exit 1 if failed"
    )
    publish.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    publish.add_argument("--subscription", help="existing pull subscription on the completion topic")
    publish.set_defaults(handler=_publish)

    events = sub.add_parser(
        "events", help="show completion events as the function publishes them (--follow: keep watching)"
    )
    common(events, tables=False)
    events.add_argument("--follow", action="store_true", help="keep watching until Ctrl-C")
    events.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="without --follow: seconds to wait for one event (default 300)",
    )
    events.add_argument(
        "--subscription",
        help="read (and acknowledge) an existing pull subscription, e.g. bootstrap-completed-watch, instead "
        "of a temporary one",
    )
    events.set_defaults(handler=_events)

    sync = sub.add_parser("sync", help="validate a schema folder and upload what changed to the bucket")
    common(sync, tables=False)
    sync.add_argument("--source", default=str(BUNDLED_SCHEMAS), help="folder (default: the bundled schemas/)")
    sync.add_argument("--to", help="gs://BUCKET/PREFIX/ (default: SCHEMA_SOURCE)")
    sync.set_defaults(handler=_sync)

    upload = sub.add_parser("upload", help="validate one schema file with the bucket's others and upload it")
    common(upload, tables=False)
    upload.add_argument("file", help="a <table>.json schema file or bootstrap.yaml")
    upload.add_argument("--to", help="gs://BUCKET/PREFIX/ (default: SCHEMA_SOURCE)")
    upload.set_defaults(handler=_upload)

    backups = sub.add_parser("backups", help="list the backups taken before forced recreations")
    common(backups, tables=False)
    backups.set_defaults(handler=_backups)

    restore = sub.add_parser("restore", help="copy a backup back into the dataset")
    common(restore, tables=False)
    restore.add_argument("backup", help="the backup table's name, as `backups` lists it")
    restore.add_argument("--to", metavar="TABLE", help="target table (default: the table it backs up)")
    restore.add_argument("--force", action="store_true", help="overwrite a target that holds rows")
    restore.add_argument("--confirm", metavar="DATASET", help="the dataset id, required with --force")
    restore.add_argument(
        "--allow-destructive",
        action="store_true",
        help="give this run the deployment's consent (ALLOW_DESTRUCTIVE) to overwrite rows",
    )
    restore.add_argument("--request-id", help="idempotency key of an overwriting restore (default: a new id)")
    restore.set_defaults(handler=_restore)

    settings = sub.add_parser("settings", help="show every setting, its value and where it came from")
    common(settings, tables=False)
    settings.add_argument(
        "--check", action="store_true", help="exit 1 if any setting is refused (each problem is listed)"
    )
    settings.set_defaults(handler=_show_settings)
    return parser
