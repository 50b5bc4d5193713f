"""What the operator reads: plans, results and completion events as Terraform-like listings, the
tables BigQuery holds, and the exit codes that go with them."""

from __future__ import annotations

from typing import Any

from .model import Column, DatasetSpec, TableSpec
from .results import EnsureResult, TableResult

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
BLOCKED_HELP = (
    "left untouched: revert the change, or recreate the table with its rows migrated (apply "
    "--force-recreate-tables, see `python -m function apply --help`), or for columns no longer "
    "declared apply --drop-columns"
)


def exit_code(status: str, dataset_action: str | None, actions: list[str]) -> int:
    """1 when the run failed; for a plan (a dry run), 2 when something would change and 0 when
    nothing would, like `terraform plan -detailed-exitcode`; 0 when the state holds."""
    if status == "failed":
        return 1
    if status == "planned":
        return 2 if dataset_action != "unchanged" or any(a != "unchanged" for a in actions) else 0
    return 0


def result_exit_code(result: EnsureResult) -> int:
    return exit_code(result.status, result.dataset_action, [t.action for t in result.tables])


def event_exit_code(data: dict[str, Any]) -> int:
    return exit_code(data["status"], data.get("dataset_action"), [t["action"] for t in data["tables"]])


def render_event(data: dict[str, Any]) -> str:
    """A completion event's data, rendered like an apply result."""
    result = EnsureResult(
        dataset=data["dataset"],
        dataset_action=data.get("dataset_action") or "not reached",
        dry_run=data["dry_run"],
        dataset_error=data.get("error"),
        tables=[
            TableResult(
                t["table"], t["action"], tuple(t["changes"]), t["error"], tuple(t.get("statements", ()))
            )
            for t in data["tables"]
        ],
        backups=list(data.get("backups") or []),
    )
    header = f"request {data['request_id']}: {data['status']} in {data['duration_ms']} ms"
    if data.get("duplicate"):
        header += " (duplicate: this request had already run; this is its recorded result)"
    return header + "\n" + render(result, planning=data["dry_run"])


def render(result: EnsureResult, *, planning: bool) -> str:
    """One line per table, its changes (or why it is blocked) below it."""
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
        lines += [f"        sql: {statement}" for statement in t.statements]
        if t.action == "blocked":  # its reasons are the lines above; the error repeats them
            lines.append(f"        {BLOCKED_HELP}")
        elif t.error:
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


def render_tables(dataset: DatasetSpec, tables: list[TableSpec]) -> str:
    """The dataset and its tables as BigQuery holds them: settings, then the columns."""
    lines = [f"dataset {dataset.name} in {dataset.location}: {dataset.description or '(no description)'}"]
    if dataset.labels:
        lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in dataset.labels))
    for table in tables:
        parts = []
        if table.partitioning:
            p = table.partitioning
            parts.append(f"partitioned by {p.type} on {p.field or 'ingestion time'}")
        if table.clustering:
            parts.append(f"clustered by {', '.join(table.clustering)}")
        lines.append(f"\n  {table.name}" + (f"  ({'; '.join(parts)})" if parts else ""))
        lines += _columns(table.columns, "      ")
    return "\n".join(lines)


def _columns(columns: tuple[Column, ...], indent: str) -> list[str]:
    lines = []
    for c in columns:
        lines.append(f"{indent + c.name:<34} {c.type:<10} {c.mode}")  # nested names indent, types align
        lines += _columns(c.fields, indent + "  ")
    return lines
