"""The declared state from the schema files (`<table>.json`) and the manifest (pure): a
`DeclaredState`, or `SchemaValidationError` with every problem of every file at once."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, TableEntry, parse_manifest
from .model import (
    BIGQUERY_NAME,
    MODES,
    Column,
    DeclaredState,
    TableSpec,
    TimePartitioning,
    canonical_type,
)
from .problems import Problems, SchemaError, SchemaValidationError, Scope, shown
from .request import json_kind

__all__ = ["SchemaError", "SchemaValidationError", "is_schema_file", "load_declared_state", "max_bytes"]

# Bounds on untrusted input, checked before it is parsed: a schema file of BigQuery's largest
# table (10,000 columns, each with a 1,024-character description) is about 12 MB.
MAX_SCHEMA_FILE_BYTES = 16 * 1024 * 1024
MAX_COLUMNS = 10_000  # BigQuery's limit per table, nested fields included
MAX_NESTING = 15  # BigQuery's limit on nested RECORD levels
MAX_COLUMN_DESCRIPTION = 1024  # BigQuery's limit, in characters
RANGE_ELEMENTS = {"DATE", "DATETIME", "TIMESTAMP"}
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
RESERVED_PREFIXES = ("_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLON_")
PARTITIONABLE = {
    "DAY": {"DATE", "TIMESTAMP", "DATETIME"},
    "HOUR": {"TIMESTAMP", "DATETIME"},
    "MONTH": {"DATE", "TIMESTAMP", "DATETIME"},
    "YEAR": {"DATE", "TIMESTAMP", "DATETIME"},
}
CLUSTERABLE = {
    "STRING",
    "INTEGER",
    "NUMERIC",
    "BIGNUMERIC",
    "BOOLEAN",
    "DATE",
    "DATETIME",
    "TIMESTAMP",
    "GEOGRAPHY",
}
# Keys of BigQuery's TableFieldSchema besides the five reconciled ones: accepted so that any
# `bq show --schema` output loads as it is, and passed through at creation.
PASS_THROUGH_KEYS = {
    "maxLength",
    "precision",
    "scale",
    "policyTags",
    "defaultValueExpression",
    "collation",
    "roundingMode",
    "dataPolicies",
    "foreignTypeDefinition",
    "rangeElementType",
    "timestampPrecision",
    "dataGovernanceTagsInfo",
    "categories",  # deprecated, still printed by older tables
}
# Type parameters (STRING(10), NUMERIC(10, 2)), and the types each applies to.
PARAMETERS = {
    "maxLength": ("STRING", "BYTES"),
    "precision": ("NUMERIC", "BIGNUMERIC"),
    "scale": ("NUMERIC", "BIGNUMERIC"),
}
FIELD_KEYS = {"name", "type", "mode", "description", "fields"} | PASS_THROUGH_KEYS


def is_schema_file(name: str) -> bool:
    return name.endswith(".json") or name == MANIFEST_NAME


def max_bytes(name: str) -> int:
    """The size limit of a schema file or of the manifest."""
    return MAX_MANIFEST_BYTES if name == MANIFEST_NAME else MAX_SCHEMA_FILE_BYTES


def load_declared_state(
    files: Mapping[str, bytes], *, complete: bool = True, source: str = "(schema source)"
) -> DeclaredState:
    """Validate and normalise the schema files (`<table>.json`) and the manifest.

    `files` maps a file's base name to its content. Other names are not looked at.
    `complete=False` is for a bucket that an upload is still filling (`sync` sends the manifest
    first): manifest entries whose schema file has not arrived yet are skipped, not errors.
    """
    problems = Problems()
    tables: dict[str, tuple[Column, ...]] = {}
    unreadable: set[str] = set()
    for name in sorted(files):
        if not name.endswith(".json"):
            continue
        table = name[: -len(".json")]
        scope = problems.file(name)
        if not BIGQUERY_NAME.fullmatch(table):
            scope.add(
                "the file name must be <table>.json, where the table name has 1-1024 "
                "letters, digits or underscores; rename the file"
            )
            continue
        columns = scope.guarded(_parse_schema_file, files[name], scope)
        if columns is None:
            unreadable.add(table)
        else:
            tables[table] = columns

    in_manifest = problems.file(MANIFEST_NAME)
    manifest = in_manifest.guarded(parse_manifest, files.get(MANIFEST_NAME), in_manifest) or Manifest()
    for table in sorted(manifest.tables):
        if complete and table not in tables and table not in unreadable:
            in_manifest.at(f"tables.{table}").add(
                f"names no schema file: add {table}.json or remove the entry"
            )
    specs: dict[str, TableSpec] = {}
    for table, columns in tables.items():
        entry = manifest.tables.get(table) or TableEntry()
        spec = in_manifest.guarded(_table_spec, table, columns, entry, in_manifest.at(f"tables.{table}"))
        if spec is not None:
            specs[table] = spec
    if complete and not tables and not problems.found:
        fix = "upload them with `python -m function sync`" if source.startswith("gs://") else "add one"
        problems.file(source).add(f"holds no <table>.json schema file; {fix}")
    problems.raise_any()
    return DeclaredState(
        dataset_description=manifest.dataset_description,
        dataset_labels=manifest.dataset_labels,
        tables=specs,
        digest=schema_digest(files),
    )


def schema_digest(files: Mapping[str, bytes]) -> str:
    """A stable fingerprint of the schema files, echoed in the completion event."""
    h = hashlib.sha256()
    for name in sorted(n for n in files if is_schema_file(n)):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return "sha256:" + h.hexdigest()


# --- schema files -------------------------------------------------------------------------


def _parse_schema_file(data: bytes, scope: Scope) -> tuple[Column, ...] | None:
    if len(data) > MAX_SCHEMA_FILE_BYTES:
        scope.add(f"is {len(data)} bytes; a schema file is at most {MAX_SCHEMA_FILE_BYTES}")
        return None
    if not data.strip():
        scope.add("the file is empty; it must hold a JSON array of fields")
        return None
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        scope.add(f"is not valid JSON ({exc}); fix the syntax")
        return None
    if not isinstance(doc, list):
        scope.add(
            f"must be a JSON array of fields, as `bq show --schema` prints (found a JSON {json_kind(doc)})"
        )
        return None
    if not doc:
        scope.add("declares no column; a table needs at least one")
        return None
    columns = _parse_fields(doc, scope, 1)
    if not scope.clean:
        return None
    if _count(columns) > MAX_COLUMNS:
        scope.add(f"declares {_count(columns)} columns; BigQuery allows {MAX_COLUMNS}")
        return None
    return columns


def _count(columns: tuple[Column, ...]) -> int:
    return sum(1 + _count(c.fields) for c in columns)


def _parse_fields(items: list[Any], parent: Scope, depth: int) -> tuple[Column, ...]:
    """The fields of a file (`parent` its scope) or of a RECORD (`parent` the RECORD's)."""
    columns: list[Column] = []
    seen: dict[str, str] = {}
    prefix = f"{parent.path}." if parent.path else ""
    for index, item in enumerate(items):
        scope = parent.at(f"{parent.path}[{index}]")
        if not isinstance(item, dict):
            scope.add("each field must be a JSON object")
            continue
        raw_name = item.get("name")
        duplicate = None
        if isinstance(raw_name, str) and raw_name:
            scope = parent.at(prefix + raw_name)
            # Checked whatever else is wrong with the field: every problem is reported at once.
            duplicate = seen.get(raw_name.lower())
            seen.setdefault(raw_name.lower(), raw_name)
        if duplicate is not None:
            scope.add(
                f"duplicates column {duplicate!r} (BigQuery compares column names case-insensitively); "
                "rename or remove one"
            )
        column = _parse_field(item, scope, depth)
        if column is not None and duplicate is None:
            columns.append(column)
    return tuple(columns)


def _parse_field(item: dict[str, Any], scope: Scope, depth: int) -> Column | None:
    unknown = sorted(set(item) - FIELD_KEYS)
    if unknown:
        scope.add(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(FIELD_KEYS))}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        scope.add('needs a "name" (a non-empty string)')
        name = ""
    elif not COLUMN_NAME.fullmatch(name):
        scope.add(
            "invalid column name: use letters, digits and underscores, start with a letter "
            "or underscore, at most 300 characters"
        )
    elif name.upper().startswith(RESERVED_PREFIXES):
        scope.add(f"column names may not start with {', '.join(RESERVED_PREFIXES)} (reserved by BigQuery)")
    raw_type = item.get("type")
    type_ = canonical_type(raw_type) if isinstance(raw_type, str) else None
    if not isinstance(raw_type, str):
        scope.add('needs a "type" (a string such as STRING, INT64, TIMESTAMP or RECORD)')
    elif type_ is None:
        scope.add(f"unknown type {raw_type!r}; use a BigQuery type such as STRING, INT64, NUMERIC, RECORD")
    raw_mode = item.get("mode")
    if raw_mode is None:  # absent or null: the API's default, as for "description"
        raw_mode = "NULLABLE"
    mode = raw_mode.strip().upper() if isinstance(raw_mode, str) else None
    if mode not in MODES:
        scope.add(f"unknown mode {raw_mode!r}; use NULLABLE, REQUIRED or REPEATED")
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        scope.add('"description" must be a string')
    elif description is not None and len(description) > MAX_COLUMN_DESCRIPTION:
        scope.add(
            f'"description" is longer than BigQuery\'s {MAX_COLUMN_DESCRIPTION} characters for a column; shorten it'
        )
    sub_items = item.get("fields")
    fields: tuple[Column, ...] = ()
    if type_ == "RECORD":
        if not isinstance(sub_items, list) or not sub_items:
            scope.add('a RECORD needs "fields": a non-empty array of sub-fields')
        elif depth >= MAX_NESTING:
            scope.add(f"RECORDs may be nested at most {MAX_NESTING} levels deep")
        else:
            fields = _parse_fields(sub_items, scope, depth + 1)
    elif sub_items and type_ is not None:
        scope.add(f'only a RECORD may have "fields" (this column is {type_}); change the type or remove them')
    if type_ == "RANGE":
        element = item.get("rangeElementType")
        kind = element.get("type") if isinstance(element, dict) else None
        if not isinstance(kind, str) or kind.upper() not in RANGE_ELEMENTS:
            scope.add('a RANGE needs "rangeElementType": {"type": "DATE"} (or DATETIME or TIMESTAMP)')
    _check_parameters(item, type_, scope)
    if not scope.clean:
        return None
    extra = tuple(sorted((k, item[k]) for k in PASS_THROUGH_KEYS if k in item))
    return Column(name, type_, mode, description or "", fields, extra)  # type: ignore[arg-type]


# --- a table: its columns and its manifest entry ----------------------------------------------


def _table_spec(table: str, columns: tuple[Column, ...], entry: TableEntry, scope: Scope) -> TableSpec | None:
    """The table's spec; the manifest's names of columns (partitioning, clustering) are checked
    against its columns here."""
    top = {c.name.lower(): c for c in columns}
    partitioning = _partitioning(entry, top, scope.at(f"{scope.path}.time_partitioning"))
    clustering = _clustering(entry.clustering, top, scope.at(f"{scope.path}.clustering"))
    renamed = scope.at(f"{scope.path}.renamed")
    for new, old in entry.renamed:
        if new.lower() not in top:
            renamed.add(f"{new!r} is not a column of the table: a rename names the column's new name first")
        elif old.lower() in top:
            renamed.add(f"{old!r} is still declared: a column renamed {new!r} can no longer be declared")
    if not scope.clean:
        return None
    return TableSpec(
        name=table,
        columns=columns,
        description=entry.description,
        labels=entry.labels,
        partitioning=partitioning,
        clustering=clustering,
        require_partition_filter=entry.require_partition_filter,
        renamed=entry.renamed,
    )


def _partitioning(entry: TableEntry, top: dict[str, Column], scope: Scope) -> TimePartitioning | None:
    declared = entry.partitioning
    if declared is None:
        return None
    field_name = declared.field
    if field_name is not None:
        column = top.get(field_name.lower()) if isinstance(field_name, str) else None
        where = scope.at(f"{scope.path}.field")
        if column is None:
            where.add(
                f"{shown(field_name)} is not a top-level column of the table; name one "
                "(partitioning columns cannot be inside a RECORD)"
            )
            return None
        if column.type not in PARTITIONABLE[declared.type] or column.mode == "REPEATED":
            allowed = "/".join(sorted(PARTITIONABLE[declared.type]))
            where.add(
                f"{field_name!r} is {column.mode} {column.type}; {declared.type} partitioning needs a "
                f"non-repeated {allowed} column"
            )
            return None
        field_name = column.name
    return TimePartitioning(declared.type, field_name, declared.expiration_ms)


def _clustering(names: tuple[str, ...], top: dict[str, Column], scope: Scope) -> tuple[str, ...]:
    found = []
    for name in names:
        column = top.get(name.lower())
        if column is None:
            scope.add(
                f"{name!r} is not a top-level column of the table (clustering columns cannot be inside a RECORD)"
            )
        elif column.mode == "REPEATED" or column.type not in CLUSTERABLE:
            scope.add(
                f"{name!r} is {column.mode} {column.type}; clustering needs a non-repeated "
                f"column of type {', '.join(sorted(CLUSTERABLE))}"
            )
        else:
            found.append(column.name)
    return tuple(found)


def _check_parameters(item: dict[str, Any], type_: str | None, scope: Scope) -> None:
    """maxLength, precision and scale: whole numbers (as `bq show --schema` prints them, or
    JSON numbers), each on a type it applies to, scale within precision."""
    given: dict[str, int] = {}
    for key, types in PARAMETERS.items():
        if key not in item:
            continue
        value = item[key]
        text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        if not text.isdigit() or len(text) > 9:
            scope.add(f'"{key}" must be a whole number, such as "10" (got {json.dumps(value)[:40]})')
        elif type_ is not None and type_ not in types:
            scope.add(f'"{key}" applies only to {" and ".join(types)} (this column is {type_}); remove it')
        else:
            given[key] = int(text)
    if "scale" in given and "precision" not in item:
        scope.add('"scale" needs a "precision" (BigQuery reads NUMERIC(P, S)); add one')
    elif given.get("scale", 0) > given.get("precision", given.get("scale", 0)):
        scope.add(f'"scale" ({given["scale"]}) is larger than "precision" ({given["precision"]}); lower it')
