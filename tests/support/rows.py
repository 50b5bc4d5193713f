"""Rows for tests that check data survives: a value for every REQUIRED column."""

from __future__ import annotations

from typing import Any

from google.cloud import bigquery

from function.model import canonical_type

VALUES = {
    "STRING": "v{i}",
    "INTEGER": "{i}",
    "FLOAT": "1.5",
    "NUMERIC": "1.5",
    "BOOLEAN": True,
    "TIMESTAMP": "2026-01-01T00:00:00Z",
    "DATE": "2026-01-01",
    "BYTES": "AAE=",
    "JSON": "{{}}",
}


def required_row(client: bigquery.Client, table: str, i: int) -> dict[str, Any]:
    """A row holding a value for every REQUIRED column, with tenant_id `tenant-<i>`."""

    def fill(fields: list[bigquery.SchemaField]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields:
            if f.mode != "REQUIRED":
                continue
            if f.field_type in ("RECORD", "STRUCT"):
                out[f.name] = fill(list(f.fields))
            else:
                value = VALUES[canonical_type(f.field_type) or "STRING"]
                out[f.name] = value.format(i=i) if isinstance(value, str) else value
        return out

    row = fill(list(client.get_table(table).schema))
    row["tenant_id"] = f"tenant-{i}"
    return row
