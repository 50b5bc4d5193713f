"""Run a migration that keeps the rows: check, back up, copy into a temporary table, compare,
swap; resumable at every step (README, "A forced recreation keeps the rows").
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace

from google.cloud import bigquery

from . import ddl
from .backups import Backups
from .bigquery_adapter import BigQueryAdapter
from .errors import PermanentError
from .gate import Authorization
from .migration import Migration
from .model import TableSpec


def refused(table: str, reasons: list[str] | tuple[str, ...], fix: str) -> str:
    """Why the rows of `table` are not migrated (nothing was changed), and the ways out."""
    return (
        f"refused to migrate the rows of {table}: {'; '.join(reasons)}. Nothing was changed. {fix}, or "
        'send the request with "rows": "discard" (the rows then stay only in the backup)'
    )


def copied_step(table: str) -> str:
    """The ledger's name of "every row of `table` is in its temporary table"."""
    return f"{table} (rows copied)"


class Migrator:
    """Carries one request's tables across their recreation, rows included. The ledger records
    when a copy is complete: before that record the source is untouched (and a partial copy is
    thrown away), after it the copy is thrown away only while its source is still there."""

    def __init__(self, bq: BigQueryAdapter, backups: Backups, request_id: str) -> None:
        self.bq = bq
        self.backups = backups
        self.request_id = request_id

    def temporary(self, table: str) -> str:
        """The temporary table of `table` for this request (the same for every delivery)."""
        return f"{table}__migrating_{hashlib.sha256(self.request_id.encode()).hexdigest()[:8]}"

    def statements(self, migration: Migration) -> tuple[str, ...]:
        """What a migration runs, in order (a plan and a dry run show them)."""
        source, target = self._ref(migration.table), self._ref(self.temporary(migration.table))
        return (
            migration.check_sql(source),
            migration.insert_sql(source, target),
            _rename_sql(target, migration.table),
        )

    def migrate(self, spec: TableSpec, migration: Migration, authorization: Authorization) -> int:
        """Copy the rows of table `spec.name` into a new table of the declared schema, then put
        it in the old one's place; the number of rows carried. Raises PermanentError, with
        nothing dropped, when a row cannot be carried or a writer changed the table meanwhile."""
        source = self._ref(spec.name)
        failures = migration.failures(self._read(migration.check_sql(source)))
        if failures:
            raise PermanentError(refused(spec.name, failures, "Correct those rows"))
        self.backups.backup(spec.name, authorization)  # raises, leaving the table in place
        target = self._fresh_temporary(spec, authorization)
        self._run(migration.insert_sql(source, self._ref(target.table_id)), target, authorization)
        rows, copied = self._counts(spec.name, target.table_id)
        if rows != copied:
            self._drop(target.table_id, authorization)
            raise PermanentError(
                f"refused to replace {spec.name}: it held {rows} rows while {copied} were copied (a "
                "writer changed it during the migration). Nothing was dropped. Stop its writers and "
                "send the request again with a new request_id"
            )
        authorization.progress.record(copied_step(spec.name))
        self._drop(spec.name, authorization)
        return self._swap(spec.name, target, copied, authorization)

    def finish(self, table: str, authorization: Authorization) -> int | None:
        """Go on from a copy that a stopped delivery recorded complete: the number of rows
        carried, or None when the table was written after the copy (the copy is then thrown
        away, the table being untouched, and the migration must start again)."""
        temporary = self.temporary(table)
        _, target = self.bq.get_table(temporary)
        if target is None:
            raise PermanentError(
                f"the rows of {table} were copied into {temporary}, which no longer exists; the "
                "request's backup holds them (python -m function backups)"
            )
        _, source = self.bq.get_table(table)
        if source is None:  # dropped by the stopped delivery
            return self._swap(table, target, self._counts(None, temporary)[1], authorization)
        if source.created is None or target.created is None or source.created >= target.created:
            raise PermanentError(
                f"refused to replace {table}: it was created after its rows were copied into "
                f"{temporary} (by another writer). Nothing was dropped; the copied rows stay in {temporary}"
            )
        rows, copied = self._counts(table, temporary)
        if rows != copied:  # the original, written since the copy: copy again
            self._drop(temporary, authorization)
            return None
        self._drop(table, authorization)
        return self._swap(table, target, copied, authorization)

    def _swap(self, table: str, target: bigquery.Table, rows: int, authorization: Authorization) -> int:
        """Give the complete copy the table's name, and record the recreation."""
        self._run(_rename_sql(self._ref(target.table_id), table), target, authorization)
        authorization.progress.record(table)
        return rows

    def _drop(self, table: str, authorization: Authorization) -> None:
        self.bq.delete_table(table, authorization.fence(f"the drop of {table}"))

    def _fresh_temporary(self, spec: TableSpec, authorization: Authorization) -> bigquery.Table:
        """The temporary table, empty, of the declared schema: one a stopped delivery left half
        filled is dropped first (its source is intact: the copy was not recorded complete)."""
        name = self.temporary(spec.name)
        _, left = self.bq.get_table(name)
        if left is not None:
            if not authorization.made(left.labels):
                raise PermanentError(
                    f"refused to migrate {spec.name}: {name} exists and is not this request's"
                )
            self._drop(name, authorization)
        self.bq.create_table(replace(spec, name=name), mark=authorization.mark)
        _, made = self.bq.get_table(name)
        if made is None:
            raise PermanentError(f"{name} disappeared right after it was created; run again")
        return made

    def _run(self, sql: str, target: bigquery.Table, authorization: Authorization) -> None:
        """A write of the migration. Its job id names the temporary table's incarnation, so that
        a retry finds its job, while a temporary table made again gets its rows again."""
        step = f"{sql}\0{target.created.isoformat() if target.created else ''}"
        job_id = ddl.job_id(self.request_id, target.table_id, step)
        self.bq.run_query(sql, job_id=job_id, wait=authorization.wait(self.bq.deadline))

    def _counts(self, source: str | None, target: str) -> tuple[int, int]:
        """Rows in `source` (0 when None) and in `target`, counted by one query."""
        held = f"(SELECT COUNT(*) FROM `{self._ref(source)}`)" if source else "0"
        found = self._read(f"SELECT {held} AS source, (SELECT COUNT(*) FROM `{self._ref(target)}`) AS target")
        return found["source"], found["target"]

    def _read(self, sql: str) -> dict[str, int]:
        """A read-only query's one row (a fresh job each time: a read is never resumed)."""
        [row] = self.bq.run_query(sql, job_id=f"bootstrap_read_{uuid.uuid4().hex}", wait=self.bq.deadline)
        return dict(row.items())

    def _ref(self, table: str) -> str:
        return str(self.bq.ref(table))


def _rename_sql(table: str, new_name: str) -> str:
    return f"ALTER TABLE `{table}` RENAME TO `{new_name}`"
