"""Does BigQuery hold the declared state? An independent check for end-to-end tests.

Compares what a test client reads straight from the emulator with the schema files and the
manifest (columns, descriptions, labels, partitioning and its expiration, clustering, the
partition-filter requirement), after normalising what BigQuery itself normalises (legacy type
names, default modes, empty descriptions), and returns the differences as readable lines
(empty: all matches).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from google.api_core import exceptions as gexc
from google.cloud import bigquery

# BigQuery's own spellings of one type (its documented aliases: "Data types" in GoogleSQL, and the
# legacy names the REST API answers with), each to its GoogleSQL name. Written out here rather
# than taken from the function's model, so that this check does not share the code it checks.
TYPE_NAMES: dict[str, str] = {
    "INTEGER": "INT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "RECORD": "STRUCT",
    "DECIMAL": "NUMERIC",
    "BIGDECIMAL": "BIGNUMERIC",
}


def type_name(name: str) -> str:
    """One name per type, whichever alias the file or the API used; other names unchanged."""
    upper = name.strip().upper()
    return TYPE_NAMES.get(upper, upper)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".json", ".yaml")}


def columns(fields: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(name, type, mode, description, sub-columns) for each field of a JSON schema."""
    return [
        (
            f["name"],
            type_name(f.get("type", "STRING")),
            (f.get("mode") or "NULLABLE").upper(),
            f.get("description") or "",
            tuple(columns(f.get("fields") or [])),
        )
        for f in fields
    ]


# The README's marker of a table or dataset that a forced recreation made: not declared state.
RECREATION_MARKER = "bootstrap-recreated-by"


def _declared_part(labels: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (labels or {}).items() if k != RECREATION_MARKER}


def differences(client: bigquery.Client, dataset: str, files: Mapping[str, bytes]) -> list[str]:
    """Every way BigQuery's `dataset` differs from the declared files (`name` -> bytes)."""
    manifest = yaml.safe_load(files.get("bootstrap.yaml") or b"") or {}
    entries = manifest.get("tables") or {}
    out: list[str] = []
    ds = client.get_dataset(dataset)
    declared_ds = manifest.get("dataset") or {}
    if (ds.description or "") != (declared_ds.get("description") or ""):
        out.append(f"dataset description {ds.description!r}")
    if _declared_part(ds.labels) != (declared_ds.get("labels") or {}):
        out.append(f"dataset labels {ds.labels}")
    for name, data in sorted(files.items()):
        if not name.endswith(".json"):
            continue
        table_id = name.removesuffix(".json")
        try:
            table = client.get_table(f"{dataset}.{table_id}")
        except gexc.NotFound:
            out.append(f"{table_id}: missing")
            continue
        actual = columns(table.to_api_repr().get("schema", {}).get("fields", []))
        if actual != columns(json.loads(data)):
            out.append(f"{table_id}: columns {actual}")
        entry = entries.get(table_id) or {}
        if (table.description or "") != (entry.get("description") or ""):
            out.append(f"{table_id}: description {table.description!r}")
        if _declared_part(table.labels) != (entry.get("labels") or {}):
            out.append(f"{table_id}: labels {table.labels}")
        partitioning = entry.get("time_partitioning")
        field = table.time_partitioning.field if table.time_partitioning else None
        if field != (partitioning or {}).get("field"):
            out.append(f"{table_id}: partitioned on {field!r}")
        if list(table.clustering_fields or []) != list(entry.get("clustering") or []):
            out.append(f"{table_id}: clustered on {table.clustering_fields}")
        days = (partitioning or {}).get("expiration_days")
        expiration = table.time_partitioning.expiration_ms if table.time_partitioning else None
        if expiration != (int(days * 86_400_000) if days else None):
            out.append(f"{table_id}: partitions expire after {expiration} ms")
        if bool(table.require_partition_filter) != bool(entry.get("require_partition_filter")):
            out.append(f"{table_id}: require_partition_filter {table.require_partition_filter}")
    return out
