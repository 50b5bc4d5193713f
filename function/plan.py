"""The diff between declared and actual state, classified as BigQuery allows it.

Pure: no I/O. For a table it answers create, unchanged, update (with every in-place change in
words, and the patch that makes them) or blocked (with every reason a change cannot be made in
place). The classification follows what BigQuery's tables.patch accepts: new NULLABLE or
REPEATED columns (REQUIRED only inside a new RECORD), REQUIRED relaxed to NULLABLE,
descriptions, labels, clustering, partition expiration and the partition-filter requirement.
Everything else (type changes, removed columns, NULLABLE to REQUIRED, a new REQUIRED column,
any change of the partitioning itself) needs the table to be recreated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .model import Column, DatasetSpec, TableSpec


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    BLOCKED = "blocked"
    RECREATE = "recreate"


class Property(StrEnum):
    """What a patch changes, in the plan's own words; the adapter maps each to the API."""

    COLUMNS = "columns"  # the whole resulting schema (tuple[Column, ...])
    DESCRIPTION = "description"  # str, None to clear it
    LABELS = "labels"  # only the labels that change: a patch merges label maps
    CLUSTERING = "clustering"  # tuple of column names, None to remove clustering
    PARTITION_EXPIRATION_MS = "partition_expiration_ms"  # int, None to remove it
    REQUIRE_PARTITION_FILTER = "require_partition_filter"  # bool
    EXPIRES = "expires"  # None: the table's expiration is removed


Patch = dict[Property, Any]


@dataclass(frozen=True)
class TablePlan:
    table: str
    action: Action
    changes: tuple[str, ...] = ()  # what will change, in words
    blocked: tuple[str, ...] = ()  # why it cannot change in place
    patch: Patch = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetPlan:
    dataset: str
    action: Action
    changes: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    patch: Patch = field(default_factory=dict)  # DESCRIPTION and LABELS only


def plan_table(declared: TableSpec, actual: TableSpec | None, *, recreate: bool = False) -> TablePlan:
    """Classify what it takes to bring `actual` (None: missing) to `declared`."""
    if actual is None:
        return TablePlan(declared.name, Action.CREATE, (describe_table(declared),))
    if recreate:
        return TablePlan(
            declared.name,
            Action.RECREATE,
            ("drop and recreate: " + describe_table(declared),),
        )
    changes: list[str] = []
    blocked: list[str] = []
    patch: Patch = {}

    merged = _diff_columns(declared.columns, actual.columns, "", changes, blocked)
    if merged != actual.columns:
        patch[Property.COLUMNS] = merged
    _diff_metadata(declared, actual, "", changes, patch)
    _diff_partitioning(declared, actual, changes, blocked, patch)
    if tuple(c.lower() for c in declared.clustering) != tuple(c.lower() for c in actual.clustering):
        changes.append(f"clustering: {_columns(actual.clustering)} -> {_columns(declared.clustering)}")
        patch[Property.CLUSTERING] = declared.clustering or None
    if declared.require_partition_filter != actual.require_partition_filter:
        changes.append(
            "require partition filter: "
            f"{_yes(actual.require_partition_filter)} -> {_yes(declared.require_partition_filter)}"
        )
        patch[Property.REQUIRE_PARTITION_FILTER] = declared.require_partition_filter
    if actual.expires_ms is not None:  # declared tables never expire (see TableSpec.expires_ms)
        changes.append(
            f"table expiration: {_instant(actual.expires_ms)} -> none (the table would be deleted)"
        )
        patch[Property.EXPIRES] = None

    if blocked:
        return TablePlan(declared.name, Action.BLOCKED, tuple(changes), tuple(blocked))
    if not changes:
        return TablePlan(declared.name, Action.UNCHANGED)
    return TablePlan(declared.name, Action.UPDATE, tuple(changes), (), patch)


def plan_dataset(declared: DatasetSpec, actual: DatasetSpec | None, *, recreate: bool = False) -> DatasetPlan:
    if actual is None:
        where = f"in {declared.location}"
        return DatasetPlan(declared.name, Action.CREATE, (f"create dataset {declared.name} {where}",))
    if recreate:
        return DatasetPlan(
            declared.name, Action.RECREATE, ("drop the dataset with every table, and recreate it",)
        )
    changes: list[str] = []
    patch: Patch = {}
    if declared.location.lower() != actual.location.lower():
        return DatasetPlan(
            declared.name,
            Action.BLOCKED,
            blocked=(
                f"location: the dataset is in {actual.location}, the deployment declares "
                f"{declared.location}; BigQuery cannot move a dataset (set BOOTSTRAP_LOCATION="
                f"{actual.location}, or recreate the dataset with force_recreate_dataset)",
            ),
        )
    _diff_metadata(declared, actual, "dataset ", changes, patch)
    if not changes:
        return DatasetPlan(declared.name, Action.UNCHANGED)
    return DatasetPlan(declared.name, Action.UPDATE, tuple(changes), patch=patch)


def describe_table(spec: TableSpec) -> str:
    parts = [f"create table with {len(spec.columns)} columns"]
    if spec.partitioning:
        on = spec.partitioning.field or "ingestion time"
        parts.append(f"partitioned by {spec.partitioning.type} on {on}")
    if spec.clustering:
        parts.append(f"clustered by {', '.join(spec.clustering)}")
    return ", ".join(parts)


def _diff_columns(
    declared: tuple[Column, ...],
    actual: tuple[Column, ...],
    parent: str,
    changes: list[str],
    blocked: list[str],
) -> tuple[Column, ...]:
    """Record the differences; return the schema to send: the existing columns in their
    existing order (with relaxed modes, new descriptions and merged sub-fields), then the new
    ones. Column names compare case-insensitively, as BigQuery compares them."""
    wanted = {c.name.lower(): c for c in declared}
    merged: list[Column] = []
    for have in actual:
        path = parent + have.name
        want = wanted.pop(have.name.lower(), None)
        if want is None:
            blocked.append(f"column {path} is not declared: BigQuery cannot drop a column in place")
            merged.append(have)
            continue
        merged.append(_diff_column(want, have, path, changes, blocked))
    for new in wanted.values():
        path = parent + new.name
        if new.mode == "REQUIRED":
            blocked.append(
                f"new column {path} is REQUIRED: existing rows have no value for it "
                "(declare it NULLABLE, or recreate the table)"
            )
            continue
        changes.append(f"add column {path} {_kind(new)}")
        merged.append(new)
    return tuple(merged)


def _diff_column(want: Column, have: Column, path: str, changes: list[str], blocked: list[str]) -> Column:
    if want.name != have.name:
        blocked.append(f"column {path} is declared as {want.name}: renaming needs the table recreated")
    if want.type != have.type:
        blocked.append(f"column {path} changes type {have.type} -> {want.type}: needs the table recreated")
        return have
    mode = have.mode
    if want.mode != have.mode:
        if have.mode == "REQUIRED" and want.mode == "NULLABLE":
            changes.append(f"relax column {path} REQUIRED -> NULLABLE")
            mode = "NULLABLE"
        else:
            blocked.append(
                f"column {path} changes mode {have.mode} -> {want.mode}: BigQuery only relaxes "
                "REQUIRED to NULLABLE in place"
            )
    if want.description != have.description:
        changes.append(f"column {path} description: {_quote(have.description)} -> {_quote(want.description)}")
    fields = have.fields
    if have.type == "RECORD":
        fields = _diff_columns(want.fields, have.fields, path + ".", changes, blocked)
    return replace(have, mode=mode, description=want.description, fields=fields)


def _diff_partitioning(
    declared: TableSpec,
    actual: TableSpec,
    changes: list[str],
    blocked: list[str],
    patch: Patch,
) -> None:
    want, have = declared.partitioning, actual.partitioning
    if want is None and have is None:
        return
    if want is None or have is None:
        was = _partition_words(have)
        blocked.append(f"partitioning: {was} -> {_partition_words(want)}: needs the table recreated")
        return
    same_field = (want.field or "").lower() == (have.field or "").lower()
    if want.type != have.type or not same_field:
        blocked.append(
            f"partitioning: {_partition_words(have)} -> {_partition_words(want)}: needs the table recreated"
        )
        return
    if want.expiration_ms == have.expiration_ms:
        return
    words = f"partition expiration: {_expiration(have.expiration_ms)} -> {_expiration(want.expiration_ms)}"
    if want.expiration_ms is not None and (
        have.expiration_ms is None or want.expiration_ms < have.expiration_ms
    ):
        # BigQuery deletes every partition older than the new limit as soon as it is set.
        blocked.append(
            f"{words}: BigQuery would delete every partition older than "
            f"{_expiration(want.expiration_ms)} at once, so it needs a forced request"
        )
        return
    changes.append(words)
    patch[Property.PARTITION_EXPIRATION_MS] = want.expiration_ms


def _diff_metadata(
    declared: TableSpec | DatasetSpec,
    actual: TableSpec | DatasetSpec,
    prefix: str,
    changes: list[str],
    patch: Patch,
) -> None:
    """Description and labels, alike for tables and datasets. Declared labels are enforced;
    labels that other tools set (billing, DLP) are left alone."""
    if declared.description != actual.description:
        changes.append(f"{prefix}description: {_quote(actual.description)} -> {_quote(declared.description)}")
        patch[Property.DESCRIPTION] = declared.description or None
    have = actual.label_dict
    labels = {k: v for k, v in sorted(declared.label_dict.items()) if have.get(k) != v}
    for key, value in labels.items():
        old = have.get(key)
        changes.append(
            f"{prefix}label {key}: {_quote(old) if old is not None else '(unset)'} -> {_quote(value)}"
        )
    if labels:
        # Only the labels that change: a patch merges label maps, so other tools' labels stay.
        patch[Property.LABELS] = labels


def _kind(column: Column) -> str:
    return f"{column.mode} {column.type}"


def _partition_words(p: Any) -> str:
    if p is None:
        return "none"
    return f"{p.type} on {p.field or 'ingestion time'}"


def _expiration(ms: int | None) -> str:
    return "none" if ms is None else f"{ms / 86_400_000:g} days"


def _instant(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _columns(names: tuple[str, ...]) -> str:
    return ", ".join(names) if names else "none"


def _quote(text: str) -> str:
    return repr(text) if text else "(empty)"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
