"""The ensure engine: bring BigQuery to the declared state, one table per worker, and say what
it did. Nothing is dropped without the gate's `Authorization` (README, Safety).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor

from google.cloud import bigquery

from . import ddl
from .backups import Backups
from .bigquery_adapter import BigQueryAdapter, DatasetObject
from .config import Settings
from .errors import PermanentError, RefusedError, TransientError
from .gate import DATASET_STEP, Authorization, check_consents, select_tables
from .migrate import Migrator, copied_step, refused
from .migration import Migration, plan_migration
from .model import DatasetSpec, DeclaredState, TableSpec
from .plan import Action, DatasetPlan, TablePlan, plan_dataset, plan_table
from .request import BootstrapRequest
from .results import EnsureResult, TableResult

PAST_TENSE = {
    Action.CREATE: "created",
    Action.UPDATE: "updated",
    Action.UNCHANGED: "unchanged",
    Action.BLOCKED: "blocked",
    Action.RECREATE: "recreated",
}
MAX_ATTEMPTS = 3  # re-plans after losing a race (409 on create, 412 on patch)


class Prefetch:
    """BigQuery reads started before the declared state is known: the dataset and the tables
    named by the schema source's listing (or by the last run), so that they overlap the schema
    files' download. The engine takes each read from here instead of sending it again."""

    def __init__(self, bq: BigQueryAdapter, tables: Iterable[str], pool: Executor) -> None:
        self.dataset = pool.submit(bq.get_dataset)
        self.tables = {name: pool.submit(bq.get_table, name) for name in tables}


class Engine:
    """Plans and applies the declared state over one dataset."""

    def __init__(self, declared: DeclaredState, settings: Settings, bq: BigQueryAdapter) -> None:
        self.declared = declared
        self.settings = settings
        self.bq = bq

    def ensure(
        self,
        request: BootstrapRequest,
        *,
        authorization: Authorization | None = None,
        dataset_updates: bool = True,
        prefetched: Prefetch | None = None,
    ) -> EnsureResult:
        """Plan, then (unless a dry run) apply, for the request's tables.

        A destructive request that is not a dry run needs its `authorization` from
        `gate.authorize`; nothing else makes the engine drop anything. `dataset_updates=False`
        (a single table's upload) still creates a missing dataset but leaves its description and
        labels to the manifest's own upload."""
        names = select_tables(self.declared, request.tables)
        check_consents(request, self.settings)
        if request.destructive and not request.dry_run and authorization is None:
            raise RefusedError("a destructive request reached the engine without the gate's authorization")
        run = _Convergence(self, request, authorization, dataset_updates, prefetched)
        # The pool only hides latency: wide enough to keep BigQuery's per-user rate busy (see
        # the README's Performance section); the rate limiter, not its size, keeps us under it.
        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="ensure") as pool:
            futures = [pool.submit(run.table, name) for name in names]
            try:
                result = run.dataset()
            except BaseException as exc:
                run.dataset_failed = f"the dataset step failed: {exc}"
                raise
            finally:
                run.dataset_ready.set()  # release the table workers, also when the dataset step raised
            outcomes = [f.exception() or f.result() for f in futures]
        transient = [o for o in outcomes if isinstance(o, TransientError)]
        if transient:
            raise transient[0]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        result.tables = outcomes  # type: ignore[assignment]
        if authorization is not None:
            result.backups = authorization.progress.backups
        return result


class _Convergence:
    """One ensure pass: the dataset step on the calling thread, one table step per worker."""

    def __init__(
        self,
        engine: Engine,
        request: BootstrapRequest,
        authorization: Authorization | None,
        dataset_updates: bool,
        prefetched: Prefetch | None,
    ) -> None:
        self.prefetched = prefetched
        self.declared = engine.declared
        self.settings = engine.settings
        self.bq = engine.bq
        self.backups = Backups(engine.bq, engine.settings)
        self.migrator = Migrator(engine.bq, self.backups, request.request_id)
        self.request = request
        self.authorization = authorization
        self.dataset_updates = dataset_updates
        self.done = authorization.done if authorization else frozenset()
        self.dataset_ready = threading.Event()
        self.fresh = False  # the dataset was (re)created by this run: every table is missing
        self.dataset_failed: str | None = None

    # --- the dataset ------------------------------------------------------------------------

    def dataset(self) -> EnsureResult:
        declared = self.declared.dataset(self.settings.dataset, self.settings.location)
        recreate = self.request.force_recreate_dataset and DATASET_STEP not in self.done
        result = EnsureResult(self.settings.dataset, "unchanged", self.request.dry_run)
        try:
            for attempt in range(MAX_ATTEMPTS):
                read = self.prefetched.dataset if self.prefetched and attempt == 0 else None
                actual, obj = read.result() if read else self.bq.get_dataset()
                if (
                    recreate
                    and obj is not None
                    and self.authorization
                    and self.authorization.made(obj.labels)
                ):
                    # The last owner recreated it, then stopped before recording it.
                    self.authorization.progress.record(DATASET_STEP)
                    recreate = False
                plan = self._plan_dataset(declared, actual, recreate=recreate)
                result.dataset_action, result.dataset_changes = PAST_TENSE[plan.action], plan.changes
                if plan.action is Action.BLOCKED:
                    result.dataset_error = "; ".join(plan.blocked)
                objects = self._check_losses() if plan.action is Action.RECREATE else []
                self.fresh = plan.action in (Action.CREATE, Action.RECREATE)
                if self.request.dry_run or self._apply_dataset(plan, declared, obj, objects):
                    return result
                recreate = False  # lost a race to another writer: compare with what it left
            raise PermanentError("the dataset kept changing under concurrent writers; run again")
        except PermanentError as exc:
            self.fresh = False
            self.dataset_failed = result.dataset_error = str(exc)
            result.dataset_action = "failed"
            return result

    def _plan_dataset(
        self, declared: DatasetSpec, actual: DatasetSpec | None, *, recreate: bool
    ) -> DatasetPlan:
        plan = plan_dataset(declared, actual, recreate=recreate)
        if plan.action is Action.UPDATE and not self.dataset_updates:
            return DatasetPlan(plan.dataset, Action.UNCHANGED)
        return plan

    def _check_losses(self) -> list[DatasetObject]:
        """A dataset recreation deletes everything in the dataset. Tables are backed up; what
        cannot be (views, routines, models, ...) must each be accepted as a loss by name.
        Returns what the dataset holds."""
        objects = self.bq.inventory()
        unaccepted = [o for o in objects if o.kind != "TABLE" and o.name not in self.request.accept_losses]
        if unaccepted:
            names = ", ".join(f"{o.name} ({o.kind.lower().replace('_', ' ')})" for o in unaccepted)
            raise RefusedError(
                f"refused to recreate the dataset: it holds {names}, which cannot be backed up and "
                "would be lost. Save them elsewhere, or list each in the request's accept_losses. "
                "Nothing was changed."
            )
        return objects

    def _apply_dataset(
        self,
        plan: DatasetPlan,
        declared: DatasetSpec,
        obj: bigquery.Dataset | None,
        objects: list[DatasetObject],
    ) -> bool:
        """Apply the dataset's plan; False when it lost a race (409 on create, 412 on patch)."""
        if plan.action is Action.RECREATE:
            self._recreate_dataset(declared, obj, objects)
            return True
        if plan.action is Action.CREATE and self.request.force_recreate_dataset:
            authorization = self._authorization()  # an interrupted recreation, finished
            created = self.bq.create_dataset(declared, mark=authorization.mark)
            if created:
                authorization.progress.record(DATASET_STEP)
            return created
        if plan.action is Action.CREATE:
            return self.bq.create_dataset(declared)
        if plan.action is Action.UPDATE:
            return self.bq.patch_dataset(obj, plan.patch)  # type: ignore[arg-type]
        return True

    def _recreate_dataset(
        self, declared: DatasetSpec, obj: bigquery.Dataset | None, objects: list[DatasetObject]
    ) -> None:
        authorization = self._authorization()
        for item in objects:
            if item.kind == "TABLE":
                self.backups.backup(item.name, authorization)
        self.bq.delete_dataset(authorization.fence("the drop of the dataset"))
        # The new dataset keeps the old one's grants, so the function never becomes its owner.
        access = list(obj.access_entries) if obj is not None else None
        self.bq.create_dataset(declared, access=access, mark=authorization.mark)
        authorization.progress.record(DATASET_STEP)

    # --- one table --------------------------------------------------------------------------

    def table(self, name: str) -> TableResult:
        spec = self.declared.tables[name]
        actual = obj = None
        if not (self.dataset_ready.is_set() and self.fresh):
            read = self.prefetched.tables.get(name) if self.prefetched else None
            try:
                actual, obj = (
                    read.result() if read else self.bq.get_table(name)
                )  # while the dataset step runs
            except PermanentError as exc:
                self.dataset_ready.wait()
                return TableResult(name, "failed", (), str(exc))
        self.dataset_ready.wait()
        if self.dataset_failed:
            return TableResult(name, "failed", (), f"not attempted: {self.dataset_failed}")
        if self.fresh:
            actual = obj = None
        forced = self.request.force_recreate_tables
        if forced and self._recreated_earlier(name, obj):
            return TableResult(name, "recreated", ("recreated by an earlier delivery of this request",))
        recreate = forced
        altered: TablePlan | None = None  # the plan whose DDL statements were run
        try:
            if self.request.keeps_rows and copied_step(name) in self.done and not self.request.dry_run:
                # The last delivery copied the rows, then stopped before the swap.
                rows = self.migrator.finish(name, self._authorization())
                if rows is not None:
                    return TableResult(name, "recreated", (f"{rows} row(s) migrated (resumed)",))
                actual, obj = self.bq.get_table(name)  # written since the copy: migrated again
            for _ in range(MAX_ATTEMPTS):
                plan = self._plan_table(spec, actual, recreate)
                if plan.action is Action.RECREATE and actual is not None and self.request.keeps_rows:
                    return self._migrate(
                        spec, plan, plan_migration(spec, actual, drop_columns=self.request.drop_columns)
                    )
                if self.request.dry_run or plan.action is Action.BLOCKED:
                    return self._result(plan)
                if plan.action is Action.UNCHANGED:
                    return self._result(altered or plan)
                if plan.ddl:
                    # Statements first; the patch is planned again on what they leave.
                    self._alter(plan)
                    altered = altered or plan
                elif self._apply_table(plan, obj, recreate):
                    return self._result(altered or plan)
                # Altered, or lost a race with another writer: compare again with what is there.
                actual, obj = self.bq.get_table(name)
                recreate = False
        except PermanentError as exc:
            return TableResult(name, "failed", (), str(exc))
        return TableResult(name, "failed", (), "the table kept changing under concurrent writers; run again")

    def _migrate(self, spec: TableSpec, plan: TablePlan, migration: Migration) -> TableResult:
        """A forced recreation that carries the rows across (the request's rows: "keep")."""
        if migration.problems:
            error = refused(spec.name, migration.problems, "Change the declared schema")
            return TableResult(spec.name, "blocked", migration.problems, error)
        statements = self.migrator.statements(migration)
        changes = plan.changes + migration.changes
        if not self.request.dry_run:
            rows = self.migrator.migrate(spec, migration, self._authorization())
            changes += (f"{rows} row(s) migrated",)
        return TableResult(spec.name, "recreated", changes, None, statements)

    def _plan_table(self, spec: TableSpec, actual: TableSpec | None, recreate: bool) -> TablePlan:
        return plan_table(spec, actual, recreate=recreate, drop_columns=self.request.drop_columns)

    def _alter(self, plan: TablePlan) -> None:
        """Run the plan's DDL statements, one query job each. Dropping a column loses its
        values: the table is backed up first, and each drop is fenced. A statement refused
        because another writer made the change meanwhile is not an error: the caller reads the
        table again and plans what is left."""
        if plan.destructive:
            self.backups.backup(plan.table, self._authorization())  # raises, dropping nothing
        table = str(self.bq.ref(plan.table))
        for change in plan.ddl:
            sql = change.sql(table)
            fence = None
            if change.destructive:
                fence = self._authorization().fence(f"the {change.kind} {change.column} of {plan.table}")
            try:
                self.bq.run_query(
                    sql,
                    job_id=ddl.job_id(self.request.request_id, table, sql),
                    wait=self.bq.deadline,
                    fence=fence,
                )
            except PermanentError:
                actual, _ = self.bq.get_table(plan.table)
                if change in self._plan_table(self.declared.tables[plan.table], actual, False).ddl:
                    raise
                return

    def _recreated_earlier(self, name: str, obj: bigquery.Table | None) -> bool:
        """Did an earlier delivery of this request recreate the table: recorded, or carrying the
        request's mark (it stopped between the recreation and its record, which is made now)?"""
        if obj is None or self.authorization is None:
            return False
        if name in self.done:
            return True
        if not self.authorization.made(obj.labels):
            return False
        self.authorization.progress.record(name)
        return True

    def _apply_table(self, plan: TablePlan, obj: bigquery.Table | None, forced: bool) -> bool:
        """Apply one plan; False when a concurrent writer got there first."""
        spec = self.declared.tables[plan.table]
        if plan.action is Action.CREATE and forced:  # an interrupted recreation, finished
            authorization = self._authorization()
            created = self.bq.create_table(spec, mark=authorization.mark)
            if created:
                authorization.progress.record(spec.name)
            return created
        if plan.action is Action.CREATE:
            return self.bq.create_table(spec)
        if plan.action is Action.RECREATE:
            authorization = self._authorization()
            self.backups.backup(spec.name, authorization)  # raises, leaving the table in place
            self.bq.delete_table(spec.name, authorization.fence(f"the drop of {spec.name}"))
            self.bq.create_table(spec, mark=authorization.mark)
            authorization.progress.record(spec.name)
            return True
        return self.bq.patch_table(obj, plan.patch)  # type: ignore[arg-type]

    def _authorization(self) -> Authorization:
        if self.authorization is None:  # unreachable: `ensure` refuses such a request
            raise RefusedError("a recreation needs the gate's authorization")
        return self.authorization

    def _result(self, plan: TablePlan) -> TableResult:
        if plan.action is Action.BLOCKED:
            reasons = "; ".join(plan.blocked)
            error = (
                f"left untouched, not a change BigQuery makes in place: {reasons}. Revert the schema "
                "change, or send a request with force_recreate_tables (the rows are migrated) or, for "
                "columns no longer declared, drop_columns; each with confirm (the deployment must set "
                "ALLOW_DESTRUCTIVE=true)"
            )
            return TableResult(plan.table, "blocked", plan.blocked + plan.changes, error)
        statements = tuple(change.sql(str(self.bq.ref(plan.table))) for change in plan.ddl)
        return TableResult(plan.table, PAST_TENSE[plan.action], plan.changes, None, statements)
