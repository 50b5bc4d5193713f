"""The problems found in the schema files, each with its file, its path and the fix, collected
all at once through a `Scope` per part of a file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import PermanentError

T = TypeVar("T")
MAX_REPORTED = 50  # problems listed in a message; the rest are counted


@dataclass(frozen=True)
class SchemaError:
    file: str
    path: str  # field path inside the file ("address.city", "tables.x.clustering"), or ""
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class SchemaValidationError(PermanentError):
    """The declared state is invalid; `errors` lists every problem found."""

    def __init__(self, errors: list[SchemaError]) -> None:
        self.errors = errors
        shown = "\n".join(f"  - {e}" for e in errors[:MAX_REPORTED])
        more = len(errors) - MAX_REPORTED
        if more > 0:
            shown += f"\n  - ... and {more} more problem(s), not listed"
        super().__init__(f"{len(errors)} problem(s) in the schema files:\n{shown}")


class Problems:
    """Every problem found so far, in the order found."""

    def __init__(self) -> None:
        self.found: list[SchemaError] = []

    def file(self, name: str) -> Scope:
        return Scope(self, name, "")

    def raise_any(self) -> None:
        if self.found:
            raise SchemaValidationError(self.found)


@dataclass
class Scope:
    """A place in a file (a path inside it, "" for the file itself). `clean` says whether no
    problem was reported here or in any scope opened from it."""

    problems: Problems
    file: str
    path: str
    parent: Scope | None = None
    count: int = field(default=0, init=False)

    @property
    def clean(self) -> bool:
        return self.count == 0

    def at(self, path: str) -> Scope:
        """The scope of `path` (a whole path, not relative) in the same file."""
        return Scope(self.problems, self.file, path, self)

    def add(self, message: str) -> None:
        self.problems.found.append(SchemaError(self.file, self.path, message))
        scope: Scope | None = self
        while scope is not None:
            scope.count += 1
            scope = scope.parent

    def guarded(self, parse: Callable[..., T], *args: Any) -> T | None:
        """`parse(*args)`; an exception it did not foresee is a problem of this file, reported
        with the others, never an error of the function (which would be delivered again)."""
        try:
            return parse(*args)
        except Exception as exc:
            self.at("").add(f"could not be read ({type(exc).__name__}: {str(exc)[:200]}); check its content")
            return None


def shown(value: Any, *, quoted: bool = True) -> str:
    """An untrusted value as a message shows it, at most 60 characters (a string unquoted when
    `quoted` is False)."""
    text = value if isinstance(value, str) and not quoted else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
