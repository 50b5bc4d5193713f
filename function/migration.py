"""Plan a migration that keeps a table's rows (pure): the SELECT expression of each declared
column, and the checks that count the rows that cannot be carried.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Column, TableSpec
from .widening import SQL_NAMES, ColumnType


@dataclass(frozen=True)
class Check:
    """Rows that cannot be carried: those where `condition` holds."""

    column: str
    words: str  # what is wrong with such a row
    condition: str


@dataclass(frozen=True)
class Migration:
    """How the rows of `actual` become rows of `declared`."""

    table: str
    columns: tuple[tuple[str, str], ...] = ()  # (declared column, SELECT expression)
    checks: tuple[Check, ...] = ()
    changes: tuple[str, ...] = ()  # what happens to the values, in words
    lost: tuple[str, ...] = ()  # columns no longer declared: their values are not carried
    problems: tuple[str, ...] = ()  # why the rows cannot be migrated at all

    def check_sql(self, source: str) -> str:
        """One row: the source's row count, then for each check the rows it finds."""
        counts = ", ".join(f"COUNTIF({c.condition}) AS check_{i}" for i, c in enumerate(self.checks))
        return f"SELECT COUNT(*) AS total{', ' + counts if counts else ''} FROM `{source}`"

    def insert_sql(self, source: str, target: str) -> str:
        names = ", ".join(f"`{name}`" for name, _ in self.columns)
        values = ", ".join(expression for _, expression in self.columns)
        return f"INSERT INTO `{target}` ({names}) SELECT {values} FROM `{source}`"

    def failures(self, counts: dict[str, int]) -> list[str]:
        """The checks' findings (a row of `check_sql`'s result), in words."""
        found = []
        for i, check in enumerate(self.checks):
            if counts.get(f"check_{i}"):
                found.append(f"column {check.column}: {counts[f'check_{i}']} row(s) {check.words}")
        return found


def plan_migration(declared: TableSpec, actual: TableSpec, *, drop_columns: bool) -> Migration:
    """Map each declared column to its source (same name, or the manifest's `renamed`)."""
    renamed = {new.lower(): old.lower() for new, old in declared.renamed}
    sources = {c.name.lower(): c for c in actual.columns}
    columns: list[tuple[str, str]] = []
    checks: list[Check] = []
    changes: list[str] = []
    problems: list[str] = []
    carried: set[str] = set()
    for want in declared.columns:
        key = want.name.lower()
        have = sources.get(key) or sources.get(renamed.get(key, ""))
        if have is None:
            if want.mode == "REQUIRED" and "defaultValueExpression" not in dict(want.extra):
                checks.append(Check(want.name, "would have no value for this new REQUIRED column", "TRUE"))
            continue  # left to its default value, or NULL
        carried.add(have.name.lower())
        if have.name != want.name:
            changes.append(f"column {have.name} carried into {want.name}")
        problem = _incompatible(want, have)
        if problem:
            problems.append(problem)
            continue
        expression, column_checks, words = _carry(want, have)
        columns.append((want.name, expression))
        checks += column_checks
        changes += words
    if actual.require_partition_filter:
        problems.append(
            f"{actual.name} requires a partition filter, which a copy of all its rows cannot give: "
            "declare require_partition_filter: false and apply it first (an in-place change)"
        )
    lost = tuple(c.name for c in actual.columns if c.name.lower() not in carried)
    if lost and not drop_columns:
        problems.append(
            f"column(s) {', '.join(lost)} no longer declared: migrating would lose their values; add "
            "drop_columns to the request (or declare a rename in the manifest)"
        )
    changes += [f"column {name} not carried (its values stay in the backup)" for name in lost]
    return Migration(declared.name, tuple(columns), tuple(checks), tuple(changes), lost, tuple(problems))


def _incompatible(want: Column, have: Column) -> str:
    """Why the rows of `have` cannot be cast into `want` at all ("" when they can be tried)."""
    if (want.mode == "REPEATED") != (have.mode == "REPEATED"):
        return f"column {want.name} changes mode {have.mode} -> {want.mode}: no cast turns one into the other"
    if "RECORD" in (want.type, have.type) and _shape(want) != _shape(have):
        return (
            f"column {want.name} is a RECORD whose fields change: the migration carries RECORD columns "
            "only with the same fields"
        )
    return ""


def _shape(column: Column) -> tuple[object, ...]:
    return (column.type, column.mode, tuple((f.name.lower(), _shape(f)) for f in column.fields))


def _carry(want: Column, have: Column) -> tuple[str, list[Check], list[str]]:
    """The SELECT expression for `want` from `have`, the checks it needs, and the words. A
    value is cast with CAST, never SAFE_CAST (which would turn what it cannot cast into NULL);
    SAFE_CAST only counts those rows first. BigQuery allows no parameterised type in a CAST,
    so lengths, precision and scale are checked apart from the cast."""
    name = f"`{have.name}`"
    old, new = ColumnType.of(have), ColumnType.of(want)
    checks: list[Check] = []
    words: list[str] = []
    expression = name
    if old.name != new.name:
        base = SQL_NAMES.get(new.name, new.name)
        expression = f"CAST({name} AS {base})"
        checks.append(
            Check(
                want.name,
                f"cannot be cast to {base}",
                f"{name} IS NOT NULL AND SAFE_CAST({name} AS {base}) IS NULL",
            )
        )
        words.append(f"column {want.name} cast {old.sql()} -> {new.sql()} (every value checked first)")
    value = expression
    if new.max_length is not None and new.max_length != old.max_length:
        checks.append(
            Check(want.name, f"are longer than {new.max_length}", f"LENGTH({value}) > {new.max_length}")
        )
    digits = new.digits() if new.precision is not None else None
    if digits is not None and (new.precision, new.scale) != (old.precision, old.scale):
        integer, scale = digits
        checks.append(
            Check(
                want.name, f"have more than {scale} decimal place(s)", f"{value} != ROUND({value}, {scale})"
            )
        )
        checks.append(
            Check(
                want.name,
                f"have more than {integer} integer digit(s)",
                f"ABS(CAST({value} AS BIGNUMERIC)) >= CAST('1{'0' * integer}' AS BIGNUMERIC)",
            )
        )
    if want.mode == "REQUIRED" and have.mode != "REQUIRED":
        checks.append(Check(want.name, "are NULL but the column becomes REQUIRED", f"{name} IS NULL"))
        words.append(f"column {want.name} NULLABLE -> REQUIRED (every row checked first)")
    return expression, checks, words
