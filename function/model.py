"""The declared and actual state, in one immutable, normalised form (canonical type names,
explicit modes, descriptions as strings) that plan compares with ``==``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# BigQuery accepts several spellings of one type; the API answers with the legacy names.
TYPE_ALIASES: dict[str, str] = {
    "STRING": "STRING",
    "BYTES": "BYTES",
    "INTEGER": "INTEGER",
    "INT64": "INTEGER",
    "FLOAT": "FLOAT",
    "FLOAT64": "FLOAT",
    "NUMERIC": "NUMERIC",
    "DECIMAL": "NUMERIC",
    "BIGNUMERIC": "BIGNUMERIC",
    "BIGDECIMAL": "BIGNUMERIC",
    "BOOLEAN": "BOOLEAN",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP",
    "DATE": "DATE",
    "TIME": "TIME",
    "DATETIME": "DATETIME",
    "GEOGRAPHY": "GEOGRAPHY",
    "JSON": "JSON",
    "INTERVAL": "INTERVAL",
    "RANGE": "RANGE",
    "RECORD": "RECORD",
    "STRUCT": "RECORD",
}
MODES = ("NULLABLE", "REQUIRED", "REPEATED")
# A BigQuery dataset or table id as this tool accepts it; it also becomes part of API paths.
BIGQUERY_NAME = re.compile(r"[A-Za-z0-9_]{1,1024}")


def canonical_type(name: str) -> str | None:
    """The legacy BigQuery name of a type, or None when BigQuery has no such type."""
    return TYPE_ALIASES.get(name.strip().upper())


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # canonical (legacy) name
    mode: str = "NULLABLE"
    description: str = ""
    fields: tuple[Column, ...] = ()
    # Attributes BigQuery applies at creation (maxLength, precision, policyTags, ...): carried
    # through verbatim, not reconciled afterwards.
    extra: tuple[tuple[str, Any], ...] = ()

    def to_api(self) -> dict[str, Any]:
        """The field as BigQuery's REST API (and `bq show --schema`) spells it."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "mode": self.mode}
        if self.description:
            out["description"] = self.description
        out.update(self.extra)
        if self.fields:
            out["fields"] = [f.to_api() for f in self.fields]
        return out


@dataclass(frozen=True)
class TimePartitioning:
    type: str = "DAY"
    field: str | None = None  # None: ingestion-time partitioning
    expiration_ms: int | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    description: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    partitioning: TimePartitioning | None = None
    clustering: tuple[str, ...] = ()
    require_partition_filter: bool = False
    # Declared renames (new name, old name), top-level columns: the manifest's `renamed`.
    renamed: tuple[tuple[str, str], ...] = ()
    # When BigQuery deletes the table (ms since the epoch). A declared table never expires: the
    # manifest cannot ask for it, and one found on a table is removed.
    expires_ms: int | None = None

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    location: str
    description: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class DeclaredState:
    """What the schema files and the manifest declare, validated."""

    dataset_description: str
    dataset_labels: tuple[tuple[str, str], ...]
    tables: dict[str, TableSpec] = field(default_factory=dict)
    digest: str = ""  # sha256 over the files it was read from

    def dataset(self, name: str, location: str) -> DatasetSpec:
        return DatasetSpec(name, location, self.dataset_description, self.dataset_labels)


def sorted_labels(labels: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((labels or {}).items()))
