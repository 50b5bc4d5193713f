"""The manifest (`bootstrap.yaml`): what a schema file cannot say, read and validated (pure) into a
typed `Manifest`; what needs the tables' columns is checked by `schema_files`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .model import BIGQUERY_NAME, sorted_labels
from .problems import Scope, shown

MANIFEST_NAME = "bootstrap.yaml"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DESCRIPTION = 16384  # BigQuery's limit of a table's or dataset's description, in characters
MAX_CLUSTERING = 4
# A partition expiration deletes data: less than a day is a typo, never a retention policy.
MIN_EXPIRATION_DAYS = 1
MAX_EXPIRATION_DAYS = 36_500
PARTITION_TYPES = ("DAY", "HOUR", "MONTH", "YEAR")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
MANIFEST_KEYS = {"dataset", "tables"}
DATASET_KEYS = {"description", "labels"}
TABLE_KEYS = {
    "description",
    "labels",
    "time_partitioning",
    "clustering",
    "require_partition_filter",
    "renamed",
}
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
PARTITIONING_KEYS = {"type", "field", "expiration_days"}


@dataclass(frozen=True)
class Partitioning:
    """Time partitioning as declared; its field is matched to a column by `schema_files`."""

    type: str
    field: Any  # the name as written (None: ingestion time)
    expiration_ms: int | None


@dataclass(frozen=True)
class TableEntry:
    description: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    partitioning: Partitioning | None = None
    declares_partitioning: bool = False  # a time_partitioning key, valid or not
    clustering: tuple[str, ...] = ()  # names as written
    require_partition_filter: bool = False
    renamed: tuple[tuple[str, str], ...] = ()  # (new name, old name): columns renamed in place


@dataclass(frozen=True)
class Manifest:
    dataset_description: str = ""
    dataset_labels: tuple[tuple[str, str], ...] = ()
    tables: Mapping[str, TableEntry] = field(default_factory=dict)


def parse_manifest(data: bytes | None, scope: Scope) -> Manifest:
    """The manifest in `data` (None: there is none, so every table is plain); its problems go
    to `scope`. As strict as the schema files: unknown keys are problems (a typo is never
    ignored), YAML anchors and aliases are refused before anything is built from them, and the
    size is bounded before the file is parsed."""
    if data is None:
        return Manifest()
    if len(data) > MAX_MANIFEST_BYTES:
        scope.add(f"is {len(data)} bytes; the manifest is at most {MAX_MANIFEST_BYTES}")
        return Manifest()
    try:
        doc = yaml.load(data, Loader=_PlainLoader)  # a SafeLoader that refuses aliases
    except _AliasFound:
        scope.add(
            "uses YAML anchors or aliases (& and *), which the manifest does not accept "
            "(a few of them can expand to gigabytes); write each value out"
        )
        return Manifest()
    except (yaml.YAMLError, RecursionError) as exc:
        scope.add(f"is not valid YAML ({str(exc)[:300]}); fix the syntax")
        return Manifest()
    if doc is None:
        return Manifest()
    if not isinstance(doc, dict):
        scope.add("must be a mapping with keys dataset and tables")
        return Manifest()
    _unknown_keys(doc, MANIFEST_KEYS, scope)
    dataset = doc.get("dataset") or {}
    if not isinstance(dataset, dict):
        scope.at("dataset").add("must be a mapping (description, labels)")
        dataset = {}
    _unknown_keys(dataset, DATASET_KEYS, scope.at("dataset"))
    tables = doc.get("tables") or {}
    if not isinstance(tables, dict):
        scope.at("tables").add("must be a mapping of table name to settings")
        tables = {}
    entries = {}
    for table, entry in tables.items():
        where = scope.at(f"tables.{table}")
        if not isinstance(table, str) or not BIGQUERY_NAME.fullmatch(table):
            where.add("is not a table name: use 1-1024 letters, digits or underscores")
        elif entry is not None and not isinstance(entry, dict):
            where.add("must be a mapping of table settings")
        else:
            entries[table] = _table_entry(entry or {}, where)
    return Manifest(
        _description(dataset.get("description"), scope.at("dataset.description")),
        _labels(dataset.get("labels"), scope.at("dataset.labels")),
        entries,
    )


def _table_entry(entry: dict[str, Any], scope: Scope) -> TableEntry:
    _unknown_keys(entry, TABLE_KEYS, scope)
    raw_partitioning = entry.get("time_partitioning")
    rpf = entry.get("require_partition_filter", False)
    if not isinstance(rpf, bool):
        scope.at(f"{scope.path}.require_partition_filter").add("must be true or false")
        rpf = False
    elif rpf and raw_partitioning is None:
        scope.at(f"{scope.path}.require_partition_filter").add(
            "needs time_partitioning: only a partitioned table can require a partition filter"
        )
    return TableEntry(
        description=_description(entry.get("description"), scope.at(f"{scope.path}.description")),
        labels=_labels(entry.get("labels"), scope.at(f"{scope.path}.labels")),
        partitioning=_partitioning(raw_partitioning, scope.at(f"{scope.path}.time_partitioning")),
        declares_partitioning=raw_partitioning is not None,
        clustering=_clustering(entry.get("clustering"), scope.at(f"{scope.path}.clustering")),
        require_partition_filter=rpf,
        renamed=_renamed(entry.get("renamed"), scope.at(f"{scope.path}.renamed")),
    )


def _partitioning(raw: Any, scope: Scope) -> Partitioning | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        scope.add("must be a mapping: {type: DAY, field: COLUMN}")
        return None
    _unknown_keys(raw, PARTITIONING_KEYS, scope)
    kind = raw.get("type", "DAY")
    kind = kind.upper() if isinstance(kind, str) else None
    if kind not in PARTITION_TYPES:
        scope.at(f"{scope.path}.type").add("must be DAY, HOUR, MONTH or YEAR")
        return None
    days = raw.get("expiration_days")
    expiration_ms = None
    if days is not None:
        if (
            isinstance(days, bool)
            or not isinstance(days, int | float)
            or not math.isfinite(days)
            or not MIN_EXPIRATION_DAYS <= days <= MAX_EXPIRATION_DAYS
        ):
            scope.at(f"{scope.path}.expiration_days").add(
                f"must be a number of days from {MIN_EXPIRATION_DAYS} to {MAX_EXPIRATION_DAYS} "
                "(partitions older than this are deleted); remove it to keep every partition"
            )
            return None
        expiration_ms = int(days * 86_400_000)
    return Partitioning(kind, raw.get("field"), expiration_ms)


def _clustering(raw: Any, scope: Scope) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        scope.add("must be a list of column names")
        return ()
    if len(raw) > MAX_CLUSTERING:
        scope.add(f"BigQuery allows at most {MAX_CLUSTERING} clustering columns")
    if len({c.lower() for c in raw}) != len(raw):
        scope.add("names a column twice")
    return tuple(raw)


def _renamed(raw: Any, scope: Scope) -> tuple[tuple[str, str], ...]:
    """`{new_name: old_name}`: top-level columns renamed in place (BigQuery renames no nested
    field), each old name once."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        scope.add("must be a mapping of new column name to old column name")
        return ()
    pairs = []
    for new, old in raw.items():
        if not all(isinstance(n, str) and COLUMN_NAME.fullmatch(n) for n in (new, old)):
            scope.at(f"{scope.path}.{shown(new, quoted=False)}").add(
                "must map a top-level column's new name to its old one (BigQuery renames top-level "
                "columns only; names are letters, digits and underscores)"
            )
            continue
        pairs.append((new, old))
    olds = [old.lower() for _, old in pairs]
    if len(set(olds)) != len(olds):
        scope.add("renames one column twice")
    return tuple(pairs)


def _unknown_keys(doc: dict[Any, Any], allowed: set[str], scope: Scope) -> None:
    unknown = sorted(shown(k, quoted=False) for k in set(doc) - allowed)
    if unknown:
        scope.add(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _description(value: Any, scope: Scope) -> str:
    if value is not None and not isinstance(value, str):
        scope.add("must be a string")
    elif value is not None and len(value) > MAX_DESCRIPTION:
        scope.add(f"is longer than BigQuery's {MAX_DESCRIPTION} characters")
    return value if isinstance(value, str) else ""


def _labels(labels: Any, scope: Scope) -> tuple[tuple[str, str], ...]:
    if labels is None:
        return ()
    if not isinstance(labels, dict):
        scope.add("must be a mapping of label key to value")
        return ()
    if len(labels) > 64:
        scope.add("BigQuery allows at most 64 labels")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            scope.at(f"{scope.path}.{key}").add(
                "invalid label key: 1-63 lowercase letters, digits, _ or -, starting with a letter"
            )
        if not isinstance(value, str) or not LABEL_VALUE.fullmatch(value):
            scope.at(f"{scope.path}.{key}").add(
                "invalid label value: a string of 0-63 lowercase letters, digits, _ or - "
                "(quote values that YAML would read as numbers or booleans)"
            )
    return sorted_labels({str(k): str(v) for k, v in labels.items()})


class _AliasFound(Exception):
    pass


class _PlainLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing anchors and aliases before anything is built from them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasFound
        return super().compose_node(parent, index)
