"""The diff between declared and actual state, classified as BigQuery allows it (pure). The
cases and their reasons: README, "What changes in place, and what is blocked".

Over 400 lines: one classifier, table and dataset, each kind of change beside its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .ddl import Change, Kind
from .model import Column, DatasetSpec, TableSpec
from .widening import ColumnType, widens


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
    # Made through DDL, before the patch (which is planned again once they are made).
    ddl: tuple[Change, ...] = ()

    @property
    def destructive(self) -> bool:
        """Does applying it lose values (a column dropped)? Then it needs the gate."""
        return any(change.destructive for change in self.ddl)


@dataclass(frozen=True)
class DatasetPlan:
    dataset: str
    action: Action
    changes: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    patch: Patch = field(default_factory=dict)  # DESCRIPTION and LABELS only


def plan_table(
    declared: TableSpec, actual: TableSpec | None, *, recreate: bool = False, drop_columns: bool = False
) -> TablePlan:
    """Classify what it takes to bring `actual` (None: missing) to `declared`. `drop_columns`:
    the request consents to dropping the columns that are no longer declared."""
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
    diff = _ColumnDiff(declared, actual, drop_columns, changes, blocked)

    merged = diff.columns(declared.columns, actual.columns, "")
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
    return TablePlan(declared.name, Action.UPDATE, tuple(changes), (), patch, tuple(diff.ddl))


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


class _ColumnDiff:
    """The columns' differences, in words, with what makes each: the schema a patch sends, or
    a DDL change (a declared rename, a lossless widening, a dropped column or default)."""

    def __init__(
        self,
        declared: TableSpec,
        actual: TableSpec,
        drop_columns: bool,
        changes: list[str],
        blocked: list[str],
    ) -> None:
        self.renamed = {old.lower(): new for new, old in declared.renamed}
        # The partitioning and clustering columns, declared or actual: BigQuery renames and drops
        # neither.
        self.fixed = {c.lower() for spec in (declared, actual) for c in spec.clustering}
        self.fixed |= {
            spec.partitioning.field.lower()
            for spec in (declared, actual)
            if spec.partitioning and spec.partitioning.field
        }
        self.drop_columns = drop_columns
        self.changes = changes
        self.blocked = blocked
        self.ddl: list[Change] = []

    def columns(
        self, declared: tuple[Column, ...], actual: tuple[Column, ...], parent: str
    ) -> tuple[Column, ...]:
        """Record the differences; return the schema to send: the existing columns in their
        existing order (with relaxed modes, new descriptions and merged sub-fields), then the new
        ones. Column names compare case-insensitively, as BigQuery compares them."""
        wanted = {c.name.lower(): c for c in declared}
        merged: list[Column] = []
        for have in actual:
            path = parent + have.name
            want = wanted.pop(have.name.lower(), None)
            new_name = self.renamed.get(have.name.lower()) if not parent else None
            if want is None and new_name is not None and new_name.lower() in wanted:
                want = wanted.pop(new_name.lower())
                self._rename(have, want.name)
                merged.append(self.column(want, replace(have, name=want.name), parent + want.name))
                continue
            if want is None:
                self._undeclared(have, path, top=not parent)
                merged.append(have)
                continue
            merged.append(self.column(want, have, path))
        for new in wanted.values():
            path = parent + new.name
            if new.mode == "REQUIRED":
                self.blocked.append(
                    f"new column {path} is REQUIRED: existing rows have no value for it "
                    "(declare it NULLABLE, or recreate the table)"
                )
                continue
            self.changes.append(f"add column {path} {_kind(new)}")
            merged.append(new)
        return tuple(merged)

    def column(self, want: Column, have: Column, path: str) -> Column:
        if want.name != have.name:
            self.blocked.append(
                f"column {path} is declared as {want.name}: BigQuery does not change the case of a name "
                "in place (recreate the table)"
            )
        top = "." not in path
        old, new = ColumnType.of(have), ColumnType.of(want)
        if old != new:
            if not widens(old, new):
                self.blocked.append(
                    f"column {path} changes type {old.sql()} -> {new.sql()}: not a widening BigQuery "
                    "makes in place (values could be lost); needs the table recreated"
                )
                return have
            if not top:
                self.blocked.append(
                    f"column {path} changes type {old.sql()} -> {new.sql()}: BigQuery widens top-level "
                    "columns only; needs the table recreated"
                )
                return have
            self.changes.append(
                f"column {path} type {old.sql()} -> {new.sql()} (widened in place, every value kept)"
            )
            self.ddl.append(Change(Kind.SET_TYPE, have.name, new.sql()))
        mode = have.mode
        if want.mode != have.mode:
            if have.mode == "REQUIRED" and want.mode == "NULLABLE":
                self.changes.append(f"relax column {path} REQUIRED -> NULLABLE")
                mode = "NULLABLE"
            else:
                self.blocked.append(
                    f"column {path} changes mode {have.mode} -> {want.mode}: BigQuery only relaxes "
                    "REQUIRED to NULLABLE in place"
                )
        if want.description != have.description:
            self.changes.append(
                f"column {path} description: {_quote(have.description)} -> {_quote(want.description)}"
            )
        extra = self._reconciled(want, have, path)
        fields = have.fields
        if have.type == "RECORD":
            fields = self.columns(want.fields, have.fields, path + ".")
        return replace(have, mode=mode, description=want.description, fields=fields, extra=extra)

    def _rename(self, have: Column, new_name: str) -> None:
        if have.name.lower() in self.fixed or new_name.lower() in self.fixed:
            self.blocked.append(
                f"column {have.name} is renamed {new_name}: BigQuery does not rename a partitioning or "
                "clustering column (recreate the table)"
            )
            return
        self.changes.append(f"rename column {have.name} -> {new_name} (its values kept)")
        self.ddl.append(Change(Kind.RENAME, have.name, new_name))

    def _undeclared(self, have: Column, path: str, *, top: bool) -> None:
        """A column no longer declared: dropped with the request's consent, else blocked."""
        if not self.drop_columns:
            self.blocked.append(
                f"column {path} is not declared: dropping it loses its values, so it needs a request "
                "with drop_columns (or declare it renamed in the manifest)"
            )
        elif not top:
            self.blocked.append(
                f"column {path} is not declared: BigQuery drops top-level columns only; needs the table recreated"
            )
        elif have.name.lower() in self.fixed:
            self.blocked.append(
                f"column {path} is not declared: BigQuery does not drop a partitioning or clustering column"
            )
        else:
            self.changes.append(
                f"drop column {path} {_kind(have)} (its values are lost; the table is backed up first)"
            )
            self.ddl.append(Change(Kind.DROP_COLUMN, have.name))

    def _reconciled(self, want: Column, have: Column, path: str) -> tuple[tuple[str, Any], ...]:
        """The column's attributes kept in step in place: policy tags, data policies and the
        default value; the others (collation, rounding mode, ...) are kept as they are."""
        extra = dict(have.extra)
        declared = dict(want.extra)
        for key, words, cleared in (
            ("policyTags", "policy tags", {"names": []}),
            ("dataPolicies", "data policies", []),
            ("defaultValueExpression", "default value", None),
        ):
            old, new = _attribute(key, extra.get(key)), _attribute(key, declared.get(key))
            if old == new:
                continue
            warning = ""
            if key != "defaultValueExpression" and set(old) - set(new):
                warning = f" (a security change: the column is no longer restricted by {_list(set(old) - set(new))})"
            self.changes.append(f"column {path} {words}: {_list(old)} -> {_list(new)}{warning}")
            if key in declared:
                extra[key] = declared[key]
            elif key == "defaultValueExpression":
                extra.pop(key, None)
                self.ddl.append(Change(Kind.DROP_DEFAULT, have.name))
            else:
                extra[key] = cleared
        return tuple(sorted(extra.items()))


def _attribute(key: str, value: Any) -> tuple[str, ...]:
    """An attribute's value, comparable: policy tag names, data policy names, the default."""
    if value is None:
        return ()
    if key == "policyTags":
        return tuple(sorted(value.get("names") or ())) if isinstance(value, dict) else ()
    if key == "dataPolicies":
        return tuple(sorted(str(p.get("name", p)) if isinstance(p, dict) else str(p) for p in value or ()))
    return (str(value),)


def _list(values: Any) -> str:
    return ", ".join(sorted(values)) if values else "none"


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
