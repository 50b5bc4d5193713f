"""Every test the README names as holding a promise exists: a renamed or deleted test would
leave a claim that nothing checks."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# `tests/x/test_y.py::test_z`, the name possibly on the next line (the README wraps at 100).
REFERENCE = re.compile(r"(tests/[\w/]+\.py)(?:::\s*(test_\w+))?")


def references() -> list[tuple[str, str | None]]:
    return [(m[1], m[2]) for m in REFERENCE.finditer((REPO / "README.md").read_text())]


def test_the_readme_names_tests() -> None:
    assert len([name for _, name in references() if name]) >= 10


def test_every_test_file_and_test_the_readme_names_exists() -> None:
    missing = []
    for path, name in references():
        file = REPO / path
        if not file.is_file():
            missing.append(path)
        elif name and not re.search(rf"^(async )?def {name}\(", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []
