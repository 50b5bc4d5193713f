"""The declared state: the bundled schemas, and a corpus of mistakes a user can make in a schema
file or the manifest, each refused with the file, the field path, what is wrong and the fix,
before anything is sent to BigQuery.

Over 400 lines: a corpus of mistakes, one case each.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from function.config import BUNDLED_SCHEMAS
from function.model import Column, DeclaredState
from function.schema_files import SchemaError, SchemaValidationError, load_declared_state
from function.sources import read_folder

REPO = Path(__file__).resolve().parents[2]

# --- the bundled schemas ----------------------------------------------------------------------

BUNDLED_TABLES = {
    "pipeline_execution_queue",
    "scheduled_pipeline_runs",
    "tenant_api_keys",
    "tenant_cloud_credentials",
    "tenant_pipeline_configs",
    "tenant_profiles",
    "tenant_subscriptions",
    "tenant_usage_quotas",
}


@pytest.fixture(scope="module")
def bundled() -> DeclaredState:
    return load_declared_state(read_folder(BUNDLED_SCHEMAS))


def _walk(columns: tuple[Column, ...], parent: str = "") -> Iterator[tuple[str, Column]]:
    for c in columns:
        yield parent + c.name, c
        yield from _walk(c.fields, f"{parent}{c.name}.")


def test_bundled_schemas_declare_the_eight_tables(bundled: DeclaredState) -> None:
    assert set(bundled.tables) == BUNDLED_TABLES
    assert bundled.dataset_description
    assert dict(bundled.dataset_labels) == {"platform": "convergence", "component": "tenant-registry"}
    assert bundled.digest.startswith("sha256:")
    for spec in bundled.tables.values():
        assert spec.description, f"{spec.name} has no description in bootstrap.yaml"
        assert spec.require_partition_filter is False


@pytest.mark.parametrize(
    ("table", "partitioning", "clustering"),
    [
        ("tenant_usage_quotas", ("DAY", "usage_date", None), ("tenant_id", "usage_date")),
        ("scheduled_pipeline_runs", ("DAY", "scheduled_time", None), ("tenant_id", "state", "config_id")),
        ("pipeline_execution_queue", ("DAY", "scheduled_time", None), ("state", "priority", "tenant_id")),
        ("tenant_profiles", None, ()),
        ("tenant_api_keys", None, ()),
        ("tenant_subscriptions", None, ()),
        ("tenant_cloud_credentials", None, ()),
        ("tenant_pipeline_configs", None, ()),
    ],
)
def test_bundled_partitioning_and_clustering(
    bundled: DeclaredState, table: str, partitioning: tuple[Any, ...] | None, clustering: tuple[str, ...]
) -> None:
    spec = bundled.tables[table]
    if partitioning is None:
        assert spec.partitioning is None
    else:
        p = spec.partitioning
        assert p is not None
        assert (p.type, p.field, p.expiration_ms) == partitioning
    assert spec.clustering == clustering


def test_every_bundled_column_at_every_level_has_a_description(bundled: DeclaredState) -> None:
    missing = [
        f"{t}.{path}"
        for t, spec in bundled.tables.items()
        for path, c in _walk(spec.columns)
        if not c.description.strip()
    ]
    assert missing == []


def test_tenant_id_is_required_in_every_bundled_table(bundled: DeclaredState) -> None:
    for spec in bundled.tables.values():
        tenant = {c.name: c for c in spec.columns}.get("tenant_id")
        assert tenant is not None, spec.name
        assert (tenant.type, tenant.mode) == ("STRING", "REQUIRED"), spec.name


def test_tenant_api_keys_stores_only_a_hash_and_a_prefix(bundled: DeclaredState) -> None:
    columns = dict(_walk(bundled.tables["tenant_api_keys"].columns))
    assert columns["key_hash"].type == "STRING"
    assert columns["key_prefix"].type == "STRING"
    suspicious = [
        name
        for name in columns
        if ("key" in name.lower() and name not in {"key_id", "key_hash", "key_prefix"})
        or any(w in name.lower() for w in ("secret", "token", "password", "plain", "raw"))
    ]
    assert suspicious == [], f"columns that look like a plaintext key: {suspicious}"


def test_tenant_cloud_credentials_stores_only_kms_ciphertext(bundled: DeclaredState) -> None:
    columns = dict(_walk(bundled.tables["tenant_cloud_credentials"].columns))
    assert columns["encrypted_credentials"].type == "BYTES"
    assert columns["kms_key_name"].type == "STRING"
    suspicious = [
        name
        for name in columns
        if any(w in name.lower() for w in ("secret", "password", "private_key", "plain", "token"))
        or name.lower() in {"credentials", "credential", "key", "access_key"}
    ]
    assert suspicious == []


def test_bundled_digest_is_stable_and_tracks_content() -> None:
    files = read_folder(BUNDLED_SCHEMAS)
    first = load_declared_state(files).digest
    assert load_declared_state(dict(files)).digest == first
    changed = dict(files)
    changed["bootstrap.yaml"] = files["bootstrap.yaml"] + b"\n# comment\n"
    assert load_declared_state(changed).digest != first


# --- the bad-input corpus ----------------------------------------------------------------------

BASE_FIELDS: list[dict[str, Any]] = [
    {"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "description": "Tenant."},
    {"name": "day", "type": "DATE", "description": "Day."},
    {"name": "at", "type": "TIMESTAMP", "description": "When."},
    {"name": "count", "type": "INT64", "description": "Count."},
    {"name": "active", "type": "BOOL", "description": "Active."},
    {"name": "score", "type": "FLOAT64", "description": "Score."},
    {"name": "tags", "type": "STRING", "mode": "REPEATED", "description": "Tags."},
    {"name": "visits", "type": "TIMESTAMP", "mode": "REPEATED", "description": "Visits."},
    {
        "name": "meta",
        "type": "RECORD",
        "description": "Meta.",
        "fields": [
            {"name": "source", "type": "STRING", "description": "Source."},
            {"name": "ts", "type": "TIMESTAMP", "description": "Time."},
        ],
    },
]
BASE_MANIFEST = "dataset:\n  description: Test.\ntables:\n  t:\n    description: A table.\n"


def _fields(*edits: tuple[str, Any]) -> list[dict[str, Any]]:
    fields = copy.deepcopy(BASE_FIELDS)
    for op, arg in edits:
        if op == "append":
            fields.append(arg)
        elif op == "meta":
            fields[-1]["fields"].append(arg)
    return fields


def schema(doc: Any, manifest: str | None = BASE_MANIFEST, name: str = "t.json") -> dict[str, bytes]:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    files = {name: data}
    if manifest is not None:
        files["bootstrap.yaml"] = manifest.encode()
    return files


def with_field(field: dict[str, Any]) -> dict[str, bytes]:
    return schema(_fields(("append", field)))


def table_entry(yaml_lines: str) -> dict[str, bytes]:
    """The base table with these lines (indented under tables.t) in the manifest."""
    body = "".join(f"    {line}\n" for line in yaml_lines.strip().splitlines())
    return schema(BASE_FIELDS, manifest=BASE_MANIFEST + body)


def nested(levels: int) -> dict[str, Any]:
    """A RECORD chain n1.n2...nN whose innermost RECORD holds one STRING leaf."""
    leaf: dict[str, Any] = {"name": "leaf", "type": "STRING"}
    for i in range(levels, 0, -1):
        leaf = {"name": f"n{i}", "type": "RECORD", "fields": [leaf]}
    return leaf


@dataclass(frozen=True)
class Bad:
    files: dict[str, bytes]
    file: str
    path: str
    message: str  # a phrase of what is wrong
    fix: str  # a phrase of what to do


def bad(id_: str, files: dict[str, bytes], file: str, path: str, message: str, fix: str) -> Any:
    return pytest.param(Bad(files, file, path, message, fix), id=id_)


M = "bootstrap.yaml"
CORPUS = [
    # --- type parameters ------------------------------------------------------------------------
    bad(
        "maxLength not a whole number",
        with_field({"name": "s", "type": "STRING", "maxLength": "ten"}),
        "t.json",
        "s",
        '"maxLength" must be a whole number',
        "such as",
    ),
    bad(
        "maxLength on an INT64",
        with_field({"name": "n", "type": "INT64", "maxLength": "10"}),
        "t.json",
        "n",
        '"maxLength" applies only to STRING and BYTES',
        "remove it",
    ),
    bad(
        "precision on a STRING",
        with_field({"name": "s", "type": "STRING", "precision": "5"}),
        "t.json",
        "s",
        '"precision" applies only to NUMERIC and BIGNUMERIC',
        "remove it",
    ),
    bad(
        "scale above precision",
        with_field({"name": "x", "type": "NUMERIC", "precision": "5", "scale": "7"}),
        "t.json",
        "x",
        '"scale" (7) is larger than "precision" (5)',
        "lower",
    ),
    bad(
        "scale without precision",
        with_field({"name": "x", "type": "NUMERIC", "scale": "2"}),
        "t.json",
        "x",
        '"scale" needs a "precision"',
        "add",
    ),
    # --- schema files ---------------------------------------------------------------------------
    bad(
        "invalid JSON",
        schema(b'[{"name": "a", "type": "STRING",}]'),
        "t.json",
        "",
        "is not valid JSON",
        "fix the syntax",
    ),
    bad("not UTF-8", schema(b'[{"name": "\xff"}]'), "t.json", "", "is not valid JSON", "fix the syntax"),
    bad(
        "JSON nested absurdly deep",
        schema(b"[" * 100_000),
        "t.json",
        "",
        "is not valid JSON",
        "fix the syntax",
    ),
    bad("empty file", schema(b""), "t.json", "", "the file is empty", "must hold a JSON array of fields"),
    bad(
        "whitespace-only file",
        schema(b" \n\t\n"),
        "t.json",
        "",
        "the file is empty",
        "must hold a JSON array",
    ),
    bad(
        "object instead of array",
        schema({"fields": BASE_FIELDS}),
        "t.json",
        "",
        "(found a JSON object)",
        "must be a JSON array of fields, as `bq show --schema` prints",
    ),
    bad("JSON null", schema(b"null"), "t.json", "", "(found a JSON null)", "must be a JSON array"),
    bad("empty array", schema([]), "t.json", "", "declares no column", "a table needs at least one"),
    bad(
        "field not an object",
        schema([*BASE_FIELDS, "note"]),
        "t.json",
        "[9]",
        "each field must be a JSON object",
        "JSON object",
    ),
    bad(
        "missing name",
        with_field({"type": "STRING"}),
        "t.json",
        "[9]",
        'needs a "name"',
        "a non-empty string",
    ),
    bad(
        "name not a string",
        with_field({"name": 7, "type": "STRING"}),
        "t.json",
        "[9]",
        'needs a "name"',
        "non-empty string",
    ),
    bad(
        "missing type",
        with_field({"name": "note"}),
        "t.json",
        "note",
        'needs a "type"',
        "such as STRING, INT64",
    ),
    bad(
        "type not a string",
        with_field({"name": "note", "type": ["STRING"]}),
        "t.json",
        "note",
        'needs a "type"',
        "such as STRING",
    ),
    bad(
        "unknown type",
        with_field({"name": "note", "type": "VARCHAR"}),
        "t.json",
        "note",
        "unknown type 'VARCHAR'",
        "use a BigQuery type such as STRING",
    ),
    bad(
        "unknown mode",
        with_field({"name": "note", "type": "STRING", "mode": "OPTIONAL"}),
        "t.json",
        "note",
        "unknown mode 'OPTIONAL'",
        "use NULLABLE, REQUIRED or REPEATED",
    ),
    bad(
        "column name with a space",
        with_field({"name": "first name", "type": "STRING"}),
        "t.json",
        "first name",
        "invalid column name",
        "use letters, digits and underscores, start with a letter or underscore",
    ),
    bad(
        "column name with a leading digit",
        with_field({"name": "1st", "type": "STRING"}),
        "t.json",
        "1st",
        "invalid column name",
        "start with a letter",
    ),
    bad(
        "column name with a dash",
        with_field({"name": "tenant-name", "type": "STRING"}),
        "t.json",
        "tenant-name",
        "invalid column name",
        "underscores",
    ),
    bad(
        "reserved prefix _PARTITIONTIME",
        with_field({"name": "_PARTITIONTIME", "type": "TIMESTAMP"}),
        "t.json",
        "_PARTITIONTIME",
        "may not start with",
        "reserved by BigQuery",
    ),
    bad(
        "reserved prefix in lowercase",
        with_field({"name": "_table_suffix", "type": "STRING"}),
        "t.json",
        "_table_suffix",
        "may not start with",
        "reserved",
    ),
    bad(
        "name longer than 300",
        with_field({"name": "c" * 301, "type": "STRING"}),
        "t.json",
        "c" * 301,
        "invalid column name",
        "at most 300 characters",
    ),
    bad(
        "duplicate column",
        with_field({"name": "tenant_id", "type": "STRING"}),
        "t.json",
        "tenant_id",
        "duplicates column 'tenant_id'",
        "rename or remove one",
    ),
    bad(
        "duplicate differing only in case",
        with_field({"name": "Tenant_ID", "type": "STRING"}),
        "t.json",
        "Tenant_ID",
        "case-insensitively",
        "rename or remove one",
    ),
    bad(
        "duplicate inside a RECORD",
        schema(_fields(("meta", {"name": "SOURCE", "type": "STRING"}))),
        "t.json",
        "meta.SOURCE",
        "duplicates column 'source'",
        "rename or remove one",
    ),
    bad(
        "RECORD without fields",
        with_field({"name": "r", "type": "RECORD"}),
        "t.json",
        "r",
        'a RECORD needs "fields"',
        "a non-empty array of sub-fields",
    ),
    bad(
        "RECORD with empty fields",
        with_field({"name": "r", "type": "STRUCT", "fields": []}),
        "t.json",
        "r",
        'a RECORD needs "fields"',
        "non-empty array",
    ),
    bad(
        "non-RECORD with fields",
        with_field({"name": "s", "type": "STRING", "fields": [{"name": "x", "type": "STRING"}]}),
        "t.json",
        "s",
        'only a RECORD may have "fields" (this column is STRING)',
        "change the type or remove them",
    ),
    bad(
        "RECORDs nested deeper than 15",
        with_field(nested(15)),
        "t.json",
        ".".join(f"n{i}" for i in range(1, 16)),
        "nested at most 15 levels deep",
        "at most 15",
    ),
    bad(
        "unknown key in a field",
        with_field({"name": "note", "type": "STRING", "mdoe": "REQUIRED"}),
        "t.json",
        "note",
        "unknown key(s) mdoe",
        "allowed: categories, collation, dataGovernanceTagsInfo, dataPolicies",
    ),
    bad(
        "description not a string",
        with_field({"name": "note", "type": "STRING", "description": 5}),
        "t.json",
        "note",
        '"description" must be a string',
        "must be a string",
    ),
    bad(
        "mistake in a nested field",
        schema(_fields(("meta", {"name": "region", "type": "TEXT"}))),
        "t.json",
        "meta.region",
        "unknown type 'TEXT'",
        "use a BigQuery type",
    ),
    bad(
        "bad table file name",
        schema(BASE_FIELDS, manifest=None, name="my-table.json"),
        "my-table.json",
        "",
        "the file name must be <table>.json",
        "rename the file",
    ),
    bad(
        "no schema file at all",
        {M: BASE_MANIFEST.replace("  t:\n    description: A table.\n", "").encode()},
        "(schema source)",
        "",
        "holds no <table>.json schema file",
        "add one",
    ),
    # --- the manifest ----------------------------------------------------------------------------
    bad(
        "manifest invalid YAML",
        schema(BASE_FIELDS, manifest="tables: {t: {description: x: y}}\n"),
        M,
        "",
        "is not valid YAML",
        "fix the syntax",
    ),
    bad(
        "manifest not a mapping",
        schema(BASE_FIELDS, manifest="- t\n- u\n"),
        M,
        "",
        "must be a mapping",
        "with keys dataset and tables",
    ),
    bad(
        "manifest unknown top-level key",
        schema(BASE_FIELDS, manifest="table:\n  t: {}\n"),
        M,
        "",
        "unknown key(s) table",
        "allowed: dataset, tables",
    ),
    bad(
        "dataset unknown key",
        schema(BASE_FIELDS, manifest="dataset:\n  location: EU\n"),
        M,
        "dataset",
        "unknown key(s) location",
        "allowed: description, labels",
    ),
    bad(
        "dataset not a mapping",
        schema(BASE_FIELDS, manifest="dataset: [x]\n"),
        M,
        "dataset",
        "must be a mapping",
        "(description, labels)",
    ),
    bad(
        "unknown table key",
        table_entry("partitioning: {type: DAY, field: day}"),
        M,
        "tables.t",
        "unknown key(s) partitioning",
        "allowed: clustering, description, labels, renamed, require_partition_filter, time_partitioning",
    ),
    bad(
        "table entry not a mapping",
        schema(BASE_FIELDS, manifest="tables:\n  t: [day]\n"),
        M,
        "tables.t",
        "must be a mapping of table settings",
        "mapping",
    ),
    bad(
        "manifest entry naming no schema file",
        schema(BASE_FIELDS, manifest=BASE_MANIFEST + "  ghost:\n    description: Nothing.\n"),
        M,
        "tables.ghost",
        "names no schema file",
        "add ghost.json or remove the entry",
    ),
    bad(
        "table description not a string",
        schema(BASE_FIELDS, manifest="tables:\n  t:\n    description: 5\n"),
        M,
        "tables.t.description",
        "must be a string",
        "string",
    ),
    bad(
        "partition field missing",
        table_entry("time_partitioning: {type: DAY, field: nope}"),
        M,
        "tables.t.time_partitioning.field",
        "'nope' is not a top-level column of the table",
        "name one",
    ),
    bad(
        "partition field inside a RECORD",
        table_entry("time_partitioning: {type: DAY, field: meta.ts}"),
        M,
        "tables.t.time_partitioning.field",
        "'meta.ts' is not a top-level column",
        "partitioning columns cannot be inside a RECORD",
    ),
    bad(
        "partition field of type STRING",
        table_entry("time_partitioning: {type: DAY, field: tenant_id}"),
        M,
        "tables.t.time_partitioning.field",
        "'tenant_id' is REQUIRED STRING",
        "DAY partitioning needs a non-repeated DATE/DATETIME/TIMESTAMP column",
    ),
    bad(
        "HOUR partitioning on a DATE column",
        table_entry("time_partitioning: {type: HOUR, field: day}"),
        M,
        "tables.t.time_partitioning.field",
        "'day' is NULLABLE DATE",
        "HOUR partitioning needs a non-repeated DATETIME/TIMESTAMP column",
    ),
    bad(
        "partitioning on a REPEATED column",
        table_entry("time_partitioning: {type: DAY, field: visits}"),
        M,
        "tables.t.time_partitioning.field",
        "'visits' is REPEATED TIMESTAMP",
        "needs a non-repeated",
    ),
    bad(
        "unknown partition type",
        table_entry("time_partitioning: {type: WEEK, field: day}"),
        M,
        "tables.t.time_partitioning.type",
        "must be DAY, HOUR, MONTH or YEAR",
        "DAY, HOUR, MONTH or YEAR",
    ),
    bad(
        "unknown key in time_partitioning",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_ms: 100}"),
        M,
        "tables.t.time_partitioning",
        "unknown key(s) expiration_ms",
        "allowed: expiration_days, field, type",
    ),
    bad(
        "time_partitioning not a mapping",
        table_entry("time_partitioning: DAY"),
        M,
        "tables.t.time_partitioning",
        "must be a mapping",
        "{type: DAY, field: COLUMN}",
    ),
    bad(
        "negative expiration_days",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_days: -1}"),
        M,
        "tables.t.time_partitioning.expiration_days",
        "must be a number of days from 1 to 36500",
        "remove it to keep every partition",
    ),
    bad(
        "expiration_days a string",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_days: '30'}"),
        M,
        "tables.t.time_partitioning.expiration_days",
        "must be a number of days from 1 to 36500",
        "remove it to keep every partition",
    ),
    bad(
        "expiration_days of a fraction of a day (deletes almost every partition)",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_days: 0.00001}"),
        M,
        "tables.t.time_partitioning.expiration_days",
        "must be a number of days from 1 to 36500",
        "remove it to keep every partition",
    ),
    bad(
        "expiration_days just under a day",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_days: 0.99}"),
        M,
        "tables.t.time_partitioning.expiration_days",
        "must be a number of days from 1 to 36500",
        "remove it to keep every partition",
    ),
    bad(
        "expiration_days not a number (.nan)",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_days: .nan}"),
        M,
        "tables.t.time_partitioning.expiration_days",
        "must be a number of days from 1 to 36500",
        "remove it to keep every partition",
    ),
    bad(
        "expiration_days infinite (.inf)",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_days: .inf}"),
        M,
        "tables.t.time_partitioning.expiration_days",
        "must be a number of days from 1 to 36500",
        "remove it to keep every partition",
    ),
    bad(
        "expiration_days beyond a hundred years",
        table_entry("time_partitioning: {type: DAY, field: day, expiration_days: 36501}"),
        M,
        "tables.t.time_partitioning.expiration_days",
        "must be a number of days from 1 to 36500",
        "remove it to keep every partition",
    ),
    bad(
        "more than 4 clustering fields",
        table_entry("clustering: [tenant_id, day, at, count, active]"),
        M,
        "tables.t.clustering",
        "at most 4 clustering columns",
        "at most 4",
    ),
    bad(
        "clustering on a missing column",
        table_entry("clustering: [tenant_id, nope]"),
        M,
        "tables.t.clustering",
        "'nope' is not a top-level column of the table",
        "clustering columns cannot be inside a RECORD",
    ),
    bad(
        "clustering on a FLOAT column",
        table_entry("clustering: [score]"),
        M,
        "tables.t.clustering",
        "'score' is NULLABLE FLOAT",
        "clustering needs a non-repeated column of type BIGNUMERIC, BOOLEAN, DATE",
    ),
    bad(
        "clustering on a RECORD column",
        table_entry("clustering: [meta]"),
        M,
        "tables.t.clustering",
        "'meta' is NULLABLE RECORD",
        "non-repeated column of type",
    ),
    bad(
        "clustering on a REPEATED column",
        table_entry("clustering: [tags]"),
        M,
        "tables.t.clustering",
        "'tags' is REPEATED STRING",
        "non-repeated column",
    ),
    bad(
        "clustering names a column twice",
        table_entry("clustering: [tenant_id, Tenant_ID]"),
        M,
        "tables.t.clustering",
        "names a column twice",
        "twice",
    ),
    bad(
        "clustering not a list",
        table_entry("clustering: tenant_id"),
        M,
        "tables.t.clustering",
        "must be a list of column names",
        "list of column names",
    ),
    bad(
        "label key with uppercase",
        table_entry("labels: {Env: prod}"),
        M,
        "tables.t.labels.Env",
        "invalid label key",
        "1-63 lowercase letters, digits, _ or -, starting with a letter",
    ),
    bad(
        "label value a YAML number",
        table_entry("labels: {tier: 123}"),
        M,
        "tables.t.labels.tier",
        "invalid label value",
        "quote values that YAML would read as numbers or booleans",
    ),
    bad(
        "label value a YAML boolean",
        table_entry("labels: {public: yes}"),
        M,
        "tables.t.labels.public",
        "invalid label value",
        "quote values",
    ),
    bad(
        "label value too long",
        table_entry(f"labels: {{owner: {'a' * 64}}}"),
        M,
        "tables.t.labels.owner",
        "invalid label value",
        "0-63 lowercase",
    ),
    bad(
        "dataset label key invalid",
        schema(BASE_FIELDS, manifest="dataset:\n  labels: {9lives: x}\n"),
        M,
        "dataset.labels.9lives",
        "invalid label key",
        "starting with a letter",
    ),
    bad(
        "labels a list",
        table_entry("labels: [a, b]"),
        M,
        "tables.t.labels",
        "must be a mapping of label key to value",
        "mapping",
    ),
    bad(
        "labels a string",
        table_entry("labels: team=core"),
        M,
        "tables.t.labels",
        "must be a mapping of label key to value",
        "mapping",
    ),
    bad(
        "dataset labels a list",
        schema(BASE_FIELDS, manifest="dataset:\n  labels: [x]\n"),
        M,
        "dataset.labels",
        "must be a mapping of label key",
        "mapping",
    ),
    bad(
        "manifest nested absurdly deep",
        schema(BASE_FIELDS, manifest="[" * 50_000),
        M,
        "",
        "is not valid YAML",
        "fix the syntax",
    ),
    bad(
        "too many labels",
        table_entry("labels: {" + ", ".join(f"k{i}: v" for i in range(65)) + "}"),
        M,
        "tables.t.labels",
        "at most 64 labels",
        "at most 64",
    ),
    bad(
        "require_partition_filter without partitioning",
        table_entry("require_partition_filter: true"),
        M,
        "tables.t.require_partition_filter",
        "only a partitioned table can require a partition filter",
        "needs time_partitioning",
    ),
    bad(
        "require_partition_filter not a bool",
        table_entry("time_partitioning: {field: day}\nrequire_partition_filter: 'true'"),
        M,
        "tables.t.require_partition_filter",
        "must be true or false",
        "true or false",
    ),
]


# 458 bytes of nested aliases: expanded, a few hundred MB (the "billion laughs").
ALIAS_BOMB = (
    "dataset:\n  labels: &a0 {k: v}\n"
    + "".join(
        f"x{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 10)
    )
    + "tables: {t: {labels: *a9}}\n"
)
CORPUS += [
    bad(
        "manifest with YAML anchors and aliases (an alias bomb)",
        schema(BASE_FIELDS, manifest=ALIAS_BOMB),
        M,
        "",
        "uses YAML anchors or aliases (& and *), which the manifest does not accept",
        "write each value out",
    ),
    bad(
        "manifest over a mebibyte",
        schema(BASE_FIELDS, manifest=BASE_MANIFEST + "# " + "x" * 1024 * 1024 + "\n"),
        M,
        "",
        "bytes; the manifest is at most 1048576",
        "at most 1048576",
    ),
    bad(
        "schema file over 16 MiB",
        schema(b"[" + b" " * (16 * 1024 * 1024) + b"]"),
        "t.json",
        "",
        "bytes; a schema file is at most 16777216",
        "at most 16777216",
    ),
    bad(
        "more columns than BigQuery allows",
        schema([{"name": f"c{i}", "type": "STRING"} for i in range(10_001)], manifest=None),
        "t.json",
        "",
        "declares 10001 columns; BigQuery allows 10000",
        "BigQuery allows 10000",
    ),
    bad(
        "partition type not a string",
        table_entry("time_partitioning: {type: [DAY], field: day}"),
        M,
        "tables.t.time_partitioning.type",
        "must be DAY, HOUR, MONTH or YEAR",
        "DAY, HOUR, MONTH or YEAR",
    ),
    bad(
        "partition field not a string",
        table_entry("time_partitioning: {type: DAY, field: {day: 1}}"),
        M,
        "tables.t.time_partitioning.field",
        "{'day': 1} is not a top-level column of the table",
        "name one",
    ),
]


def _errors(files: dict[str, bytes]) -> list[SchemaError]:
    with pytest.raises(SchemaValidationError) as info:
        load_declared_state(files)
    return info.value.errors


@pytest.mark.parametrize("b", CORPUS)
def test_bad_input_is_refused_with_file_path_and_fix(b: Bad) -> None:
    errors = _errors(b.files)

    assert len(errors) == 1, "\n".join(map(str, errors))
    (error,) = errors
    assert (error.file, error.path) == (b.file, b.path)
    assert b.message in error.message
    assert b.fix in error.message
    # What the user reads: "file: path: message".
    where = f"{b.file}: {b.path}: " if b.path else f"{b.file}: "
    assert str(error).startswith(where)


def test_every_field_bq_show_prints_is_accepted_and_kept_for_the_table_s_creation() -> None:
    """BigQuery's TableFieldSchema as `bq show --schema` prints it, newer fields included."""
    field = {
        "name": "ts",
        "type": "TIMESTAMP",
        "mode": "NULLABLE",
        "description": "When.",
        "timestampPrecision": "12",
        "dataGovernanceTagsInfo": {"tags": ["a"]},
        "categories": {"names": []},
        "collation": "",
    }
    declared = load_declared_state(with_field(field))

    column = next(c for c in declared.tables["t"].columns if c.name == "ts")
    assert column.to_api() == field


def test_each_corpus_mistake_is_named_once() -> None:
    ids = [p.id for p in CORPUS]
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)


def test_problems_beyond_fifty_are_counted_not_listed() -> None:
    """110,000 bad columns: every one is found, fifty are listed, so the completion event and
    the log line stay small."""
    files = schema([{"name": f"bad name {i}", "type": "STRING"} for i in range(110_000)], manifest=None)

    with pytest.raises(SchemaValidationError) as info:
        load_declared_state(files)

    assert len(info.value.errors) == 110_000
    message = str(info.value)
    assert message.startswith("110000 problem(s) in the schema files:")
    assert message.count("\n  - t.json: ") == 50
    assert message.endswith("  - ... and 109950 more problem(s), not listed")
    assert len(message) < 20_000


def test_an_unforeseen_failure_while_reading_a_file_is_a_problem_of_that_file(monkeypatch) -> None:
    from function import schema_files

    def broken(*args: Any) -> Any:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(schema_files, "_parse_fields", broken)

    errors = _errors(schema(BASE_FIELDS))

    assert [(e.file, e.path) for e in errors] == [("t.json", "")]
    assert "could not be read (OverflowError: cannot convert float infinity to integer)" in errors[0].message


def test_the_corpus_base_is_valid() -> None:
    """Each corpus entry breaks exactly one thing of a table that is otherwise accepted."""
    state = load_declared_state(schema(BASE_FIELDS))
    assert list(state.tables) == ["t"]
    assert load_declared_state(schema([nested(14)], manifest=None)).tables["t"].columns[0].name == "n1"


def test_several_errors_in_one_file_are_all_reported_at_once() -> None:
    doc = [
        {"name": "ok", "type": "STRING"},
        {"name": "bad name", "type": "STRING"},
        {"name": "b", "type": "VARCHAR", "mode": "SOMETIMES"},
        {"name": "r", "type": "RECORD", "fields": [{"name": "x"}]},
        {"name": "OK", "type": "STRING"},
    ]
    with pytest.raises(SchemaValidationError) as info:
        load_declared_state(schema(doc, manifest=None))

    got = [(e.file, e.path, e.message.split(";")[0]) for e in info.value.errors]
    assert got == [
        (
            "t.json",
            "bad name",
            "invalid column name: use letters, digits and underscores, start with a letter or underscore, at most 300 characters",
        ),
        ("t.json", "b", "unknown type 'VARCHAR'"),
        ("t.json", "b", "unknown mode 'SOMETIMES'"),
        ("t.json", "r.x", 'needs a "type" (a string such as STRING, INT64, TIMESTAMP or RECORD)'),
        ("t.json", "OK", "duplicates column 'ok' (BigQuery compares column names case-insensitively)"),
    ]
    text = str(info.value)
    assert text.startswith("5 problem(s) in the schema files:\n")
    assert "  - t.json: b: unknown type 'VARCHAR'" in text
    assert '  - t.json: r.x: needs a "type"' in text


def test_errors_in_several_files_and_the_manifest_are_all_reported() -> None:
    files = {
        "a.json": b"[",
        "b.json": json.dumps([{"name": "x", "type": "BLOB"}]).encode(),
        "c.json": json.dumps([{"name": "day", "type": "DATE"}]).encode(),
        "bootstrap.yaml": b"tables:\n  c:\n    clustering: [nope]\n    labels: {Bad: x}\n",
    }
    errors = _errors(files)
    where = [(e.file, e.path) for e in errors]
    assert ("a.json", "") in where
    assert ("b.json", "x") in where
    assert ("bootstrap.yaml", "tables.c.labels.Bad") in where
    assert ("bootstrap.yaml", "tables.c.clustering") in where
    assert len(errors) == 4


def test_a_broken_file_is_not_reported_again_as_a_missing_manifest_entry() -> None:
    files = schema(b"{", manifest=BASE_MANIFEST)
    errors = _errors(files)
    assert [(e.file, e.path) for e in errors] == [("t.json", "")]


def test_invalid_partitioning_is_not_also_reported_as_missing() -> None:
    errors = _errors(
        table_entry("time_partitioning: {type: DAY, field: nope}\nrequire_partition_filter: true")
    )
    assert [e.path for e in errors] == ["tables.t.time_partitioning.field"]


# --- what is accepted ---------------------------------------------------------------------------

BQ_SHOW_SCHEMA = b"""[
  {"name": "tenant_id", "type": "STRING", "mode": "REQUIRED", "maxLength": "64",
   "policyTags": {"names": ["projects/p/locations/us/taxonomies/1/policyTags/2"]},
   "description": "Tenant."},
  {"mode": "NULLABLE", "name": "price", "precision": "10", "scale": "2", "type": "NUMERIC",
   "roundingMode": "ROUND_HALF_EVEN"},
  {"name": "big", "type": "BIGNUMERIC", "precision": "40", "scale": "5"},
  {"name": "label", "type": "STRING", "collation": "und:ci", "defaultValueExpression": "'x'"},
  {"name": "raw", "type": "BYTES", "maxLength": "16", "mode": null, "description": null},
  {"name": "attrs", "type": "RECORD", "mode": "REPEATED", "fields": [
     {"name": "k", "type": "STRING", "mode": "REQUIRED", "maxLength": "8"},
     {"name": "v", "type": "JSON"}]},
  {"name": "where", "type": "GEOGRAPHY"},
  {"name": "span", "type": "INTERVAL"},
  {"name": "t", "type": "TIME"}, {"name": "dt", "type": "DATETIME"},
  {"name": "n", "type": "BIGDECIMAL"}, {"name": "d", "type": "DECIMAL"}
]"""


def test_bq_show_schema_output_with_extra_keys_is_accepted_as_it_is() -> None:
    state = load_declared_state({"prices.json": BQ_SHOW_SCHEMA})
    columns = dict(_walk(state.tables["prices"].columns))

    tenant = columns["tenant_id"]
    assert tenant.mode == "REQUIRED"
    assert tenant.to_api() == {
        "name": "tenant_id",
        "type": "STRING",
        "mode": "REQUIRED",
        "description": "Tenant.",
        "maxLength": "64",
        "policyTags": {"names": ["projects/p/locations/us/taxonomies/1/policyTags/2"]},
    }
    assert dict(columns["price"].extra) == {
        "precision": "10",
        "scale": "2",
        "roundingMode": "ROUND_HALF_EVEN",
    }
    assert dict(columns["label"].extra) == {"collation": "und:ci", "defaultValueExpression": "'x'"}
    assert (columns["raw"].mode, columns["raw"].description) == ("NULLABLE", "")
    assert columns["attrs.k"].extra == (("maxLength", "8"),)
    assert (columns["n"].type, columns["d"].type) == ("BIGNUMERIC", "NUMERIC")


def test_a_schema_file_without_a_manifest_entry_is_a_plain_table() -> None:
    state = load_declared_state(schema(BASE_FIELDS, manifest=None))
    spec = state.tables["t"]
    assert (spec.description, spec.labels, spec.partitioning, spec.clustering) == ("", (), None, ())
    assert state.dataset_description == ""


def test_manifest_settings_are_normalised() -> None:
    files = table_entry(
        "labels: {env: prod, empty: ''}\n"
        "time_partitioning: {type: month, field: AT, expiration_days: 1.5}\n"
        "clustering: [TENANT_ID, day]\n"
        "require_partition_filter: true"
    )
    spec = load_declared_state(files).tables["t"]
    assert spec.labels == (("empty", ""), ("env", "prod"))
    assert spec.partitioning is not None
    assert (spec.partitioning.type, spec.partitioning.field, spec.partitioning.expiration_ms) == (
        "MONTH",
        "at",
        129_600_000,
    )
    assert spec.clustering == ("tenant_id", "day")
    assert spec.require_partition_filter is True


def test_other_files_in_the_source_are_ignored() -> None:
    files = schema(BASE_FIELDS)
    files["README.md"] = b"not a schema"
    files["notes.yaml"] = b": : :"
    assert list(load_declared_state(files).tables) == ["t"]


# --- end to end: bad input sends no request ------------------------------------------------------
# `python -m function apply` runs as a subprocess against a recording HTTP server posing as
# BigQuery. The runs start together (each with its own recorder) when the first test needs them,
# so their start-up time overlaps.


class _Recorder(ThreadingHTTPServer):
    """Records every request; answers each with a permanent 403, as BigQuery does to a caller
    without access."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: _Recorder

    def _answer(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {
                "error": {
                    "code": 403,
                    "message": "denied by the recorder",
                    "errors": [{"reason": "accessDenied"}],
                }
            }
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class _Run:
    recorder: _Recorder
    process: subprocess.Popen[str]

    def result(self) -> tuple[int, str, str]:
        stdout, stderr = self.process.communicate(timeout=60)
        return self.process.returncode, stdout, stderr


E2E = ["invalid JSON", "unknown type", "duplicate column", "bad table file name", "partition field missing"]
E2E_CASES = [p for p in CORPUS if p.id in E2E]
VALID = "valid schema (control)"


def _start(folder: Path, files: dict[str, bytes]) -> _Run:
    for name, data in files.items():
        (folder / name).write_bytes(data)
    recorder = _Recorder()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_EMULATOR_HOST") and not k.startswith("BOOTSTRAP_")
    }
    env.pop("GCP_PROJECT", None)
    env.pop("SCHEMA_SOURCE", None)
    env.update(
        GOOGLE_CLOUD_PROJECT="local-project",
        BIGQUERY_EMULATOR_HOST=recorder.url,
        BOOTSTRAP_RETRY_DEADLINE="5",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "function", "apply", "--schema-source", str(folder)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return _Run(recorder, process)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Run]]:
    inputs = {p.id: p.values[0].files for p in E2E_CASES}
    inputs[VALID] = schema(BASE_FIELDS)
    runs: dict[str, _Run] = {}
    try:
        for key, files in inputs.items():
            runs[key] = _start(tmp_path_factory.mktemp("schemas"), files)
        yield runs
    finally:
        for run in runs.values():
            if run.process.poll() is None:
                run.process.kill()
            run.process.communicate()
            run.recorder.stop()


def test_e2e_covers_five_corpus_entries() -> None:
    assert [p.id for p in E2E_CASES] == E2E


@pytest.mark.parametrize("b", E2E_CASES)
def test_cli_apply_refuses_bad_input_without_sending_a_request(
    b: Bad, request: pytest.FixtureRequest, cli_runs: dict[str, _Run]
) -> None:
    run = cli_runs[request.node.callspec.id]

    code, stdout, stderr = run.result()

    assert code == 1, stderr
    assert stderr.startswith("error: 1 problem(s) in the schema files:"), stderr
    assert f"  - {b.file}: " in stderr
    assert b.message in stderr
    assert stdout == ""
    assert run.recorder.requests == []


def test_cli_apply_with_valid_input_does_reach_the_recorder(cli_runs: dict[str, _Run]) -> None:
    """The control for the test above: same wiring, a valid schema, and requests do arrive."""
    run = cli_runs[VALID]

    code, stdout, _ = run.result()

    assert code == 1
    assert "dataset tenants: failed" in stdout
    assert "denied by the recorder" in stdout
    paths = {r.split("?")[0] for r in run.recorder.requests}
    assert "GET /bigquery/v2/projects/local-project/datasets/tenants" in paths


def test_range_columns_load_with_their_element_type_and_are_refused_without_it():
    good = [{"name": "validity", "type": "RANGE", "mode": "NULLABLE", "rangeElementType": {"type": "DATE"}}]
    state = load_declared_state({"t.json": json.dumps(good).encode()})
    [column] = state.tables["t"].columns
    assert column.to_api()["rangeElementType"] == {"type": "DATE"}

    bad = [{"name": "validity", "type": "RANGE"}]
    with pytest.raises(SchemaValidationError, match='a RANGE needs "rangeElementType"'):
        load_declared_state({"t.json": json.dumps(bad).encode()})


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    """A bad type, a bad mode, an invalid name and a case-insensitive duplicate: four problems,
    the duplicate among them although the duplicated field has problems of its own."""
    fields = [
        {"name": "tenant_id", "type": "STRING"},
        {"name": "amount", "type": "MONEY"},
        {"name": "note", "type": "STRING", "mode": "OPTIONAL"},
        {"name": "bad name", "type": "STRING"},
        {"name": "Tenant_ID", "type": "VARCHAR"},
    ]

    errors = _errors(schema(fields, manifest=None))

    assert sorted((e.path, e.message.split(";")[0]) for e in errors) == [
        ("Tenant_ID", "duplicates column 'tenant_id' (BigQuery compares column names case-insensitively)"),
        ("Tenant_ID", "unknown type 'VARCHAR'"),
        ("amount", "unknown type 'MONEY'"),
        (
            "bad name",
            "invalid column name: use letters, digits and underscores, start with a letter or underscore, at most 300 characters",
        ),
        ("note", "unknown mode 'OPTIONAL'"),
    ]
