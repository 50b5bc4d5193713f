"""local-bigquery's own command line, with seven answers corrected to BigQuery's.

The local stack runs ``.venv-emulator/bin/python -P deploy/local/bigquery_emulator.py serve ...``
(Python 3.13, local-bigquery's environment: this file imports nothing of the project). It takes
the same arguments as ``local-bigquery`` and serves the same emulator, except where local-bigquery
0.3.2 answers writers that race each other differently from BigQuery. The first two are how a
writer learns that it lost a race, which the engine resolves by comparing again:

- **A lost create.** Of several concurrent creates of one dataset or table, BigQuery answers one
  with 200 and the others with 409 "Already Exists". local-bigquery answers some of the losers
  400 "Failed to commit DuckLake transaction" (DuckDB's commit of the second CREATE finds the
  first one's). That error, recognised by DuckDB's own message naming the create and the other
  transaction, is answered 409, as BigQuery answers it.
- **A patch whose etag went stale meanwhile.** BigQuery applies a patch carrying an etag
  (If-Match) only if the resource still has that etag, atomically: of concurrent patches read at
  the same etag, one is applied and the others are answered 412. local-bigquery checks the etag,
  then writes, with nothing held in between: concurrent patches all pass the check, then
  overwrite each other (each answered 200) or fail with 400 "Failed to commit DuckLake
  transaction". Here the patches (and updates) of one table, or of one dataset, take a lock
  around the check and the write, so each one checks the etag the previous one left.

- **A create read half done.** BigQuery creates a dataset or a table in one step. local-bigquery
  creates the schema or the DuckDB table, then records the resource's labels, description and
  column metadata: a reader in between sees a dataset without its labels, or a table with its
  labels and no columns, and a writer comparing with the declared state "corrects" it. Here a
  resource's create, its reads and its updates hold one lock (per dataset, per table).

- **A connection after an error answer.** local-bigquery answers a DuckDB error (such as
  "already exists", 409) from Starlette's last-resort handler, which then re-raises, and uvicorn
  closes the keep-alive connection right after the answer: the client's next request on it
  fails with a reset connection. Here DuckDB errors are answered by the same function, as an
  ordinary exception handler, and the connection stays open, as BigQuery's does.

- **A table that a job creates.** BigQuery fixes a table's creation time, last-modified time,
  etag and expiration (from the dataset's default) when a copy, query or load job creates it.
  local-bigquery records nothing for such a table until it is patched, and computes those as of
  each read: the table seems modified at every read, and never expires. Here its metadata is
  recorded when the job creates it, as for a table created by tables.insert.

- **A table a copy job writes.** BigQuery gives the table a copy job creates or writes over the
  source's schema: modes, descriptions, type parameters, policy tags. local-bigquery writes it
  from the rows alone: every column NULLABLE, without its metadata, so a backup, and a table
  restored from it, lose their REQUIRED columns. Here the source's schema follows the rows (a
  copy of one table, not a snapshot or a clone, not appended).

- **A column altered by DDL.** BigQuery keeps a column's metadata (description, maxLength,
  precision and scale, default value, policy tags) when `ALTER TABLE ... RENAME COLUMN` renames
  it, sets the parameters `ALTER COLUMN ... SET DATA TYPE` gives, and removes the default that
  `ALTER COLUMN ... DROP DEFAULT` drops. local-bigquery keeps that metadata by column name apart
  from DuckDB's columns and leaves it as it was: a renamed column loses it, a widened STRING(10)
  still reads as STRING(10) and a dropped default stays. Here the metadata follows each of these
  statements (and a dropped column's is forgotten, so a column added later under its name does
  not inherit it).

One more change is for speed only, with the same answers: local-bigquery looks a table up by
listing every table of every project through DuckDB (`duckdb_tables()`), which takes hundreds
of milliseconds once a few hundred tables exist (the benchmark makes thousands). Here a
project's tables and views are read from DuckLake's own catalog tables, and a table's row
count is counted.

Nothing else is changed. ``tests/integration/test_stack.py`` checks these answers against the
emulator.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

import duckdb
from local_bigquery import errors
from local_bigquery.catalog import datasets, metadata, names, tables
from local_bigquery.catalog import ddl as catalog_ddl
from local_bigquery.cli import main
from local_bigquery.engine import database
from local_bigquery.jobs import copy as copy_job
from local_bigquery.jobs import runner
from local_bigquery.models import Table
from sqlglot import exp

# DuckDB 1.5.5 / DuckLake: 'attempting to create schema with name "d" - but another transaction
# has created a schema with this name already', 'attempting to create table "t" in schema "d" -
# but this table has been created by another transaction already'.
_LOST_CREATE = re.compile(
    r'Transaction conflict - attempting to create (?P<kind>schema|table) (?:with name )?"(?P<name>[^"]+)"'
    r'(?: in schema "(?P<schema>[^"]+)")?[^\n]*(?:another transaction|by another)'
)
_from_duckdb = errors.from_duckdb


def _from_duckdb_as_bigquery(
    error: Exception, context: object = None, tree: object = None
) -> errors.BigQueryError:
    lost = _LOST_CREATE.search(str(error))
    if lost is None:
        return _from_duckdb(error, context, tree)
    if lost["kind"] == "schema":
        return errors.already_exists("Dataset", lost["name"])
    return errors.already_exists("Table", f"{lost['schema']}.{lost['name']}")


_locks: dict[tuple[str, ...], threading.RLock] = {}
_locks_lock = threading.Lock()


def _one_at_a_time(call: Callable[..., Any], key: Callable[..., tuple[str, ...]]) -> Callable[..., Any]:
    """`call`, holding the lock of the resource `key` names (from the call's arguments)."""

    @functools.wraps(call)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _locks_lock:
            lock = _locks.setdefault(tuple(k.casefold() for k in key(*args)), threading.RLock())
        with lock:
            return call(*args, **kwargs)

    return locked


def _dataset(project: str, dataset: str, *_: Any) -> tuple[str, ...]:
    return ("dataset", project, dataset)


def _table(project: str, dataset: str, table: str, *_: Any) -> tuple[str, ...]:
    return ("table", project, dataset, table)


def _new_dataset(project: str, body: Any) -> tuple[str, ...]:
    return _dataset(project, body.datasetReference.datasetId if body.datasetReference else "")


def _new_table(project: str, dataset: str, body: Any, *_: Any) -> tuple[str, ...]:
    return _table(project, dataset, body.tableReference.tableId if body.tableReference else "")


errors.from_duckdb = _from_duckdb_as_bigquery  # what errors.from_exception calls for DuckDB errors
# Each is called through its module (datasets.get(), tables.load() inside tables.get(), ...). A
# resource's create, read and update hold its lock: reentrant, taken table first, then dataset.
datasets.create = _one_at_a_time(datasets.create, _new_dataset)
datasets.get = _one_at_a_time(datasets.get, _dataset)
datasets.update = _one_at_a_time(datasets.update, _dataset)  # as the API's patch and update
tables.create = _one_at_a_time(tables.create, _new_table)
tables.load = _one_at_a_time(tables.load, _table)
tables.update = _one_at_a_time(tables.update, _table)  # as the API's patch and update

_annotate = tables.annotate


def _annotate_recording_new_tables(reference: tuple[str, str, str], changes: Table) -> None:
    """What a job's write calls after writing `reference`: a table it created gets its metadata."""
    if not changes.model_fields_set and metadata.load(Table, *reference) is None:
        tables.record(*reference, tables.defaults(*reference))
        return
    _annotate(reference, changes)


tables.annotate = _annotate_recording_new_tables  # called as annotate() inside tables.write()
_objects = database.objects
_CATALOG = """
SELECT t.table_name, 'TABLE' FROM {meta}.ducklake_table t
JOIN {meta}.ducklake_schema s ON s.schema_id = t.schema_id AND s.end_snapshot IS NULL
WHERE t.end_snapshot IS NULL AND s.schema_name = $1 AND t.table_name = coalesce($2, t.table_name)
UNION ALL
SELECT v.view_name, 'VIEW' FROM {meta}.ducklake_view v
JOIN {meta}.ducklake_schema s ON s.schema_id = v.schema_id AND s.end_snapshot IS NULL
WHERE v.end_snapshot IS NULL AND s.schema_name = $1 AND v.view_name = coalesce($2, v.view_name)
ORDER BY 1
"""


def _objects_from_the_catalog(
    project_id: str, dataset_id: str, table_id: str | None = None
) -> list[tuple[str, str, int]]:
    """database.objects: (name, TABLE or VIEW, rows) of a dataset's tables and views, or of one.
    Rows are counted for a table asked for by name (the only caller that reads them), 0 in a
    listing. Databases that are not DuckLake projects (the emulator's own) go the original way."""
    kind = database.fetch("SELECT type FROM duckdb_databases() WHERE database_name = $1", [project_id])
    if kind != [("ducklake",)]:
        return _objects(project_id, dataset_id, table_id)
    # DuckLake's catalog tables, in the database it attaches for them (not listed, but queryable).
    meta = database.quote(f"__ducklake_metadata_{project_id}")
    rows = database.fetch(_CATALOG.format(meta=meta), [dataset_id, table_id])
    found = []
    for name, kind in rows:
        count = 0
        if kind == "TABLE" and table_id is not None:
            try:
                [(count,)] = database.fetch(
                    f"SELECT count(*) FROM {database.quote(project_id, dataset_id, name)}"
                )
            except duckdb.CatalogException:  # dropped in between
                continue
        found.append((name, kind, count))
    return found


database.objects = _objects_from_the_catalog  # called as database.objects() by the catalog
_apply_ddl = catalog_ddl.apply
_TYPE_PARAMETERS = ("maxLength", "precision", "scale")


def _apply_ddl_keeping_column_metadata(
    tree: exp.Expression, project_id: str, dataset_id: str, evaluate: Any
) -> None:
    """catalog.ddl.apply, then the stored column metadata follows the ALTER TABLE's column changes."""
    _apply_ddl(tree, project_id, dataset_id, evaluate)
    target = tree.find(exp.Table)
    if not isinstance(tree, exp.Alter) or (tree.args.get("kind") or "").upper() != "TABLE" or target is None:
        return
    reference = names.reference(target, project_id, dataset_id)
    stored = metadata.load(Table, *reference)
    if stored is None:
        return
    fields = {f.name.casefold(): f.dump() for f in tables.fields(stored)}
    for action in tree.args.get("actions") or []:
        if isinstance(action, exp.RenameColumn):
            old = fields.pop(action.this.name.casefold(), None)
            if old is not None:
                new = action.args["to"].name
                fields[new.casefold()] = old | {"name": new}
        elif isinstance(action, exp.AlterColumn) and action.name.casefold() in fields:
            field = fields[action.name.casefold()]
            if action.args.get("dtype") is not None:
                for key in _TYPE_PARAMETERS:
                    field.pop(key, None)
                field |= catalog_ddl._parameters(action.args["dtype"])
            elif action.args.get("drop"):
                field.pop("defaultValueExpression", None)
        elif isinstance(action, exp.Drop) and (action.args.get("kind") or "").upper() == "COLUMN":
            for column in action.args.get("tables") or []:
                fields.pop(column.name.casefold(), None)
    changed = stored.replace(schema={"fields": list(fields.values())} if fields else None)
    if changed != stored:
        tables.record(*reference, changed)


catalog_ddl.apply = _apply_ddl_keeping_column_metadata  # called as catalog_ddl.apply() by query jobs
_copy = copy_job.run


def _copy_keeping_the_schema(cur: duckdb.DuckDBPyConnection, config: Any, upload: Any) -> Any:
    """jobs.copy.run into a table made first with the source's schema (its columns NOT NULL
    where REQUIRED, its metadata recorded), the rows then appended to it."""
    sources = config.sourceTables or [config.sourceTable]
    source = tables.reference(sources[0])
    destination = tables.reference(config.destinationTable)
    disposition = config.writeDisposition or "WRITE_EMPTY"
    if (
        len(sources) != 1
        or config.operationType in copy_job.CLONES
        or disposition == "WRITE_APPEND"
        or copy_job.decorated(*source)
    ):
        return _copy(cur, config, upload)
    fields = [f.dump() for f in tables.fields(tables.load(*source))]
    kept = None
    if tables.exists(*destination):
        if (
            disposition == "WRITE_EMPTY"
            and cur.sql(f"SELECT 1 FROM {tables.name(*destination)} LIMIT 1").fetchone()
        ):
            return _copy(cur, config, upload)  # refused, as BigQuery refuses it
        kept = metadata.load(Table, *destination)
        tables.delete(*destination)
    body = Table.model_validate(
        {"tableReference": config.destinationTable.model_dump(), "schema": {"fields": fields}}
    )
    tables.create(*destination[:2], body, None)
    statistics = _copy(cur, config.model_copy(update={"writeDisposition": "WRITE_APPEND"}), upload)
    if kept is not None:  # written over: the table keeps its own metadata, with the source's schema
        tables.record(*destination, kept.replace(schema={"fields": fields}))
    return statistics


runner.HANDLERS["copy"] = _copy_keeping_the_schema  # the job runner's table of handlers
_application = importlib.import_module("local_bigquery.app")  # the module (the package exports `app`)
_application.app.add_exception_handler(duckdb.Error, _application.handle_error)

if __name__ == "__main__":
    sys.argv[0] = "local-bigquery"
    sys.exit(main())
