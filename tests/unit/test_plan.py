"""The plan classifier, as a table of cases: what BigQuery can change in place, what it cannot.

Each case starts from one table, declared the way a user writes it (a schema file and a manifest
entry, read by `schema_files`) and found the way BigQuery returns it (an API resource, read by the
adapter's `table_spec`), edits one side or both, and states the action and the changes or
reasons (in words) the plan must give.

Over 400 lines: a table of cases, one per change BigQuery allows or refuses.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from google.cloud import bigquery

from function.bigquery_adapter import table_spec
from function.model import Column, DatasetSpec, TableSpec, TimePartitioning
from function.plan import Action, Property, plan_dataset, plan_table
from function.schema_files import load_declared_state

DAY_MS = 86_400_000

# The declared table, as a schema file says it (legacy type names; edits try the aliases).
DECLARED_FIELDS: list[dict[str, Any]] = [
    {"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Tenant."},
    {"name": "usage_date", "type": "DATE", "mode": "REQUIRED", "description": "Day."},
    {"name": "created_at", "type": "TIMESTAMP", "mode": "NULLABLE", "description": "Created."},
    {"name": "calls", "type": "INTEGER", "mode": "NULLABLE", "description": "Calls."},
    {"name": "ratio", "type": "FLOAT", "mode": "NULLABLE", "description": "Ratio."},
    {"name": "active", "type": "BOOLEAN", "mode": "NULLABLE", "description": "Active."},
    {
        "name": "meta",
        "type": "RECORD",
        "mode": "NULLABLE",
        "description": "Meta.",
        "fields": [
            {"name": "source", "type": "STRING", "mode": "NULLABLE", "description": "Source."},
            {"name": "seen_at", "type": "TIMESTAMP", "mode": "REQUIRED", "description": "Seen."},
        ],
    },
    {"name": "tags", "type": "STRING", "mode": "REPEATED", "description": "Tags."},
]
DECLARED_ENTRY: dict[str, Any] = {
    "description": "Usage.",
    "labels": {"domain": "billing"},
    "time_partitioning": {"type": "DAY", "field": "usage_date", "expiration_days": 30},
    "clustering": ["tenant_id"],
    "require_partition_filter": False,
}
# The same table as BigQuery's tables.get answers (schema fields are filled in from DECLARED_FIELDS).
ACTUAL_RESOURCE: dict[str, Any] = {
    "tableReference": {"projectId": "p", "datasetId": "d", "tableId": "t"},
    "description": "Usage.",
    "labels": {"domain": "billing"},
    "timePartitioning": {"type": "DAY", "field": "usage_date", "expirationMs": str(30 * DAY_MS)},
    "clustering": {"fields": ["tenant_id"]},
    "requirePartitionFilter": False,
}


@dataclass
class Doc:
    """One side of a case: the schema fields, and the manifest entry or the API resource."""

    fields: list[dict[str, Any]]
    meta: dict[str, Any]


Edit = Callable[[Doc], None]


def _find(fields: list[dict[str, Any]], path: str) -> tuple[list[dict[str, Any]], int]:
    head, _, rest = path.partition(".")
    for i, f in enumerate(fields):
        if f["name"] == head:
            return _find(f["fields"], rest) if rest else (fields, i)
    raise KeyError(path)


def add(field: dict[str, Any], into: str | None = None) -> Edit:
    """Append a column (to the top level, or to the RECORD at `into`)."""

    def edit(doc: Doc) -> None:
        target = doc.fields
        if into:
            siblings, i = _find(doc.fields, into)
            target = siblings[i]["fields"]
        target.append(copy.deepcopy(field))

    return edit


def change(path: str, **attrs: Any) -> Edit:
    """Set attributes of the column at `path`; None removes the key."""

    def edit(doc: Doc) -> None:
        siblings, i = _find(doc.fields, path)
        for key, value in attrs.items():
            if value is None:
                siblings[i].pop(key, None)
            else:
                siblings[i][key] = value

    return edit


def drop(path: str) -> Edit:
    def edit(doc: Doc) -> None:
        siblings, i = _find(doc.fields, path)
        del siblings[i]

    return edit


def reverse_columns(doc: Doc) -> None:
    doc.fields.reverse()


def meta(**attrs: Any) -> Edit:
    """Set keys of the manifest entry (declared side) or API resource (actual side); None removes."""

    def edit(doc: Doc) -> None:
        for key, value in attrs.items():
            if value is None:
                doc.meta.pop(key, None)
            else:
                doc.meta[key] = value

    return edit


def declared_spec(*edits: Edit) -> TableSpec:
    doc = Doc(copy.deepcopy(DECLARED_FIELDS), copy.deepcopy(DECLARED_ENTRY))
    for e in edits:
        e(doc)
    files = {
        "t.json": json.dumps(doc.fields).encode(),
        "bootstrap.yaml": yaml.safe_dump({"tables": {"t": doc.meta}}).encode(),
    }
    return load_declared_state(files).tables["t"]


def actual_spec(*edits: Edit) -> TableSpec:
    doc = Doc(copy.deepcopy(DECLARED_FIELDS), copy.deepcopy(ACTUAL_RESOURCE))
    for e in edits:
        e(doc)
    resource = dict(doc.meta, schema={"fields": doc.fields})
    return table_spec(bigquery.Table.from_api_repr(resource))


MISSING = object()


@dataclass(frozen=True)
class Case:
    declared: tuple[Edit, ...] = ()
    actual: tuple[Edit, ...] | object = ()  # MISSING: the table does not exist
    action: Action = Action.UNCHANGED
    changes: tuple[str, ...] = ()  # one phrase per expected change line
    blocked: tuple[str, ...] = ()  # one phrase per expected blocked reason
    recreate: bool = False
    drop_columns: bool = False
    ddl: tuple[str, ...] = ()  # one phrase per expected DDL statement, in order


def case(id_: str, **kw: Any) -> Any:
    for key in ("declared", "actual", "changes", "blocked", "ddl"):
        if key in kw and isinstance(kw[key], list):
            kw[key] = tuple(kw[key])
    return pytest.param(Case(**kw), id=id_)


NEW_NOTE = {"name": "note", "type": "STRING", "mode": "NULLABLE", "description": "Note."}
CASES = [
    # --- create / unchanged ------------------------------------------------------------------
    case(
        "missing table: create",
        actual=MISSING,
        action=Action.CREATE,
        changes=["create table with 8 columns, partitioned by DAY on usage_date, clustered by tenant_id"],
    ),
    case("identical: unchanged"),
    case("INT64 declared, INTEGER returned: unchanged", declared=[change("calls", type="INT64")]),
    case("BOOL declared, BOOLEAN returned: unchanged", declared=[change("active", type="BOOL")]),
    case("STRUCT declared, RECORD returned: unchanged", declared=[change("meta", type="STRUCT")]),
    case("FLOAT64 declared, FLOAT returned: unchanged", declared=[change("ratio", type="FLOAT64")]),
    case(
        "lowercase type and mode declared: unchanged",
        declared=[change("calls", type="int64", mode="nullable")],
    ),
    case(
        "aliases returned by the emulator: unchanged",
        actual=[change("calls", type="INT64"), change("meta", type="STRUCT")],
    ),
    case("mode omitted in the schema file vs NULLABLE: unchanged", declared=[change("calls", mode=None)]),
    case("mode omitted in the API answer vs NULLABLE: unchanged", actual=[change("meta.source", mode=None)]),
    case(
        "description missing in the file vs empty: unchanged",
        declared=[change("calls", description=None)],
        actual=[change("calls", description="")],
    ),
    case(
        "description empty in the file vs missing in the answer: unchanged",
        declared=[change("ratio", description="")],
        actual=[change("ratio", description=None)],
    ),
    case("existing columns in another order: unchanged", actual=[reverse_columns]),
    case(
        "partition field and clustering spelt in another case by BigQuery: unchanged",
        actual=[
            meta(timePartitioning={"type": "DAY", "field": "Usage_Date", "expirationMs": str(30 * DAY_MS)}),
            meta(clustering={"fields": ["TENANT_ID"]}),
        ],
    ),
    case(
        "partition field spelt in another case in the manifest: unchanged",
        declared=[meta(time_partitioning={"type": "day", "field": "USAGE_DATE", "expiration_days": 30})],
    ),
    case(
        "extra label on the table, not declared: left alone",
        actual=[meta(labels={"domain": "billing", "cost-center": "x"})],
    ),
    # --- in place (update) -------------------------------------------------------------------
    case(
        "new NULLABLE column: update",
        declared=[add(NEW_NOTE)],
        action=Action.UPDATE,
        changes=["add column note NULLABLE STRING"],
    ),
    case(
        "new column with mode omitted: update",
        declared=[add({"name": "note", "type": "STRING"})],
        action=Action.UPDATE,
        changes=["add column note NULLABLE STRING"],
    ),
    case(
        "new REPEATED column: update",
        declared=[add({"name": "aliases", "type": "STRING", "mode": "REPEATED"})],
        action=Action.UPDATE,
        changes=["add column aliases REPEATED STRING"],
    ),
    case(
        "new NULLABLE column inside an existing RECORD: update",
        declared=[add({"name": "region", "type": "STRING"}, into="meta")],
        action=Action.UPDATE,
        changes=["add column meta.region NULLABLE STRING"],
    ),
    case(
        "new NULLABLE RECORD holding a REQUIRED sub-field: update",
        declared=[
            add(
                {
                    "name": "audit",
                    "type": "RECORD",
                    "fields": [{"name": "by", "type": "STRING", "mode": "REQUIRED"}],
                }
            )
        ],
        action=Action.UPDATE,
        changes=["add column audit NULLABLE RECORD"],
    ),
    case(
        "REQUIRED relaxed to NULLABLE: update",
        declared=[change("tenant_id", mode="NULLABLE")],
        action=Action.UPDATE,
        changes=["relax column tenant_id REQUIRED -> NULLABLE"],
    ),
    case(
        "nested REQUIRED relaxed to NULLABLE: update",
        declared=[change("meta.seen_at", mode=None)],
        action=Action.UPDATE,
        changes=["relax column meta.seen_at REQUIRED -> NULLABLE"],
    ),
    case(
        "table description changed: update",
        declared=[meta(description="Daily usage.")],
        action=Action.UPDATE,
        changes=["description: 'Usage.' -> 'Daily usage.'"],
    ),
    case(
        "table description removed: update",
        declared=[meta(description=None)],
        action=Action.UPDATE,
        changes=["description: 'Usage.' -> (empty)"],
    ),
    case(
        "column description changed: update",
        declared=[change("calls", description="API calls.")],
        action=Action.UPDATE,
        changes=["column calls description: 'Calls.' -> 'API calls.'"],
    ),
    case(
        "nested column description added: update",
        actual=[change("meta.source", description=None)],
        action=Action.UPDATE,
        changes=["column meta.source description: (empty) -> 'Source.'"],
    ),
    case(
        "label added: update",
        declared=[meta(labels={"domain": "billing", "team": "core"})],
        action=Action.UPDATE,
        changes=["label team: (unset) -> 'core'"],
    ),
    case(
        "label changed: update",
        declared=[meta(labels={"domain": "finance"})],
        action=Action.UPDATE,
        changes=["label domain: 'billing' -> 'finance'"],
    ),
    case(
        "clustering added: update",
        actual=[meta(clustering=None)],
        action=Action.UPDATE,
        changes=["clustering: none -> tenant_id"],
    ),
    case(
        "clustering changed: update",
        declared=[meta(clustering=["tenant_id", "usage_date"])],
        action=Action.UPDATE,
        changes=["clustering: tenant_id -> tenant_id, usage_date"],
    ),
    case(
        "clustering removed: update",
        declared=[meta(clustering=None)],
        action=Action.UPDATE,
        changes=["clustering: tenant_id -> none"],
    ),
    case(
        "partition expiration lengthened: update",
        declared=[meta(time_partitioning={"type": "DAY", "field": "usage_date", "expiration_days": 90})],
        action=Action.UPDATE,
        changes=["partition expiration: 30 days -> 90 days"],
    ),
    case(
        "partition expiration shortened (deletes partitions at once): blocked",
        declared=[meta(time_partitioning={"type": "DAY", "field": "usage_date", "expiration_days": 7})],
        action=Action.BLOCKED,
        blocked=[
            "partition expiration: 30 days -> 7 days: BigQuery would delete every partition older than 7 days"
        ],
    ),
    case(
        "partition expiration set where there was none: blocked",
        declared=[meta(time_partitioning={"type": "DAY", "field": "usage_date", "expiration_days": 400})],
        actual=[meta(timePartitioning={"type": "DAY", "field": "usage_date"})],
        action=Action.BLOCKED,
        blocked=[
            "partition expiration: none -> 400 days: BigQuery would delete every partition older than 400 days at once, so it needs a forced request"
        ],
    ),
    case(
        "partition expiration removed: update",
        declared=[meta(time_partitioning={"type": "DAY", "field": "usage_date"})],
        action=Action.UPDATE,
        changes=["partition expiration: 30 days -> none"],
    ),
    case(
        "table expiration set by another tool: update (removed)",
        actual=[meta(expirationTime=str(1_900_000_000_000))],
        action=Action.UPDATE,
        changes=["table expiration: 2030-03-17 17:46 UTC -> none (the table would be deleted)"],
    ),
    case(
        "require_partition_filter turned on: update",
        declared=[meta(require_partition_filter=True)],
        action=Action.UPDATE,
        changes=["require partition filter: no -> yes"],
    ),
    case(
        "require_partition_filter turned off: update",
        actual=[meta(requirePartitionFilter=True)],
        action=Action.UPDATE,
        changes=["require partition filter: yes -> no"],
    ),
    case(
        "several in-place changes: update, each listed",
        declared=[add(NEW_NOTE), meta(description="Daily usage."), meta(labels={"domain": "finance"})],
        action=Action.UPDATE,
        changes=["add column note", "description: 'Usage.' -> 'Daily usage.'", "label domain"],
    ),
    # --- needs recreation (blocked) ----------------------------------------------------------
    case(
        "new REQUIRED column: blocked",
        declared=[add({"name": "note", "type": "STRING", "mode": "REQUIRED"})],
        action=Action.BLOCKED,
        blocked=["new column note is REQUIRED: existing rows have no value for it (declare it NULLABLE"],
    ),
    case(
        "new REQUIRED RECORD: blocked",
        declared=[
            add(
                {
                    "name": "audit",
                    "type": "RECORD",
                    "mode": "REQUIRED",
                    "fields": [{"name": "by", "type": "STRING"}],
                }
            )
        ],
        action=Action.BLOCKED,
        blocked=["new column audit is REQUIRED"],
    ),
    case(
        "new REQUIRED sub-field inside an existing RECORD: blocked",
        declared=[add({"name": "region", "type": "STRING", "mode": "REQUIRED"}, into="meta")],
        action=Action.BLOCKED,
        blocked=["new column meta.region is REQUIRED"],
    ),
    case(
        "NULLABLE to REQUIRED: blocked",
        declared=[change("calls", mode="REQUIRED")],
        action=Action.BLOCKED,
        blocked=[
            "column calls changes mode NULLABLE -> REQUIRED: BigQuery only relaxes REQUIRED to NULLABLE"
        ],
    ),
    case(
        "NULLABLE to REPEATED: blocked",
        declared=[change("calls", mode="REPEATED")],
        action=Action.BLOCKED,
        blocked=["column calls changes mode NULLABLE -> REPEATED"],
    ),
    case(
        "REPEATED to NULLABLE: blocked",
        declared=[change("tags", mode="NULLABLE")],
        action=Action.BLOCKED,
        blocked=["column tags changes mode REPEATED -> NULLABLE"],
    ),
    case(
        "type changed to one it does not coerce to: blocked",
        declared=[change("calls", type="STRING")],
        action=Action.BLOCKED,
        blocked=["column calls changes type INT64 -> STRING: not a widening BigQuery makes in place"],
    ),
    case(
        "type narrowed FLOAT64 to INT64: blocked",
        declared=[change("ratio", type="INT64")],
        action=Action.BLOCKED,
        blocked=["column ratio changes type FLOAT64 -> INT64: not a widening"],
    ),
    case(
        "type widened INT64 to NUMERIC: update through DDL",
        declared=[change("calls", type="NUMERIC")],
        action=Action.UPDATE,
        changes=["column calls type INT64 -> NUMERIC (widened in place, every value kept)"],
        ddl=["ALTER COLUMN `calls` SET DATA TYPE NUMERIC"],
    ),
    case(
        "type widened INT64 to FLOAT64: update through DDL",
        declared=[change("calls", type="FLOAT")],
        action=Action.UPDATE,
        changes=["column calls type INT64 -> FLOAT64"],
        ddl=["ALTER COLUMN `calls` SET DATA TYPE FLOAT64"],
    ),
    case(
        "type widened NUMERIC to BIGNUMERIC: update through DDL",
        declared=[change("calls", type="BIGNUMERIC")],
        actual=[change("calls", type="NUMERIC")],
        action=Action.UPDATE,
        changes=["column calls type NUMERIC -> BIGNUMERIC"],
        ddl=["ALTER COLUMN `calls` SET DATA TYPE BIGNUMERIC"],
    ),
    case(
        "STRING(10) widened to STRING(64): update through DDL",
        declared=[change("tags", maxLength="64")],
        actual=[change("tags", maxLength="10")],
        action=Action.UPDATE,
        changes=["column tags type STRING(10) -> STRING(64)"],
        ddl=["ALTER COLUMN `tags` SET DATA TYPE STRING(64)"],
    ),
    case(
        "STRING(64) narrowed to STRING(10): blocked",
        declared=[change("tags", maxLength="10")],
        actual=[change("tags", maxLength="64")],
        action=Action.BLOCKED,
        blocked=["column tags changes type STRING(64) -> STRING(10): not a widening"],
    ),
    case(
        "NUMERIC(10, 2) widened to NUMERIC(12, 3): update through DDL",
        declared=[change("calls", type="NUMERIC", precision="12", scale="3")],
        actual=[change("calls", type="NUMERIC", precision="10", scale="2")],
        action=Action.UPDATE,
        changes=["column calls type NUMERIC(10, 2) -> NUMERIC(12, 3)"],
        ddl=["SET DATA TYPE NUMERIC(12, 3)"],
    ),
    case(
        "NUMERIC(10, 2) to NUMERIC(10, 4) loses integer digits: blocked",
        declared=[change("calls", type="NUMERIC", precision="10", scale="4")],
        actual=[change("calls", type="NUMERIC", precision="10", scale="2")],
        action=Action.BLOCKED,
        blocked=["column calls changes type NUMERIC(10, 2) -> NUMERIC(10, 4): not a widening"],
    ),
    case(
        "nested type widened: blocked (BigQuery widens top-level columns only)",
        actual=[change("meta.source", maxLength="5")],
        action=Action.BLOCKED,
        blocked=[
            "column meta.source changes type STRING(5) -> STRING: BigQuery widens top-level columns only"
        ],
    ),
    case(
        "nested type changed: blocked",
        declared=[change("meta.source", type="INT64")],
        action=Action.BLOCKED,
        blocked=["column meta.source changes type STRING -> INT64: not a widening"],
    ),
    case(
        "column removed without drop_columns: blocked",
        declared=[drop("ratio")],
        action=Action.BLOCKED,
        blocked=[
            "column ratio is not declared: dropping it loses its values, so it needs a request with drop_columns"
        ],
    ),
    case(
        "column removed with drop_columns: update through DDL, destructive",
        declared=[drop("ratio")],
        drop_columns=True,
        action=Action.UPDATE,
        changes=["drop column ratio NULLABLE FLOAT (its values are lost; the table is backed up first)"],
        ddl=["DROP COLUMN `ratio`"],
    ),
    case(
        "clustering column removed with drop_columns: blocked",
        declared=[drop("tenant_id"), meta(clustering=None)],
        drop_columns=True,
        action=Action.BLOCKED,
        changes=["clustering: tenant_id -> none"],
        blocked=[
            "column tenant_id is not declared: BigQuery does not drop a partitioning or clustering column"
        ],
    ),
    case(
        "nested column removed with drop_columns: blocked",
        declared=[drop("meta.source")],
        drop_columns=True,
        action=Action.BLOCKED,
        blocked=["column meta.source is not declared: BigQuery drops top-level columns only"],
    ),
    case(
        "declared rename: update through DDL, values kept",
        declared=[change("ratio", name="share"), meta(renamed={"share": "ratio"})],
        action=Action.UPDATE,
        changes=["rename column ratio -> share (its values kept)"],
        ddl=["RENAME COLUMN `ratio` TO `share`"],
    ),
    case(
        "declared rename already made: unchanged",
        declared=[change("ratio", name="share"), meta(renamed={"share": "ratio"})],
        actual=[change("ratio", name="share")],
        action=Action.UNCHANGED,
    ),
    case(
        "a drop and an add are not a rename: blocked",
        declared=[change("ratio", name="share")],
        action=Action.BLOCKED,
        changes=["add column share NULLABLE FLOAT"],
        blocked=["column ratio is not declared"],
    ),
    case(
        "declared rename of a clustering column: blocked",
        declared=[
            change("tenant_id", name="customer_id"),
            meta(renamed={"customer_id": "tenant_id"}, clustering=["customer_id"]),
        ],
        action=Action.BLOCKED,
        changes=["clustering: tenant_id -> customer_id"],
        blocked=["BigQuery does not rename a partitioning or clustering column"],
    ),
    case(
        "policy tag added: update in place",
        declared=[change("tenant_id", policyTags={"names": ["tags/pii"]})],
        action=Action.UPDATE,
        changes=["column tenant_id policy tags: none -> tags/pii"],
    ),
    case(
        "policy tag removed: update in place, shown as a security change",
        actual=[change("tenant_id", policyTags={"names": ["tags/pii"]})],
        action=Action.UPDATE,
        changes=[
            "column tenant_id policy tags: tags/pii -> none (a security change: the column is no longer restricted by tags/pii)"
        ],
    ),
    case(
        "data policy changed: update in place",
        declared=[change("tenant_id", dataPolicies=[{"name": "policies/mask"}])],
        action=Action.UPDATE,
        changes=["column tenant_id data policies: none -> policies/mask"],
    ),
    case(
        "default value set: update in place",
        declared=[change("active", defaultValueExpression="TRUE")],
        action=Action.UPDATE,
        changes=["column active default value: none -> TRUE"],
    ),
    case(
        "default value removed: update through DDL",
        actual=[change("active", defaultValueExpression="TRUE")],
        action=Action.UPDATE,
        changes=["column active default value: TRUE -> none"],
        ddl=["ALTER COLUMN `active` DROP DEFAULT"],
    ),
    case(
        "nested column removed: blocked",
        declared=[drop("meta.source")],
        action=Action.BLOCKED,
        blocked=["column meta.source is not declared"],
    ),
    case(
        "column renamed by case only: blocked",
        declared=[change("calls", name="Calls")],
        action=Action.BLOCKED,
        blocked=["column calls is declared as Calls: BigQuery does not change the case of a name in place"],
    ),
    case(
        "partitioning added: blocked",
        actual=[meta(timePartitioning=None)],
        action=Action.BLOCKED,
        blocked=["partitioning: none -> DAY on usage_date: needs the table recreated"],
    ),
    case(
        "partitioning removed: blocked",
        declared=[meta(time_partitioning=None)],
        action=Action.BLOCKED,
        blocked=["partitioning: DAY on usage_date -> none: needs the table recreated"],
    ),
    case(
        "partition field changed: blocked",
        declared=[meta(time_partitioning={"type": "DAY", "field": "created_at", "expiration_days": 30})],
        action=Action.BLOCKED,
        blocked=["partitioning: DAY on usage_date -> DAY on created_at"],
    ),
    case(
        "partition type changed: blocked",
        declared=[meta(time_partitioning={"type": "MONTH", "field": "usage_date", "expiration_days": 30})],
        action=Action.BLOCKED,
        blocked=["partitioning: DAY on usage_date -> MONTH on usage_date"],
    ),
    case(
        "ingestion-time partitioning to a column: blocked",
        actual=[meta(timePartitioning={"type": "DAY", "expirationMs": str(30 * DAY_MS)})],
        action=Action.BLOCKED,
        blocked=["partitioning: DAY on ingestion time -> DAY on usage_date"],
    ),
    case(
        "blocked and in-place changes together: blocked, both reported",
        declared=[change("calls", type="STRING"), add(NEW_NOTE), meta(description="Daily usage.")],
        action=Action.BLOCKED,
        changes=["add column note NULLABLE STRING", "description: 'Usage.' -> 'Daily usage.'"],
        blocked=["column calls changes type INT64 -> STRING"],
    ),
    case(
        "several blocked reasons: each reported",
        declared=[drop("ratio"), change("calls", mode="REQUIRED"), meta(time_partitioning=None)],
        action=Action.BLOCKED,
        blocked=[
            "column calls changes mode",
            "column ratio is not declared",
            "partitioning: DAY on usage_date -> none",
        ],
    ),
    # --- forced -----------------------------------------------------------------------------
    case(
        "recreate on an existing table: recreate",
        recreate=True,
        action=Action.RECREATE,
        changes=["drop and recreate: create table with 8 columns, partitioned by DAY on usage_date"],
    ),
    case(
        "recreate on a missing table: create",
        actual=MISSING,
        recreate=True,
        action=Action.CREATE,
        changes=["create table with 8 columns"],
    ),
]


def _match(phrases: tuple[str, ...], lines: tuple[str, ...], what: str) -> None:
    assert len(lines) == len(phrases), f"expected {len(phrases)} {what}, got {list(lines)}"
    for phrase in phrases:
        assert any(phrase in line for line in lines), f"{phrase!r} not in {what} {list(lines)}"


@pytest.mark.parametrize("c", CASES)
def test_plan_table(c: Case) -> None:
    declared = declared_spec(*c.declared)
    actual = None if c.actual is MISSING else actual_spec(*c.actual)  # type: ignore[misc]

    plan = plan_table(declared, actual, recreate=c.recreate, drop_columns=c.drop_columns)

    assert plan.table == "t"
    assert plan.action is c.action, (plan.changes, plan.blocked)
    _match(c.changes, plan.changes, "changes")
    _match(c.blocked, plan.blocked, "blocked reasons")
    _match(c.ddl, tuple(change.sql("p.d.t") for change in plan.ddl), "DDL statements")
    if c.action is Action.UPDATE:
        assert plan.patch or plan.ddl, "an update must carry a patch or DDL"
    else:
        assert plan.patch == {} and plan.ddl == (), "only an update changes the table"
    assert plan.destructive == any("DROP COLUMN" in d for d in c.ddl)


# --- the patch an update sends ---------------------------------------------------------------


def _names(columns: Any) -> list[str]:
    return [c.name for c in columns]


def test_patch_schema_keeps_existing_order_and_appends_new_columns() -> None:
    # Declared order differs from the table's, and new columns are declared in the middle.
    declared = declared_spec(
        add({"name": "zeta", "type": "STRING"}),
        reverse_columns,
        add({"name": "alpha", "type": "INT64", "mode": "REPEATED"}),
    )
    actual = actual_spec()

    plan = plan_table(declared, actual)

    assert plan.action is Action.UPDATE
    expected = [f["name"] for f in DECLARED_FIELDS] + ["zeta", "alpha"]
    assert _names(plan.patch[Property.COLUMNS]) == expected
    assert set(plan.patch) == {Property.COLUMNS}
    api = [c.to_api() for c in plan.patch[Property.COLUMNS]]
    assert api[-1] == {"name": "alpha", "type": "INTEGER", "mode": "REPEATED"}


def test_patch_schema_merges_new_sub_fields_into_the_existing_record() -> None:
    declared = declared_spec(add({"name": "region", "type": "STRING", "description": "Region."}, into="meta"))

    plan = plan_table(declared, actual_spec())

    meta_col = next(c for c in plan.patch[Property.COLUMNS] if c.name == "meta")
    assert _names(meta_col.fields) == ["source", "seen_at", "region"]
    assert meta_col.fields[-1] == Column("region", "STRING", "NULLABLE", "Region.")


def test_patch_schema_preserves_extra_attributes_of_existing_columns() -> None:
    tags = {"names": ["projects/p/locations/us/taxonomies/1/policyTags/2"]}
    actual = actual_spec(
        change("tenant_id", policyTags=tags, maxLength="64"), change("meta.source", maxLength="10")
    )
    declared = declared_spec(
        add(NEW_NOTE),
        change("tenant_id", mode="NULLABLE", policyTags=tags, maxLength="64"),
        change("meta.source", maxLength="10"),
    )

    plan = plan_table(declared, actual)

    assert plan.action is Action.UPDATE
    by_name = {c.name: c for c in plan.patch[Property.COLUMNS]}
    assert by_name["tenant_id"].mode == "NULLABLE"
    tenant_api = by_name["tenant_id"].to_api()
    assert tenant_api["policyTags"] == tags
    assert tenant_api["maxLength"] == "64"
    assert by_name["meta"].to_api()["fields"][0]["maxLength"] == "10"


def test_attributes_that_are_not_reconciled_alone_are_not_a_change() -> None:
    # Collation and rounding mode are applied at creation and kept, never changed afterwards.
    actual = actual_spec(
        change("tenant_id", collation="und:ci"), change("ratio", roundingMode="ROUND_HALF_EVEN")
    )
    assert plan_table(declared_spec(), actual).action is Action.UNCHANGED


def test_a_removed_policy_tag_is_cleared_in_the_patch() -> None:
    actual = actual_spec(change("tenant_id", policyTags={"names": ["tags/pii"]}))
    plan = plan_table(declared_spec(), actual)
    by_name = {c.name: c for c in plan.patch[Property.COLUMNS]}
    assert by_name["tenant_id"].to_api()["policyTags"] == {"names": []}


def test_patch_holds_only_the_labels_when_only_labels_change() -> None:
    actual = actual_spec(meta(labels={"domain": "billing", "owner": "dlp"}))
    declared = declared_spec(meta(labels={"domain": "finance", "team": "core"}))

    plan = plan_table(declared, actual)

    assert plan.action is Action.UPDATE
    # Only declared labels that differ: a patch merges label maps, so the undeclared "owner" is
    # neither sent nor set to None (which would remove it).
    assert plan.patch == {"labels": {"domain": "finance", "team": "core"}}


def test_patch_values_for_table_properties() -> None:
    declared = declared_spec(
        meta(description=None),
        meta(clustering=["usage_date", "tenant_id"]),
        meta(time_partitioning={"type": "DAY", "field": "usage_date", "expiration_days": 60}),
        meta(require_partition_filter=True),
    )

    plan = plan_table(declared, actual_spec())

    assert plan.patch == {
        "description": None,
        Property.CLUSTERING: ("usage_date", "tenant_id"),
        "partition_expiration_ms": 60 * DAY_MS,
        "require_partition_filter": True,
    }


def test_patch_removes_clustering_with_none() -> None:
    plan = plan_table(declared_spec(meta(clustering=None)), actual_spec())
    assert plan.patch == {Property.CLUSTERING: None}


def test_blocked_plan_keeps_no_patch_even_with_in_place_changes() -> None:
    plan = plan_table(declared_spec(drop("ratio"), add(NEW_NOTE), meta(description="x")), actual_spec())
    assert plan.action is Action.BLOCKED
    assert plan.patch == {}
    assert plan.changes  # the in-place part is still reported


def test_model_level_specs_compare_without_the_file_readers() -> None:
    """The same classifier on hand-built specs: a sanity check that the table above is not
    passing only because both sides went through the same readers."""
    declared = TableSpec(
        "t",
        (Column("a", "INTEGER", "REQUIRED"), Column("b", "STRING")),
        partitioning=TimePartitioning("DAY", None, None),
    )
    actual = TableSpec(
        "t", (Column("a", "INTEGER", "NULLABLE"),), partitioning=TimePartitioning("DAY", None, None)
    )
    plan = plan_table(declared, actual)
    assert plan.action is Action.BLOCKED
    assert plan.blocked == (
        "column a changes mode NULLABLE -> REQUIRED: BigQuery only relaxes REQUIRED to NULLABLE in place",
    )
    assert plan.changes == ("add column b NULLABLE STRING",)


# --- the dataset ------------------------------------------------------------------------------

DATASET = DatasetSpec("tenants", "US", "Registry.", (("platform", "convergence"),))


@pytest.mark.parametrize(
    ("actual", "action", "changes", "blocked"),
    [
        pytest.param(None, Action.CREATE, ["create dataset tenants in US"], [], id="missing: create"),
        pytest.param(DATASET, Action.UNCHANGED, [], [], id="identical: unchanged"),
        pytest.param(
            DatasetSpec("tenants", "us", "Registry.", (("platform", "convergence"),)),
            Action.UNCHANGED,
            [],
            [],
            id="location us vs US: unchanged",
        ),
        pytest.param(
            DatasetSpec("tenants", "US", "Registry.", (("other", "x"), ("platform", "convergence"))),
            Action.UNCHANGED,
            [],
            [],
            id="extra label left alone: unchanged",
        ),
        pytest.param(
            DatasetSpec("tenants", "US", "Old.", (("platform", "convergence"),)),
            Action.UPDATE,
            ["description: 'Old.' -> 'Registry.'"],
            [],
            id="description: update",
        ),
        pytest.param(
            DatasetSpec("tenants", "US", "Registry.", ()),
            Action.UPDATE,
            ["dataset label platform: (unset) -> 'convergence'"],
            [],
            id="label added: update",
        ),
        pytest.param(
            DatasetSpec("tenants", "US", "Registry.", (("platform", "old"),)),
            Action.UPDATE,
            ["dataset label platform: 'old' -> 'convergence'"],
            [],
            id="label changed: update",
        ),
        pytest.param(
            DatasetSpec("tenants", "EU", "Old.", ()),
            Action.BLOCKED,
            [],
            [
                "location: the dataset is in EU, the deployment declares US; BigQuery cannot move a dataset "
                "(set BOOTSTRAP_LOCATION=EU, or recreate the dataset with force_recreate_dataset)"
            ],
            id="location changed: blocked",
        ),
    ],
)
def test_plan_dataset(
    actual: DatasetSpec | None, action: Action, changes: list[str], blocked: list[str]
) -> None:
    plan = plan_dataset(DATASET, actual)
    assert plan.dataset == "tenants"
    assert plan.action is action
    _match(tuple(changes), plan.changes, "changes")
    _match(tuple(blocked), plan.blocked, "blocked reasons")
    if action is not Action.UPDATE:
        assert plan.patch == {}


def test_plan_dataset_patch() -> None:
    actual = DatasetSpec("tenants", "US", "", (("platform", "old"), ("billing", "x")))
    plan = plan_dataset(DATASET, actual)
    assert plan.patch == {"description": "Registry.", "labels": {"platform": "convergence"}}
    cleared = plan_dataset(DatasetSpec("tenants", "US"), DatasetSpec("tenants", "US", "Old."))
    assert cleared.patch == {"description": None}


def test_plan_dataset_recreate() -> None:
    plan = plan_dataset(DATASET, DatasetSpec("tenants", "EU"), recreate=True)
    assert plan.action is Action.RECREATE
    assert plan.changes == ("drop the dataset with every table, and recreate it",)
