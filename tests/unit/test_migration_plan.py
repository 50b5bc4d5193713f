"""The migration planner (pure): which column each declared one is filled from, the cast, and
the checks that find the rows that cannot be carried, before anything is written."""

from __future__ import annotations

from typing import Any

import pytest

from function.migration import Migration, plan_migration
from function.model import Column, TableSpec

SOURCE, TARGET = "p.d.t", "p.d.t__migrating_1"


def spec(*columns: Column, renamed: tuple[tuple[str, str], ...] = (), **kw: Any) -> TableSpec:
    return TableSpec("t", columns, renamed=renamed, **kw)


def col(name: str, kind: str = "STRING", mode: str = "NULLABLE", **extra: Any) -> Column:
    return Column(name, kind, mode, extra=tuple(sorted(extra.items())))


def plan(declared: TableSpec, actual: TableSpec, drop_columns: bool = False) -> Migration:
    return plan_migration(declared, actual, drop_columns=drop_columns)


def test_the_same_columns_are_copied_as_they_are_with_nothing_to_check() -> None:
    m = plan(spec(col("a"), col("n", "INTEGER")), spec(col("a"), col("n", "INTEGER")))

    assert m.problems == () and m.checks == ()
    assert (
        m.insert_sql(SOURCE, TARGET) == f"INSERT INTO `{TARGET}` (`a`, `n`) SELECT `a`, `n` FROM `{SOURCE}`"
    )
    assert m.check_sql(SOURCE) == f"SELECT COUNT(*) AS total FROM `{SOURCE}`"


def test_a_type_change_is_cast_and_every_value_checked_first() -> None:
    m = plan(spec(col("n", "STRING")), spec(col("n", "INTEGER")))

    assert m.columns == (("n", "CAST(`n` AS STRING)"),)
    [check] = m.checks
    assert check.condition == "`n` IS NOT NULL AND SAFE_CAST(`n` AS STRING) IS NULL"
    assert "column n cast INT64 -> STRING (every value checked first)" in m.changes
    assert m.failures({"total": 5, "check_0": 2}) == ["column n: 2 row(s) cannot be cast to STRING"]
    assert m.failures({"total": 5, "check_0": 0}) == []


def test_nullable_to_required_counts_the_nulls() -> None:
    m = plan(spec(col("a", mode="REQUIRED")), spec(col("a")))

    assert [(c.column, c.condition) for c in m.checks] == [("a", "`a` IS NULL")]
    assert m.failures({"check_0": 3}) == ["column a: 3 row(s) are NULL but the column becomes REQUIRED"]


def test_a_new_required_column_without_a_default_fails_on_any_row_but_one_with_a_default_does_not() -> None:
    without = plan(spec(col("a"), col("b", mode="REQUIRED")), spec(col("a")))
    assert [(c.column, c.condition) for c in without.checks] == [("b", "TRUE")]
    assert without.failures({"check_0": 0}) == []  # an empty table migrates

    with_default = plan(
        spec(col("a"), col("b", mode="REQUIRED", defaultValueExpression="'x'")), spec(col("a"))
    )
    assert with_default.checks == () and with_default.columns == (("a", "`a`"),)


def test_a_shorter_string_and_a_smaller_numeric_are_checked_against_their_parameters() -> None:
    m = plan(
        spec(col("s", maxLength="4"), col("x", "NUMERIC", precision="5", scale="2")),
        spec(col("s", maxLength="10"), col("x", "NUMERIC")),
    )

    conditions = {c.words: c.condition for c in m.checks}
    assert conditions["are longer than 4"] == "LENGTH(`s`) > 4"
    assert conditions["have more than 2 decimal place(s)"] == "`x` != ROUND(`x`, 2)"
    assert (
        conditions["have more than 3 integer digit(s)"]
        == "ABS(CAST(`x` AS BIGNUMERIC)) >= CAST('1000' AS BIGNUMERIC)"
    )
    assert "CAST(" not in dict(m.columns)["s"]  # no parameterised type in a CAST (BigQuery refuses it)


def test_a_declared_rename_carries_the_old_columns_values() -> None:
    m = plan(spec(col("new"), renamed=(("new", "old"),)), spec(col("old")))

    assert m.columns == (("new", "`old`"),) and m.problems == () and m.lost == ()
    assert "column old carried into new" in m.changes


def test_a_column_no_longer_declared_needs_drop_columns() -> None:
    refused = plan(spec(col("a")), spec(col("a"), col("gone")))
    [problem] = refused.problems
    assert "column(s) gone no longer declared" in problem and "drop_columns" in problem

    allowed = plan(spec(col("a")), spec(col("a"), col("gone")), drop_columns=True)
    assert allowed.problems == () and allowed.lost == ("gone",)
    assert "column gone not carried (its values stay in the backup)" in allowed.changes


@pytest.mark.parametrize(
    ("declared", "actual", "words"),
    [
        (col("a", mode="REPEATED"), col("a"), "changes mode NULLABLE -> REPEATED"),
        (
            Column("r", "RECORD", fields=(col("x"), col("y"))),
            Column("r", "RECORD", fields=(col("x"),)),
            "a RECORD whose fields change",
        ),
    ],
    ids=["repeated", "record"],
)
def test_what_no_cast_carries_is_refused(declared: Column, actual: Column, words: str) -> None:
    [problem] = plan(spec(declared), spec(actual)).problems
    assert words in problem


def test_a_table_requiring_a_partition_filter_is_refused() -> None:
    [problem] = plan(spec(col("a")), spec(col("a"), require_partition_filter=True)).problems
    assert "requires a partition filter" in problem
