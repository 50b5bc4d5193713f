"""Reading and validating the declared state: schema files plus the manifest.

Pure: takes file names and bytes, returns a `DeclaredState` or raises `SchemaValidationError`
with every problem of every file at once, each naming the file, the field path and the fix.
Nothing here talks to an API, so bad input is refused before any request is sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml

from .errors import PermanentError
from .model import (
    BIGQUERY_NAME,
    MODES,
    Column,
    DeclaredState,
    TableSpec,
    TimePartitioning,
    canonical_type,
    sorted_labels,
)
from .request import json_kind

T = TypeVar("T")
MANIFEST_NAME = "bootstrap.yaml"
# Bounds on untrusted input, checked before it is parsed: a schema file of BigQuery's largest
# table (10,000 columns, each with a 1,024-character description) is about 12 MB.
MAX_SCHEMA_FILE_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_COLUMNS = 10_000  # BigQuery's limit per table, nested fields included
MAX_REPORTED = 50  # problems listed in a message; the rest are counted
MAX_NESTING = 15  # BigQuery's limit on nested RECORD levels
MAX_CLUSTERING = 4
# A partition expiration deletes data: less than a day is a typo, never a retention policy.
MIN_EXPIRATION_DAYS = 1
MAX_EXPIRATION_DAYS = 36_500
MAX_COLUMN_DESCRIPTION = 1024  # BigQuery's limits, in characters
MAX_DESCRIPTION = 16384  # of a table's or dataset's description
RANGE_ELEMENTS = {"DATE", "DATETIME", "TIMESTAMP"}
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
RESERVED_PREFIXES = ("_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLON_")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
PARTITION_TYPES = {
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
}
FIELD_KEYS = {"name", "type", "mode", "description", "fields"} | PASS_THROUGH_KEYS
MANIFEST_KEYS = {"dataset", "tables"}
DATASET_KEYS = {"description", "labels"}
TABLE_KEYS = {
    "description",
    "labels",
    "time_partitioning",
    "clustering",
    "require_partition_filter",
}
PARTITIONING_KEYS = {"type", "field", "expiration_days"}


@dataclass(frozen=True)
class SchemaError:
    file: str
    path: str  # field path inside the file ("address.city", "tables.x.clustering"), or ""
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class SchemaValidationError(PermanentError):
    """The declared state is invalid; `errors` lists every problem found."""

    def __init__(self, errors: list[SchemaError]) -> None:
        self.errors = errors
        shown = "\n".join(f"  - {e}" for e in errors[:MAX_REPORTED])
        more = len(errors) - MAX_REPORTED
        if more > 0:
            shown += f"\n  - ... and {more} more problem(s), not listed"
        super().__init__(f"{len(errors)} problem(s) in the schema files:\n{shown}")


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
    errors: list[SchemaError] = []
    tables: dict[str, tuple[Column, ...]] = {}
    for name in sorted(files):
        if not name.endswith(".json"):
            continue
        table = name[: -len(".json")]
        if not BIGQUERY_NAME.fullmatch(table):
            errors.append(
                SchemaError(
                    name,
                    "",
                    "the file name must be <table>.json, where the table name has 1-1024 "
                    "letters, digits or underscores; rename the file",
                )
            )
            continue
        columns = _guarded(name, errors, _parse_schema_file, name, files[name], errors)
        if columns is not None:
            tables[table] = columns

    manifest = _guarded(MANIFEST_NAME, errors, _parse_manifest, files.get(MANIFEST_NAME), errors) or {}
    dataset = manifest.get("dataset") or {}
    entries = manifest.get("tables") or {}
    specs: dict[str, TableSpec] = {}
    for table in sorted(entries):
        if complete and table not in tables and not any(e.file == f"{table}.json" for e in errors):
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    f"tables.{table}",
                    f"names no schema file: add {table}.json or remove the entry",
                )
            )
    for table, columns in tables.items():
        spec = _guarded(MANIFEST_NAME, errors, _table_spec, table, columns, entries.get(table) or {}, errors)
        if spec is not None:
            specs[table] = spec
    if complete and not tables and not errors:
        fix = "upload them with `python -m function sync`" if source.startswith("gs://") else "add one"
        errors.append(SchemaError(source, "", f"holds no <table>.json schema file; {fix}"))
    if errors:
        raise SchemaValidationError(errors)
    return DeclaredState(
        dataset_description=dataset.get("description") or "",
        dataset_labels=sorted_labels(dataset.get("labels")),
        tables=specs,
        digest=schema_digest(files),
    )


def _guarded(file: str, errors: list[SchemaError], parse: Callable[..., T], *args: Any) -> T | None:
    """`parse(*args)`; an exception it did not foresee is a problem of `file`, reported with the
    others, never an error of the function (which would be delivered again, forever)."""
    try:
        return parse(*args)
    except Exception as exc:
        errors.append(
            SchemaError(
                file, "", f"could not be read ({type(exc).__name__}: {str(exc)[:200]}); check its content"
            )
        )
        return None


def schema_digest(files: Mapping[str, bytes]) -> str:
    """A stable fingerprint of the schema files, echoed in the completion event."""
    h = hashlib.sha256()
    for name in sorted(n for n in files if is_schema_file(n)):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return "sha256:" + h.hexdigest()


# --- schema files -------------------------------------------------------------------------


def _parse_schema_file(name: str, data: bytes, errors: list[SchemaError]) -> tuple[Column, ...] | None:
    if len(data) > MAX_SCHEMA_FILE_BYTES:
        errors.append(
            SchemaError(name, "", f"is {len(data)} bytes; a schema file is at most {MAX_SCHEMA_FILE_BYTES}")
        )
        return None
    if not data.strip():
        errors.append(SchemaError(name, "", "the file is empty; it must hold a JSON array of fields"))
        return None
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        errors.append(SchemaError(name, "", f"is not valid JSON ({exc}); fix the syntax"))
        return None
    if not isinstance(doc, list):
        errors.append(
            SchemaError(
                name,
                "",
                "must be a JSON array of fields, as `bq show --schema` prints "
                f"(found a JSON {json_kind(doc)})",
            )
        )
        return None
    if not doc:
        errors.append(SchemaError(name, "", "declares no column; a table needs at least one"))
        return None
    before = len(errors)
    columns = _parse_fields(name, doc, "", 1, errors)
    if len(errors) != before:
        return None
    if _count(columns) > MAX_COLUMNS:
        errors.append(
            SchemaError(name, "", f"declares {_count(columns)} columns; BigQuery allows {MAX_COLUMNS}")
        )
        return None
    return columns


def _count(columns: tuple[Column, ...]) -> int:
    return sum(1 + _count(c.fields) for c in columns)


def _parse_fields(
    file: str, items: list[Any], parent: str, depth: int, errors: list[SchemaError]
) -> tuple[Column, ...]:
    columns: list[Column] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(items):
        where = f"{parent}[{index}]"
        if not isinstance(item, dict):
            errors.append(SchemaError(file, where, "each field must be a JSON object"))
            continue
        raw_name = item.get("name")
        duplicate = None
        if isinstance(raw_name, str) and raw_name:
            where = f"{parent}.{raw_name}" if parent else raw_name
            # Checked whatever else is wrong with the field: every problem is reported at once.
            duplicate = seen.get(raw_name.lower())
            seen.setdefault(raw_name.lower(), raw_name)
        if duplicate is not None:
            errors.append(
                SchemaError(
                    file,
                    where,
                    f"duplicates column {duplicate!r} (BigQuery compares column names "
                    "case-insensitively); rename or remove one",
                )
            )
        column = _parse_field(file, item, where, depth, errors)
        if column is not None and duplicate is None:
            columns.append(column)
    return tuple(columns)


def _parse_field(
    file: str, item: dict[str, Any], where: str, depth: int, errors: list[SchemaError]
) -> Column | None:
    ok = True

    def bad(message: str) -> None:
        nonlocal ok
        ok = False
        errors.append(SchemaError(file, where, message))

    unknown = sorted(set(item) - FIELD_KEYS)
    if unknown:
        bad(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(FIELD_KEYS))}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        bad('needs a "name" (a non-empty string)')
        name = ""
    elif not COLUMN_NAME.fullmatch(name):
        bad(
            "invalid column name: use letters, digits and underscores, start with a letter "
            "or underscore, at most 300 characters"
        )
    elif name.upper().startswith(RESERVED_PREFIXES):
        bad(f"column names may not start with {', '.join(RESERVED_PREFIXES)} (reserved by BigQuery)")
    raw_type = item.get("type")
    type_ = canonical_type(raw_type) if isinstance(raw_type, str) else None
    if not isinstance(raw_type, str):
        bad('needs a "type" (a string such as STRING, INT64, TIMESTAMP or RECORD)')
    elif type_ is None:
        bad(f"unknown type {raw_type!r}; use a BigQuery type such as STRING, INT64, NUMERIC, RECORD")
    raw_mode = item.get("mode")
    if raw_mode is None:  # absent or null: the API's default, as for "description"
        raw_mode = "NULLABLE"
    mode = raw_mode.strip().upper() if isinstance(raw_mode, str) else None
    if mode not in MODES:
        bad(f"unknown mode {raw_mode!r}; use NULLABLE, REQUIRED or REPEATED")
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        bad('"description" must be a string')
    elif description is not None and len(description) > MAX_COLUMN_DESCRIPTION:
        bad(
            f'"description" is longer than BigQuery\'s {MAX_COLUMN_DESCRIPTION} characters for a column; shorten it'
        )
    sub_items = item.get("fields")
    fields: tuple[Column, ...] = ()
    if type_ == "RECORD":
        if not isinstance(sub_items, list) or not sub_items:
            bad('a RECORD needs "fields": a non-empty array of sub-fields')
        elif depth >= MAX_NESTING:
            bad(f"RECORDs may be nested at most {MAX_NESTING} levels deep")
        else:
            before = len(errors)
            fields = _parse_fields(file, sub_items, where, depth + 1, errors)
            ok = ok and len(errors) == before
    elif sub_items and type_ is not None:
        bad(f'only a RECORD may have "fields" (this column is {type_}); change the type or remove them')
    if type_ == "RANGE":
        element = item.get("rangeElementType")
        kind = element.get("type") if isinstance(element, dict) else None
        if not isinstance(kind, str) or kind.upper() not in RANGE_ELEMENTS:
            bad('a RANGE needs "rangeElementType": {"type": "DATE"} (or DATETIME or TIMESTAMP)')
    if not ok:
        return None
    extra = tuple(sorted((k, item[k]) for k in PASS_THROUGH_KEYS if k in item))
    return Column(name, type_, mode, description or "", fields, extra)  # type: ignore[arg-type]


# --- manifest -------------------------------------------------------------------------------


def _parse_manifest(data: bytes | None, errors: list[SchemaError]) -> dict[str, Any]:
    if data is None:
        return {}
    if len(data) > MAX_MANIFEST_BYTES:
        errors.append(
            SchemaError(
                MANIFEST_NAME, "", f"is {len(data)} bytes; the manifest is at most {MAX_MANIFEST_BYTES}"
            )
        )
        return {}
    try:
        doc = yaml.load(data, Loader=_PlainLoader)  # a SafeLoader that refuses aliases
    except _AliasFound:
        errors.append(
            SchemaError(
                MANIFEST_NAME,
                "",
                "uses YAML anchors or aliases (& and *), which the manifest does not accept "
                "(a few of them can expand to gigabytes); write each value out",
            )
        )
        return {}
    except (yaml.YAMLError, RecursionError) as exc:
        errors.append(SchemaError(MANIFEST_NAME, "", f"is not valid YAML ({str(exc)[:300]}); fix the syntax"))
        return {}
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        errors.append(SchemaError(MANIFEST_NAME, "", "must be a mapping with keys dataset and tables"))
        return {}
    _unknown_keys(doc, MANIFEST_KEYS, "", errors)
    dataset = doc.get("dataset") or {}
    if not isinstance(dataset, dict):
        errors.append(SchemaError(MANIFEST_NAME, "dataset", "must be a mapping (description, labels)"))
        dataset = {}
    _unknown_keys(dataset, DATASET_KEYS, "dataset", errors)
    _check_description(dataset.get("description"), "dataset.description", errors)
    _check_labels(dataset.get("labels"), "dataset.labels", errors)
    tables = doc.get("tables") or {}
    if not isinstance(tables, dict):
        errors.append(SchemaError(MANIFEST_NAME, "tables", "must be a mapping of table name to settings"))
        tables = {}
    for table, entry in tables.items():
        path = f"tables.{table}"
        if not isinstance(table, str) or not BIGQUERY_NAME.fullmatch(table):
            errors.append(
                SchemaError(
                    MANIFEST_NAME, path, "is not a table name: use 1-1024 letters, digits or underscores"
                )
            )
            continue
        if entry is not None and not isinstance(entry, dict):
            errors.append(SchemaError(MANIFEST_NAME, path, "must be a mapping of table settings"))
            continue
        entry = entry or {}
        _unknown_keys(entry, TABLE_KEYS, path, errors)
        _check_description(entry.get("description"), f"{path}.description", errors)
        _check_labels(entry.get("labels"), f"{path}.labels", errors)
    return {
        "dataset": dataset,
        "tables": {str(k): v for k, v in tables.items() if isinstance(v, dict | None)},
    }


def _shown(value: Any, *, quoted: bool = True) -> str:
    """An untrusted value as a message shows it, at most 60 characters (a string unquoted when
    `quoted` is False)."""
    text = value if isinstance(value, str) and not quoted else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _AliasFound(Exception):
    pass


class _PlainLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing anchors and aliases before anything is built from them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasFound
        return super().compose_node(parent, index)


def _unknown_keys(doc: dict[str, Any], allowed: set[str], path: str, errors: list[SchemaError]) -> None:
    unknown = sorted(_shown(k, quoted=False) for k in set(doc) - allowed)
    if unknown:
        errors.append(
            SchemaError(
                MANIFEST_NAME,
                path,
                f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
            )
        )


def _check_description(value: Any, path: str, errors: list[SchemaError]) -> None:
    if value is not None and not isinstance(value, str):
        errors.append(SchemaError(MANIFEST_NAME, path, "must be a string"))
    elif value is not None and len(value) > MAX_DESCRIPTION:
        errors.append(
            SchemaError(MANIFEST_NAME, path, f"is longer than BigQuery's {MAX_DESCRIPTION} characters")
        )


def _check_labels(labels: Any, path: str, errors: list[SchemaError]) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        errors.append(SchemaError(MANIFEST_NAME, path, "must be a mapping of label key to value"))
        return
    if len(labels) > 64:
        errors.append(SchemaError(MANIFEST_NAME, path, "BigQuery allows at most 64 labels"))
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    f"{path}.{key}",
                    "invalid label key: 1-63 lowercase letters, digits, _ or -, starting with a letter",
                )
            )
        if not isinstance(value, str) or not LABEL_VALUE.fullmatch(value):
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    f"{path}.{key}",
                    "invalid label value: a string of 0-63 lowercase letters, digits, _ or - "
                    "(quote values that YAML would read as numbers or booleans)",
                )
            )


def _table_spec(
    table: str, columns: tuple[Column, ...], entry: dict[str, Any], errors: list[SchemaError]
) -> TableSpec | None:
    before = len(errors)
    path = f"tables.{table}"
    top = {c.name.lower(): c for c in columns}
    partitioning = _partitioning(entry.get("time_partitioning"), top, f"{path}.time_partitioning", errors)
    clustering = _clustering(entry.get("clustering"), top, f"{path}.clustering", errors)
    labels = entry.get("labels")
    rpf = entry.get("require_partition_filter", False)
    if not isinstance(rpf, bool):
        errors.append(SchemaError(MANIFEST_NAME, f"{path}.require_partition_filter", "must be true or false"))
    elif rpf and partitioning is None and entry.get("time_partitioning") is None:
        errors.append(
            SchemaError(
                MANIFEST_NAME,
                f"{path}.require_partition_filter",
                "needs time_partitioning: only a partitioned table can require a partition filter",
            )
        )
    if len(errors) != before:
        return None
    return TableSpec(
        name=table,
        columns=columns,
        description=entry.get("description") or "",
        labels=sorted_labels(labels if isinstance(labels, dict) else None),  # else already reported
        partitioning=partitioning,
        clustering=clustering,
        require_partition_filter=rpf,
    )


def _partitioning(
    raw: Any, top: dict[str, Column], path: str, errors: list[SchemaError]
) -> TimePartitioning | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.append(SchemaError(MANIFEST_NAME, path, "must be a mapping: {type: DAY, field: COLUMN}"))
        return None
    _unknown_keys(raw, PARTITIONING_KEYS, path, errors)
    kind = raw.get("type", "DAY")
    kind = kind.upper() if isinstance(kind, str) else None
    if kind not in PARTITION_TYPES:
        errors.append(SchemaError(MANIFEST_NAME, f"{path}.type", "must be DAY, HOUR, MONTH or YEAR"))
        return None
    field_name = raw.get("field")
    if field_name is not None:
        column = top.get(field_name.lower()) if isinstance(field_name, str) else None
        if column is None:
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    f"{path}.field",
                    f"{_shown(field_name)} is not a top-level column of the table; name one "
                    "(partitioning columns cannot be inside a RECORD)",
                )
            )
            return None
        if column.type not in PARTITION_TYPES[kind] or column.mode == "REPEATED":
            allowed = "/".join(sorted(PARTITION_TYPES[kind]))
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    f"{path}.field",
                    f"{field_name!r} is {column.mode} {column.type}; {kind} partitioning needs a "
                    f"non-repeated {allowed} column",
                )
            )
            return None
        field_name = column.name
    days = raw.get("expiration_days")
    expiration_ms = None
    if days is not None:
        if (
            isinstance(days, bool)
            or not isinstance(days, int | float)
            or not math.isfinite(days)
            or not MIN_EXPIRATION_DAYS <= days <= MAX_EXPIRATION_DAYS
        ):
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    f"{path}.expiration_days",
                    f"must be a number of days from {MIN_EXPIRATION_DAYS} to {MAX_EXPIRATION_DAYS} "
                    "(partitions older than this are deleted); remove it to keep every partition",
                )
            )
            return None
        expiration_ms = int(days * 86_400_000)
    return TimePartitioning(kind, field_name, expiration_ms)


def _clustering(raw: Any, top: dict[str, Column], path: str, errors: list[SchemaError]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        errors.append(SchemaError(MANIFEST_NAME, path, "must be a list of column names"))
        return ()
    if len(raw) > MAX_CLUSTERING:
        errors.append(
            SchemaError(MANIFEST_NAME, path, f"BigQuery allows at most {MAX_CLUSTERING} clustering columns")
        )
    if len({c.lower() for c in raw}) != len(raw):
        errors.append(SchemaError(MANIFEST_NAME, path, "names a column twice"))
    names = []
    for name in raw:
        column = top.get(name.lower())
        if column is None:
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    path,
                    f"{name!r} is not a top-level column of the table (clustering columns cannot "
                    "be inside a RECORD)",
                )
            )
        elif column.mode == "REPEATED" or column.type not in CLUSTERABLE:
            errors.append(
                SchemaError(
                    MANIFEST_NAME,
                    path,
                    f"{name!r} is {column.mode} {column.type}; clustering needs a non-repeated "
                    f"column of type {', '.join(sorted(CLUSTERABLE))}",
                )
            )
        else:
            names.append(column.name)
    return tuple(names)
