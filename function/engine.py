"""The ensure engine: bring BigQuery to the declared state, and say what it did.

Reads are issued at once (the dataset on the calling thread, the tables on a bounded pool),
writes wait only for what they depend on (the dataset), a table that already matches gets no
write at all, and anything BigQuery cannot change in place is left untouched and reported as
blocked unless the request forces a recreation that the deployment allows and `confirm` names.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from .backups import Backup, Backups
from .bigquery_adapter import BigQueryAdapter
from .config import Settings
from .errors import PermanentError, RefusedError, RequestError, TransientError
from .model import DatasetSpec, DeclaredState, TableSpec
from .plan import Action, DatasetPlan, TablePlan, plan_dataset, plan_table
from .request import BootstrapRequest

PAST_TENSE = {
    Action.CREATE: "created",
    Action.UPDATE: "updated",
    Action.UNCHANGED: "unchanged",
    Action.BLOCKED: "blocked",
    Action.RECREATE: "recreated",
}
MAX_ATTEMPTS = 3  # re-plans after losing a race (409 on create, 412 on patch)
DATASET_STEP = "(dataset)"  # the progress key of a forced dataset recreation


@dataclass(frozen=True)
class TableResult:
    table: str
    action: str  # created | updated | unchanged | recreated | blocked | failed
    changes: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "table": self.table,
            "action": self.action,
            "changes": list(self.changes),
            "error": self.error,
        }


@dataclass
class EnsureResult:
    dataset: str
    dataset_action: str  # created | updated | unchanged | recreated | blocked
    dry_run: bool
    dataset_changes: tuple[str, ...] = ()
    dataset_error: str | None = None
    tables: list[TableResult] = field(default_factory=list)
    backups: list[Backup] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.dry_run:
            return "planned"
        if self.dataset_error or any(t.action in ("blocked", "failed") for t in self.tables):
            return "failed"
        return "succeeded"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tables:
            out[t.action] = out.get(t.action, 0) + 1
        return out


def select_tables(declared: DeclaredState, wanted: tuple[str, ...] | None) -> list[str]:
    if wanted is None:
        return sorted(declared.tables)
    unknown = [t for t in wanted if t not in declared.tables]
    if unknown:
        raise RequestError(
            f"unknown table(s) {', '.join(unknown)}; the schema source declares: {', '.join(sorted(declared.tables))}"
        )
    return list(wanted)


def authorize(request: BootstrapRequest, settings: Settings) -> None:
    """A forced recreation needs three consents: the request's flag, the deployment's
    ALLOW_DESTRUCTIVE, and `confirm` equal to the dataset id. A dry run only plans, so it
    does not need the deployment's consent."""
    if not request.destructive:
        return
    problems = []
    if request.confirm != settings.dataset:
        problems.append(
            f'set "confirm": "{settings.dataset}" (the dataset id) to confirm a forced recreation'
        )
    if not settings.allow_destructive and not request.dry_run:
        problems.append("this deployment does not allow destructive requests (ALLOW_DESTRUCTIVE is not true)")
    if problems:
        raise RefusedError("refused to recreate anything: " + "; ".join(problems) + ". Nothing was changed.")


class Engine:
    """One run: plan, then (unless dry run) apply, for the selected tables."""

    def __init__(self, declared: DeclaredState, settings: Settings, bq: BigQueryAdapter) -> None:
        self.declared = declared
        self.settings = settings
        self.bq = bq
        self.backups = Backups(bq, settings)

    def ensure(
        self,
        request: BootstrapRequest,
        *,
        dataset_updates: bool = True,
        progress: Progress | None = None,
    ) -> EnsureResult:
        """`dataset_updates=False` (a single table's upload) still creates a missing dataset but
        leaves its description and labels to the manifest's own upload. `progress` records each
        forced recreation as it is done (the request ledger), and skips the ones an earlier,
        interrupted delivery of the same request already did."""
        names = select_tables(self.declared, request.tables)
        authorize(request, self.settings)
        run = _Run(self, request, dataset_updates, progress or Progress())
        # The pool only hides latency: wide enough to keep BigQuery's per-user rate busy (see
        # the README's Performance section); the rate limiter, not its size, keeps us under it.
        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="ensure") as pool:
            futures = [pool.submit(run.table, name) for name in names]
            try:
                result = run.dataset()
            except gexc.GoogleAPICallError as exc:
                run.dataset_failed = (
                    f"BigQuery refused to ensure dataset {self.settings.dataset}: {exc.message}"
                )
                raise PermanentError(run.dataset_failed) from exc
            except BaseException as exc:
                run.dataset_failed = f"dataset step failed: {exc}"
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
        return result


class _Run:
    def __init__(
        self, engine: Engine, request: BootstrapRequest, dataset_updates: bool, progress: Progress
    ) -> None:
        self.engine = engine
        self.dataset_updates = dataset_updates
        self.progress = progress
        self.backups: list[Backup] = []
        self.lock = threading.Lock()
        self.bq = engine.bq
        self.request = request
        self.dataset_ready = threading.Event()
        self.fresh = False  # the dataset was (re)created by this run: every table is missing
        self.dataset_failed: str | None = None

    def dataset(self) -> EnsureResult:
        settings = self.engine.settings
        declared = self.engine.declared.dataset(settings.dataset, settings.location)
        actual, obj = self.bq.get_dataset()
        recreate = self.request.force_recreate_dataset and DATASET_STEP not in self.progress.done
        plan = self._plan_dataset(declared, actual, recreate=recreate)
        result = EnsureResult(
            settings.dataset,
            PAST_TENSE[plan.action],
            self.request.dry_run,
            plan.changes,
            backups=self.backups,
        )
        if plan.action is Action.BLOCKED:
            result.dataset_error = "; ".join(plan.blocked)
        if plan.action in (Action.CREATE, Action.RECREATE):
            self.fresh = True
        if not self.request.dry_run and not self._apply_dataset(plan, declared, obj):
            # Another writer got there first (409 on the create, 412 on the patch): compare with
            # what it left (and read the tables).
            self.fresh = False
            for _ in range(MAX_ATTEMPTS):
                actual, obj = self.bq.get_dataset()
                plan = self._plan_dataset(declared, actual, recreate=False)
                result.dataset_action, result.dataset_changes = PAST_TENSE[plan.action], plan.changes
                if self._apply_dataset(plan, declared, obj):
                    break
            else:
                raise TransientError(f"dataset {settings.dataset} kept changing under concurrent writers")
        return result

    def _plan_dataset(
        self, declared: DatasetSpec, actual: DatasetSpec | None, *, recreate: bool
    ) -> DatasetPlan:
        plan = plan_dataset(declared, actual, recreate=recreate)
        if plan.action is Action.UPDATE and not self.dataset_updates:
            return DatasetPlan(plan.dataset, Action.UNCHANGED)
        return plan

    def _apply_dataset(self, plan: DatasetPlan, declared: DatasetSpec, obj: bigquery.Dataset | None) -> bool:
        """Apply the dataset's plan; False when it lost a race (409 on the create, 412 on the patch)."""
        if plan.action is Action.RECREATE:
            for item in self.bq.call("list_tables", self.bq.dataset_ref):
                self._backup(self.bq.call("get_table", item.reference))
            self.bq.delete_dataset()
            self.bq.create_dataset(declared)
            self.progress.record(DATASET_STEP)
        elif plan.action is Action.CREATE:
            return self.bq.create_dataset(declared)
        elif plan.action is Action.UPDATE:
            try:
                self.bq.patch_dataset(obj, plan.patch)
            except gexc.PreconditionFailed:
                return False
        return True

    def table(self, name: str) -> TableResult:
        spec = self.engine.declared.tables[name]
        actual = obj = None
        if not (self.dataset_ready.is_set() and self.fresh):
            actual, obj = self.bq.get_table(name)  # read while the dataset step runs
        self.dataset_ready.wait()
        if self.dataset_failed:
            return TableResult(name, "failed", (), f"not attempted: {self.dataset_failed}")
        if self.fresh:
            actual = obj = None
        recreate = self.request.force_recreate_tables and name not in self.progress.done
        try:
            for _ in range(MAX_ATTEMPTS):
                plan = plan_table(spec, actual, recreate=recreate)
                if self.request.dry_run or plan.action in (Action.UNCHANGED, Action.BLOCKED):
                    return _result(plan)
                done = self._apply_table(plan, spec, obj)
                if done:
                    return _result(plan)
                # Lost a race with another writer: compare again with what it left.
                actual, obj = self.bq.get_table(name)
                recreate = False
        except gexc.GoogleAPICallError as exc:
            return TableResult(name, "failed", (), f"BigQuery refused the change: {exc.message}")
        except PermanentError as exc:
            return TableResult(name, "failed", (), str(exc))
        return TableResult(name, "failed", (), "the table kept changing under concurrent writers; run again")

    def _apply_table(self, plan: TablePlan, spec: TableSpec, obj: bigquery.Table | None) -> bool:
        """Apply one plan; False when a concurrent writer got there first."""
        if plan.action is Action.CREATE:
            return self.bq.create_table(spec)
        if plan.action is Action.RECREATE:
            self._backup(obj)  # raises, leaving the table in place, if the backup fails
            self.bq.delete_table(spec.name)
            self.bq.create_table(spec)
            self.progress.record(spec.name)
            return True
        try:
            self.bq.patch_table(obj, plan.patch)
        except gexc.PreconditionFailed:
            return False
        return True

    def _backup(self, table: bigquery.Table | None) -> None:
        if table is None:
            return
        backup = self.engine.backups.backup(table, self.request.request_id)
        if backup is not None:
            with self.lock:
                self.backups.append(backup)


class Progress:
    """Which forced recreations of this request are done. The request ledger subclasses it to
    persist each step, so a redelivery after a crash never drops the same thing twice."""

    def __init__(self, done: frozenset[str] = frozenset()) -> None:
        self.done = done

    def record(self, step: str) -> None:
        """Called right after `step` (a table name, or DATASET_STEP) was recreated."""


def _result(plan: TablePlan) -> TableResult:
    if plan.action is Action.BLOCKED:
        reasons = "; ".join(plan.blocked)
        error = (
            f"needs recreation, left untouched: {reasons}. Revert the schema change, or send a request "
            "with force_recreate_tables and confirm (the deployment must set ALLOW_DESTRUCTIVE=true)"
        )
        return TableResult(plan.table, "blocked", plan.blocked + plan.changes, error)
    return TableResult(plan.table, PAST_TENSE[plan.action], plan.changes)
