"""The schema changes BigQuery makes only through DDL, as the plan names them, and their SQL."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    RENAME = "rename"  # a declared rename (the manifest's `renamed`)
    SET_TYPE = "set type"  # a lossless widening (see `widening`)
    DROP_DEFAULT = "drop default"  # a default value removed
    DROP_COLUMN = "drop column"  # destructive: needs the request's drop_columns and its consents


@dataclass(frozen=True)
class Change:
    kind: Kind
    column: str
    value: str = ""  # RENAME: the new name; SET_TYPE: the SQL type

    @property
    def destructive(self) -> bool:
        return self.kind is Kind.DROP_COLUMN

    def sql(self, table: str) -> str:
        """The statement for `table` (project.dataset.table)."""
        target = f"ALTER TABLE `{table}`"
        if self.kind is Kind.RENAME:
            return f"{target} RENAME COLUMN `{self.column}` TO `{self.value}`"
        if self.kind is Kind.SET_TYPE:
            return f"{target} ALTER COLUMN `{self.column}` SET DATA TYPE {self.value}"
        if self.kind is Kind.DROP_DEFAULT:
            return f"{target} ALTER COLUMN `{self.column}` DROP DEFAULT"
        return f"{target} DROP COLUMN `{self.column}`"


def job_id(request_id: str, table: str, statement: str) -> str:
    """The same request, table and statement: the same job, so that a redelivery finds the
    job instead of running the statement twice."""
    key = hashlib.sha256(f"{request_id}\0{table}\0{statement}".encode()).hexdigest()
    return f"bootstrap_ddl_{key[:40]}"
