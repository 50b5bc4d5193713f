"""Which type changes BigQuery makes in place, losing no value (`ALTER COLUMN ... SET DATA
TYPE`): a coercion BigQuery allows, or a parameterised type widened.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Column

# BigQuery's coercions. Parameters widen to a longer STRING(L) or BYTES(L) (or none), and to a
# NUMERIC(P, S) or BIGNUMERIC(P, S) with a scale no smaller and as many integer digits or more;
# everything else (narrowing, STRING to INT64, a parameter shrunk) needs the table recreated.
COERCIONS = {
    "INTEGER": {"NUMERIC", "BIGNUMERIC", "FLOAT"},
    "NUMERIC": {"BIGNUMERIC", "FLOAT"},
    "BIGNUMERIC": {"FLOAT"},
}
DEFAULT_DIGITS = {"NUMERIC": (38, 9), "BIGNUMERIC": (76, 38)}  # (precision, scale) without parameters
INT64_DIGITS = 19
SQL_NAMES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}


@dataclass(frozen=True)
class ColumnType:
    """A column's type with its parameters (None: not given)."""

    name: str  # canonical (legacy) name
    max_length: int | None = None
    precision: int | None = None
    scale: int | None = None

    @classmethod
    def of(cls, column: Column) -> ColumnType:
        extra = dict(column.extra)
        return cls(
            column.type, _int(extra.get("maxLength")), _int(extra.get("precision")), _int(extra.get("scale"))
        )

    def sql(self) -> str:
        """The type as DDL spells it: STRING(64), NUMERIC(10, 2), FLOAT64."""
        name = SQL_NAMES.get(self.name, self.name)
        if self.max_length is not None:
            return f"{name}({self.max_length})"
        if self.precision is not None:
            return (
                f"{name}({self.precision}, {self.scale or 0})" if self.scale else f"{name}({self.precision})"
            )
        return name

    def digits(self) -> tuple[int, int] | None:
        """(integer digits, scale) of a number type; None for the others."""
        if self.name == "INTEGER":
            return INT64_DIGITS, 0
        if self.name not in DEFAULT_DIGITS:
            return None
        precision, scale = DEFAULT_DIGITS[self.name]
        if self.precision is not None:
            precision, scale = self.precision, self.scale or 0
        return precision - scale, scale


def widens(have: ColumnType, want: ColumnType) -> bool:
    """Does BigQuery change `have` to `want` in place, every value kept?"""
    if have == want:
        return False
    if have.name in ("STRING", "BYTES"):
        if want.name != have.name:
            return False
        return want.max_length is None or (have.max_length is not None and want.max_length >= have.max_length)
    if want.name == "FLOAT":
        return have.name in COERCIONS and want.max_length is None and want.precision is None
    if want.name != have.name and want.name not in COERCIONS.get(have.name, set()):
        return False
    old, new = have.digits(), want.digits()
    return old is not None and new is not None and new[0] >= old[0] and new[1] >= old[1]


def _int(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
