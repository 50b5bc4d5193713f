"""The operator's commands, one function each, on the same engine and gate as the function
(`cli` imports this only when a command runs: `settings` and `--help` load no Google client)."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from . import gate, runner
from .backups import Backups
from .config import BUNDLED_SCHEMAS, Settings
from .errors import PermanentError
from .events import Trigger
from .handler import Report
from .model import DatasetSpec, DeclaredState, TableSpec
from .publish import CompletionWatch, publish_request
from .render import event_exit_code, render, render_event, render_tables, result_exit_code
from .request import BootstrapRequest, request_from_fields
from .sources import read_folder
from .sync import Prepared, file_to_upload, prepare, upload_prepared


def settings_of(args: argparse.Namespace) -> Settings:
    """The environment's settings, with the command's flags over them."""
    from .cli import setting_overrides

    return Settings.from_env(
        **setting_overrides(args),
        allow_destructive=True if getattr(args, "allow_destructive", False) else None,
    )


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The bootstrap request that `apply` or `publish` flags spell (the fields they set only)."""
    fields = {
        "request_id": args.request_id or _local_id(),
        "tables": args.tables,
        "dry_run": args.dry_run or None,
        "force_recreate_tables": args.force_recreate_tables or None,
        "force_recreate_dataset": args.force_recreate_dataset or None,
        "drop_columns": args.drop_columns or None,
        "rows": args.rows,
        "confirm": args.confirm,
        "accept_losses": args.accept_losses,
    }
    return {k: v for k, v in fields.items() if v is not None}


def plan(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    request = request_from_fields({"tables": args.tables, "dry_run": True}, _local_id())
    declared = _declared(settings)
    result = runner.run(request, settings, declared)
    print(render(result, planning=True))
    return result_exit_code(result)


def apply(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = settings_of(args)
    request = request_from_fields(request_fields(args), _local_id())
    gate.check_consents(request, settings, gate.CLI_WORDS)
    declared = _declared(settings)
    if not request.destructive or request.dry_run:
        result = runner.run(request, settings, declared)
        print(render(result, planning=request.dry_run))
        return result_exit_code(result)
    granted = _authorize(request, declared, settings, started)
    if not isinstance(granted, gate.Authorization):
        print(render_event({**granted.result, "duplicate": True}))  # type: ignore[dict-item]
        return event_exit_code(granted.result)  # type: ignore[arg-type]
    result = runner.run(request, settings, declared, authorization=granted)
    if settings.state_bucket:
        trigger = Trigger("cli", request.request_id, "python -m function apply", None, None)
        report = Report(settings, trigger, request.request_id)
        granted.progress.finish(report.data(result, digest=declared.digest))  # type: ignore[attr-defined]
    print(render(result, planning=False))
    return result_exit_code(result)


def publish(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    request = request_fields(args)
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
    return event_exit_code(event.data)


def events(args: argparse.Namespace) -> int:
    """Completion events as they are published: the function's runs, watched."""
    settings = settings_of(args)
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


def sync(args: argparse.Namespace) -> int:
    return _upload(args, read_folder(args.source or BUNDLED_SCHEMAS))


def upload(args: argparse.Namespace) -> int:
    return _upload(args, file_to_upload(args.file))


def _upload(args: argparse.Namespace, files: dict[str, bytes]) -> int:
    """Validate, plan what the uploads will make the function do, and upload unless a change
    would be blocked (or --skip-plan / --allow-blocked say otherwise)."""
    settings = settings_of(args)
    target = args.to or settings.schema_source
    if not target.startswith("gs://"):
        raise PermanentError(
            f"upload target {target!r}: pass --to gs://BUCKET/PREFIX/ or set SCHEMA_SOURCE to one"
        )
    prepared = prepare(runner.storage_client(settings), files, target, settings.retry_deadline)
    if not prepared.changed:
        print(f"nothing to upload: {target} already holds these files")
        return 0
    if not args.skip_plan and not _planned_upload_is_fine(prepared, settings, args.allow_blocked):
        return 1
    uploaded = upload_prepared(prepared)
    print(f"uploaded to {target}: {', '.join(uploaded)}")
    return 0


def _planned_upload_is_fine(prepared: Prepared, settings: Settings, allow_blocked: bool) -> bool:
    """Print what the function will do with the uploads; False when that would be blocked (or
    fail) and the operator did not ask to upload anyway."""
    request = BootstrapRequest(request_id=_local_id(), tables=prepared.tables, dry_run=True)
    result = runner.run(request, settings, prepared.declared, dataset_updates=prepared.tables is None)
    names = ", ".join(sorted(prepared.changed))
    print(f"uploading {names} to {prepared.target} will make the function do this in {settings.dataset}:")
    print(render(result, planning=True))
    stuck = [t.table for t in result.tables if t.action in ("blocked", "failed")]
    if result.dataset_action == "failed":
        stuck.append(f"dataset {settings.dataset}")
    if stuck and not allow_blocked:
        print(
            f"\nnot uploaded: {', '.join(stuck)} would be left as they are (see above). Revert the change, "
            "or pass --allow-blocked to upload it anyway (for a forced recreation after)",
            file=sys.stderr,
        )
        return False
    print()
    return True


def backups(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    found = Backups(runner.bigquery_adapter(settings), settings).list()
    if not found:
        print(f"no backups in {settings.backups}")
    for b in found:
        expires = b["expires"] or f"with the dataset default ({settings.backup_ttl_days:g} days)"
        print(
            f"{b['backup']}\n    of {b['backup_of']}, {b['rows']} rows, request {b['request_id']}, ", end=""
        )
        print(f"made {b['created']}, expires {expires}")
    return 0


def restore(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = settings_of(args)
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
        gate.check_consents(request, settings, gate.CLI_WORDS)
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


def show(args: argparse.Namespace) -> int:
    """What BigQuery holds now: the dataset and its tables (or some), columns included."""
    settings = settings_of(args)
    state = current_state(settings, args.tables or None)
    if state is None:
        print(f"dataset {settings.dataset} does not exist in {settings.project}: `{_PROG} apply` creates it")
        return 1
    print(render_tables(*state))
    return 0


def current_state(
    settings: Settings, names: list[str] | None = None
) -> tuple[DatasetSpec, list[TableSpec]] | None:
    """The dataset and its tables (or `names`) as BigQuery holds them; None: no dataset."""
    bq = runner.bigquery_adapter(settings)
    dataset, _ = bq.get_dataset()
    if dataset is None:
        return None
    tables = []
    for name in names or [o.name for o in bq.inventory() if o.kind == "TABLE"]:
        spec, _ = bq.get_table(name)
        if spec is None:
            raise PermanentError(f"no table {name} in {settings.dataset}")
        tables.append(spec)
    return dataset, tables


def _declared(settings: Settings) -> DeclaredState:
    """The declared state; then says where it was read from, and what it is compared with."""
    declared = runner.load_declared(settings)
    print(f"comparing {settings.schema_source} with BigQuery {settings.project}.{settings.dataset}\n")
    return declared


def _authorize(
    request: BootstrapRequest, declared: DeclaredState | None, settings: Settings, started: float
) -> Any:
    """The gate, with the request ledger when BOOTSTRAP_STATE_BUCKET is set."""
    ledger = runner.ledger(settings) if settings.state_bucket else None
    if ledger is None:
        print(
            "warning: BOOTSTRAP_STATE_BUCKET is not set, so this run is not recorded in the request "
            "ledger: running the same command again will recreate again",
            file=sys.stderr,
        )
    return gate.authorize(request, declared, settings, ledger, started=started)


_PROG = "python -m function"


def _local_id() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


def _progress(elapsed: float) -> None:
    print(f"\rwaiting for the completion event... {elapsed:4.0f} s", end="", file=sys.stderr, flush=True)
