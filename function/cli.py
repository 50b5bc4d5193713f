"""`python -m function ...`: the operator's commands, on the same engine as the function.

plan   exit 0 when nothing would change, 2 when something would (a drift check for cron/CI)
apply  exit 0 when the declared state holds, 1 when it does not
Bad input or configuration exits 1 with the reason; nothing is sent to BigQuery then.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence

from . import runner
from .config import Settings
from .engine import EnsureResult
from .errors import PermanentError, TransientError
from .request import request_from_fields

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
    except PermanentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TransientError as exc:
        print(f"error (transient, try again): {exc}", file=sys.stderr)
        return 1


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        project=args.project,
        dataset=args.dataset,
        location=args.location,
        schema_source=args.schema_source,
        allow_destructive=True if getattr(args, "allow_destructive", False) else None,
    )


def _plan(args: argparse.Namespace) -> int:
    settings = _settings(args)
    request = request_from_fields({"tables": args.tables, "dry_run": True}, _local_id())
    result = runner.run(request, settings, runner.load_declared(settings))
    print(render(result, planning=True))
    changed = result.dataset_action != "unchanged" or any(t.action != "unchanged" for t in result.tables)
    return 2 if changed else 0


def _apply(args: argparse.Namespace) -> int:
    settings = _settings(args)
    fields = {
        "tables": args.tables,
        "dry_run": args.dry_run or None,
        "force_recreate_tables": args.force_recreate_tables or None,
        "force_recreate_dataset": args.force_recreate_dataset or None,
        "confirm": args.confirm,
    }
    request = request_from_fields({k: v for k, v in fields.items() if v is not None}, _local_id())
    result = runner.run(request, settings, runner.load_declared(settings))
    print(render(result, planning=request.dry_run))
    return 1 if result.status == "failed" else 0


def render(result: EnsureResult, *, planning: bool) -> str:
    """A Terraform-like listing: one line per table, its changes (or why it is blocked) below."""
    words = PLAN_WORDS if planning else {}
    lines = [f"dataset {result.dataset}: {words.get(result.dataset_action, result.dataset_action)}"]
    lines += [f"    {c}" for c in result.dataset_changes]
    if result.dataset_error:
        lines.append(f"    error: {result.dataset_error}")
    width = max((len(t.table) for t in result.tables), default=0)
    for t in result.tables:
        lines.append(f"  {SYMBOLS[t.action]:>3} {t.table:<{width}}  {words.get(t.action, t.action)}")
        lines += [f"        {c}" for c in t.changes]
        if t.error:
            lines.append(f"        error: {t.error}")
    counts = result.counts()
    summary = ", ".join(f"{n} {words.get(a, a)}" for a, n in sorted(counts.items()))
    lines.append(f"\n{'Plan' if planning else 'Result'}: {summary or 'no tables'}.")
    return "\n".join(lines)


def _local_id() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m function", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--project", help="project (default: GOOGLE_CLOUD_PROJECT)")
        p.add_argument("--dataset", help="dataset (default: BOOTSTRAP_DATASET or tenants)")
        p.add_argument("--location", help="dataset location (default: BOOTSTRAP_LOCATION or US)")
        p.add_argument("--schema-source", help="folder or gs://BUCKET/PREFIX/ (default: SCHEMA_SOURCE)")
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
        "--allow-destructive",
        action="store_true",
        help="give this run the deployment's consent (ALLOW_DESTRUCTIVE) to recreate",
    )
    apply.set_defaults(handler=_apply)
    return parser
