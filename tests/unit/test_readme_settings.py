"""The README's "## Settings" table, written by hand, says what the settings table
(function/config.py SETTINGS) says: the same variables in the same order, each with its default
and what it allows."""

from __future__ import annotations

import re
from pathlib import Path

from function.config import SETTINGS

README = Path(__file__).resolve().parents[2] / "README.md"


def documented() -> dict[tuple[str, ...], dict[str, str]]:
    """The first table under "## Settings": (variables of a row) -> its cells, without code marks."""
    lines = README.read_text().splitlines()
    start = lines.index("## Settings")
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    header, _, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in table)
    assert header == ["variable", "default", "allowed", "meaning"]
    out = {}
    for cells in rows:
        variables = tuple(re.findall(r"`([A-Z_]+)`", cells[0]))
        out[variables] = {name: cell.replace("`", "") for name, cell in zip(header, cells, strict=True)}
    return out


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert list(documented()) == [row.variables for row in SETTINGS]


def test_the_defaults_are_the_table_s() -> None:
    readme = documented()
    assert {v: readme[v]["default"] for v in readme} == {
        row.variables: row.documented_default for row in SETTINGS if row.variables in readme
    }


def test_what_each_allows_is_the_table_s() -> None:
    readme = documented()
    assert {v: readme[v]["allowed"] for v in readme} == {
        row.variables: row.parse.allowed for row in SETTINGS if row.variables in readme
    }
