"""`.gcloudignore`'s rules as gcloud applies them (gitignore's: the last matching line wins, an
excluded directory is not entered): the upload set on a machine without gcloud. Shared by the
upload test and the recording fake gcloud, so both follow the repository's real ignore file."""

from __future__ import annotations

import re
from pathlib import Path


def _pattern_regex(glob: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = glob.find("]", i)
            out += glob[i : end + 1] if end > i else re.escape(c)
            i = end if end > i else i
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def _rules(ignore_file: Path) -> list[tuple[bool, bool, bool, re.Pattern[str]]]:
    """(negated, directory only, anchored, regex) per line, gitignore style."""
    rules = []
    for raw in ignore_file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.removeprefix("!")
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        rules.append((negated, dir_only, anchored, _pattern_regex(line.lstrip("/"))))
    return rules


def _ignored(rel: str, is_dir: bool, rules: list[tuple[bool, bool, bool, re.Pattern[str]]]) -> bool:
    verdict = False
    for negated, dir_only, anchored, regex in rules:
        if dir_only and not is_dir:
            continue
        subject = rel if anchored else rel.rsplit("/", 1)[-1]
        if regex.match(subject):
            verdict = not negated
    return verdict


def upload_set(root: Path) -> set[str]:
    """The files under `root` that `.gcloudignore` lets through, relative to it."""
    ignore = root / ".gcloudignore"
    rules = _rules(ignore) if ignore.exists() else []
    found: set[str] = set()

    def walk(directory: Path) -> None:
        for entry in sorted(directory.iterdir()):
            rel = entry.relative_to(root).as_posix()
            if _ignored(rel, entry.is_dir(), rules):
                continue
            if entry.is_dir():
                walk(entry)
            else:
                found.add(rel)

    walk(root)
    return found
