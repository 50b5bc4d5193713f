"""What a run did: the result of each table and of the dataset, as the engine returns it, the
completion event carries it and the CLI prints it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TableResult:
    table: str
    action: str  # created | updated | unchanged | recreated | blocked | failed
    changes: tuple[str, ...] = ()
    error: str | None = None
    statements: tuple[str, ...] = ()  # the DDL that makes the changes BigQuery's patch cannot

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "table": self.table,
            "action": self.action,
            "changes": list(self.changes),
            "error": self.error,
        }
        if self.statements:
            data["statements"] = list(self.statements)
        return data


@dataclass
class EnsureResult:
    dataset: str
    dataset_action: str  # created | updated | unchanged | recreated | blocked | failed
    dry_run: bool
    dataset_changes: tuple[str, ...] = ()
    dataset_error: str | None = None
    tables: list[TableResult] = field(default_factory=list)
    backups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """A dry run whose reads failed did not plan anything: it failed. Blocked changes are
        a plan's result, and a failure of a run that applies."""
        failed = self.dataset_action == "failed" or any(t.action == "failed" for t in self.tables)
        if self.dry_run:
            return "failed" if failed else "planned"
        if failed or self.dataset_error or any(t.action == "blocked" for t in self.tables):
            return "failed"
        return "succeeded"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tables:
            out[t.action] = out.get(t.action, 0) + 1
        return out
